"""edge-eval pieces: Wilson interval, Spearman, diagnostics, and a tiny closed-loop run end to end."""

import json
import math

import numpy as np
import pytest
import torch

from training.config import config_from_dict
from training.evaluate import diagnostics, evaluate, main, spearman, wilson_interval
from training.checkpoint import load_world_model
from training.data import split_windows
from training.train import train
from tests.training.conftest import make_windows


def test_wilson_interval_known_values():
    """Wilson 95% for 95/100 is about (0.888, 0.978); 0/10 starts at 0; 10/10 ends at 1."""
    lo, hi = wilson_interval(95, 100)
    assert math.isclose(lo, 0.8883, abs_tol=1e-3) and math.isclose(hi, 0.9785, abs_tol=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_spearman():
    """Monotone relations give +-1; ties use average ranks (matches the textbook value 0.8)."""
    x = np.arange(10.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 3, 4, 5.0]), np.array([2, 1, 4, 3, 5.0])) == pytest.approx(0.8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 32, "pred_hidden": 16},
                            "objective": {"horizon": 3},
                            "planner": {"samples": 16, "horizon": 4, "iterations": 1, "elites": 4},
                            "eval": {"episodes": 2, "max_steps": 6, "gifs": 1},
                            "train": {"epochs": 2, "batch_size": 64, "progress": False, "out_dir": str(out)}})
    data = split_windows(make_windows(256, k=3), 0.25)
    train(cfg, data=data)
    return out, data


def test_diagnostics_probe_finds_position(tiny_run):
    """The linear probe recovers position (in the sensor vector) from the embedding; calibration bins are reported."""
    out, (_, val) = tiny_run
    d = diagnostics(load_world_model(out), val, None)
    assert d["probe_r2_x"] > 0.5 and d["probe_r2_y"] > 0.5
    assert len(d["pred_error_vs_horizon"]) == 3
    assert -1.0 <= d["confidence_spearman"] <= 1.0
    assert sum(b["count"] for b in d["calibration_bins"]) == len(val) * 3


def test_evaluate_end_to_end_writes_report_and_gif(tiny_run, tmp_path):
    """A 2-episode closed-loop run in the simulator writes eval.json with a success rate in [0, 1] and a GIF."""
    out, (_, val) = tiny_run
    rep = evaluate(out, ["eval.seed=5"], tmp_path, diagnose=True, progress=False, data=val)
    p = rep["planning"]
    assert p["episodes"] == 2 and 0 <= p["success_rate"] <= 1
    assert p["success_ci95"][0] <= p["success_rate"] <= p["success_ci95"][1]
    assert rep["timing"]["plan_ms_median"] > 0
    assert json.loads((tmp_path / "eval.json").read_text())["planning"]["episodes"] == 2
    assert len(list(tmp_path.glob("episode_00_*.gif"))) == 1
    assert (tmp_path / "calibration.png").is_file()
    w = rep["diagnostics"]["walls"]
    assert 0.0 <= w["phantom_crossing_rate"] <= 1.0 and -1.0 <= w["geodesic_spearman"] <= 1.0
    assert w["horizon"] == 4  # the planner's horizon (tiny run config)


def test_evaluate_goal_room_same_reported(tiny_run, tmp_path):
    """--goal-room same is recorded in the report; an unknown goal room is refused."""
    out, (_, val) = tiny_run
    rep = evaluate(out, ["eval.seed=5", "eval.gifs=0"], tmp_path, diagnose=False, progress=False, goal_room="same")
    assert rep["goal_room"] == "same" and rep["planning"]["episodes"] == 2
    with pytest.raises(ValueError, match="goal_room"):
        evaluate(out, ["eval.gifs=0"], tmp_path, diagnose=False, progress=False, goal_room="kitchen")


def test_cli_bad_run_dir(tmp_path, capsys):
    """A folder without a checkpoint exits 2 with a one-line error."""
    assert main([str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_eval_recovery_backs_a_robot_off_the_wall_it_pushes(tiny_run, monkeypatch):
    """eval.recovery=true runs the runtime's unsticking reflex in edge-eval's loop: a planner that
    always drives full forward ends up pressed against a wall; with the reflex the robot backs off
    (reflexes counted, fewer ticks in collision), without it nothing intervenes."""
    import dataclasses

    import training.evaluate as ev

    out, _ = tiny_run
    wm = load_world_model(out)
    monkeypatch.setattr(ev.MPCController, "act", lambda self, z0, zg, active=None, *sensed: torch.ones(self.batch, 2))
    results = {}
    for on in (False, True):
        cfg = dataclasses.replace(wm.config, eval=dataclasses.replace(wm.config.eval, recovery=on))
        results[on] = ev.run_episodes(wm, cfg, 4, 120, 5, 0, None, progress=False)
    assert results[False]["recovery"] is False and results[False]["recoveries_mean"] == 0.0
    assert results[True]["recovery"] is True and results[True]["recoveries_mean"] >= 1.0
    assert results[True]["collision_steps_mean"] < results[False]["collision_steps_mean"]
