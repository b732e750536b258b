"""Two-rooms differential-drive simulator (numpy + OpenCV, no torch).

| module | what |
|---|---|
| ``world`` | arena, dividing wall and door (``WorldConfig``, layouts, wall segments, room sampling) |
| ``geometry`` | vectorised ray casts and swept-disc time of impact against segments |
| ``robot`` | differential drive: arcs, wheel limits, collisions, encoders, odometry (``RobotConfig``) |
| ``sensors`` | eight range sensors (``RangeConfig``) |
| ``camera`` | 64x64 egocentric camera and top-down renders (``CameraConfig``) |
| ``obs`` | the 14-vector ``sensor_vector`` and its ``SensorNormalisation`` |
| ``env`` | ``SimConfig``, ``BatchSim`` (vectorised episodes), ``TwoRoomsEnv`` (gymnasium) |
| ``policies`` | exploration mixture for data collection, privileged ``GoalPolicy`` baseline |
| ``dataset`` | shard writer/reader, ``WindowDataset`` (shards and MCAP flight logs) |
| ``flight_log`` | the flight log channel schemas (``docs/FLIGHT_LOG.md``) |
| ``collect`` / ``view`` | ``edge-collect`` / ``edge-sim-view`` |
| ``esp32`` | ``SimulatedESP32``: the real firmware core on a pty driving the simulated robot |
"""
