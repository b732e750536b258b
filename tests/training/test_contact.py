"""Teaching the predictor that walls stop the robot: range reconstruction (objective.ranges) and
contact-window oversampling (data.contact_oversample, detected from commands and odometry)."""

import numpy as np
import pytest
import torch

from training.checkpoint import load_world_model, save_checkpoint
from training.config import ConfigError, config_from_dict
from training.data import WindowTensors, oversample_windows, stalled_ticks
from training.jepa import JEPA
from training.losses import RangeReconstructionLoss
from tests.training.conftest import make_windows


def test_range_reconstruction_hand_computed_and_trains_the_embedding():
    loss_fn = RangeReconstructionLoss(embed_dim=2, num_ranges=2)
    with torch.no_grad():
        loss_fn.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        loss_fn.head.bias.copy_(torch.tensor([0.5, 0.0]))
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    sensor = torch.zeros(2, 14)
    sensor[:, :2] = torch.tensor([[1.0, 1.0], [0.5, 0.0]])
    # predictions [[1.5, 2], [0.5, -2]] -> errors [[0.5, 1], [0, -2]] -> mean of squares (0.25 + 1 + 0 + 4) / 4
    loss, parts = loss_fn(z, sensor)
    assert loss.item() == pytest.approx(5.25 / 4) and parts["ranges"].item() == pytest.approx(5.25 / 4)
    loss.backward()
    assert z.grad.abs().sum() > 0  # the embedding is shaped by it, not only the head


def _odometry(steps):
    """Episodes from (command, displacement along x) per tick; pose[t+1] = pose[t] + disp; the
    episode ends with an all-zero action row, as WindowDataset stores it."""
    a = np.array([[c, c] for c, _ in steps] + [[0.0, 0.0]], np.float32)
    x = np.concatenate([[0.0], np.cumsum([d for _, d in steps])])
    pose = np.stack([x, np.zeros_like(x), np.zeros_like(x)], -1)
    return a, pose


def test_stalled_ticks_flags_a_wall_stop_but_not_a_start_or_a_turn():
    steps = [(0.8, 0.0)]  # start from rest: commanded, not moving yet -> not a stall
    steps += [(0.8, 0.02)] * 10  # driving freely
    steps += [(0.8, 0.0)] * 4  # against the wall
    steps += [(0.0, 0.0)] * 3  # stopped, no command
    steps += [(0.8, 0.005), (0.8, 0.02), (0.8, 0.02)]  # starting again: the first tick is the start
    a, pose = _odometry(steps)
    a[16:19] = [[-1.0, 1.0]] * 3  # turning on the spot (mean command 0) is never a stall
    flags = stalled_ticks(a, pose)
    assert np.flatnonzero(flags).tolist() == [11, 12, 13, 14]
    # unit-free: a robot 10x faster (or logged in other units) gives the same flags
    np.testing.assert_array_equal(stalled_ticks(a, pose * 10), flags)


def test_stalled_ticks_without_driving_flags_nothing():
    a, pose = _odometry([(0.1, 0.001)] * 20)
    assert not stalled_ticks(a, pose).any()


def test_oversample_windows_repeats_only_the_marked_windows_with_their_episodes():
    ws = WindowTensors({"sensor": torch.arange(5.0)[:, None, None]}, torch.tensor([0, 0, 1, 1, 2]))
    out = oversample_windows(ws, torch.tensor([False, True, False, False, True]), 3)
    assert len(out) == 9 and out.repeated == 4
    values = out.tensors["sensor"][:, 0, 0].tolist()
    assert sorted(values) == [0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert [int(out.episode[i]) for i in range(9) if values[i] == 4.0] == [2, 2, 2]
    assert len(oversample_windows(ws, torch.ones(5, dtype=torch.bool), 1)) == 5


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="contact_oversample"):
        config_from_dict({"data": {"contact_oversample": 0}})
    with pytest.raises(ConfigError, match="objective.ranges"):
        config_from_dict({"objective": {"ranges": -1.0}})


def test_jepa_with_range_reconstruction_logs_it_and_round_trips(tmp_path):
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 16, "pred_hidden": 16},
                            "objective": {"horizon": 3, "ranges": 2.0}, "train": {"out_dir": str(tmp_path)}})
    model = JEPA(cfg)
    batch = {k: v[:16] for k, v in make_windows(32, k=3).items()}
    loss, parts = model(batch)
    assert "ranges" in parts
    loss.backward()
    assert model.ranges_loss.head.weight.grad is not None
    save_checkpoint(tmp_path, model, cfg)
    wm = load_world_model(tmp_path)  # the head is part of the saved model and loads back
    z = wm.encoder(batch["sensor"][:, 0])
    torch.testing.assert_close(z, model.deploy_encoder(batch["sensor"][:, 0]))
