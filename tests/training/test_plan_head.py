"""Planning head: shapes, learning the planner's mapping, closed-loop collection, ONNX parity, bundle entry."""

import json

import numpy as np
import pytest
import torch

from training.plan_head import (
    PlanHead,
    PlanHeadConfig,
    PlanHeadError,
    HeadTrainConfig,
    add_head_to_bundle,
    closed_loop,
    export_head_onnx,
    load_head,
    save_head,
    train_head,
)


def test_head_shapes_and_action_range():
    """[z, z_goal, pose4] -> [B, H, A] inside [-1, 1] even for huge inputs; wrong E raises."""
    head = PlanHead(PlanHeadConfig(embed_dim=6, horizon=5, hidden=16))
    out = head(torch.randn(3, 6) * 100, torch.randn(3, 6) * 100, torch.randn(3, 4))
    assert out.shape == (3, 5, 2)
    assert out.abs().max() <= 1.0
    with pytest.raises(ValueError, match="PlanHead expects"):
        head(torch.randn(3, 7), torch.randn(3, 6), torch.randn(3, 4))


def _synthetic_pairs(n_eps: int = 40, per_ep: int = 30, e: int = 6, h: int = 4, seed: int = 0):
    """Plans that are a smooth function of the inputs (turn toward the goal direction, slow near it)."""
    rng = np.random.default_rng(seed)
    n = n_eps * per_ep
    z, zg, pose = rng.standard_normal((n, e)), rng.standard_normal((n, e)), rng.uniform(-1, 1, (n, 4))
    d = zg[:, :2] - z[:, :2]
    left = np.tanh(0.5 * d[:, 0] - 0.5 * d[:, 1])
    right = np.tanh(0.5 * d[:, 0] + 0.5 * d[:, 1])
    plan = np.stack([left, right], -1)[:, None].repeat(h, 1) * np.linspace(1, 0.5, h)[None, :, None]
    return {"z": z.astype(np.float32), "z_goal": zg.astype(np.float32), "pose4": pose.astype(np.float32),
            "plan": plan.astype(np.float32), "episode": np.repeat(np.arange(n_eps), per_ep)}


def test_head_learns_the_plan_mapping_on_held_out_episodes(tmp_path):
    """Trained head beats predicting the mean plan by a wide margin on held-out episodes; save/load round-trips."""
    pairs = _synthetic_pairs()
    head, m = train_head(pairs, PlanHeadConfig(embed_dim=6, horizon=4, hidden=64), HeadTrainConfig(epochs=40, batch_size=128),
                         progress=False)
    assert m["val_mse"] < 0.2 * m["val_mse_mean_baseline"]
    save_head(tmp_path / "h", head, m)
    again = load_head(tmp_path / "h")
    x = [torch.from_numpy(pairs[k][:5]) for k in ("z", "z_goal", "pose4")]
    torch.testing.assert_close(again(*x), head(*x))
    with pytest.raises(PlanHeadError, match="expects"):
        train_head(pairs, PlanHeadConfig(embed_dim=6, horizon=3), progress=False)


def test_head_onnx_parity_and_tensorrt_ops(tmp_path):
    """ONNX Runtime matches torch within 1e-5 on fresh random batches; the graph passes the TensorRT check."""
    head = PlanHead(PlanHeadConfig(embed_dim=8, horizon=6, hidden=32))
    rec = export_head_onnx(head, tmp_path / "h.onnx", tolerance=1e-5)
    assert rec["max_abs"] <= 1e-5 and rec["trials"] == 3
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "h.onnx")).graph.node}
    assert ops <= {"Concat", "Gemm", "Relu", "Tanh", "Reshape", "MatMul", "Add", "Constant", "Shape", "Gather",
                   "Unsqueeze", "Slice", "Cast"}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """An untrained tiny sensor world model saved as an edge-train run (planner N=8, H=4, J=1)."""
    from training.checkpoint import load_world_model, save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    run = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({"preset": "tiny", "planner": {"samples": 8, "horizon": 4, "iterations": 1, "elites": 4},
                            "train": {"out_dir": str(run)}})
    torch.manual_seed(0)
    save_checkpoint(run, JEPA(cfg), cfg)
    return run, load_world_model(run)


