"""benchmarks/path_cost_eval.py: pooling per-seed edge-eval reports and its CLI errors."""

import importlib.util
import json
from pathlib import Path

import pytest

from training.evaluate import wilson_interval

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "path_cost_eval.py"
_spec = importlib.util.spec_from_file_location("path_cost_eval", _PATH)
pce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pce)


def _report(k: int, n: int, steps: float | None, plan: float) -> dict:
    return {"planner": {"clearance": 20.0}, "timing": {"torch_s": 0.03},
            "planning": {"successes": k, "episodes": n, "steps_to_goal_mean": steps,
                         "batched_plan_time_s_per_tick": plan}}


def test_summarise_pools_seeds_and_weights_steps_by_successes():
    row = pce.summarise("both", {2000: _report(90, 100, 100.0, 0.2), 1000: _report(10, 50, 200.0, 0.4)})
    assert (row["successes"], row["episodes"]) == (100, 150)
    assert row["success_rate"] == pytest.approx(100 / 150)
    assert row["success_ci95"] == pytest.approx(list(wilson_interval(100, 150)))
    # 90 successes at 100 steps and 10 at 200: 110, not the unweighted 150
    assert row["steps_to_goal_mean"] == pytest.approx(110.0)
    assert row["batched_plan_time_s_per_tick_mean"] == pytest.approx(0.3)
    assert list(row["per_seed"]) == ["1000", "2000"]
    assert row["overrides"] == pce.SETTINGS["both"]
    table = pce.table([row], [1000, 2000, 3000])
    assert "| 10/50 | 90/100 |  |" in table and "100/150 = 66.7%" in table


def test_summarise_without_successes_has_no_steps():
    row = pce.summarise("alone", {1000: _report(0, 20, None, 0.1)})
    assert row["steps_to_goal_mean"] is None and row["success_rate"] == 0.0
    assert "| - |" in pce.table([row], [1000])


def test_plot_writes_a_png(tmp_path):
    row = pce.summarise("both", {1000: _report(96, 100, 120.0, 0.2)})
    pce.plot([row], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--settings", "alone,warp"], "unknown setting(s) ['warp']"),
    (["--seeds", "1000,x"], "--seeds must be integers"),
    (["--episodes", "0"], "--episodes >= 1"),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv, message):
    assert pce.main(["--run", str(tmp_path), "--out", str(tmp_path / "o.json"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_cli_names_the_training_command_when_the_run_is_missing(tmp_path, capsys):
    assert pce.main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "has no model.safetensors" in err and "training.train configs/sensor_default.yaml" in err
