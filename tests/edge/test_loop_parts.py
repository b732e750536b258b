"""Parts the control loop is built from: odometry, camera sources, goal files, status/summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.camera import CameraError, OpenCVCamera, to_model_frame
from edge.goals import GoalError, GoalObservation, load_goal, parse_pose, save_goal
from edge.loop import TickInfo
from edge.odometry import Odometry, wrap_angle
from edge.status import RunStats, TrajectoryRecorder, summarise, write_summary

R, B, TPR = 0.033, 0.16, 1000.0
M_PER_TICK = 2 * math.pi * R / TPR


def test_odometry_straight_line_and_turn_in_place() -> None:
    """Equal counts move straight along the heading; opposite counts turn by (dr - dl) / base."""
    odo = Odometry(R, B, TPR, pose=(1.0, 2.0, math.pi / 2))
    odo.update(0, 0)
    x, y, th = odo.update(500, 500)
    assert (x, y, th) == pytest.approx((1.0, 2.0 + 500 * M_PER_TICK, math.pi / 2))
    odo2 = Odometry(R, B, TPR)
    odo2.update(0, 0)
    _, _, th = odo2.update(-100, 100)
    assert th == pytest.approx(200 * M_PER_TICK / B)


def test_odometry_closes_a_circle_in_small_steps() -> None:
    """Driving a full circle in 2000 small steps returns to the start (midpoint rule)."""
    odo = Odometry(R, B, TPR)
    odo.update(0, 0)
    left = right = 0
    # wheel travel for a circle of radius 0.5 m: inner/outer arc lengths
    n = 2000
    dl = 2 * math.pi * (0.5 - B / 2) / n / M_PER_TICK
    dr = 2 * math.pi * (0.5 + B / 2) / n / M_PER_TICK
    fl = fr = 0.0
    for _ in range(n):
        fl += dl
        fr += dr
        odo.update(round(fl), round(fr))
    x, y, th = odo.pose
    assert math.hypot(x, y) < 0.01 and abs(wrap_angle(th)) < 0.02


def test_odometry_int32_wrap_and_reset_jump() -> None:
    """Counts wrapping past int32 integrate normally; a jump of many revolutions (device reset)
    re-bases without moving the pose."""
    odo = Odometry(R, B, TPR)
    odo.update(2**31 - 10, 2**31 - 10)
    x, _, _ = odo.update(-(2**31) + 10, -(2**31) + 10)  # +20 counts through the wrap
    assert x == pytest.approx(20 * M_PER_TICK)
    before = odo.pose
    odo.update(123456, -654321)
    assert odo.pose == before and odo.rebases == 1


class _FakeCapture:
    def __init__(self, frames: list[np.ndarray | None]):
        self.frames = frames
        self.released = False

    def isOpened(self) -> bool:
        return True

    def read(self):
        if self.frames:
            f = self.frames.pop(0)
            return (f is not None), f
        return True, self.last

    last = np.zeros((48, 64, 3), np.uint8)

    def release(self) -> None:
        self.released = True


def test_opencv_camera_keeps_latest_rgb_frame_at_model_size() -> None:
    """BGR frames of any size come out as RGB at 64x64; failed reads are counted, not fatal."""
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    cap = _FakeCapture([None, bgr])
    _FakeCapture.last = bgr
    cam = OpenCVCamera("0", capture_factory=lambda src: cap).start()
    try:
        frame = cam.latest()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert frame[..., 2].min() == 255 and frame[..., 0].max() == 0  # blue is channel 2 in RGB
        assert cam.failures >= 1
    finally:
        cam.stop()
    assert cap.released


def test_camera_that_cannot_open_names_the_source() -> None:
    """An unopenable camera raises CameraError naming it and how to turn the camera off."""
    closed = SimpleNamespace(isOpened=lambda: False)
    with pytest.raises(CameraError, match="'/dev/video9'.*camera.source to none"):
        OpenCVCamera("/dev/video9", capture_factory=lambda src: closed).start()


def test_to_model_frame_handles_gray() -> None:
    """A grayscale capture becomes a 3-channel RGB frame."""
    assert to_model_frame(np.full((10, 20), 7, np.uint8), 64, 64).shape == (64, 64, 3)


def test_goal_file_round_trip_without_pickle(tmp_path: Path) -> None:
    """save_goal -> load_goal returns the same readings; the file loads with allow_pickle=False."""
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ranges = np.array([0.5, np.nan, 1, 1, 2, 2, 0.3, 0.4])
    path = save_goal(tmp_path / "goals" / "kitchen", GoalObservation(ranges, (0.5, -0.2, 1.0), (0.0, 0.0), frame, "kitchen"))
    assert path.suffix == ".npz"
    np.load(path, allow_pickle=False).close()
    g = load_goal(path)
    np.testing.assert_array_equal(g.ranges_m, ranges)
    assert g.pose == (0.5, -0.2, 1.0) and g.name == "kitchen"
    np.testing.assert_array_equal(g.frame, frame)
    s = g.sensor({"max_range_m": 2.0, "half_width_m": 1.5, "half_height_m": 1.0, "max_wheel_speed_rad_s": 15.0})
    assert s.shape == (14,) and s[1] == 1.0 and s[12] == 0.0 and s[13] == 0.0


def test_bad_goal_files_are_named(tmp_path: Path) -> None:
    """Missing, non-npz and wrong-version goal files raise GoalError naming the file."""
    with pytest.raises(GoalError, match="--save-goal"):
        load_goal(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(GoalError, match="junk.npz"):
        load_goal(junk)
    old = tmp_path / "old.npz"
    np.savez(old, version=np.array(99), ranges_m=np.ones(8), pose=np.zeros(3), wheel_speeds=np.zeros(2))
    with pytest.raises(GoalError, match="format version 99"):
        load_goal(old)


def test_parse_pose() -> None:
    """x,y,theta text parses; anything else is a ValueError with the expected form."""
    assert parse_pose("1, -0.5, 0") == (1.0, -0.5, 0.0)
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(ValueError, match="x,y,theta"):
            parse_pose(bad)


def _info(tick: int, total: float, source: str = "planner", overrun: bool = False) -> TickInfo:
    return TickInfo(tick=tick, t=tick * 0.05, action=(0.1, 0.1), source=source,
                    timings_ms={"observe": 0.1, "encode": 0.2, "plan": total - 0.5, "decide": 0.05,
                                "guard": 0.05, "send": 0.05, "record": 0.05},
                    total_ms=total, overrun=overrun, link_ok=True, confidence=0.9)


def test_summary_reports_latency_percentiles_rate_and_sources(tmp_path: Path) -> None:
    """The summary's p50/p99 tick latency, achieved rate, overruns and source counts match the ticks."""
    stats = RunStats(20.0)
    for i in range(100):
        stats.add(_info(i, 1.0 + i * 0.01, "planner" if i < 90 else "safety", overrun=i == 99))
    s = summarise(stats, {"result": "goal_reached"})
    assert s["ticks"] == 100 and s["achieved_rate_hz"] == pytest.approx(20.0)
    assert s["tick_ms"]["p50"] == pytest.approx(np.percentile(1.0 + np.arange(100) * 0.01, 50))
    assert s["tick_ms"]["deadline"] == 50.0 and s["overruns"] == 1
    assert s["sources"] == {"planner": 90, "safety": 10}
    out = write_summary(tmp_path / "summary.json", s)
    assert json.loads(out.read_text())["result"] == "goal_reached"


