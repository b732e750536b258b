"""The geodesic metric term (objective.geodesic) and the door-belief oracle (training.walls.DoorBelief):
simulated pairs, the loss against hand-computed values, the trainer wiring, and which door positions
a range beam rules out."""

import csv
import math

import numpy as np
import pytest
import torch

from edge.sim.env import SimConfig
from edge.sim.world import Layout, WorldConfig
from training.config import ConfigError, config_from_dict
from training.jepa import JEPA
from training.losses import GeodesicMetricLoss
from training.train import train
from training.walls import DoorBelief, geodesic_distance, geodesic_pairs


def test_geodesic_loss_hand_computed():
    loss = GeodesicMetricLoss(scale=2.0)
    z_a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    z_b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # 5 and 1 units = 2.5 m and 0.5 m at 2 units/m
    d_m = torch.tensor([2.0, 0.5])
    value, parts = loss(z_a, z_b, d_m)
    assert value.item() == pytest.approx((0.5 ** 2 + 0.0) / 2)
    assert parts["geo_abs_err_m"].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="scale"):
        GeodesicMetricLoss(scale=0.0)


def test_geodesic_pairs_are_free_space_observations_with_their_shortest_path():
    cfg = SimConfig()
    p = geodesic_pairs(2000, seed=3, sim_cfg=cfg)
    assert p["sensor_a"].shape == (2000, 14) and p["sensor_b"].shape == (2000, 14) and p["d"].shape == (2000,)
    assert p["sensor_a"].dtype == torch.float32
    norm = cfg.normalisation()
    xy_a = p["sensor_a"][:, 8:10].numpy() * [norm.half_width_m, norm.half_height_m]  # odometry = true pose
    xy_b = p["sensor_b"][:, 8:10].numpy() * [norm.half_width_m, norm.half_height_m]
    straight = np.linalg.norm(xy_a - xy_b, axis=1)
    d = p["d"].numpy()
    assert np.all(d >= straight - 1e-4)  # never shorter than the straight line
    bent = d > straight + 0.05
    assert 0.15 < bent.mean() < 0.6  # many pairs lie across the wall, away from the door
    ranges = p["sensor_a"][:, :8].numpy() * norm.max_range_m
    assert ranges.min() >= 0.0 and np.all(ranges.min(axis=1) > 0.0)  # nobody spawned inside a wall
    again = geodesic_pairs(2000, seed=3, sim_cfg=cfg)
    assert torch.equal(again["d"], p["d"])  # seeded


def test_jepa_uses_the_pairs_and_says_how_to_get_them():
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 16, "pred_hidden": 8},
                            "objective": {"horizon": 2, "geodesic": 1.0}})
    model = JEPA(cfg)
    batch = {"sensor": torch.rand(4, 3, 14), "action": torch.rand(4, 2, 2) * 2 - 1}
    with pytest.raises(ValueError, match="geodesic_pairs"):
        model(batch)
    pairs = geodesic_pairs(4, seed=0)
    batch.update({"geo_sensor_a": pairs["sensor_a"], "geo_sensor_b": pairs["sensor_b"], "geo_d": pairs["d"]})
    total, parts = model(batch)
    assert "geo" in parts
    total.backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sensor models"):
        JEPA(config_from_dict({"model": {"kind": "camera"}, "data": {"with_frames": True},
                                "objective": {"geodesic": 1.0}}))
    with pytest.raises(ConfigError, match="geodesic_scale"):
        config_from_dict({"objective": {"geodesic_scale": 0.0}})


def test_training_with_the_geodesic_term_fits_it(tmp_path, tiny_data):
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 32, "pred_hidden": 16},
                            "objective": {"horizon": 3, "geodesic": 10.0, "geodesic_pairs": 2048},
                            "train": {"epochs": 3, "batch_size": 64, "progress": False, "out_dir": str(tmp_path / "run")}})
    train(cfg, data=tiny_data)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[-1]["val_geo"]) < float(rows[0]["val_geo"])  # held-out pairs, not the training ones


def _belief(door_y=0.3, door_w=0.4, k=48):
    lay = Layout(np.array([0.0]), np.array([door_y]), np.array([door_w]))
    return DoorBelief(WorldConfig(), lay, k, np.random.default_rng(0), robot_radius=0.08, max_range=2.0)


def test_a_beam_through_the_door_keeps_only_doors_that_cover_it():
    b = _belief()
    mask = b.consistent(np.array([[-0.5, 0.3, 0.0]]), np.array([0]))[0]  # forward beam crosses the wall line at y=0.3
    assert mask[0]  # the true door always
    lo, hi = b.door_y[0] - b.door_w[0] / 2, b.door_y[0] + b.door_w[0] / 2
    np.testing.assert_array_equal(mask, (lo < 0.3) & (0.3 < hi) & mask)
    assert 1 < mask.sum() < len(mask)


def test_a_beam_on_the_wall_rules_out_doors_there_and_a_far_view_rules_out_nothing():
    b = _belief()
    mask = b.consistent(np.array([[-0.5, -0.5, 0.0]]), np.array([0]))[0]  # the wall is closed at y=-0.5
    lo, hi = b.door_y[0] - b.door_w[0] / 2, b.door_y[0] + b.door_w[0] / 2
    assert not np.any(mask & (lo < -0.5) & (-0.5 < hi))
    assert mask.sum() > 1
    # facing the outer wall 0.1 m away at the left edge: only beams that cannot reach the wall line
    mask = b.consistent(np.array([[-1.4, 0.0, math.pi]]), np.array([0]))[0]
    assert mask.sum() < len(mask)  # the rear beam still reaches the wall line 1.4 m away
    far = DoorBelief(WorldConfig(), Layout(np.array([0.0]), np.array([0.3]), np.array([0.4])), 48,
                     np.random.default_rng(0), robot_radius=0.08, max_range=0.5)
    assert far.consistent(np.array([[-1.4, 0.0, math.pi]]), np.array([0]))[0].all()  # nothing within 0.5 m of it


def test_expected_geodesic_averages_over_the_consistent_doors():
    b = _belief()
    p, g = np.array([[-0.5, -0.5]]), np.array([[0.5, -0.5]])
    only_true = np.zeros((1, b.door_y.shape[1]), bool)
    only_true[0, 0] = True
    np.testing.assert_allclose(b.expected_geodesic(p, g, np.array([0]), only_true),
                               geodesic_distance(p, g, 0.0, 0.3, 0.4, 0.08))
    every = np.ones_like(only_true)
    each = geodesic_distance(np.repeat(p, every.shape[1], 0), np.repeat(g, every.shape[1], 0), 0.0, b.door_y[0],
                             b.door_w[0], 0.08)
    np.testing.assert_allclose(b.expected_geodesic(p, g, np.array([0]), every), each.mean())
