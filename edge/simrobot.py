"""The simulated robot behind ``edge-run --sim``.

A :class:`edge.sim.esp32.SimulatedESP32` (the real firmware core on a pseudo-terminal) runs in
a **child process** (``edge.simrobot._child_main``), as the ESP32 is a separate device on a real
robot: its 1 kHz simulation thread then never competes with the control loop for the
interpreter lock, so the loop's timings measure the loop. The parent talks the real protocol
over the pty like on a robot; the child publishes the ground-truth pose (for the goal check,
the flight log and the pictures) in shared memory after every physics step, and answers a few
JSON-line requests on its stdin/stdout.

Around it, :class:`SimRobot` provides what the runtime needs: the episode's goal as an
observation, top-down pictures for the run GIF, and scheduled **fault injection**
(``sim.faults``: link loss, NaN range sensors) for testing the safety paths end to end.

Goal observation: noise-free ranges and the camera frame rendered at the goal pose, the pose
itself (in simulation the odometry frame is the world frame: odometry starts at the true start
pose), zero wheel speeds. A random evaluation episode's goal is a position in the other room;
its heading is the direction from the door to the goal (how the robot faces when it arrives
through the door).
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import FaultConfig, RunConfig
from edge.goals import GoalObservation
from edge.sim.camera import Camera, render_topdown
from edge.sim.env import SimConfig
from edge.sim.sensors import read_ranges
from edge.sim.world import Layout, WorldConfig, segments

TOPDOWN_PX_PER_M = 100.0
TOPDOWN_MARGIN_PX = 10  # edge.sim.camera.render_topdown's default margin
START_TIMEOUT_S = 30.0
SHARED_LEN = 5  # shared memory doubles: seq, x, y, theta, simulated time


def sim_config(cfg: RunConfig) -> SimConfig:
    """The simulator settings of a run: success radius = goal.reach_m, step budget = sim.max_steps."""
    base = SimConfig()
    world = WorldConfig(layout="fixed") if cfg.sim.fixed_layout else base.world
    return replace(base, world=world, success_radius=cfg.goal.reach_m, max_steps=cfg.sim.max_steps)


# --------------------------------------------------------------------------- child process


def _install_faults(esp: Any, faults: tuple[FaultConfig, ...]) -> None:
    """Wrap the simulated ESP32's UART and range HAL so scheduled faults act on simulated time."""

    def active(kind: str) -> bool:
        t = esp.sim_time_s
        return any(f.kind == kind and f.at_s <= t < f.at_s + f.duration_s for f in faults)

    uart_write, read_host, range_read = esp._hal_uart_write, esp._read_host, esp._hal_range_read

    def hal_uart_write(ctx, buf, length):
        if not active("link_loss"):
            uart_write(ctx, buf, length)

    def read_host_or_drop():
        if not active("link_loss"):
            return read_host()
        import os

        while True:  # the cable is cut: bytes from the host never arrive
            try:
                if not os.read(esp._master, 4096):
                    return
            except (BlockingIOError, OSError):
                return

    def hal_range_read(ctx, index):
        return float("nan") if active("nan_ranges") else range_read(ctx, index)

    esp._hal_uart_write, esp._read_host, esp._hal_range_read = hal_uart_write, read_host_or_drop, hal_range_read


def _publish_pose(esp: Any, shared: Any) -> None:
    """Publish to shared memory ``[seq, x, y, theta, t]``: the true pose after every physics step
    (seqlock: ``seq`` is odd while writing) and the simulated time whenever the firmware reads its
    clock (every 1 ms poll; one 8-byte store)."""
    physics = esp._physics

    micros = esp._hal_micros

    def physics_and_publish(dt: float) -> None:
        physics(dt)
        pose = esp._sim.robot.pose[0]
        shared[0] += 1.0
        shared[1], shared[2], shared[3] = float(pose[0]), float(pose[1]), float(pose[2])
        shared[0] += 1.0

    def micros_and_publish(ctx):  # the firmware reads its clock at least once per 1 ms poll
        t_us = micros(ctx)
        shared[4] = t_us * 1e-6
        return t_us

    esp._physics, esp._hal_micros = physics_and_publish, micros_and_publish
    pose = esp.start_pose
    shared[1], shared[2], shared[3] = float(pose[0]), float(pose[1]), float(pose[2])
    shared[4] = esp.sim_time_s


