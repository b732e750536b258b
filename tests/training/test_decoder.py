"""State decoder: shapes, frozen online/target encoder choice, learning from embeddings, imagine GIF."""

import numpy as np
import pytest
import torch
from torch import nn

from training.decoder import (
    DecoderConfig,
    DecoderError,
    DecoderTrainConfig,
    FrozenModel,
    StateDecoder,
    imagine,
    load_decoder,
    load_frozen,
    save_decoder,
    train_decoder,
)


def test_decoder_shapes_and_ranges():
    """Frames [B,3,64,64] in [0,1] and 8 ranges in [0, max_range]; no frame head for sensor models."""
    dec = StateDecoder(DecoderConfig(embed_dim=10, frames=True, channels=8, hidden=16, max_range=2.0))
    out = dec(torch.randn(4, 10) * 50)
    assert out["frame"].shape == (4, 3, 64, 64) and 0 <= out["frame"].min() and out["frame"].max() <= 1
    assert out["ranges"].shape == (4, 8) and 0 <= out["ranges"].min() and out["ranges"].max() <= 2.0
    assert "frame" not in StateDecoder(DecoderConfig(embed_dim=10))(torch.randn(2, 10))
    with pytest.raises(ValueError, match="expects z"):
        dec(torch.randn(4, 9))


class _ColourEncoder(nn.Module):
    """Fake camera encoder: z = fixed projection of the frame's mean colour and the pose (informative)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(7, 12)

    def forward(self, frame, pose4):
        return self.proj(torch.cat([frame.mean(dim=(2, 3)), pose4], -1))


def test_decoder_beats_mean_baselines_on_held_out_frames_and_ranges():
    """From embeddings that carry the colour and the ranges, held-out errors fall well below predicting the mean."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 128
    colours = rng.integers(0, 255, (n, 3))
    frames = np.broadcast_to(colours[:, None, None, :], (n, 64, 64, 3)).astype(np.uint8).copy()
    sensor = np.zeros((n, 14), np.float32)
    sensor[:, 8:12] = colours[:, [0, 1, 2, 0]] / 255.0  # pose4 carries information the ranges decode from
    sensor[:, :8] = np.repeat(sensor[:, 8:9], 8, 1) * np.linspace(0.5, 1, 8)

    class Cfg:
        class model:
            embed_dim = 12

    fm = FrozenModel(Cfg, _ColourEncoder().eval(), None, camera=True)
    dec, m = train_decoder(fm, {"sensor": sensor, "frame": frames}, DecoderTrainConfig(epochs=15, batch_size=16, lr=1e-2, channels=8),
                           max_range=2.0, progress=False)
    assert m["heldout_frame_mse"] < 0.8 * m["baseline_mean_frame_mse"]  # a decoder ignoring z converges to ~1.0x
    assert m["heldout_range_mae_m"] < 0.3 * m["baseline_mean_range_mae_m"]
    assert m["heldout_observations"] == 19


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny sensor JEPA run whose online and target encoders differ."""
    from training.checkpoint import save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    run = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({"preset": "tiny", "planner": {"samples": 8, "horizon": 4, "iterations": 1, "elites": 4},
                            "train": {"out_dir": str(run)}})
    torch.manual_seed(0)
    jepa = JEPA(cfg)
    with torch.no_grad():
        for p in jepa.encoder.parameters():
            p.add_(0.1)
    save_checkpoint(run, jepa, cfg)
    return run, jepa


def test_load_frozen_selects_online_or_target_encoder(tiny_run):
    """'online' returns the online encoder's weights, 'target' the EMA target's; neither is trainable."""
    run, jepa = tiny_run
    obs = torch.rand(3, 14)
    for which, ref in (("online", jepa.encoder), ("target", jepa.target_encoder)):
        fm = load_frozen(run, which)
        torch.testing.assert_close(fm.encoder(obs), ref(obs))
        assert not any(p.requires_grad for p in fm.encoder.parameters())
    assert not torch.allclose(load_frozen(run, "online").encoder(obs), load_frozen(run, "target").encoder(obs))
    with pytest.raises(DecoderError):
        load_frozen(run, "both")


def test_imagine_writes_side_by_side_gif(tiny_run, tmp_path):
    """imagine writes a GIF of real|imagined scans, one frame per executed plan step, errors per plan step."""
    from PIL import Image

    run, jepa = tiny_run
    dec = StateDecoder(DecoderConfig(embed_dim=16))
    save_decoder(tmp_path / "d", dec, {})
    assert isinstance(load_decoder(tmp_path / "d"), StateDecoder)
    r = imagine(run, tmp_path / "d", tmp_path / "im.gif", seed=3, chunks=2, scale=1)
    img = Image.open(tmp_path / "im.gif")
    assert img.n_frames == r["frames"] == 8
    assert img.size == (64 * 2 + 2, 64)
    assert len(r["error_by_plan_step"]) == 4 and r["error_kind"] == "range_mae_m"
    with pytest.raises(DecoderError, match="E=5"):
        save_decoder(tmp_path / "d5", StateDecoder(DecoderConfig(embed_dim=5)), {})
        imagine(run, tmp_path / "d5", tmp_path / "x.gif")
