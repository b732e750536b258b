"""Shared fakes for training tests: a tiny synthetic dataset with a known dynamics."""

import numpy as np
import pytest
import torch

from training.data import WindowTensors, split_windows


def make_windows(n: int = 512, k: int = 4, seed: int = 0, frames: bool = False) -> dict[str, torch.Tensor]:
    """Point-robot windows: position integrates the action (x += 0.1 a); sensor = [ranges-like, x, y, sin, cos, a]."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, k, 2)).astype(np.float32)
    traj = [pos]
    for t in range(k):
        traj.append(np.clip(traj[-1] + 0.1 * act[:, t], -1, 1))
    p = np.stack(traj, 1)  # [n, k+1, 2]
    ranges = np.concatenate([1 - np.abs(p), 1 - np.abs(p)[..., ::-1], (1 - np.abs(p)) * 0.5, (1 - np.abs(p)) * 0.25], -1)
    th = np.arctan2(p[..., 1], p[..., 0] + 1e-3)
    wheel = np.concatenate([np.zeros((n, 1, 2)), act], 1)
    sensor = np.concatenate([ranges, p, np.sin(th)[..., None], np.cos(th)[..., None], wheel], -1).astype(np.float32)
    out = {"sensor": torch.from_numpy(sensor), "action": torch.from_numpy(act),
           "true_pose": torch.from_numpy(np.concatenate([p, th[..., None]], -1).astype(np.float32))}
    if frames:
        out["frame"] = torch.from_numpy(rng.integers(0, 255, size=(n, k + 1, 64, 64, 3), dtype=np.uint8))
    return out


@pytest.fixture
def tiny_data() -> tuple[WindowTensors, WindowTensors]:
    return split_windows(make_windows(), 0.2)
