"""edge-run end to end against the simulated ESP32 (real firmware core) over a pty.

The random-weight bundle tests plumbing and safety (not success); the goal-reaching test uses
the shipped models/default."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, requires_native
from edge.recorder import read_flight_log
from edge.run import main

pytestmark = requires_native

BASE = ["--device", "cpu", "--sim", "--status", "off", "--time-scale", "2", "--set", "confidence.threshold=0"]


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def by_tick(msgs: list[dict]) -> dict[int, dict]:
    return {m["tick"]: m for m in msgs}


def test_sim_run_writes_complete_flight_log_summary_and_gif(random_bundle: Path, tmp_path: Path) -> None:
    """A short --sim run writes a closed MCAP with one /obs, /action, /plan, /timings message per
    consecutive tick, ground truth, start/stop events, a summary.json and run.gif/png; the
    simulator's dataset reader turns the log into training windows."""
    rc = main(BASE + ["--bundle", str(random_bundle), "--duration", "2.5", "--seed", "3", "--out", str(tmp_path)])
    assert rc == 1  # a random model does not reach the goal in 2.5 s
    d = run_dir(tmp_path)
    log = read_flight_log(d / "flight.mcap")
    assert log.complete
    ticks = [m["tick"] for m in log.messages["/obs"]]
    assert len(ticks) >= 20 and ticks == list(range(len(ticks)))
    for topic in ("/action", "/plan", "/timings", "/confidence", "/true_pose", "/embedding"):
        assert [m["tick"] for m in log.messages[topic]] == ticks, topic
    kinds = [m["kind"] for m in log.messages["/events"]]
    assert kinds[0] == "start" and "motors_stopped" in kinds
    assert log.metadata["edge_jepa"]["bundle_sha256"]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["ticks"] == len(ticks) and summary["episodes"] == 1 and summary["goal_reached"] is False
    assert (d / "run.gif").stat().st_size > 0 and (d / "run.png").stat().st_size > 0

    from edge.sim.dataset import WindowDataset

    ds = WindowDataset([d / "flight.mcap"], k=4)
    window = ds[0]
    assert window["sensor"].shape == (5, 14) and window["action"].shape == (4, 2)


def _events(log) -> list[tuple[int, str]]:
    return [(m["tick"], m["kind"]) for m in log.messages["/events"]]


def test_link_loss_stops_the_robot_and_the_loop_resumes(random_bundle: Path, tmp_path: Path) -> None:
    """With the link cut for 1.5 s (no bytes either way), the loop reports link_lost, sends only
    zero commands (source safety) while lost, the robot does not move during the cut, and after
    reconnection the planner drives again."""
    rc = main(BASE + ["--bundle", str(random_bundle), "--duration", "5", "--seed", "4", "--out", str(tmp_path),
                      "--set", "sim.faults=[{kind: link_loss, at_s: 1.5, duration_s: 1.5}]"])
    assert rc == 1
    log = read_flight_log(run_dir(tmp_path) / "flight.mcap")
    ev = _events(log)
    lost = next(t for t, k in ev if k == "link_lost")
    restored = next(t for t, k in ev if k == "link_restored")
    assert restored > lost + 10
    actions = by_tick(log.messages["/action"])
    during = [actions[t] for t in range(lost, restored)]
    assert all(a["left"] == 0 and a["right"] == 0 and a["source"] == "safety" for a in during)
    after = [actions[t]["source"] for t in range(restored, max(actions) + 1)]
    # the planner (or the unsticking reflex standing in for it) drives again
    assert after.count("planner") + after.count("recovery") >= len(after) - 1 and after.count("planner") > 0
    truth = by_tick(log.messages["/true_pose"])
    settle = lost + 8  # 0.4 s after detection: the firmware watchdog (200 ms) has stopped the motors
    moved = math.dist(truth[settle]["pose"][:2], truth[restored - 1]["pose"][:2])
    assert moved < 0.01


def test_nan_sensors_stop_the_robot(random_bundle: Path, tmp_path: Path) -> None:
    """Every tick whose observation has NaN ranges (sensor fault) sends a zero command; the
    planner drives again once the readings are valid."""
    rc = main(BASE + ["--bundle", str(random_bundle), "--duration", "4", "--seed", "5", "--out", str(tmp_path),
                      "--set", "sim.faults=[{kind: nan_ranges, at_s: 1.5, duration_s: 1.0}]"])
    assert rc == 1
    log = read_flight_log(run_dir(tmp_path) / "flight.mcap")
    actions = by_tick(log.messages["/action"])
    bad = [m["tick"] for m in log.messages["/obs"] if any(r is None for r in m["ranges_m"])]
    assert len(bad) >= 10
    for t in bad:
        assert (actions[t]["left"], actions[t]["right"], actions[t]["source"]) == (0.0, 0.0, "safety")
    good_after = [m["tick"] for m in log.messages["/obs"] if m["tick"] > max(bad) + 2]
    assert any(actions[t]["source"] == "planner" for t in good_after)


