"""JEPA composition: EMA rule, gradient routing per target mode, collapse with/without regularisers."""

import pytest
import torch

from training.config import config_from_dict
from training.jepa import JEPA
from training.losses import collapse_stats
from tests.training.conftest import make_windows


def _cfg(mode="default", **obj):
    return config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 16, "pred_hidden": 16},
                             "objective": {"target_mode": mode, "horizon": 3, **obj}})


def test_ema_update_rule():
    """target <- m * target + (1 - m) * online, parameter by parameter."""
    model = JEPA(_cfg(ema_momentum=0.9))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    online = [p.clone() for p in model.encoder.parameters()]
    model.update_target()
    for b, o, t in zip(before, online, model.target_encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def _grads_after(mode, **obj):
    torch.manual_seed(0)
    model = JEPA(_cfg(mode, **obj))
    batch = {k: v[:16] for k, v in make_windows(32, k=3).items()}
    loss, _ = model(batch)
    loss.backward()
    enc = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
    pred = sum(p.grad.abs().sum() for p in model.predictor.parameters() if p.grad is not None)
    return model, float(enc), float(pred)


@pytest.mark.parametrize("mode", ["default", "vjepa2"])
def test_target_encoder_gets_no_gradient(mode):
    """With an EMA target encoder, no target parameter requires or receives a gradient."""
    model, _, pred = _grads_after(mode)
    assert all(not p.requires_grad and p.grad is None for p in model.target_encoder.parameters())
    assert pred > 0


def test_gradient_routing_default_vs_vjepa2():
    """Only the prediction loss on: in default it trains the online encoder (context); in vjepa2 it does not."""
    off = dict(variance=0.0, covariance=0.0, idm=0.0, temporal=0.0, confidence=0.0)
    _, enc_default, _ = _grads_after("default", **off)
    _, enc_vjepa2, pred_vjepa2 = _grads_after("vjepa2", **off)
    assert enc_default > 0
    assert enc_vjepa2 == 0 and pred_vjepa2 > 0


def test_mode_none_targets_carry_gradient():
    """In mode none there is no target encoder and the targets are the online encoder (gradient flows both ways)."""
    off = dict(variance=0.0, covariance=0.0, idm=0.0, temporal=0.0, confidence=0.0)
    model = JEPA(_cfg("none", **off))
    assert model.target_encoder is None and model.deploy_encoder is model.encoder
    torch.manual_seed(0)
    batch = make_windows(16, k=3)
    # gradient through the targets only: detach the context by predicting from a constant
    z_on = model.encode_online(batch)
    z_pred, _ = model.predictor.unroll(z_on[:, 0].detach(), batch["action"])
    ((z_pred - z_on[:, 1:]) ** 2).mean().backward()
    assert sum(float(p.grad.abs().sum()) for p in model.encoder.parameters()) > 0


def _train_steps(obj: dict, steps: int = 80) -> dict:
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 32, "pred_hidden": 16},
                            "objective": {"target_mode": "none", "horizon": 3, **obj}})
    model = JEPA(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    data = make_windows(512, k=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss, _ = model({k: v[idx] for k, v in data.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return collapse_stats(model.encode_online(make_windows(512, k=3, seed=1))[:, 0])


def test_collapse_without_regularisers_and_not_with_them():
    """Mode none with the prediction loss only collapses (embedding std -> ~0); with VICReg + IDM it stays spread."""
    collapsed = _train_steps(dict(variance=0.0, covariance=0.0, idm=0.0, temporal=0.0))
    healthy = _train_steps(dict(variance=1.0, covariance=0.04, idm=1.0, temporal=0.0))
    assert collapsed["emb_std"] < 0.05 and collapsed["emb_std"] < 0.1 * healthy["emb_std"], (collapsed, healthy)
    assert healthy["emb_std"] > 0.5 and healthy["eff_rank"] > 1.5, healthy