def _serve(shm_name: str, cfg: RunConfig, seed: int, proto: Any) -> None:
    """Child process: run the simulated ESP32 and answer JSON-line requests until 'stop'."""
    from multiprocessing import shared_memory

    from edge.sim.esp32 import SimulatedESP32

    def send(obj: Any) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    shm = shared_memory.SharedMemory(name=shm_name)
    from multiprocessing import resource_tracker

    resource_tracker.unregister(shm._name, "shared_memory")  # the parent owns (and unlinks) it
    try:
        shared = np.ndarray((SHARED_LEN,), dtype=np.float64, buffer=shm.buf)
        try:
            mode = "evaluate" if cfg.sim.goal_room == "other" else "same_room"
            esp = SimulatedESP32(sim_config(cfg), seed=seed, time_scale=cfg.sim.time_scale, mode=mode,
                                 camera=False)
            if cfg.goal.pose is not None:
                esp.set_goal(cfg.goal.pose[:2])
            if cfg.sim.faults:
                _install_faults(esp, tuple(cfg.sim.faults))
            _publish_pose(esp, shared)
            esp.start()
        except BaseException as e:  # reported to the parent, which raises it
            send(["error", f"{type(e).__name__}: {e}"])
            return
        def episode_info() -> dict:
            return {"port": esp.port, "start_pose": [float(v) for v in esp.start_pose],
                    "goal": [float(v) for v in esp.goal], "layout": esp.layout.as_array()[0].tolist()}

        send(["ready", episode_info()])
        try:
            for line in sys.stdin:
                req = line.strip()
                if req == "stop" or not req:
                    break
                try:
                    esp.check()
                    if req.startswith("reset "):
                        esp.reset_episode(int(req.split()[1]), mode=mode)
                        if cfg.goal.pose is not None:
                            esp.set_goal(cfg.goal.pose[:2])
                        pose = esp.start_pose
                        shared[0] += 1.0
                        shared[1], shared[2], shared[3] = float(pose[0]), float(pose[1]), float(pose[2])
                        shared[0] += 1.0
                        send(["ok", episode_info()])
                    elif req == "stats":
                        send(["ok", {"collisions": esp.collisions, "dropped_frames": esp.dropped_frames,
                                     "sim_time_s": esp.sim_time_s, "motor_duty": list(esp.motor_duty())}])
                    else:
                        send(["error", f"unknown request {req!r}"])
                except Exception as e:
                    send(["error", f"{type(e).__name__}: {e}"])
        finally:
            esp.stop()
            del shared
    finally:
        shm.close()