def test_sigterm_mid_run_stops_motors_and_leaves_a_readable_log(random_bundle: Path, tmp_path: Path) -> None:
    """SIGTERM to a running `edge-run --sim` ends it within a couple of seconds with exit status
    1 (interrupted), zero wheel speed commanded (events estop + motors_stopped) and a complete,
    readable MCAP file and summary."""
    cmd = [sys.executable, "-m", "edge.run", *BASE, "--bundle", str(random_bundle), "--duration", "60",
           "--seed", "6", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        mcap = None
        while time.monotonic() < deadline and mcap is None:
            found = list(tmp_path.glob("*/flight.mcap"))
            if found and found[0].stat().st_size > 4096:  # the loop runs and has flushed chunks
                mcap = found[0]
            time.sleep(0.2)
        assert mcap is not None, proc.stderr.read() if proc.poll() is not None else "no flight log appeared"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    log = read_flight_log(mcap)
    assert log.complete
    kinds = [m["kind"] for m in log.messages["/events"]]
    assert "estop" in kinds and "motors_stopped" in kinds
    stop_msg = next(m["message"] for m in log.messages["/events"] if m["kind"] == "motors_stopped")
    assert stop_msg == "zero wheel speed commanded"
    assert "SIGTERM" in next(m["message"] for m in log.messages["/events"] if m["kind"] == "estop")
    summary = json.loads((mcap.parent / "summary.json").read_text())
    assert summary["result"] == "interrupted"


def test_tampered_bundle_is_refused(random_bundle: Path, tmp_path: Path, capsys) -> None:
    """A bundle whose planner file was modified after export is refused before anything runs:
    exit status 3 and a one-line message naming the file; --self-test reports FAIL."""
    bad = tmp_path / "tampered"
    shutil.copytree(random_bundle, bad)
    f = bad / "planner_fp32.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    rc = main(BASE + ["--bundle", str(bad), "--duration", "1", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 3
    assert "planner_fp32.onnx" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    rc = main(["--self-test", "--device", "cpu", "--bundle", str(bad)])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  bundle" in out and "planner_fp32.onnx" in out


DEFAULT_BUNDLE = REPO / "models" / "default" / "manifest.json"


@pytest.mark.skipif(not DEFAULT_BUNDLE.is_file(),
                    reason="models/default is absent: train and export the default bundle (see its MODEL_CARD.md)")
def test_default_bundle_reaches_goals_with_the_shipped_model(tmp_path: Path) -> None:
    """`edge-run --device cpu --sim --goal-room same` with the shipped models/default (its own
    confidence settings) reaches the goal: over 2 fixed-seed episodes (start 0.93 and 1.07 m from the goal) at least one ends with
    goal_reached and the mean final distance is at most half the mean start distance. The
    shipped model reaches start-room goals in 99/100 `edge-eval` episodes but goals behind the
    dividing wall in only 25/100 (MODEL_CARD.md), so the cross-room task is measured by
    benchmarks/bench_loop.py, not asserted here. A sign error in the action mapping, a wrong
    normalisation, a broken goal encoding or a guard that blocks every command fails this test."""
    rc = main(["--device", "cpu", "--sim", "--status", "off", "--episodes", "2", "--seed", "102",
               "--goal-room", "same", "--out", str(tmp_path)])  # real time: the robot sees the planner's latency
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    start_d, final_d, reached = [], [], []
    for e in summary["episode_results"]:
        wall = e["layout"]["wall_x"]
        assert (e["start"][0] - wall) * (e["goal"][0] - wall) > 0  # same side of the dividing wall
        start_d.append(((e["start"][0] - e["goal"][0]) ** 2 + (e["start"][1] - e["goal"][1]) ** 2) ** 0.5)
        final_d.append(e["final_goal_distance_m"])
        reached.append(e["goal_reached"])
    assert any(reached), summary["episode_results"]
    assert sum(final_d) <= 0.5 * sum(start_d), summary["episode_results"]
    assert rc in (0, 1)


CAMERA_BUNDLE = REPO / "models" / "camera" / "manifest.json"


@pytest.mark.skipif(not CAMERA_BUNDLE.is_file(),
                    reason="models/camera is absent: distil and export it (see its MODEL_CARD.md)")
def test_camera_bundle_plans_on_simulated_frames_and_reaches_goals(tmp_path: Path) -> None:
    """`edge-run --device cpu --sim --bundle models/camera --camera sim --goal-room same`: the
    shipped camera bundle loads, encodes the simulator's 64x64 frames every tick and plans; over
    2 fixed-seed episodes it reaches at least one goal and closes at least half the distance (it
    reaches 295/300 other-room goals in edge-run, docs/TRAINING.md item 14). Its embedding is
    mostly the odometry pose (item 14), so this checks the camera path end to end, not the
    frame preprocessing in detail (tests/edge/test_camera_preprocessing.py checks its record)."""
    rc = main(["--device", "cpu", "--sim", "--status", "off", "--episodes", "2", "--seed", "102",
               "--goal-room", "same", "--bundle", str(CAMERA_BUNDLE.parent), "--camera", "sim",
               "--set", "sim.gif=false", "--out", str(tmp_path)])
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    start_d, final_d, reached = [], [], []
    for e in summary["episode_results"]:
        start_d.append(((e["start"][0] - e["goal"][0]) ** 2 + (e["start"][1] - e["goal"][1]) ** 2) ** 0.5)
        final_d.append(e["final_goal_distance_m"])
        reached.append(e["goal_reached"])
    assert any(reached), summary["episode_results"]
    assert sum(final_d) <= 0.5 * sum(start_d), summary["episode_results"]
    assert summary["stages"]["encode"]["p50_ms"] > 0
    assert rc in (0, 1)


@pytest.mark.skipif(not DEFAULT_BUNDLE.is_file(),
                    reason="models/default is absent: train and export the default bundle (see its MODEL_CARD.md)")
def test_default_bundle_crosses_the_door_into_the_other_room(tmp_path: Path) -> None:
    """`edge-run --device cpu --sim` with the shipped models/default drives from the left room
    through the door to a goal in the other room, when the goal lies behind the door (fixed
    layout: wall at x=0, door centred at y=0, 0.45 m wide; goal 0.7 m past it). Two fixed seeds
    whose starts are in the left room, 1.6-1.7 m from the goal; at least one must reach the
    goal and together they must close at least half the distance (measured: both reach it in
    77 and 81 ticks). This is the issue's "reaches a goal in the other room" in the case the
    memoryless model can solve; a goal whose door is off the straight line is the 25% case
    (MODEL_CARD.md, benchmarks/bench_loop.py), not asserted here."""
    start_d, final_d, reached = [], [], []
    for seed in (6, 11):
        out = tmp_path / f"seed{seed}"
        main(["--device", "cpu", "--sim", "--status", "off", "--seed", str(seed), "--goal-pose", "0.7,0,0",
              "--set", "sim.fixed_layout=true", "--set", "sim.gif=false", "--out", str(out)])
        (e,) = json.loads((run_dir(out) / "summary.json").read_text())["episode_results"]
        wall = e["layout"]["wall_x"]
        assert e["start"][0] < wall < e["goal"][0], e  # start behind the dividing wall from the goal
        start_d.append(((e["start"][0] - e["goal"][0]) ** 2 + (e["start"][1] - e["goal"][1]) ** 2) ** 0.5)
        final_d.append(e["final_goal_distance_m"])
        reached.append(e["goal_reached"])
    assert any(reached), (reached, final_d)
    assert sum(final_d) <= 0.5 * sum(start_d), (start_d, final_d)


def test_goal_reached_stops_reports_and_exits_0(random_bundle: Path, tmp_path: Path) -> None:
    """When the robot is within goal.reach_m of the goal (here a 5 m radius: at once) the run
    stops, logs goal_reached after zeroing the motors, and edge-run exits 0."""
    rc = main(BASE + ["--bundle", str(random_bundle), "--seed", "8", "--out", str(tmp_path),
                      "--set", "goal.reach_m=5"])
    assert rc == 0
    d = run_dir(tmp_path)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["goal_reached"] is True and summary["episode_results"][0]["ticks"] == 1
    kinds = [m["kind"] for m in read_flight_log(d / "flight.mcap").messages["/events"]]
    assert kinds[-2:] == ["motors_stopped", "goal_reached"]