def test_closed_loop_collects_planner_pairs_and_runs_the_head(tiny_world):
    """Collection records one pair per live episode-tick (plan in [-1,1]); warm-start and head-only modes run."""
    _, wm = tiny_world
    r = closed_loop(wm, wm.config.planner, episodes=2, max_steps=3, seed=0, record=True, progress=False)
    p = r["pairs"]
    assert p["z"].shape == (6, 16) and p["plan"].shape == (6, 4, 2) and p["pose4"].shape == (6, 4)
    assert np.abs(p["plan"]).max() <= 1.0
    assert sorted(set(p["episode"].tolist())) == [0, 1]
    head = PlanHead(PlanHeadConfig(embed_dim=16, horizon=4, hidden=8))
    for mode in ("head_warm", "head_only"):
        out = closed_loop(wm, wm.config.planner, 2, 2, 0, mode, head=head, progress=False)
        assert out["episodes"] == 2 and 0 <= out["success_rate"] <= 1
    with pytest.raises(PlanHeadError, match="needs a trained head"):
        closed_loop(wm, wm.config.planner, 1, 1, 0, "head_warm", progress=False)


def test_head_goes_into_the_bundle_verified(tiny_world, tmp_path):
    """plan_head.onnx is hashed into manifest 'files' with a 'plan_head' entry; load_bundle verifies; wrong H refused."""
    from edge.bundle import load_bundle, sha256_file
    from training.export import ExportConfig, PlannerParams, export_bundle

    _, wm = tiny_world
    bundle = export_bundle(wm.encoder, wm.predictor, PlannerParams(N=8, H=4, J=1), tmp_path / "b",
                           ExportConfig(precisions=("fp32",)), progress=False)
    head = PlanHead(PlanHeadConfig(embed_dim=16, horizon=4, hidden=8))
    entry = add_head_to_bundle(head, bundle)
    b = load_bundle(bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["plan_head"]["file"] == "plan_head.onnx" and m["plan_head"]["use"] == {"warm_start": True, "deadline_fallback": True}
    assert m["files"]["plan_head.onnx"] == sha256_file(bundle / "plan_head.onnx")
    assert entry["check"]["max_abs"] <= entry["check"]["tolerance"]
    assert b.manifest["plan_head"]["H"] == b.planner.H
    with pytest.raises(PlanHeadError, match="H=5"):
        add_head_to_bundle(PlanHead(PlanHeadConfig(embed_dim=16, horizon=5, hidden=8)), bundle)


def test_closed_loop_uses_the_models_action_repeat(tmp_path, monkeypatch):
    """The controller gets the model's data.action_repeat (plan step held r ticks: warm start shifted every r ticks)
    unless overridden; the report records it; finished episodes are not planned for."""
    import training.planner as planner_mod
    from training.checkpoint import load_world_model, save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    cfg = config_from_dict({"preset": "tiny", "planner": {"samples": 8, "horizon": 4, "iterations": 1, "elites": 4},
                            "data": {"action_repeat": 3}, "train": {"out_dir": str(tmp_path)}})
    torch.manual_seed(0)
    save_checkpoint(tmp_path, JEPA(cfg), cfg)
    wm = load_world_model(tmp_path)
    seen = []

    class Spy(planner_mod.MPCController):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self)

    monkeypatch.setattr(planner_mod, "MPCController", Spy)
    r = closed_loop(wm, wm.config.planner, episodes=2, max_steps=4, seed=0, progress=False)
    assert seen[-1].action_repeat == 3 and r["action_repeat"] == 3
    assert seen[-1].tick == 4  # one plan per tick, held plan steps shift only every 3rd
    r = closed_loop(wm, wm.config.planner, episodes=2, max_steps=2, seed=0, progress=False, action_repeat=1)
    assert seen[-1].action_repeat == 1 and r["action_repeat"] == 1
