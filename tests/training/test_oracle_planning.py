"""benchmarks/oracle_planning.py: planner rollouts executed in the simulator, in the planner's
sample order, with the straight-line and geodesic costs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.sim.env import SimConfig
from edge.sim.world import Layout
from training.walls import geodesic_distance

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "oracle_planning.py"
_spec = importlib.util.spec_from_file_location("oracle_planning", _PATH)
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)

LAYOUT = Layout(np.array([0.0, 0.2]), np.array([0.5, -0.5]), np.array([0.4, 0.4]))
POSE = np.array([[-0.5, 0.0, 0.0], [0.8, 0.3, np.pi]])  # both face the wall, goals behind it
GOAL = np.array([[1.0, 0.0], [-1.0, 0.3]])
ACTIONS = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])  # stay, forward, back


def _model(cost: str) -> "oracle.SimRolloutModel":
    m = oracle.SimRolloutModel(SimConfig(), encode=None, cost=cost, action_repeat=5, seed=0)
    m.set_state(POSE.copy(), LAYOUT, GOAL)
    return m


@pytest.mark.parametrize("cost", ["geodesic", "straight"])
def test_sim_rollouts_follow_the_planners_episode_major_sample_order(cost):
    m = _model(cost)
    n = len(ACTIONS)
    z = torch.zeros(2 * n, 1)
    h = m.init_hidden(z)
    d, _, conf = m.step(z, h, ACTIONS.repeat(2, 1))
    d = d[:, 0].numpy().reshape(2, n)
    start = (geodesic_distance(POSE[:, :2], GOAL, LAYOUT.wall_x, LAYOUT.door_y, LAYOUT.door_width, SimConfig().robot.radius)
             if cost == "geodesic" else np.linalg.norm(POSE[:, :2] - GOAL, axis=1))
    np.testing.assert_allclose(d[:, 0], start, atol=1e-6)  # standing still: the start's distance, per episode
    assert np.all(d[:, 1] < d[:, 0] - 0.02) and np.all(d[:, 2] > d[:, 0] + 0.02)  # forward closes in, back opens up
    assert conf.shape == (2 * n,)


def test_geodesic_cost_is_longer_than_straight_behind_the_wall():
    geo, straight = _model("geodesic"), _model("straight")
    z = torch.zeros(2, 1)
    a = torch.zeros(2, 2)
    dg = geo.step(z, geo.init_hidden(z), a)[0][:, 0]
    ds = straight.step(z, straight.init_hidden(z), a)[0][:, 0]
    assert torch.all(dg > ds + 0.05)  # the straight segments to both goals hit the wall away from the door


def test_cli_rejects_unknown_variants(capsys):
    with pytest.raises(SystemExit) as e:
        oracle.main(["runs/none", "--variants", "learned,teleport"])
    assert e.value.code == 2
    assert "teleport" in capsys.readouterr().err


class _ShiftPredictor:
    """z' = z + 0.1 a, confidence 1: the embedding is the position (m)."""

    def init_hidden(self, z):
        return z.new_zeros(1, z.shape[0], 1)

    def step(self, z, h, a):
        return z + 0.1 * a, h, z.new_ones(z.shape[0])


def test_probed_geodesic_costs_the_predicted_positions_per_episode():
    """Predictor rollouts costed by the geodesic of the probed position: two steps of the known
    model land where expected, each episode against its own wall and goal."""
    m = oracle.ProbedGeodesicModel(_ShiftPredictor(), probe=lambda z: z.double().numpy(), clearance=0.1)
    m.set_state(LAYOUT, GOAL)
    n = len(ACTIONS)
    z0 = torch.from_numpy(POSE[:, :2]).float().repeat_interleave(n, dim=0)  # episode-major [2*n, 2]
    h = m.init_hidden(z0)
    a = ACTIONS.repeat(2, 1)
    d1, h, _ = m.step(torch.zeros(2 * n, 1), h, a)
    d2, h, conf = m.step(d1, h, a)
    expect_xy = z0.double().numpy() + 0.2 * a.double().numpy()
    rep = np.repeat([0, 1], n)
    expect = geodesic_distance(expect_xy, GOAL[rep], LAYOUT.wall_x[rep], LAYOUT.door_y[rep], LAYOUT.door_width[rep], 0.1)
    np.testing.assert_allclose(d2[:, 0].numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(h[0].numpy(), expect_xy, atol=1e-6)
    assert torch.all(conf == 1)


def test_belief_cost_is_the_geodesic_when_the_door_is_known_and_an_average_when_not():
    from training.walls import DoorBelief

    belief = DoorBelief(SimConfig().world, LAYOUT, 16, np.random.default_rng(0), SimConfig().robot.radius, 2.0)
    z = torch.zeros(2, 1)
    a = torch.zeros(2, 2)
    known_true = np.zeros((2, 16), bool)
    known_true[:, 0] = True  # hypothesis 0 is the real door
    m = oracle.SimRolloutModel(SimConfig(), encode=None, cost="belief", action_repeat=5, seed=0, belief=belief)
    m.set_state(POSE.copy(), LAYOUT, GOAL, rows=np.arange(2), known=known_true)
    d_known = m.step(z, m.init_hidden(z), a)[0][:, 0].numpy()
    geo = geodesic_distance(POSE[:, :2], GOAL, LAYOUT.wall_x, LAYOUT.door_y, LAYOUT.door_width, SimConfig().robot.radius)
    np.testing.assert_allclose(d_known, geo, atol=1e-6)
    m.set_state(POSE.copy(), LAYOUT, GOAL, rows=np.arange(2), known=np.ones((2, 16), bool))
    d_any = m.step(z, m.init_hidden(z), a)[0][:, 0].numpy()
    mask = belief.consistent(POSE, np.arange(2))
    np.testing.assert_allclose(d_any, belief.expected_geodesic(POSE[:, :2], GOAL, np.arange(2), mask), atol=1e-6)
    assert not np.allclose(d_any, d_known)  # the beams at the start do not pin the door down
