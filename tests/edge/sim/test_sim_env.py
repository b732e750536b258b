"""Gymnasium environment, batch stepping and the exploration policy."""

import numpy as np
import pytest

from edge.sim.env import BatchSim, SimConfig, TwoRoomsEnv
from edge.sim.policies import ExplorationConfig, ExplorationPolicy, door_crossing_fraction, rollout


def test_gym_env_passes_checker_and_declares_spaces():
    """The registered env (gymnasium.make) passes gymnasium's env checker (spaces, seeding,
    render) with the camera on."""
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    env = gym.make("EdgeJepa/TwoRooms-v0", camera=True, render_mode="rgb_array", disable_env_checker=True).unwrapped
    assert isinstance(env, TwoRoomsEnv)
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["frame"].shape == (64, 64, 3)
    img = env.render()
    assert img.ndim == 3 and img.dtype == np.uint8 and img.shape[1] > img.shape[0]


def test_gym_env_seeded_reset_is_reproducible():
    """reset(seed=s) followed by the same actions gives the same trajectory."""
    def run(seed):
        env = TwoRoomsEnv()
        obs, _ = env.reset(seed=seed)
        out = [obs["sensor"]]
        for _ in range(20):
            obs, *_ = env.step(np.array([0.8, 0.3], np.float32))
            out.append(obs["sensor"])
        return np.stack(out)

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_gym_env_success_terminates_with_bonus():
    """Starting next to the goal and driving at it terminates with success and reward > 1."""
    env = TwoRoomsEnv()
    env.reset(seed=0, options={"start": [-1.0, 0.0, 0.0], "goal": [-0.7, 0.0]})
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0], np.float32))
        if terminated:
            break
    assert terminated and info["success"] and reward > 1.0 and not truncated


def test_gym_env_truncates_at_step_budget():
    """An episode that never reaches the goal is truncated after max_steps."""
    env = TwoRoomsEnv(SimConfig(max_steps=10))
    env.reset(seed=0, options={"start": [-1.0, 0.0, 0.0], "goal": [1.0, 0.5]})
    flags = [env.step(np.zeros(2, np.float32))[3] for _ in range(10)]
    assert flags == [False] * 9 + [True]


def test_batch_rejects_nan_actions():
    """NaN actions are refused with a clear error rather than corrupting the state."""
    sim = BatchSim(SimConfig(), 2, seed=0)
    sim.reset()
    with pytest.raises(ValueError, match="NaN"):
        sim.step(np.array([[np.nan, 0.0], [0.0, 0.0]]))


def test_batch_episodes_are_independent():
    """Episode i of a batch evolves exactly as a batch of one with the same state and actions."""
    cfg = SimConfig()
    big = BatchSim(cfg, 4, seed=1)
    big.reset()
    small = BatchSim(cfg, 1, seed=9)
    small.reset(layout=big.layout.take([2]), start=big.robot.pose[2:3], goal=big.goal[2:3])
    acts = np.random.default_rng(0).uniform(-1, 1, (30, 4, 2))
    for a in acts:
        ob, _ = big.step(a)
        os_, _ = small.step(a[2:3])
    assert np.allclose(ob["true_pose"][2], os_["true_pose"][0])


def test_exploration_policy_crosses_the_door_far_more_than_random():
    """The waypoint/random mixture takes most episodes through the door within 300 steps;
    smooth random actions alone rarely do."""
    cfg = SimConfig()
    sim = BatchSim(cfg, 48, seed=0)
    sim.reset()
    ep = rollout(sim, ExplorationPolicy(sim, seed=0), 300)
    mixed = door_crossing_fraction(ep["true_pose"], sim.layout.wall_x)
    sim.reset(seed=0)
    ep_r = rollout(sim, ExplorationPolicy(sim, ExplorationConfig(p_waypoint=0.0, p_switch=0.0), seed=0), 300)
    random_only = door_crossing_fraction(ep_r["true_pose"], sim.layout.wall_x)
    assert mixed >= 0.5
    assert mixed > 2 * random_only
    assert np.all(np.abs(ep["action"]) <= 1.0)
    assert ep["action"].std() > 0.3  # actions cover the range, not one fixed command


