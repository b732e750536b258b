"""I-JEPA: masking, EMA target, loss, pretraining, preprocessing checks, world model on the ViT."""

import dataclasses

import numpy as np
import pytest
import torch

from training.ijepa import (
    IJEPA,
    MaskConfig,
    Preprocessing,
    PreprocessingMismatch,
    ViTCameraEncoder,
    ViTConfig,
    block_size,
    check_preprocessing,
    sample_masks,
)
from training.models import CameraEncoder

TINY = ViTConfig(patch_size=16, width=16, depth=1, heads=2, mlp_ratio=2.0, pred_width=8, pred_depth=1, pred_heads=2)


def _rect(idx: np.ndarray, grid: int) -> tuple[int, int]:
    rows, cols = idx // grid, idx % grid
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(set(idx.tolist())) == h * w == len(idx), "a target block must be a full rectangle"
    return int(h), int(w)


def test_block_size_follows_scale_and_aspect():
    """Block (h, w) has area scale*grid^2 and h/w = aspect (exact where they are integers), within the grid."""
    assert block_size(16, 0.25, 1.0) == (8, 8)
    assert block_size(16, 0.125, 2.0) == (8, 4)
    assert block_size(16, 0.125, 0.5) == (4, 8)
    assert block_size(4, 1.0, 4.0) == (4, 2)  # clipped to the grid


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_counts_scales_and_disjointness(seed):
    """M target rectangles of one size per batch, area/aspect near the ranges, context disjoint from all targets."""
    grid = 16
    cfg = MaskConfig(num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0))
    m = sample_masks(5, grid, cfg, np.random.default_rng(seed))
    assert m.targets.shape[:2] == (5, 4)
    th, tw = m.target_hw
    assert m.targets.shape[2] == th * tw
    assert 0.15 * 0.8 <= th * tw / grid**2 <= 0.2 * 1.2
    assert 0.75 / 1.35 <= th / tw <= 1.5 * 1.35
    assert m.context.shape[0] == 5 and m.context.shape[1] >= cfg.min_context
    for b in range(5):
        ctx = m.context[b].numpy()
        assert len(np.unique(ctx)) == len(ctx) and np.all(np.diff(ctx) > 0)
        for j in range(4):
            tgt = m.targets[b, j].numpy()
            assert _rect(tgt, grid) == (th, tw)
            assert not set(ctx.tolist()) & set(tgt.tolist()), "context must exclude every target patch"
        union = set(m.targets[b].flatten().tolist())
        # the context block (85-100 % of the grid) minus the targets keeps most of the rest
        assert len(ctx) >= 0.5 * (grid**2 - len(union)) * 0.85 or len(ctx) == m.context.shape[1]


def test_masks_refuse_impossible_context():
    """Targets covering the whole grid leave no context: a clear error, not an empty mask."""
    cfg = MaskConfig(num_targets=1, target_scale=(1.0, 1.0), target_aspect=(1.0, 1.0), min_context=1)
    with pytest.raises(ValueError, match="no context"):
        sample_masks(2, 4, cfg, np.random.default_rng(0), max_tries=3)


