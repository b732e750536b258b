"""edge-run's command line: configuration, user errors, --self-test, --save-goal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge.config import load_config  # noqa: E402
from edge.run import main, resolve_bundle_path, UserError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from bundle_fakes import shared_tiny_bundle

    return shared_tiny_bundle(tmp_path_factory)  # one export per session, shared with the backend tests


def test_print_config_merges_file_flags_and_overrides(tmp_path: Path, capsys) -> None:
    """--print-config prints YAML where --set beats a dedicated flag beats the file beats the default."""
    f = tmp_path / "c.yaml"
    f.write_text("rate_hz: 30\nlimits: {max_speed: 0.9}\n")
    assert main(["--config", str(f), "--rate", "40", "--set", "rate_hz=50", "--set", "limits.range_guard_m=0.2",
                 "--device", "pi", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rate_hz"] == 50 and printed["device"] == "pi"
    assert printed["limits"]["max_speed"] == 0.9 and printed["limits"]["range_guard_m"] == 0.2
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(printed))
    assert load_config(tmp_path / "p.yaml").rate_hz == 50


@pytest.mark.parametrize("argv, needle", [
    (["--set", "limits.max_speed=3"], "limits.max_speed"),
    (["--config", "/nonexistent.yaml"], "not found"),
    (["--goal-pose", "1,2"], "x,y,theta"),
    (["--set", "nodot"], "section.field=value"),
    (["--bundle", "/nonexistent/bundle", "--sim"], "not found"),
    (["--device", "cpu"], "no serial port"),
    (["--device", "cpu", "--port", "/dev/null"], "no goal"),
])
def test_user_errors_exit_2_with_one_line(argv: list[str], needle: str, capsys) -> None:
    """Bad input exits 2 with a single 'edge-run: error:' line naming the problem, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-run: error:") and needle in err[0]


def test_bundle_path_resolves_relative_to_the_repository(tmp_path: Path, monkeypatch) -> None:
    """A relative bundle path is looked up in the working directory, then in the repository."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.json").write_text("{}")
    assert resolve_bundle_path("mine") == (tmp_path / "mine").resolve()
    with pytest.raises(UserError, match="looked for manifest.json"):
        resolve_bundle_path("missing-bundle")


def test_self_test_passes_on_a_good_bundle(tiny_bundle: Path, capsys) -> None:
    """--self-test verifies the bundle, builds the engine, runs one plan: PASS lines, exit 0;
    the serial check is skipped (not failed) without a port."""
    assert main(["--self-test", "--device", "cpu", "--bundle", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    for name in ("bundle", "engine", "planner"):
        assert f"PASS  {name}" in out
    assert "SKIP  serial" in out and "self-test PASSED (3/3 checks)" in out


def test_self_test_fails_on_a_missing_port(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """A configured serial port that does not exist makes the self-test FAIL with exit 1."""
    rc = main(["--self-test", "--device", "cpu", "--bundle", str(tiny_bundle), "--port", str(tmp_path / "ttyNONE")])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  serial" in out and "ttyNONE" in out and "self-test FAILED" in out


def test_self_test_fails_without_a_bundle(tmp_path: Path, capsys) -> None:
    """No bundle: the bundle check fails (and the checks that need it are not attempted)."""
    assert main(["--self-test", "--bundle", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  bundle" in out and "PASS" not in out


def test_save_goal_in_sim_writes_the_start_observation(tmp_path: Path, monkeypatch, capsys) -> None:
    """--sim --save-goal NAME writes goals/NAME.npz with the simulated robot's start pose and a frame."""
    from conftest_native import native_built

    if not native_built():
        pytest.skip("firmware core not built")
    from edge.goals import load_goal

    monkeypatch.chdir(tmp_path)
    assert main(["--sim", "--seed", "7", "--save-goal", "door"]) == 0
    goal = load_goal(tmp_path / "goals" / "door.npz")
    assert goal.frame is not None and goal.frame.shape == (64, 64, 3)
    assert abs(goal.pose[0]) <= 1.5 and abs(goal.pose[1]) <= 1.0
    assert all(0 <= r <= 2.0 for r in goal.ranges_m)
    assert main(["--sim", "--save-goal", "../evil"]) == 2


