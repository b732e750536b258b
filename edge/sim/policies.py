"""Exploration policies for dataset collection (batched, numpy).

Smooth random actions alone rarely take a robot through a 0.35-0.6 m door, so a world model
trained on them never sees the other room. ``ExplorationPolicy`` mixes two behaviours per
episode and switches between them at random:

- **waypoint**: follow a route with a proportional heading controller using the true pose
  (privileged information is fine for data collection). Routes go either to a random point in
  the same room, or through the door: a point in front of the door, a point behind it, then a
  random point in the other room. Coloured smooth noise is added to the wheel commands so the
  actions cover the action space, not just the controller's manifold.
- **random**: smooth random actions (an Ornstein-Uhlenbeck process in [-1, 1]^2).

After a collision the robot backs up and turns for a few steps, so it does not stay pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.sim.env import BatchSim
from edge.sim.robot import wrap_angle
from edge.sim.world import door_waypoints, room_of, sample_in_room


@dataclass(frozen=True)
class ExplorationConfig:
    """Mixture of waypoint following and smooth random actions."""

    p_waypoint: float = 0.75  # probability an episode segment is waypoint following (else random)
    p_switch: float = 0.01  # per-step probability of switching between waypoint and random
    p_through_door: float = 0.7  # probability a new route goes to the other room through the door
    speed: float = 0.8  # waypoint forward command (normalised)
    turn_gain: float = 1.2  # normalised turn command per radian of heading error
    noise: float = 0.25  # scale of the smooth noise added to waypoint commands
    ou_theta: float = 0.15  # OU mean reversion per step (smoothness of random actions)
    ou_sigma: float = 0.3  # OU noise per step
    reach_m: float = 0.12  # a waypoint counts as reached within this distance (m)
    door_offset_m: float = 0.25  # door waypoints this far either side of the wall (m)
    recover_steps: int = 6  # steps of backing up after a collision
    p_direct: float = 0.0  # probability a new same-room route instead heads straight for a point in the other room, ignoring the door (the robot meets the wall)
    p_push: float = 0.0  # probability a collision is not followed by backing up (the robot keeps pushing or slides along the wall)
    direct_steps: int = 60  # a direct route is given up after this many steps (it cannot be reached)

    def __post_init__(self) -> None:
        for name in ("p_waypoint", "p_switch", "p_through_door", "p_direct", "p_push"):
            v = getattr(self, name)
            if not (0 <= v <= 1):
                raise ValueError(f"ExplorationConfig.{name} must be a probability in [0, 1], got {v}")
        for name in ("speed", "turn_gain", "noise", "ou_theta", "ou_sigma", "reach_m", "door_offset_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExplorationConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.recover_steps < 0:
            raise ValueError(f"ExplorationConfig.recover_steps must be >= 0, got {self.recover_steps}")
        if self.direct_steps < 1:
            raise ValueError(f"ExplorationConfig.direct_steps must be >= 1, got {self.direct_steps}")


class ExplorationPolicy:
    """Batched exploration policy bound to a ``BatchSim``: ``reset()`` after the sim's reset,
    then ``act(collided) -> [B, 2]`` each step."""

    def __init__(self, sim: BatchSim, cfg: ExplorationConfig | None = None, seed: int | None = None):
        self.sim = sim
        self.cfg = cfg or ExplorationConfig()
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        b = self.sim.num_envs
        c = self.cfg
        self.waypoint_mode = self.rng.uniform(size=b) < c.p_waypoint
        self.ou = self.rng.uniform(-0.5, 0.5, size=(b, 2))
        self.noise = np.zeros((b, 2))
        self.route = np.zeros((b, 3, 2))
        self.route_len = np.zeros(b, dtype=np.int64)
        self.route_pos = np.zeros(b, dtype=np.int64)
        self.recover = np.zeros(b, dtype=np.int64)
        self.recover_action = np.zeros((b, 2))
        self.direct_left = np.zeros(b, dtype=np.int64)
        self._new_routes(np.ones(b, dtype=bool))

    def _new_routes(self, mask: np.ndarray) -> None:
        if not mask.any():
            return
        sim, c = self.sim, self.cfg
        idx = np.nonzero(mask)[0]
        lay = sim.layout.take(idx)
        pose = sim.robot.pose[idx]
        room = room_of(lay, pose[:, :2])
        through = self.rng.uniform(size=len(idx)) < c.p_through_door
        direct = np.zeros(len(idx), dtype=bool)
        if c.p_direct > 0:  # no extra draw otherwise: datasets collected before p_direct stay reproducible
            direct = ~through & (self.rng.uniform(size=len(idx)) < c.p_direct)
        target_room = np.where(through | direct, 1 - room, room)
        target = sample_in_room(sim.cfg.world, lay, target_room, sim.cfg.clearance, self.rng)
        before, after = door_waypoints(lay, room, c.door_offset_m)
        route = np.where(through[:, None, None], np.stack([before, after, target], 1), target[:, None, :])
        self.route[idx] = route
        self.route_len[idx] = np.where(through, 3, 1)
        self.route_pos[idx] = 0
        self.direct_left[idx] = np.where(direct, c.direct_steps, 0)

    def act(self, collided: np.ndarray | None = None) -> np.ndarray:
        """Normalised actions ``[B, 2]`` for the sim's current state."""
        sim, c, rng = self.sim, self.cfg, self.rng
        b = sim.num_envs
        pose = sim.robot.pose
        switch = rng.uniform(size=b) < c.p_switch
        self.waypoint_mode ^= switch
        self._new_routes(switch & self.waypoint_mode)

        wp = self.route[np.arange(b), np.minimum(self.route_pos, 2)]
        d = wp - pose[:, :2]
        reached = np.hypot(d[:, 0], d[:, 1]) < c.reach_m
        self.route_pos += reached
        expired = self.direct_left == 1
        self.direct_left = np.maximum(self.direct_left - 1, 0)
        done = (self.route_pos >= self.route_len) | expired
        self._new_routes(done & self.waypoint_mode)
        wp = self.route[np.arange(b), np.minimum(self.route_pos, 2)]
        d = wp - pose[:, :2]
        err = wrap_angle(np.arctan2(d[:, 1], d[:, 0]) - pose[:, 2])
        fwd = c.speed * np.clip(np.cos(err), 0.0, 1.0)
        turn = np.clip(c.turn_gain * err, -1.0, 1.0)
        self.noise += 0.3 * (rng.normal(size=(b, 2)) - self.noise)
        steer = np.stack([fwd - turn, fwd + turn], -1) + c.noise * self.noise

        self.ou += -c.ou_theta * self.ou + c.ou_sigma * rng.normal(size=(b, 2))
        self.ou = np.clip(self.ou, -1.0, 1.0)
        action = np.where(self.waypoint_mode[:, None], steer, self.ou)

        if collided is not None and c.recover_steps > 0:
            start = collided & (self.recover == 0)
            if c.p_push > 0:  # (no draw at 0, as above)
                start &= rng.uniform(size=b) >= c.p_push
            if start.any():
                turn_dir = rng.choice([-1.0, 1.0], size=b)
                back = np.stack([-0.6 - 0.3 * turn_dir, -0.6 + 0.3 * turn_dir], -1)
                self.recover_action = np.where(start[:, None], back, self.recover_action)
                self.recover = np.where(start, c.recover_steps, self.recover)
        active = self.recover > 0
        action = np.where(active[:, None], self.recover_action, action)
        self.recover = np.maximum(self.recover - 1, 0)
        return np.clip(action, -1.0, 1.0)