def test_target_encoder_gets_no_gradient_and_follows_by_ema():
    """backward() leaves the target encoder without grads (online and predictor get them); EMA interpolates."""
    torch.manual_seed(0)
    model = IJEPA(dataclasses.replace(TINY, patch_size=8), Preprocessing())
    masks = sample_masks(3, 8, MaskConfig(), np.random.default_rng(0))
    model(torch.rand(3, 3, 64, 64), masks).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    model.update_target(0.75)
    for b, pt, po in zip(before, model.target_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(pt, 0.75 * b + 0.25 * po)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    """Structured frames: a floor/wall split at a random height and a coloured block (predictable from context)."""
    rng = np.random.default_rng(seed)
    f = np.zeros((n, 64, 64, 3), np.uint8)
    for i in range(n):
        h = rng.integers(16, 48)
        f[i, :h] = rng.integers(100, 255, 3)
        f[i, h:] = (60, 60, 60)
        x = rng.integers(0, 48)
        f[i, h - 10:h, x:x + 16] = rng.integers(0, 255, 3)
    return f


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from training.ijepa import IJEPAConfig
    from training.pretrain import pretrain

    out = tmp_path_factory.mktemp("ijepa")
    cfg = IJEPAConfig(vit=TINY, mask=MaskConfig(num_targets=2, target_scale=(0.25, 0.25), target_aspect=(1.0, 1.0),
                                                min_context=1),
                      epochs=4, batch_size=16, lr=3e-3, warmup_epochs=0.5, out_dir=str(out), progress=False, threads=1)
    frames = _frames(160)
    return out, pretrain(cfg, frames=frames), frames


def test_pretraining_loss_decreases_and_records_preprocessing(pretrained):
    """Held-out I-JEPA loss falls over a short run; the checkpoint carries the frames' channel statistics."""
    from training.pretrain import load_pretrained

    out, r, frames = pretrained
    assert r["history"][-1]["val_loss"] < 0.8 * r["val_loss_initial"]
    pt = load_pretrained(out)
    expected = Preprocessing.from_frames(frames[:r["train_frames"]])
    assert pt.preprocessing == expected
    assert pt.vit == TINY
    assert set(pt.online) == set(pt.target) and len(pt.online) > 0
    assert (out / "curves.png").is_file()


def test_preprocessing_mismatch_is_refused_naming_both_values(pretrained):
    """A world model asked to use other mean/std than the checkpoint's raises, naming both."""
    from training.config import config_from_dict
    from training.pretrain import WorldOptions, build_vit_encoder

    out, r, _ = pretrained
    cfg = config_from_dict({"model": {"kind": "camera"}, "data": {"with_frames": True}})
    rec = r["preprocessing"]
    bad = WorldOptions(checkpoint=str(out), pre_mean=(0.5, 0.5, 0.5), pre_std=tuple(rec["std"]))
    with pytest.raises(PreprocessingMismatch) as e:
        build_vit_encoder(cfg, bad)
    assert "mean" in str(e.value) and "0.5" in str(e.value) and f"{rec['mean'][0]}" in str(e.value)
    ok = WorldOptions(checkpoint=str(out), pre_mean=tuple(rec["mean"]), pre_std=tuple(rec["std"]))
    enc, info = build_vit_encoder(cfg, ok)
    assert info["preprocessing"] == rec
    with pytest.raises(PreprocessingMismatch, match="channel_order"):
        check_preprocessing(Preprocessing(), Preprocessing(channel_order="BGR"), "ckpt", "camera")


def test_vit_camera_encoder_contract():
    """ViTCameraEncoder is a CameraEncoder: frame [B,3,64,64] in [0,1] + pose4 -> z [B,E]; bad shapes raise."""
    enc = ViTCameraEncoder(TINY, Preprocessing(), embed_dim=12, hidden=16)
    assert isinstance(enc, CameraEncoder)
    z = enc(torch.rand(5, 3, 64, 64), torch.rand(5, 4))
    assert z.shape == (5, 12)
    with pytest.raises(ValueError):
        enc(torch.rand(5, 3, 32, 32), torch.rand(5, 4))
    with pytest.raises(PreprocessingMismatch):
        ViTCameraEncoder(TINY, Preprocessing(image_size=32))


def test_world_model_on_pretrained_vit_frozen_and_finetuned(pretrained, tmp_path):
    """Frozen: the deployed ViT keeps the checkpoint's target weights; fine-tuned: it moves. The run reloads."""
    from edge.sim.collect import main as collect
    from training.config import config_from_dict
    from training.pretrain import WorldOptions, load_pretrained, load_vit_world_model, train_world

    out, _, _ = pretrained
    data = tmp_path / "cam"
    assert collect(["--episodes", "4", "--steps", "12", "--out", str(data), "--camera", "--shard-episodes", "4"]) == 0
    pt = load_pretrained(out)
    for freeze in (True, False):
        run = tmp_path / f"run_{freeze}"
        cfg = config_from_dict({"preset": "tiny", "model": {"kind": "camera"}, "objective": {"horizon": 2},
                                "data": {"path": str(data), "with_frames": True, "val_fraction": 0.25},
                                "train": {"epochs": 1, "batch_size": 4, "out_dir": str(run), "progress": False,
                                          "threads": 1, "lr": 0.01}})
        meta = train_world(cfg, WorldOptions(checkpoint=str(out), freeze_encoder=freeze, encoder_lr_scale=1.0, stride=4))
        assert meta["split"]["val_episodes"] == 1
        wm = load_vit_world_model(run)
        moved = max(float((wm.encoder.vit.state_dict()[k] - v).abs().max()) for k, v in pt.target.items())
        assert (moved < 1e-6) if freeze else (moved > 1e-4)  # EMA of equal weights: float round-off only
        assert wm.encoder(torch.rand(2, 3, 64, 64), torch.rand(2, 4)).shape == (2, cfg.model.embed_dim)
    from edge.bundle import load_bundle
    from training.pretrain import export_world

    b = load_bundle(export_world(tmp_path / "run_True", tmp_path / "bundle", N=4, H=3, J=1))
    assert b.manifest["encoders"]["camera"]["preprocessing"] == pt.preprocessing.as_dict()
    assert b.manifest["encoders"]["camera"]["backbone"]["kind"] == "vit"


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    """Bad input to the three CLIs exits 2 with a one-line error naming the problem (no traceback)."""
    from training.decoder import main as decoder_main
    from training.plan_head import main as head_main
    from training.pretrain import main as pretrain_main

    assert pretrain_main(["ijepa", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("vit:\n  widht: 8\n")
    assert pretrain_main(["ijepa", str(tmp_path / "c.yaml")]) == 2
    assert "vit.widht" in capsys.readouterr().err
    assert decoder_main(["train", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert head_main(["export", "--head", str(tmp_path / "nohead"), "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found: train a head first" in err



def test_finetuning_trains_the_pretrained_vit_at_the_lower_encoder_learning_rate(pretrained, tmp_path):
    """Fine-tuning at ijepa.encoder_lr_scale = 0.1 moves the online ViT from its pretrained weights far less than at
    1.0 (Adam steps scale with the learning rate), but it does move (fine-tuned, not frozen)."""
    from safetensors.torch import load_file

    from edge.sim.collect import main as collect
    from training.checkpoint import MODEL_FILE
    from training.config import config_from_dict
    from training.pretrain import WorldOptions, load_pretrained, train_world

    out, _, _ = pretrained
    data = tmp_path / "cam"
    assert collect(["--episodes", "4", "--steps", "12", "--out", str(data), "--camera", "--shard-episodes", "4"]) == 0
    start = load_pretrained(out).target
    moved = {}
    for scale in (0.1, 1.0):
        run = tmp_path / f"run_{scale}"
        cfg = config_from_dict({"preset": "tiny", "model": {"kind": "camera"}, "objective": {"horizon": 2},
                                "data": {"path": str(data), "with_frames": True, "val_fraction": 0.25},
                                "train": {"epochs": 1, "batch_size": 4, "out_dir": str(run), "progress": False,
                                          "threads": 1, "lr": 0.01}})
        train_world(cfg, WorldOptions(checkpoint=str(out), freeze_encoder=False, encoder_lr_scale=scale, stride=4))
        w = load_file(str(run / MODEL_FILE))
        moved[scale] = float(torch.stack([(w[f"encoder.vit.{k}"] - v).abs().mean()
                                          for k, v in start.items() if v.is_floating_point()]).mean())
    assert 1e-6 < moved[0.1] < 0.3 * moved[1.0]
