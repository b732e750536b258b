"""The temporal-distance objective: hand-computed loss values, same-episode partner sampling, and
its wiring into the JEPA loss (gradient reaches the encoder; a batch without partners is refused)."""

import math

import pytest
import torch

from training.config import Config, ModelConfig, ObjectiveConfig, ConfigError
from training.data import DataError, WindowTensors
from training.jepa import JEPA
from training.losses import TemporalDistanceLoss
from tests.training.conftest import make_windows


def test_temporal_distance_hand_computed():
    """Steps of length 3 and 0.5 with step bound 1: local = mean(relu(3-1)^2, 0) / 1 = 2;
    pair distance 5 with cap 8: spread = softplus(3); total = w_local * 2 + softplus(3)."""
    seq = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [3.0, 0.5]]])
    za, zb = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    loss, parts = TemporalDistanceLoss(step=1.0, cap=8.0, w_local=10.0)(seq, za, zb)
    sp = math.log1p(math.exp(3.0))
    assert math.isclose(float(parts["dist_local"]), 2.0, rel_tol=1e-6)
    assert math.isclose(float(parts["dist_spread"]), sp, rel_tol=1e-6)
    assert math.isclose(float(loss), 20.0 + sp, rel_tol=1e-6)
    assert math.isclose(float(parts["dist_pair_mean"]), 5.0, rel_tol=1e-6)


def test_temporal_distance_gradients_push_pairs_apart_and_pull_long_steps_in():
    """The push term increases pair distances (gradient points apart); the one-step term only acts
    on steps longer than the bound (a step within the bound gets no gradient from it)."""
    za = torch.tensor([[0.0, 0.0]], requires_grad=True)
    zb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    seq = torch.tensor([[[0.0, 0.0], [0.5, 0.0]]], requires_grad=True)
    loss, _ = TemporalDistanceLoss(step=1.0, cap=8.0, w_local=10.0)(seq, za, zb)
    loss.backward()
    assert za.grad[0, 0] > 0 and zb.grad[0, 0] < 0  # descent moves za left, zb right: apart
    assert torch.count_nonzero(seq.grad) == 0
    seq2 = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]], requires_grad=True)
    loss, _ = TemporalDistanceLoss(step=1.0, cap=8.0, w_local=10.0)(seq2, za.detach(), zb.detach())
    loss.backward()
    assert seq2.grad[0, 1, 0] > 0  # descent shortens the over-long step


def test_partner_index_stays_in_episode_and_covers_it():
    """Partners are always windows of the same episode, and every window of a small episode is drawn."""
    w = make_windows(n=60, k=2)
    episode = torch.arange(60) // 7  # episodes of 7 windows (the last has 4)
    wt = WindowTensors(w, episode)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(60).repeat(50)
    p = wt.partner_index(idx, g)
    assert torch.equal(episode[p], episode[idx])
    assert set(p[idx == 3].tolist()) == set(range(0, 7))
    batch = wt.batch(torch.tensor([0, 59]), partners=True, generator=g)
    assert batch["partner_sensor"].shape == (2, 14)


def test_partner_index_without_episode_ids_is_refused():
    """Windows built without episode ids cannot give partners: a DataError names the fix."""
    wt = WindowTensors(make_windows(n=8, k=2))
    with pytest.raises(DataError, match="objective.distance=0"):
        wt.partner_index(torch.arange(3))


def test_jepa_distance_term_needs_partners_and_trains_encoder():
    """With objective.distance > 0 the loss includes the dist_* parts and its gradient reaches the
    encoder; a batch without partner observations is refused with a message."""
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(embed_dim=4, enc_hidden=16, pred_hidden=8),
                 objective=ObjectiveConfig(horizon=2, distance=1.0, temporal=0.0, idm=0.0))
    model = JEPA(cfg)
    w = make_windows(n=16, k=2)
    wt = WindowTensors(w, torch.arange(16) // 4)
    batch = wt.batch(torch.arange(16), partners=True, generator=torch.Generator().manual_seed(1))
    loss, parts = model(batch)
    assert {"dist_local", "dist_spread"} <= set(parts)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    with pytest.raises(ValueError, match="partners"):
        model(wt.batch(torch.arange(16)))


def test_distance_config_validation():
    """Non-positive step or cap is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match="objective.distance_step"):
        ObjectiveConfig(distance_step=0.0)
    with pytest.raises(ConfigError, match="objective.distance_cap"):
        ObjectiveConfig(distance_cap=-1.0)
