"""Kinematic-path planner terms (training/path_cost.py): range clearance and the visit memory."""

import math

import pytest
import torch

from training.config import ConfigError, PlannerConfig
from training.path_cost import Kinematics, PathCost, VisitMemory
from training.planner import FunctionalModel, MPCController, make_path_cost

# 0.5 m/s at full command (15 rad/s x 0.033 m), 5 ticks of 0.05 s per planner step: 0.12375 m per step
KIN = Kinematics(wheel_radius=0.033, wheel_base=0.16, max_wheel_speed=15.0, dt=0.05, ticks_per_step=5)
STEP_M = 15.0 * 0.033 * 0.05 * 5
INF = float("inf")


def ranges(front=INF, n=8, **beams):
    r = torch.full((1, n), INF)
    r[0, 0] = front
    for k, v in beams.items():
        r[0, int(k[1:])] = v
    return r


def drive(cost: PathCost, actions: torch.Tensor) -> list[float]:
    """Per-step costs of one sample driving ``actions [H, 2]``."""
    return cost.step_costs(actions[None])[0].tolist()


# one planner step turning on the spot by 22.5 degrees (to the left), then one full forward
TURN = 0.3927 * 0.16 / 2 / (15.0 * 0.033 * 0.25)
TURN_THEN_FORWARD = torch.tensor([[-TURN, TURN], [1.0, 1.0]])


def test_clearance_charges_the_depth_past_the_reading_ahead():
    """Full forward towards a wall 0.3 m ahead: no cost until the path passes 0.3 - margin, then
    clearance x the deepest intrusion so far (hand-computed); backing away costs nothing."""
    pc = PathCost(KIN, clearance=10.0, clearance_margin=0.03)
    pc.set(ranges(front=0.3))
    costs = drive(pc, torch.ones(4, 2))
    expected = [10.0 * max(0.0, STEP_M * (k + 1) - 0.27) for k in range(4)]
    assert costs == pytest.approx(expected, abs=1e-5)
    assert costs[0] == 0.0 and costs[2] > 0.5
    assert drive(pc, -torch.ones(4, 2)) == [0.0] * 4


def test_no_return_sets_no_bound_and_between_beams_the_nearer_counts():
    """NaN and max_range readings bound nothing; a path at 22.5 deg between beams 0 and 1 is held
    by the nearer of the two."""
    pc = PathCost(KIN, clearance=10.0, clearance_margin=0.0, max_range=2.0)
    pc.set(ranges(front=float("nan"), b1=2.0))
    assert drive(pc, torch.ones(6, 2)) == [0.0] * 6
    pc.set(ranges(front=INF, b1=0.1))
    assert drive(pc, TURN_THEN_FORWARD) == pytest.approx([0.0, 10.0 * (STEP_M - 0.1)], abs=1e-4)
    pc.set(ranges(front=0.1, b1=INF))
    assert drive(pc, TURN_THEN_FORWARD) == pytest.approx([0.0, 10.0 * (STEP_M - 0.1)], abs=1e-4)
    pc.set(ranges(front=INF, b1=INF, b7=0.05))  # the beam on the other side does not count
    assert drive(pc, TURN_THEN_FORWARD) == [0.0, 0.0]


def test_visit_memory_frames_and_cost():
    """Remembered places come back in the robot's frame; a path into a remembered place pays
    visit x exp(-d^2 / 2 sigma^2), a path away from it almost nothing."""
    mem = VisitMemory(batch=1, size=3, every=2)
    for pose in ([0.0, 0.0, 0.0], [9.0, 9.0, 0.0], [1.0, 2.0, 0.0]):  # the middle call is not recorded
        mem.add(torch.tensor([pose]))
    rel = mem.relative(torch.tensor([[1.0, 1.0, math.pi / 2]]))  # at (1, 1) facing +y
    torch.testing.assert_close(rel[0, 0], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)  # (1, 2): 1 m ahead
    torch.testing.assert_close(rel[0, 1], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)  # (0, 0): behind, left
    assert torch.isnan(rel[0, 2]).all()

    pc = PathCost(KIN, visit=2.0, visit_sigma=0.15)
    pc.set(ranges(), places=torch.tensor([[[STEP_M, 0.0], [float("nan"), float("nan")]]]))
    assert drive(pc, torch.ones(1, 2))[0] == pytest.approx(2.0, abs=1e-4)
    d = 2 * STEP_M
    assert drive(pc, -torch.ones(1, 2))[0] == pytest.approx(2.0 * math.exp(-d * d / (2 * 0.15 ** 2)), abs=1e-5)


def test_mpc_with_clearance_stops_short_of_a_wall_the_model_would_drive_through():
    """The analytic model says driving forward reaches the goal; with a wall 0.1 m ahead in the
    range readings the planner with clearance stops driving forward, without it it drives on."""
    model = FunctionalModel(lambda z, h, a: (z + torch.stack([a.mean(-1), torch.zeros(len(a))], -1) * 0.1, h,
                                             z.new_zeros(len(z))))
    goal, z0 = torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2)
    pose = torch.zeros(1, 3)
    forward = {}
    for weight in (0.0, 50.0):
        cfg = PlannerConfig(samples=128, horizon=8, iterations=3, clearance=weight)
        ctl = MPCController(model, cfg, batch=1, seed=0, action_repeat=5,
                            path_cost=make_path_cost(cfg, KIN, max_range=2.0))
        a = ctl.act(z0, goal, None, ranges(front=0.1), pose)
        forward[weight] = float(a.mean())
    assert forward[0.0] > 0.5
    assert forward[50.0] < 0.15


def test_controller_asks_for_what_the_terms_need():
    """Terms on without a PathCost, or a tick without ranges and pose, fail with the fix named;
    negative weights are config errors."""
    cfg = PlannerConfig(visit=1.0)
    model = FunctionalModel(lambda z, h, a: (z, h, z.new_zeros(len(z))))
    with pytest.raises(ValueError, match="make_path_cost"):
        MPCController(model, cfg)
    ctl = MPCController(model, cfg, path_cost=make_path_cost(cfg, KIN, 2.0))
    with pytest.raises(ValueError, match="ranges"):
        ctl.act(torch.zeros(1, 2), torch.ones(1, 2))
    assert make_path_cost(PlannerConfig(), KIN, 2.0) is None
    with pytest.raises(ConfigError, match="planner.clearance"):
        PlannerConfig(clearance=-1.0)
    with pytest.raises(ConfigError, match="planner.visit_sigma"):
        PlannerConfig(visit=1.0, visit_sigma=0.0)