def test_goal_policy_crosses_rooms_well_within_the_step_budget():
    """The task is sized right: a privileged controller at full speed reaches every goal in the
    other room, and in under two thirds of the 300-step budget."""
    from edge.sim.policies import GoalPolicy

    cfg = SimConfig()
    sim = BatchSim(cfg, 64, seed=2)
    sim.reset(mode="evaluate")
    policy = GoalPolicy(sim)
    first = np.full(64, -1)
    for t in range(cfg.max_steps):
        _, info = sim.step(policy.act())
        first[(first < 0) & info["success"]] = t + 1
    assert np.all(first > 0)
    assert first.max() < 2 * cfg.max_steps / 3


def test_observe_at_matches_the_episode_and_leaves_it_unchanged():
    """observe_at(true pose) gives the same ranges and frame as the episode's own observation
    (noise-free sim) and does not move the robot."""
    sim = BatchSim(SimConfig(), 3, camera=True, seed=1)
    sim.reset()
    obs, _ = sim.step(np.full((3, 2), 0.5))
    pose = sim.robot.pose.copy()
    at = sim.observe_at(pose)
    assert np.allclose(at["ranges"], obs["ranges"]) and np.array_equal(at["frame"], obs["frame"])
    assert np.array_equal(at["wheel_speeds"], np.zeros((3, 2), np.float32))
    assert np.array_equal(sim.robot.pose, pose)
    turned = sim.observe_at(pose + [0, 0, np.pi])
    assert not np.allclose(turned["ranges"], at["ranges"])


def test_direct_routes_and_pushing_make_the_dividing_wall_stop_the_robot():
    """p_direct sends routes straight at the other room (the wall is in the way) and p_push keeps
    the robot pressing instead of backing up: the data then shows the wall stopping the robot,
    which the default mixture (it backs off at once) almost never does."""
    def wall_contact(cfg):
        sim = BatchSim(SimConfig(), 48, seed=3)
        sim.reset(seed=3)
        pol = ExplorationPolicy(sim, cfg, seed=3)
        ep = rollout(sim, pol, 300)
        near = np.abs(ep["true_pose"][:, 1:, 0] - sim.layout.wall_x[:, None]) < 0.12
        return float((ep["collided"] & near).mean()), pol

    base, _ = wall_contact(ExplorationConfig())
    pushed, pol = wall_contact(ExplorationConfig(p_direct=1.0, p_push=1.0))
    assert pushed > 3 * base
    assert pol.recover.max() == 0  # p_push=1: no collision ever starts a back-up


def test_direct_route_targets_lie_in_the_other_room():
    from edge.sim.world import room_of

    sim = BatchSim(SimConfig(), 64, seed=4)
    sim.reset(seed=4)
    pol = ExplorationPolicy(sim, ExplorationConfig(p_waypoint=1.0, p_through_door=0.0, p_direct=1.0), seed=4)
    here = room_of(sim.layout, sim.robot.pose[:, :2])
    target = room_of(sim.layout, pol.route[:, 0])
    assert np.all(pol.route_len == 1)
    assert np.all(target != here)
    assert np.all(pol.direct_left == pol.cfg.direct_steps)
    same = ExplorationPolicy(sim, ExplorationConfig(p_waypoint=1.0, p_through_door=0.0), seed=4)
    assert np.all(room_of(sim.layout, same.route[:, 0]) == here)


@pytest.mark.parametrize("field", ["p_direct", "p_push"])
def test_exploration_probabilities_are_checked(field):
    with pytest.raises(ValueError, match=field):
        ExplorationConfig(**{field: 1.5})
