"""training.walls: exact geodesic distance in the two-rooms world, and the wall diagnostics on
hand-built models whose answers are known."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from training.checkpoint import WorldModel
from training.config import config_from_dict
from training.walls import geodesic_distance, wall_diagnostics


def test_geodesic_same_room_and_through_the_opening_is_straight():
    p = np.array([[-1.0, 0.2], [-0.5, -0.3], [0.8, 0.1]])
    g = np.array([[-0.2, -0.6], [0.5, -0.3], [1.2, 0.9]])  # row 1 crosses the wall at y=-0.3, inside the door
    d = geodesic_distance(p, g, wall_x=0.0, door_y=-0.3, door_width=0.4)
    np.testing.assert_allclose(d, np.linalg.norm(p - g, axis=1))


def test_geodesic_bends_at_the_nearer_end_of_the_opening():
    """(-1, 0) -> (1, 0), door centred at y=0.5, 0.4 wide: the straight line hits the wall, the
    shortest path bends at (0, 0.3); with 0.1 m clearance at (0, 0.4)."""
    p, g = np.array([[-1.0, 0.0]]), np.array([[1.0, 0.0]])
    assert geodesic_distance(p, g, 0.0, 0.5, 0.4)[0] == pytest.approx(2 * math.hypot(1.0, 0.3))
    assert geodesic_distance(p, g, 0.0, 0.5, 0.4, clearance=0.1)[0] == pytest.approx(2 * math.hypot(1.0, 0.4))
    # asymmetric: the bend point minimises the sum (checked against a fine search over the opening)
    p, g = np.array([[-0.3, -0.8]]), np.array([[1.1, 0.2]])
    qy = np.linspace(0.3, 0.7, 40001)
    brute = (np.hypot(0.3, qy + 0.8) + np.hypot(1.1, 0.2 - qy)).min()
    assert geodesic_distance(p, g, 0.0, 0.5, 0.4)[0] == pytest.approx(brute, abs=1e-6)


def test_geodesic_is_never_shorter_than_the_straight_line():
    rng = np.random.default_rng(0)
    p = rng.uniform([-1.5, -1], [1.5, 1], (500, 2))
    g = rng.uniform([-1.5, -1], [1.5, 1], (500, 2))
    wx, dy, dw = rng.uniform(-0.3, 0.3, 500), rng.uniform(-0.5, 0.5, 500), rng.uniform(0.35, 0.6, 500)
    d = geodesic_distance(p, g, wx, dy, dw, clearance=0.08)
    assert np.all(d >= np.linalg.norm(p - g, axis=1) - 1e-12)


class _PoseEncoder(nn.Module):
    """z = true-scale (x, y) in metres from the sensor vector (slots 8, 9 are x/1.5, y/1.0)."""

    def forward(self, s):
        return torch.stack([s[:, 8] * 1.5, s[:, 9] * 1.0], -1)


class _Predictor(nn.Module):
    """Moves z by a fixed offset per step, ignoring walls (offset 0: frozen)."""

    def __init__(self, dx: float):
        super().__init__()
        self.dx = dx

    def init_hidden(self, z):
        return torch.zeros(z.shape[0], 1)

    def step(self, z, h, a):
        return z + torch.tensor([self.dx, 0.0], dtype=z.dtype), h, torch.zeros(z.shape[0])


def _model(dx):
    cfg = config_from_dict({"model": {"embed_dim": 2}, "planner": {"horizon": 4}, "data": {"action_repeat": 2}})
    return WorldModel(cfg, _PoseEncoder(), _Predictor(dx))


def test_wall_diagnostics_tell_a_wall_blind_model_from_a_frozen_one():
    """A predictor that slides every rollout far to the right drives robots in the left room
    through the wall (phantom crossings); a frozen one never crosses. A position embedding's
    distance ranks exactly like the straight line and worse than the geodesic."""
    frozen = wall_diagnostics(_model(0.0), rollouts=64, layouts=3, grid_step_m=0.2, seed=1)
    blind = wall_diagnostics(_model(5.0), rollouts=64, layouts=3, grid_step_m=0.2, seed=1)
    assert frozen["probe_rmse_m"] < 1e-4
    assert frozen["predicted_crossings"] == 0 and frozen["phantom_crossing_rate"] == 0.0
    assert blind["true_crossings"] == frozen["true_crossings"]  # same simulated rollouts
    assert 0.2 < blind["phantom_crossing_rate"] < 0.8  # the starts in the left room (about half)
    assert blind["phantom_crossings"] + blind["true_crossings"] >= blind["predicted_crossings"]
    assert frozen["straight_spearman"] == pytest.approx(1.0)
    assert frozen["geodesic_spearman"] < frozen["straight_spearman"]
    assert frozen["geodesic_spearman_other_room"] < 0.99
    with pytest.raises(ValueError, match="rollouts"):
        wall_diagnostics(_model(0.0), rollouts=1)
