"""Reference planner (training/planner.py) on an analytic world model z' = z + 0.1 a."""

import pytest
import torch

from training.config import PlannerConfig
from training.planner import FunctionalModel, MPCController, plan, plan_batch, rollout_cost, shift_plan
from training.models import Predictor


def linear_model():
    return FunctionalModel(lambda z, h, a: (z + 0.1 * a, h, (z * 0).sum(-1)))


@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_plan_reduces_cost_on_linear_model(method):
    """Planning from a zero plan lowers the cost of the mean plan, and the first action points at the goal."""
    torch.manual_seed(0)
    cfg = PlannerConfig(method=method, samples=128, horizon=8, iterations=4, smoothness=0.0)
    model = linear_model()
    z0, goal = torch.zeros(2), torch.tensor([1.0, -0.5])
    mean0, std0 = torch.zeros(8, 2), torch.full((8, 2), 0.6)
    noise = torch.randn(4, 128, 8, 2)
    res = plan(model, z0, goal, mean0, std0, noise, cfg)
    c0, _ = rollout_cost(model, z0[None], goal[None], mean0[None, None], 0.0)
    c1, _ = rollout_cost(model, z0[None], goal[None], res.mean[None, None], 0.0)
    assert float(c1) < 0.8 * float(c0)
    assert res.first_action[0] > 0.2 and res.first_action[1] < -0.1
    assert res.mean.abs().max() <= 1.0 and res.best_actions.abs().max() <= 1.0
    assert (res.std >= cfg.std_min - 1e-7).all()
    assert float(res.best_cost) <= float(res.mean_cost)
    assert res.conf.shape == (8,)


def test_mpc_reaches_goal_and_is_deterministic():
    """Closed loop on the linear model reaches the goal; the same seed gives the same actions."""
    cfg = PlannerConfig(samples=64, horizon=6, iterations=2)
    goal = torch.tensor([[0.8, 0.6]])

    def run(seed):
        ctl = MPCController(linear_model(), cfg, batch=1, seed=seed)
        z = torch.zeros(1, 2)
        acts = []
        for _ in range(40):
            a = ctl.act(z, goal)
            acts.append(a)
            z = z + 0.1 * a
        return z, torch.stack(acts)

    z, acts = run(3)
    assert torch.linalg.vector_norm(z - goal) < 0.1
    _, acts2 = run(3)
    torch.testing.assert_close(acts, acts2)


def test_plan_batch_equals_single_plans():
    """Batched planning gives each problem the same result as planning it alone (with its noise)."""
    torch.manual_seed(1)
    cfg = PlannerConfig(samples=16, horizon=5, iterations=2, elites=4)
    pred = Predictor(embed_dim=6, hidden=8).eval()
    z0, goal = torch.randn(3, 6), torch.randn(3, 6)
    mean, std = torch.zeros(3, 5, 2), torch.full((3, 5, 2), 0.5)
    noise = torch.randn(2, 3, 16, 5, 2)
    batched = plan_batch(pred, z0, goal, mean, std, noise, cfg)
    for i in range(3):
        single = plan(pred, z0[i], goal[i], mean[i], std[i], noise[:, i], cfg)
        torch.testing.assert_close(batched.mean[i], single.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.best_cost[i], single.best_cost, atol=1e-4, rtol=1e-5)


def test_shift_plan_and_bad_noise():
    """Warm start drops the first step and repeats the last; a mis-shaped noise tensor is refused."""
    mean = torch.arange(6.0).reshape(3, 2)
    shifted, std = shift_plan(mean, 0.4)
    torch.testing.assert_close(shifted, torch.tensor([[2.0, 3.0], [4.0, 5.0], [4.0, 5.0]]))
    assert torch.all(std == 0.4)
    with pytest.raises(ValueError, match="noise"):
        plan(linear_model(), torch.zeros(2), torch.zeros(2), torch.zeros(3, 2), torch.ones(3, 2),
             torch.randn(2, 4, 5, 2), PlannerConfig(horizon=3))