def _child_main() -> int:
    """Entry of ``python -m edge.simrobot``: one JSON line on stdin with the run config, seed and
    shared-memory name; the protocol goes to the original stdout, anything printed to stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    setup = json.loads(sys.stdin.readline())
    from edge.config import load_config

    cfg = load_config(None, [setup["config"]])
    _serve(setup["shm"], cfg, int(setup["seed"]), proto)
    return 0


# --------------------------------------------------------------------------- parent side


class SimClock:
    """The control loop's clock in simulation: loop time is the simulated robot's time.

    If the simulator falls behind real time (a loaded machine, or ``time_scale`` higher than it
    can keep up with), the loop waits for it, so a control period is always ``1 / rate_hz``
    seconds of the robot's time, as the world model was trained. ``scale`` is the nominal
    ``sim.time_scale`` (for wall-clock deadlines in reports); ``monotonic`` is the wall clock the
    link stamps telemetry with.
    """

    def __init__(self, robot: SimRobot):
        self._robot = robot
        self.scale = float(robot.cfg.sim.time_scale)

    def now(self) -> float:
        return self._robot.sim_time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float, wake: threading.Event | None = None) -> None:
        while True:
            remaining = t - self.now()
            if remaining <= 0:
                return
            delay = max(remaining / self.scale * 0.9, 0.0002)
            if wake is not None:
                if wake.wait(delay):
                    return
            else:
                time.sleep(delay)



class SimRobot:
    """One simulated episode. Use as a context manager (starts/stops the child process).

    Args:
        cfg: the run configuration (``sim`` and ``goal`` sections).
        seed: the episode's seed (layout, start, goal, sensor noise).
    """

    def __init__(self, cfg: RunConfig, seed: int):
        self.cfg = cfg
        self.seed = int(seed)
        self.sim_cfg = sim_config(cfg)
        robot = self.sim_cfg.robot
        self.wheel_radius = robot.wheel_radius
        self.wheel_base = robot.wheel_base
        self.ticks_per_rev = int(robot.ticks_per_rev)
        self._camera = Camera(self.sim_cfg.camera, self.sim_cfg.world)
        self._proc: subprocess.Popen | None = None
        self._shm: Any = None
        self._trail: list[tuple[float, float]] = []
        self.port: str = ""
        self.start_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.goal_xy: tuple[float, float] = (0.0, 0.0)
        self.layout: Layout | None = None
        self._seg: np.ndarray | None = None

    # -- lifecycle
    def start(self) -> SimRobot:
        from multiprocessing import shared_memory

        from edge.config import to_dict

        self._shm = shared_memory.SharedMemory(create=True, size=SHARED_LEN * 8)
        self._shared = np.ndarray((SHARED_LEN,), dtype=np.float64, buffer=self._shm.buf)  # [seq, x, y, theta, t]
        self._shared[:] = 0.0
        # The child imports the same edge package as this process (not a source tree that happens
        # to be the working directory of an installed edge-run).
        pkg_root = str(Path(__file__).resolve().parent.parent)
        code = (f"import sys; sys.path.insert(0, {pkg_root!r}); "
                "from edge.simrobot import _child_main; sys.exit(_child_main())")
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        setup = {"config": to_dict(self.cfg), "seed": self.seed, "shm": self._shm.name}
        self._proc.stdin.write(json.dumps(setup) + "\n")
        self._proc.stdin.flush()
        kind, info = self._read_reply(START_TIMEOUT_S)
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the simulated ESP32 failed to start: {info}")
        self.port = info["port"]
        self._take_episode(info)
        return self

    def _take_episode(self, info: dict) -> None:
        self.start_pose = tuple(float(v) for v in info["start_pose"])  # type: ignore[assignment]
        self.goal_xy = (float(info["goal"][0]), float(info["goal"][1]))
        self.layout = Layout.from_array(np.asarray(info["layout"]))
        self._seg = segments(self.sim_cfg.world, self.layout)
        self._trail = [self.start_pose[:2]]

    def new_episode(self, seed: int) -> None:
        """New layout, start and goal on the running simulated ESP32 (the robot is picked up and
        put down; the link and the firmware keep running, the encoders keep counting)."""
        self.seed = int(seed)
        self._take_episode(self._ask(f"reset {self.seed}"))

    def _read_reply(self, timeout_s: float) -> tuple[str, Any]:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            code = self._proc.poll()
            raise RuntimeError(f"the simulated ESP32 process stopped answering (exit status {code}); "
                               "its error is printed above")
        kind, value = json.loads(line)
        return kind, value

    def stop(self) -> None:
        """Stop the child process and free the shared memory (idempotent)."""
        if self._proc is not None:
            try:
                self._proc.stdin.write("stop\n")
                self._proc.stdin.flush()
                self._proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                self._proc.wait(timeout=2.0)
            self._proc.stdout.close()
            self._proc = None
        if getattr(self, "_shm", None) is not None:
            self._shared = None
            self._shm.close()
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self._shm = None

    def __enter__(self) -> SimRobot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ask(self, what: str) -> Any:
        if self._proc is None:
            raise RuntimeError("SimRobot is not started")
        self._proc.stdin.write(what + "\n")
        self._proc.stdin.flush()
        kind, value = self._read_reply(5.0)
        if kind != "ok":
            raise RuntimeError(f"simulated ESP32: {value}")
        return value

    # -- truth and pictures
    def true_pose(self) -> tuple[float, float, float]:
        """Ground-truth pose (x, y, theta) of the simulated robot, world frame (read from the
        shared memory the child updates after every physics step; no round trip)."""
        if self._proc is None:
            raise RuntimeError("SimRobot is not started")
        pose = self._read_shared()
        last = self._trail[-1]
        if math.hypot(pose[0] - last[0], pose[1] - last[1]) > 0.01:
            self._trail.append(pose[:2])
        return pose  # type: ignore[return-value]

    def _read_shared(self) -> tuple[float, float, float]:
        """The true pose (x, y, theta) as one consistent snapshot."""
        shared = self._shared
        while True:
            seq = shared[0]
            values = (float(shared[1]), float(shared[2]), float(shared[3]))
            if seq == shared[0] and int(seq) % 2 == 0:
                return values

    def sim_time(self) -> float:
        """Simulated seconds since the simulated ESP32 booted (1 ms resolution)."""
        if self._proc is None:
            raise RuntimeError("SimRobot is not started")
        return float(self._shared[4])

    def clock(self) -> SimClock:
        """A loop clock that runs on simulated time (see :class:`SimClock`)."""
        return SimClock(self)

    def stats(self) -> dict[str, Any]:
        """Simulator counters: collisions, dropped UART frames, simulated time, motor duties."""
        return self._ask("stats")

    def render_camera(self) -> np.ndarray:
        """Forward camera frame ``uint8 [64, 64, 3]`` at the true pose."""
        return self._camera.render(np.asarray(self.true_pose()).reshape(1, 3), self._seg, self.layout.wall_x)[0]

    def render_topdown(self) -> np.ndarray:
        """Top-down RGB image: walls, goal, robot (true pose) and its trail."""
        pose = np.asarray(self.true_pose())
        ranges = read_ranges(self.sim_cfg.ranges, pose.reshape(1, 3), self.sim_cfg.robot.radius, self._seg,
                             rng=None)[0]
        return render_topdown(self.sim_cfg.world, self.layout, pose, radius=self.sim_cfg.robot.radius,
                              goal=np.asarray(self.goal_xy), goal_radius=self.sim_cfg.success_radius,
                              trail=np.asarray(self._trail), ranges=ranges, px_per_m=TOPDOWN_PX_PER_M)

    def world_to_px(self, x: float, y: float) -> tuple[int, int]:
        """World metres -> pixel (column, row) of :meth:`render_topdown`."""
        w = self.sim_cfg.world
        return (int(round((x + w.half_width) * TOPDOWN_PX_PER_M)) + TOPDOWN_MARGIN_PX,
                int(round((w.half_height - y) * TOPDOWN_PX_PER_M)) + TOPDOWN_MARGIN_PX)

    def kinematics(self, rate_hz: float, max_wheel_speed: float) -> tuple[float, float, float, float]:
        """``(wheel_radius, wheel_base, max_wheel_speed, dt)`` for drawing planned paths."""
        return (self.wheel_radius, self.wheel_base, float(max_wheel_speed), 1.0 / rate_hz)

    # -- goals
    def goal_pose(self) -> tuple[float, float, float]:
        """``goal.pose`` if configured, else the sampled goal position facing away from the door."""
        if self.cfg.goal.pose is not None:
            return tuple(float(v) for v in self.cfg.goal.pose)  # type: ignore[return-value]
        gx, gy = self.goal_xy
        theta = math.atan2(gy - float(self.layout.door_y[0]), gx - float(self.layout.wall_x[0]))
        return (gx, gy, theta)

    def observation_at(self, pose: tuple[float, float, float], name: str = "goal") -> GoalObservation:
        """What the robot would sense standing still at ``pose`` (noise-free ranges, camera)."""
        p = np.asarray(pose, np.float64).reshape(1, 3)
        ranges = read_ranges(self.sim_cfg.ranges, p, self.sim_cfg.robot.radius, self._seg, rng=None)[0]
        frame = self._camera.render(p, self._seg, self.layout.wall_x)[0]
        return GoalObservation(ranges, tuple(float(v) for v in pose), (0.0, 0.0), frame, name)  # type: ignore[arg-type]

    def goal_observation(self) -> GoalObservation:
        return self.observation_at(self.goal_pose())


if __name__ == "__main__":
    sys.exit(_child_main())