def test_trajectory_rollout_and_gif(tmp_path: Path) -> None:
    """A plan of equal wheel commands rolls out straight along the heading (v = a * w_max * r * dt
    per step); the recorder writes a GIF and a PNG."""
    img = np.zeros((100, 100, 3), np.uint8)
    rec = TrajectoryRecorder(lambda: img.copy(), lambda x, y: (int(50 + 10 * x), int(50 - 10 * y)),
                             (0.033, 0.16, 15.0, 0.05), every=1)
    path = rec.rollout((0.0, 0.0, math.pi / 2), np.full((4, 2), 0.5))
    step = 0.5 * 15.0 * 0.033 * 0.05
    np.testing.assert_allclose(path[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(path[:, 1], np.arange(5) * step)
    info = _info(0, 2.0)
    info.plan_mean = np.full((4, 2), 0.5)
    info.pose = (0.0, 0.0, 0.0)
    rec.on_tick(info)
    rec.on_tick(_info(1, 2.0))
    gif, png = rec.save(tmp_path / "run.gif")
    assert gif.stat().st_size > 0 and cv2.imread(str(png)) is not None


def test_achieved_rate_ignores_episode_restarts() -> None:
    """Two episodes at 20 Hz each (time restarting at 0) report 20 Hz, not a mixed figure."""
    stats = RunStats(20.0)
    for ep in range(2):
        for i in range(50):
            info = _info(i, 1.0)
            stats.add(info)
    assert stats.achieved_rate() == pytest.approx(20.0)


def test_status_view_renders_rate_latency_confidence_link_and_goal(capsys) -> None:
    """The live panel shows the rate, per-stage latency, confidence, link counters and goal
    distance; without a terminal, 'live' falls back to plain lines."""
    from rich.console import Console

    from edge.status import StatusView

    stats = RunStats(20.0)
    view = StatusView("live", stats, link_stats=lambda: SimpleNamespace(frames_rx=12, crc_errors=1))
    assert view.mode == "plain"  # pytest's stdout is not a terminal
    for i in range(5):
        info = _info(i, 2.0)
        info.goal_distance_m = 1.25
        view.on_tick(info)
    assert "goal=1.25m" in capsys.readouterr().out
    console = Console(record=True, width=160)
    console.print(view._render())
    text = console.export_text()
    for needle in ("rate", "20.0 Hz", "plan", "confidence", "0.90", "frames_rx=12", "crc_errors=1", "1.25 m"):
        assert needle in text, needle
