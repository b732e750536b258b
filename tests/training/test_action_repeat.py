"""Temporal abstraction (``data.action_repeat``): windows subsampled, actions averaged, warm start held."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.sim.dataset import write_index, write_shard
from training.config import ConfigError, load_config
from training.data import DataError, load_windows, repeat_actions
from training.planner import FunctionalModel, MPCController


def _ramp_shard(folder, episodes: int = 3, steps: int = 40) -> None:
    """A shard whose pose x and both action channels equal the global tick index (easy to check)."""
    e, t = episodes, steps
    tick = np.arange(t + 1, dtype=np.float32)[None, :] + 1000.0 * np.arange(e, dtype=np.float32)[:, None]
    pose = np.stack([tick, np.zeros_like(tick), np.zeros_like(tick)], -1)
    act = np.stack([tick[:, :-1] / 1000.0, -tick[:, :-1] / 1000.0], -1)
    arrays = {
        "ranges": np.full((e, t + 1, 8), 1.0, np.float32),
        "pose": pose,
        "wheel_speeds": np.zeros((e, t + 1, 2), np.float32),
        "true_pose": pose.copy(),
        "action": act,
        "collided": np.zeros((e, t), bool),
        "layout": np.zeros((e, 3), np.float32),
        "goal": np.zeros((e, 2), np.float32),
    }
    entry = write_shard(folder / "shard-00000.npz", arrays, {})
    write_index(folder, [entry], {})


def test_load_windows_subsamples_observations_and_averages_actions(tmp_path):
    """With r=3, k=4 a window spans 12 ticks: observations at ticks s, s+3, ..., s+12 and each
    action the mean of its 3 ticks (a stride of 1, a wrong chunking or a first-tick action fails)."""
    _ramp_shard(tmp_path)
    r, k = 3, 4
    cfg = load_config(None, [f"data.path={tmp_path}", f"data.action_repeat={r}", "data.val_fraction=0.34"])
    train, val = load_windows(cfg, k)
    for part in (train, val):
        pose, true_pose, action, sensor = (part.tensors[key] for key in ("pose", "true_pose", "action", "sensor"))
        assert pose.shape[1:] == (k + 1, 3) and sensor.shape[1:] == (k + 1, 14) and action.shape[1:] == (k, 2)
        start = pose[:, 0, 0]
        expect_obs = start[:, None] + r * torch.arange(k + 1, dtype=torch.float32)
        torch.testing.assert_close(pose[:, :, 0], expect_obs)
        torch.testing.assert_close(true_pose[:, :, 0], expect_obs)
        # action chunk j covers ticks s+3j, s+3j+1, s+3j+2 -> mean s+3j+1
        expect_act = (start[:, None] + r * torch.arange(k, dtype=torch.float32) + (r - 1) / 2) / 1000.0
        torch.testing.assert_close(action[:, :, 0], expect_act)
        torch.testing.assert_close(action[:, :, 1], -expect_act)
    # every window start of the 41-tick episodes with 12 ticks room: 41 - 12 = 29 per episode
    assert len(train) + len(val) == 3 * (40 - k * r + 1)


def test_action_repeat_one_is_identity_and_chunks_must_divide():
    """r=1 leaves windows untouched; an action window that is not a multiple of r is refused."""
    t = {"sensor": torch.randn(2, 7, 14), "action": torch.randn(2, 6, 2)}
    same = repeat_actions(t, 1)
    assert same["sensor"] is t["sensor"] and same["action"] is t["action"]
    two = repeat_actions(t, 2)
    torch.testing.assert_close(two["sensor"], t["sensor"][:, ::2])
    torch.testing.assert_close(two["action"], (t["action"][:, 0::2] + t["action"][:, 1::2]) / 2)
    with pytest.raises(DataError, match="action_repeat=4"):
        repeat_actions(t, 4)


def test_config_rejects_action_repeat_below_one():
    """data.action_repeat must be >= 1 and the error names the field."""
    with pytest.raises(ConfigError, match="data.action_repeat"):
        load_config(None, ["data.action_repeat=0"])


def test_controller_shifts_warm_start_only_every_r_ticks():
    """With action_repeat=3 the plan mean is shifted one step after ticks 3, 6, ... only: a model
    whose cost prefers the warm start exactly makes the stored mean track the shifts."""
    horizon = 4
    cfg = load_config(None, [f"planner.horizon={horizon}", "planner.samples=8", "planner.iterations=1",
                             "planner.std_min=0.0001", "planner.std_init=0.0001", "planner.elites=4"]).planner
    model = FunctionalModel(lambda z, h, a: (z, h, z.new_zeros(z.shape[0])))
    ctl = MPCController(model, cfg, batch=1, seed=0, action_repeat=3)
    ramp = torch.arange(horizon, dtype=torch.float32)[None, :, None].expand(1, horizon, 2) / 10
    ctl.mean = ramp.clone()
    z = torch.zeros(1, 3)
    firsts = []
    for _ in range(6):
        firsts.append(round(float(ctl.act(z, z)[0, 0]), 2))
    # constant cost: MPPI keeps ~the warm start; first action advances 0.0 -> 0.1 after 3 ticks
    assert firsts == [0.0, 0.0, 0.0, 0.1, 0.1, 0.1]