class GoalPolicy:
    """Privileged goal-reaching controller (a baseline and a check of the task's step budget):
    drives to the goal through the door when the goal is in the other room, using the true
    pose and the layout. ``act() -> [B, 2]``; zero action once within the success radius."""

    def __init__(self, sim: BatchSim, speed: float = 1.0, turn_gain: float = 1.5, door_offset_m: float = 0.25,
                 reach_m: float = 0.08):
        self.sim = sim
        self.speed = speed
        self.turn_gain = turn_gain
        self.reach_m = reach_m
        b = sim.num_envs
        room = room_of(sim.layout, sim.robot.pose[:, :2])
        other = room != room_of(sim.layout, sim.goal)
        before, after = door_waypoints(sim.layout, room, door_offset_m)
        goal = sim.goal
        self.route = np.where(other[:, None, None], np.stack([before, after, goal], 1), goal[:, None, :])
        self.route_len = np.where(other, 3, 1)
        self.pos = np.zeros(b, dtype=np.int64)

    def act(self, collided: np.ndarray | None = None) -> np.ndarray:
        sim = self.sim
        b = sim.num_envs
        pose = sim.robot.pose
        wp = self.route[np.arange(b), np.minimum(self.pos, 2)]
        d = wp - pose[:, :2]
        last = self.pos >= self.route_len - 1
        self.pos += (np.hypot(d[:, 0], d[:, 1]) < self.reach_m) & ~last
        wp = self.route[np.arange(b), np.minimum(self.pos, 2)]
        d = wp - pose[:, :2]
        dist = np.hypot(d[:, 0], d[:, 1])
        err = wrap_angle(np.arctan2(d[:, 1], d[:, 0]) - pose[:, 2])
        fwd = self.speed * np.clip(np.cos(err), 0.0, 1.0) ** 2 * np.clip(dist / 0.2, 0.3, 1.0)
        turn = np.clip(self.turn_gain * err, -1.0, 1.0)
        a = np.stack([fwd - turn, fwd + turn], -1)
        done = (self.pos >= self.route_len - 1) & (sim.goal_distance() <= sim.cfg.success_radius * 0.5)
        return np.where(done[:, None], 0.0, np.clip(a, -1.0, 1.0))


def rollout(sim: BatchSim, policy: ExplorationPolicy, steps: int, *, camera: bool | None = None) -> dict[str, np.ndarray]:
    """Run ``steps`` steps from the sim's current state and stack the episode arrays.

    Returns (``B`` episodes, ``T = steps``): ``ranges [B, T+1, 8]``, ``pose [B, T+1, 3]``,
    ``wheel_speeds [B, T+1, 2]``, ``true_pose [B, T+1, 3]``, ``action [B, T, 2]`` (float32),
    ``collided [B, T]`` bool and, with the camera, ``frame [B, T+1, H, W, 3]`` uint8.
    """
    obs = sim.observe()
    keys = ["ranges", "pose", "wheel_speeds", "true_pose"] + (["frame"] if "frame" in obs else [])
    out = {k: [obs[k]] for k in keys}
    actions, collisions = [], []
    collided = np.zeros(sim.num_envs, dtype=bool)
    for _ in range(steps):
        a = policy.act(collided).astype(np.float32)
        obs, info = sim.step(a)
        collided = info["collided"]
        actions.append(a)
        collisions.append(collided)
        for k in keys:
            out[k].append(obs[k])
    res = {k: np.stack(v, axis=1) for k, v in out.items()}
    res["action"] = np.stack(actions, axis=1)
    res["collided"] = np.stack(collisions, axis=1)
    return res


def door_crossing_fraction(true_pose: np.ndarray, wall_x: np.ndarray) -> float:
    """Fraction of episodes (``true_pose [B, T+1, 3]``, ``wall_x [B]``) that changed room at least once."""
    side = true_pose[..., 0] > wall_x[:, None]
    return float(np.mean(np.any(side != side[:, :1], axis=1)))
