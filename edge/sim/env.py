"""The two-rooms simulation: a vectorised batch simulator and a Gymnasium environment.

``BatchSim`` steps ``B`` independent episodes at once (each with its own layout, robot and
goal) with numpy; it is what dataset collection and planner evaluation use. ``TwoRoomsEnv``
is the standard single-episode ``gymnasium.Env`` on top of it.

Control step ``dt = 0.05 s`` (20 Hz, the runtime's loop rate). Actions are normalised wheel
targets ``(left, right) in [-1, 1]^2``; wheel target = ``action * max_wheel_speed`` (rad/s).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np

from edge.sim.camera import Camera, CameraConfig, render_topdown
from edge.sim.obs import SENSOR_DIM, SensorNormalisation, sensor_vector
from edge.sim.robot import RobotBatch, RobotConfig
from edge.sim.sensors import RangeConfig, read_ranges
from edge.sim.world import Layout, WorldConfig, room_of, sample_in_room, sample_layouts, segments

MODES = ("explore", "evaluate", "same_room")


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated episode. Defaults: 3 m x 2 m arena, 0.5 m/s robot,
    20 Hz control, 300-step budget (15 s; a cross-room trip takes ~100-150 steps)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    ranges: RangeConfig = field(default_factory=RangeConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    dt: float = 0.05  # control period (s)
    max_steps: int = 300  # step budget of an episode
    success_radius: float = 0.15  # goal reached when the robot centre is this close (m)
    spawn_clearance: float = 0.05  # extra free space around start/goal points beyond the body radius (m)

    def __post_init__(self) -> None:
        if not (self.dt > 0):
            raise ValueError(f"SimConfig.dt must be > 0 s, got {self.dt}")
        if self.max_steps < 1:
            raise ValueError(f"SimConfig.max_steps must be >= 1, got {self.max_steps}")
        if not (self.success_radius > 0):
            raise ValueError(f"SimConfig.success_radius must be > 0 m, got {self.success_radius}")
        if self.spawn_clearance < 0:
            raise ValueError(f"SimConfig.spawn_clearance must be >= 0 m, got {self.spawn_clearance}")
        need = 2 * self.robot.radius + 0.04
        if self.world.min_door_width() < need:
            raise ValueError(
                f"robot.radius {self.robot.radius} m: the robot (diameter {2 * self.robot.radius:.3f} m) does not "
                f"fit through the narrowest door ({self.world.min_door_width()} m, world.door_width_range / "
                f"fixed_door_width); doors must be >= {need:.3f} m (diameter + 4 cm)"
            )
        room_need = 2 * (self.robot.radius + self.spawn_clearance)
        if self.world.min_room_width() <= room_need:
            raise ValueError(
                f"world.wall_x_range: the narrowest room ({self.world.min_room_width():.3f} m) leaves no space to "
                f"place the robot (needs > {room_need:.3f} m)"
            )

    @property
    def clearance(self) -> float:
        return self.robot.radius + self.spawn_clearance

    def normalisation(self) -> SensorNormalisation:
        """Constants of the 14-vector for these settings (the bundle's ``normalisation``)."""
        return SensorNormalisation(
            max_range_m=self.ranges.max_range,
            half_width_m=self.world.half_width,
            half_height_m=self.world.half_height,
            max_wheel_speed_rad_s=self.robot.max_wheel_speed,
        )


class BatchSim:
    """``B`` two-rooms episodes stepped together.

    Observations (``observe()``, ``reset()``, ``step()``) are a dict of arrays:
    ``ranges [B, 8]`` (m, NaN dropouts), ``pose [B, 3]`` (odometry), ``wheel_speeds [B, 2]``
    (rad/s, measured from encoders), ``true_pose [B, 3]``, ``sensor [B, 14]`` float32 and,
    with ``camera=True``, ``frame [B, 64, 64, 3]`` uint8. All float arrays are float32.
    """

    def __init__(self, cfg: SimConfig, num_envs: int, *, camera: bool = False, seed: int | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.cfg = cfg
        self.num_envs = num_envs
        self.use_camera = camera
        self.rng = np.random.default_rng(seed)
        self.norm = cfg.normalisation()
        self.camera = Camera(cfg.camera, cfg.world) if camera else None
        self.layout: Layout | None = None
        self.seg: np.ndarray | None = None
        self.robot: RobotBatch | None = None
        self.goal = np.zeros((num_envs, 2))
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self._ranges = np.zeros((num_envs, 8))

    def reset(
        self,
        seed: int | None = None,
        *,
        mode: str = "explore",
        layout: Layout | None = None,
        start: np.ndarray | None = None,
        goal: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Start ``B`` new episodes.

        Args:
            seed: reseed the generator (same seed -> same episodes).
            mode: ``"explore"`` (start and goal in random rooms), ``"same_room"`` (goal in the
                start's room: no door to find) or ``"evaluate"`` (goal in the
                other room than the start, as in planning evaluation).
            layout: fixed layouts (length ``B``) instead of sampling.
            start: start poses ``[B, 3]`` instead of sampling.
            goal: goal positions ``[B, 2]`` instead of sampling.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        cfg, b, rng = self.cfg, self.num_envs, self.rng
        self.layout = layout if layout is not None else sample_layouts(cfg.world, b, rng)
        if len(self.layout) != b:
            raise ValueError(f"layout has {len(self.layout)} episodes, expected num_envs={b}")
        self.seg = segments(cfg.world, self.layout)
        if start is None:
            room = rng.integers(0, 2, size=b)
            xy = sample_in_room(cfg.world, self.layout, room, cfg.clearance, rng)
            start = np.concatenate([xy, rng.uniform(-np.pi, np.pi, size=(b, 1))], axis=-1)
        start = np.asarray(start, dtype=np.float64).reshape(b, 3)
        if goal is None:
            start_room = room_of(self.layout, start[:, :2])
            if mode == "evaluate":
                goal_room = 1 - start_room
            elif mode == "same_room":
                goal_room = start_room
            else:
                goal_room = rng.integers(0, 2, size=b)
            goal = sample_in_room(cfg.world, self.layout, goal_room, cfg.clearance, rng)
        self.goal = np.asarray(goal, dtype=np.float64).reshape(b, 2).copy()
        self.robot = RobotBatch(cfg.robot, start)
        self.steps[:] = 0
        self.sense()
        return self.observe()

    def sense(self) -> None:
        """Refresh the range readings from the current true poses (``step`` and ``reset`` do this)."""
        self._ranges = read_ranges(self.cfg.ranges, self.robot.pose, self.cfg.robot.radius, self.seg, self.rng)

    @property
    def ranges(self) -> np.ndarray:
        """Latest range readings ``float64 [B, 8]`` (m, NaN = dropout)."""
        return self._ranges

    def observe(self) -> dict[str, np.ndarray]:
        r = self.robot
        obs = {
            "ranges": self._ranges.astype(np.float32),
            "pose": r.odom.astype(np.float32),
            "wheel_speeds": r.meas_wheel.astype(np.float32),
            "true_pose": r.pose.astype(np.float32),
            "sensor": sensor_vector(self._ranges, r.odom, r.meas_wheel, self.norm),
        }
        if self.camera is not None:
            obs["frame"] = self.camera.render(r.pose, self.seg, self.layout.wall_x)
        return obs

    def observe_at(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        """What the robot would observe standing still at ``pose [B, 3]`` (true = odometry pose),
        without changing the episode state: ``ranges``, ``pose``, ``wheel_speeds`` (zeros),
        ``sensor`` and, with the camera, ``frame``. Noise-free. Use it to make goal observations
        (e.g. at the goal position with a chosen heading)."""
        pose = np.asarray(pose, dtype=np.float64).reshape(self.num_envs, 3)
        clean = replace(self.cfg.ranges, noise_std=0.0, dropout_prob=0.0)
        ranges = read_ranges(clean, pose, self.cfg.robot.radius, self.seg)
        zeros = np.zeros((self.num_envs, 2))
        obs = {
            "ranges": ranges.astype(np.float32),
            "pose": pose.astype(np.float32),
            "wheel_speeds": zeros.astype(np.float32),
            "sensor": sensor_vector(ranges, pose, zeros, self.norm),
        }
        if self.camera is not None:
            obs["frame"] = self.camera.render(pose, self.seg, self.layout.wall_x)
        return obs

    def goal_distance(self) -> np.ndarray:
        """``[B]`` distance (m) from the true robot centre to the goal."""
        return np.hypot(*(self.robot.pose[:, :2] - self.goal).T)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Apply normalised actions ``[B, 2]`` (clipped to [-1, 1]) for one control period.

        Returns ``(obs, info)``; ``info`` has ``collided [B]``, ``success [B]`` (goal within
        ``success_radius``), ``goal_distance [B]`` (m) and ``steps [B]``.
        """
        if self.robot is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(self.num_envs, 2)
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or infinity")
        a = np.clip(a, -1.0, 1.0)
        collided = self.robot.step(a * self.cfg.robot.max_wheel_speed, self.cfg.dt, self.seg, self.rng)
        self.steps += 1
        self.sense()
        dist = self.goal_distance()
        info = {
            "collided": collided,
            "success": dist <= self.cfg.success_radius,
            "goal_distance": dist,
            "steps": self.steps.copy(),
        }
        return self.observe(), info

    def render_topdown(self, i: int = 0, trail: np.ndarray | None = None, px_per_m: float = 100.0) -> np.ndarray:
        """Top-down RGB image of episode ``i`` (``uint8 [H, W, 3]``)."""
        return render_topdown(
            self.cfg.world,
            self.layout.take(slice(i, i + 1)),
            self.robot.pose[i],
            radius=self.cfg.robot.radius,
            goal=self.goal[i],
            goal_radius=self.cfg.success_radius,
            trail=trail,
            odom=self.robot.odom[i],
            ranges=self._ranges[i],
            px_per_m=px_per_m,
        )


class TwoRoomsEnv(gym.Env):
    """Gymnasium environment of one two-rooms episode.

    Observation: ``Dict(sensor: Box[14], ranges: Box[8] (m), pose: Box[3] (odometry),
    wheel_speeds: Box[2] (rad/s)[, frame: Box uint8 [64, 64, 3]])``. Action: ``Box([-1, 1]^2)``
    normalised wheel targets. Range dropouts (``RangeConfig.dropout_prob > 0``) are NaN, outside
    the ``ranges`` box (the default config has none). Reward: progress towards the goal (m) per
    step, +1 on success.
    Terminates on success, truncates at ``max_steps``. ``render()`` (``render_mode="rgb_array"``)
    returns the top-down view with the camera frame beside it when the camera is on.
    ``reset(options={"mode": "evaluate"})`` puts the goal in the other room.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, cfg: SimConfig | None = None, *, camera: bool = False, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.cfg = cfg or SimConfig()
        self.render_mode = render_mode
        self.sim = BatchSim(self.cfg, 1, camera=camera)
        big = np.float32(1e3)
        hw, hh = self.cfg.world.half_width, self.cfg.world.half_height
        spaces = {
            "sensor": gym.spaces.Box(-big, big, (SENSOR_DIM,), np.float32),
            "ranges": gym.spaces.Box(0.0, self.cfg.ranges.max_range, (8,), np.float32),
            "pose": gym.spaces.Box(
                np.array([-hw - 1, -hh - 1, -np.pi], np.float32), np.array([hw + 1, hh + 1, np.pi], np.float32)
            ),
            "wheel_speeds": gym.spaces.Box(-big, big, (2,), np.float32),
        }
        if camera:
            c = self.cfg.camera
            spaces["frame"] = gym.spaces.Box(0, 255, (c.height, c.width, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._trail: list[np.ndarray] = []
        self._prev_dist = 0.0

    def _single(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: obs[k][0] for k in self.observation_space.spaces}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        sim_seed = int(self.np_random.integers(0, 2**63 - 1))
        obs = self.sim.reset(
            sim_seed,
            mode=options.get("mode", "explore"),
            start=None if options.get("start") is None else np.asarray(options["start"])[None],
            goal=None if options.get("goal") is None else np.asarray(options["goal"])[None],
        )
        self._trail = [self.sim.robot.pose[0, :2].copy()]
        self._prev_dist = float(self.sim.goal_distance()[0])
        return self._single(obs), self._info(obs, None)

    def _info(self, obs, info) -> dict:
        out = {"true_pose": obs["true_pose"][0], "goal": self.sim.goal[0].copy(), "layout": self.sim.layout.as_array()[0]}
        if info is not None:
            out.update({k: v[0] for k, v in info.items()})
        return out

    def step(self, action):
        obs, info = self.sim.step(np.asarray(action, dtype=np.float64)[None])
        self._trail.append(self.sim.robot.pose[0, :2].copy())
        dist = float(info["goal_distance"][0])
        success = bool(info["success"][0])
        reward = (self._prev_dist - dist) + (1.0 if success else 0.0)
        self._prev_dist = dist
        truncated = bool(info["steps"][0] >= self.cfg.max_steps) and not success
        return self._single(obs), float(reward), success, truncated, self._info(obs, info)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        top = self.sim.render_topdown(0, trail=np.array(self._trail))
        if self.sim.camera is None:
            return top
        frame = self.sim.camera.render(self.sim.robot.pose[:1], self.sim.seg[:1], self.sim.layout.wall_x[:1])[0]
        return side_by_side(top, frame)


def side_by_side(top: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Top-down image and a camera frame scaled to the same height, side by side (RGB uint8)."""
    import cv2

    h = top.shape[0]
    cam = cv2.resize(frame, (h, h), interpolation=cv2.INTER_NEAREST)
    gap = np.full((h, 6, 3), 255, dtype=np.uint8)
    return np.concatenate([top, gap, cam], axis=1)


gym.register(id="EdgeJepa/TwoRooms-v0", entry_point="edge.sim.env:TwoRoomsEnv", max_episode_steps=None)