def test_edge_run_never_imports_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    """With torch made unimportable, --self-test and a short --sim run still work (edge/ never
    imports torch, not even indirectly)."""
    import subprocess

    from conftest_native import native_built

    repo = Path(__file__).resolve().parents[2]
    block = "import sys; sys.modules['torch'] = None; from edge.run import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", block, "--self-test", "--bundle", str(tiny_bundle)],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    if native_built():
        res = subprocess.run([sys.executable, "-c", block, "--sim", "--bundle", str(tiny_bundle), "--duration", "1",
                              "--status", "off", "--set", "confidence.error_scale=1", "--out", str(tmp_path)],
                             cwd=repo, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "summary" in res.stdout, res.stdout + res.stderr
        assert list(tmp_path.glob("*/flight.mcap"))


def test_bundle_plan_head_is_loaded_checked_and_configurable(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """A bundle with an exported plan head: the self-test runs it; plan_head=auto follows the
    manifest's `use` flags, explicit modes override them; asking for a head a bundle lacks is a
    user error."""
    import shutil

    import torch

    from edge.bundle import load_bundle
    from edge.run import make_plan_head
    from training.plan_head import PlanHead, PlanHeadConfig, add_head_to_bundle

    bundle = tmp_path / "with_head"
    shutil.copytree(tiny_bundle, bundle)
    b = load_bundle(bundle)
    torch.manual_seed(0)
    add_head_to_bundle(PlanHead(PlanHeadConfig(embed_dim=b.planner.E, horizon=b.planner.H, hidden=16, depth=1)),
                       bundle, warm_start=True, deadline_fallback=False)
    assert main(["--self-test", "--bundle", str(bundle)]) == 0
    assert "PASS  plan_head: actions [4, 2]; used as warm start" in capsys.readouterr().out
    b = load_bundle(bundle)
    auto = make_plan_head(load_config(None), b)
    assert auto["head_warm_start"] and not auto["head_fallback"]
    out = auto["plan_head"](np.zeros(b.planner.E), np.zeros(b.planner.E), np.zeros(4))
    assert out.shape == (b.planner.H, 2) and np.abs(out).max() <= 1.0
    both = make_plan_head(load_config(None, [{"plan_head": "both"}]), b)
    assert both["head_warm_start"] and both["head_fallback"]
    assert make_plan_head(load_config(None, [{"plan_head": "off"}]), b) == {}
    with pytest.raises(UserError, match="has no plan head"):
        make_plan_head(load_config(None, [{"plan_head": "warm_start"}]), load_bundle(tiny_bundle))


def test_goal_embedding_averages_evenly_spaced_headings() -> None:
    """goal.headings = K: the goal embedding is the mean of the embeddings of the observations at
    the goal position with headings theta + 2 pi k / K (K = 1: the goal observation itself)."""
    from types import SimpleNamespace

    from edge.goals import GoalObservation
    from edge.run import goal_embedding

    norm = {"max_range_m": 2.0, "half_width_m": 1.5, "half_height_m": 1.0, "max_wheel_speed_rad_s": 15.0}
    seen = []

    def observation_at(pose):
        seen.append(pose[2])
        return GoalObservation(np.ones(8), pose)

    loop = SimpleNamespace(encode_goal=lambda sensor, frame: sensor[10:12].copy())  # (sin, cos) of the heading
    sim = SimpleNamespace(observation_at=observation_at)
    goal = GoalObservation(np.ones(8), (0.5, 0.2, 0.3))
    z = goal_embedding(loop, sim, goal, 4, norm)
    np.testing.assert_allclose(seen, 0.3 + np.arange(4) * np.pi / 2)
    np.testing.assert_allclose(z, [0.0, 0.0], atol=1e-6)  # four headings 90 degrees apart cancel
    np.testing.assert_allclose(goal_embedding(loop, sim, goal, 1, norm), [np.sin(0.3), np.cos(0.3)], atol=1e-6)


def test_sim_miss_hint_names_the_replay_seed_and_the_default_models_known_limit():
    """After a --sim run with missed goals: the replay command (seed, episodes) and, only for the
    shipped default bundle on the other-room task, its measured limit and --goal-room same."""
    from edge.config import load_config as load_run_config, parse_override
    from edge.run import DEFAULT_MODEL_OTHER_ROOM, sim_miss_hint

    hit, miss = {"goal_reached": True}, {"goal_reached": False}
    cfg = load_run_config(None, [])
    assert sim_miss_hint([hit, hit], 7, cfg, "default") is None
    text = sim_miss_hint([hit, miss], 7, cfg, "default")
    assert "1 of 2 goal(s) not reached" in text and "--seed 7 --episodes 2" in text
    k, n = DEFAULT_MODEL_OTHER_ROOM["default"]
    rate = f"about {round(100 * k / n)}%"
    assert "--goal-room same" in text and rate in text and f"{k} of {n} edge-run episodes" in text
    no_reflex = load_run_config(None, [parse_override("recovery.enabled=false")])
    k_nr, n_nr = DEFAULT_MODEL_OTHER_ROOM["no_reflex"]
    assert (f"about {round(100 * k_nr / n_nr)}% of random layouts without the unsticking reflex ({k_nr} of {n_nr}"
            in sim_miss_hint([miss], 7, no_reflex, "default"))
    no_follow = load_run_config(None, [parse_override("recovery.follow_wall=false")])
    k_nf, n_nf = DEFAULT_MODEL_OTHER_ROOM["no_follower"]
    assert (f"without the wall follower ({k_nf} of {n_nf} edge-run episodes; {k} of {n} with"
            in sim_miss_hint([miss], 7, no_follow, "default"))
    other = sim_miss_hint([miss], 7, cfg, "my_model")
    assert "--seed 7 and look at" in other and rate not in other
    same_room = load_run_config(None, [parse_override("sim.goal_room=same")])
    assert rate not in sim_miss_hint([miss], 3, same_room, "default")
