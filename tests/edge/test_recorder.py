"""Flight recorder: channels and schemas of docs/FLIGHT_LOG.md, JSON safety, crash tolerance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.recorder import FlightRecorder, read_flight_log
from edge.sim.flight_log import CHANNELS, decode_frame, encode_frame, schema_name


def test_round_trip_channels_metadata_and_nan(tmp_path: Path) -> None:
    """Messages come back per topic in order, NaN becomes null, numpy becomes lists, and every
    channel carries its FLIGHT_LOG.md schema name with jsonschema encoding."""
    path = tmp_path / "run.mcap"
    frame = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    with FlightRecorder(path, metadata={"rate_hz": 20.0, "device": "cpu"},
                        normalisation={"max_range_m": 3.0}) as rec:
        for tick in range(5):
            ranges = np.full(8, 1.5, np.float32)
            ranges[2] = np.nan
            rec.write("/obs", tick, tick * 0.05, {"ranges_m": ranges, "pose": np.zeros(3),
                                                 "wheel_speeds": [0.0, float(tick)]})
            rec.write("/action", tick, tick * 0.05, {"left": 0.1, "right": -0.1, "source": "planner"})
        rec.write("/camera", 4, 0.2, encode_frame(frame))
    log = read_flight_log(path)
    assert log.complete
    assert [m["tick"] for m in log.messages["/obs"]] == [0, 1, 2, 3, 4]
    assert log.messages["/obs"][3]["ranges_m"][2] is None
    assert log.messages["/obs"][3]["wheel_speeds"] == [0.0, 3.0]
    assert log.messages["/action"][0]["source"] == "planner"
    assert np.array_equal(decode_frame(log.messages["/camera"][0]), frame)
    assert log.metadata["edge_jepa"]["flight_log_version"] == "1"
    assert log.metadata["edge_jepa"]["rate_hz"] == "20.0"
    assert log.metadata["normalisation"]["max_range_m"] == "3.0"
    for topic in CHANNELS:
        assert log.schemas[topic] == (schema_name(topic), "jsonschema")


def test_unknown_topic_and_closed_writer_are_refused(tmp_path: Path) -> None:
    """Writing an undocumented topic or after close raises instead of silently dropping."""
    rec = FlightRecorder(tmp_path / "x.mcap")
    with pytest.raises(KeyError, match="unknown flight-log topic"):
        rec.write("/nope", 0, 0.0, {})
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.write("/obs", 0, 0.0, {"ranges_m": [1] * 8, "pose": [0, 0, 0], "wheel_speeds": [0, 0]})


def test_not_an_mcap_file_is_named(tmp_path: Path) -> None:
    """A file without the MCAP magic is refused with its path in the message."""
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"hello world, not mcap")
    with pytest.raises(ValueError, match="bad.mcap"):
        read_flight_log(bad)


_CHILD = r"""
import sys, time
from edge.recorder import FlightRecorder
rec = FlightRecorder(sys.argv[1], flush_period_s=0.2)
t0 = time.monotonic()
tick = 0
announced = False
while True:
    t = time.monotonic() - t0
    rec.write("/obs", tick, t, {"ranges_m": [1.0] * 8, "pose": [0, 0, 0], "wheel_speeds": [0, 0]})
    rec.maybe_flush()
    if t >= 0.8 and not announced:
        print("ready", flush=True)
        announced = True
    tick += 1
    time.sleep(0.005)
"""


def test_kill_9_loses_at_most_the_last_flush_period(tmp_path: Path) -> None:
    """A recording process killed with SIGKILL leaves a readable file holding every tick, in
    order, up to at most about one flush period (0.2 s) before the kill: chunks reach the OS as
    they close. Times are the child's own clock, so a slow machine does not change the claim."""
    path = tmp_path / "killed.mcap"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True, cwd=str(Path(__file__).resolve().parents[2]))
    try:
        assert child.stdout.readline().strip() == "ready"  # the child has recorded >= 0.8 s
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    log = read_flight_log(path)
    assert not log.complete
    obs = log.messages["/obs"]
    ticks = [m["tick"] for m in obs]
    assert ticks == list(range(len(ticks)))  # nothing torn or reordered in what was kept
    # the newest kept message was written no more than a flush period (+ one tick of slack)
    # before the child passed 0.8 s
    assert obs[-1]["t"] >= 0.8 - 0.2 - 0.1
