"""Differential-drive robot: kinematics, wheel dynamics, collisions, encoders and odometry.

Vectorised over a batch of ``B`` robots. Within a physics substep the wheel speeds are
constant and the pose is integrated exactly along the circular arc they define; between
substeps the wheel speeds move towards their targets under the acceleration limit. A move that
would bring the body (a disc) into a wall is cut at the exact time of impact
(``geometry.swept_disc_toi``), the robot stops there and the driving part of its wheel speeds
stops (stall), so there is no tunnelling at any speed; the turning part (half the wheel speed
difference) goes on, since a disc turning on the spot sweeps nothing (without it, a robot a
hair inside a wall whose two motors turn at slightly different speeds could never turn away).
Encoders count wheel rotation (what the motor turned, including slip); the ground moves by the
rotation times ``(1 - slip)``; odometry integrates the encoder counts, so slip and encoder noise
make odometry drift away from the true pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.sim.geometry import point_segment_distance, swept_disc_toi

_TWO_PI = 2.0 * np.pi


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap angles to (-pi, pi]."""
    w = np.mod(a + np.pi, _TWO_PI) - np.pi
    return np.where(w == -np.pi, np.pi, w)


@dataclass(frozen=True)
class RobotConfig:
    """Body, wheels and encoders. Defaults: a small robot (16 cm across) whose top speed
    (15 rad/s * 3.3 cm = 0.5 m/s) crosses the 3 m arena in ~6 s."""

    radius: float = 0.08  # body radius: the collision disc (m)
    wheel_radius: float = 0.033  # m
    wheel_base: float = 0.16  # distance between the two wheels (m)
    max_wheel_speed: float = 15.0  # wheel angular speed limit (rad/s); action 1.0 maps to this
    max_wheel_accel: float = 60.0  # wheel angular acceleration limit (rad/s^2)
    ticks_per_rev: int = 1320  # quadrature encoder counts per wheel revolution (firmware default)
    encoder_noise_ticks: float = 0.0  # std of additive encoder count noise per control step (counts)
    slip_std: float = 0.0  # std of the per-wheel slip fraction per control step (0 = no slip)
    physics_substeps: int = 4  # physics substeps per control step (wheel acceleration resolution)

    def __post_init__(self) -> None:
        for name in ("radius", "wheel_radius", "wheel_base", "max_wheel_speed", "max_wheel_accel"):
            v = getattr(self, name)
            if not (v > 0):
                raise ValueError(f"RobotConfig.{name} must be > 0, got {v}")
        if self.ticks_per_rev < 1:
            raise ValueError(f"RobotConfig.ticks_per_rev must be >= 1, got {self.ticks_per_rev}")
        if self.encoder_noise_ticks < 0:
            raise ValueError(f"RobotConfig.encoder_noise_ticks must be >= 0, got {self.encoder_noise_ticks}")
        if not (0 <= self.slip_std < 0.5):
            raise ValueError(f"RobotConfig.slip_std must be in [0, 0.5), got {self.slip_std}")
        if self.physics_substeps < 1:
            raise ValueError(f"RobotConfig.physics_substeps must be >= 1, got {self.physics_substeps}")

    @property
    def max_linear_speed(self) -> float:
        """m/s when both wheels spin at ``max_wheel_speed``."""
        return self.max_wheel_speed * self.wheel_radius


def arc_step(pose: np.ndarray, v: np.ndarray, w: np.ndarray, dt: float) -> np.ndarray:
    """Exact pose after moving at constant linear ``v`` (m/s) and angular ``w`` (rad/s) for ``dt`` s.

    ``pose [B, 3]`` -> ``[B, 3]`` (theta wrapped).
    """
    x, y, th = pose[:, 0], pose[:, 1], pose[:, 2]
    dth = w * dt
    small = np.abs(dth) < 1e-9
    safe_w = np.where(small, 1.0, w)
    th1 = th + dth
    nx = np.where(small, x + v * dt * np.cos(th + dth / 2), x + v / safe_w * (np.sin(th1) - np.sin(th)))
    ny = np.where(small, y + v * dt * np.sin(th + dth / 2), y - v / safe_w * (np.cos(th1) - np.cos(th)))
    return np.stack([nx, ny, wrap_angle(th1)], axis=-1)


def wheels_to_body(cfg: RobotConfig, wl: np.ndarray, wr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wheel angular speeds (rad/s) -> body linear (m/s) and angular (rad/s, CCW +) speeds."""
    v = cfg.wheel_radius * (wl + wr) / 2.0
    w = cfg.wheel_radius * (wr - wl) / cfg.wheel_base
    return v, w


class RobotBatch:
    """State of ``B`` robots. Arrays (float64 unless noted):

    - ``pose [B, 3]``: true pose (x, y, theta)
    - ``wheel [B, 2]``: true wheel angular speeds, left/right (rad/s)
    - ``wheel_angle [B, 2]``: cumulative wheel rotation (rad)
    - ``enc [B, 2]`` int64: cumulative encoder counts (with noise if configured)
    - ``odom [B, 3]``: odometry pose integrated from encoder counts
    - ``meas_wheel [B, 2]``: wheel speeds measured from encoder counts over the last step (rad/s)
    """

    def __init__(self, cfg: RobotConfig, pose: np.ndarray):
        self.cfg = cfg
        self.pose = np.array(pose, dtype=np.float64).reshape(-1, 3)
        b = len(self.pose)
        self.pose[:, 2] = wrap_angle(self.pose[:, 2])
        self.wheel = np.zeros((b, 2))
        self.wheel_angle = np.zeros((b, 2))
        self.enc = np.zeros((b, 2), dtype=np.int64)
        self._enc_noise = np.zeros((b, 2))
        self.odom = self.pose.copy()
        self.meas_wheel = np.zeros((b, 2))
        self._rad_per_tick = _TWO_PI / cfg.ticks_per_rev

    def __len__(self) -> int:
        return len(self.pose)

    def step(
        self,
        target: np.ndarray,
        dt: float,
        seg: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        odometry: bool = True,
    ) -> np.ndarray:
        """Advance ``dt`` seconds towards wheel-speed targets ``[B, 2]`` (rad/s).

        Targets are clipped to ``max_wheel_speed``. ``seg [B, S, 4]`` are the walls.
        ``odometry=False`` skips the odometry integration (encoders still count), for callers
        whose host computes odometry itself (the simulated ESP32).
        Returns ``collided [B]`` (bool): the robot hit a wall during this step.
        """
        cfg = self.cfg
        target = np.clip(target, -cfg.max_wheel_speed, cfg.max_wheel_speed)
        n = cfg.physics_substeps
        h = dt / n
        dv = cfg.max_wheel_accel * h
        b = len(self)
        if cfg.slip_std > 0 and rng is not None:
            ground = 1.0 - np.abs(rng.normal(0.0, cfg.slip_std, size=(b, 2)))
        else:
            ground = np.ones((b, 2))
        collided = np.zeros(b, dtype=bool)
        # Only robots that could reach a wall within this step need the swept test.
        clearance = point_segment_distance(self.pose[:, :2], seg).min(axis=1) - cfg.radius
        reach = cfg.max_wheel_speed * cfg.wheel_radius * dt * 1.001 + 1e-9
        near = np.nonzero(clearance <= reach)[0]
        all_near = len(near) == b
        for _ in range(n):
            self.wheel += np.clip(target - self.wheel, -dv, dv)
            gl = self.wheel[:, 0] * ground[:, 0]
            gr = self.wheel[:, 1] * ground[:, 1]
            v, w = wheels_to_body(cfg, gl, gr)
            new = arc_step(self.pose, v, w, h)
            disp = new[:, :2] - self.pose[:, :2]
            if all_near:
                toi = swept_disc_toi(self.pose[:, :2], disp, cfg.radius, seg)
            else:
                toi = np.full(b, np.inf)
                if len(near):
                    toi[near] = swept_disc_toi(self.pose[near, :2], disp[near], cfg.radius, seg[near])
            hit = toi <= 1.0
            if hit.any():
                move_len = np.maximum(np.hypot(disp[:, 0], disp[:, 1]), 1e-12)
                frac = np.where(hit, np.clip(toi - 1e-7 / move_len, 0.0, 1.0), 1.0)
                dth = w * h  # a disc turning on the spot sweeps nothing: the turn is never blocked
                new = np.stack(
                    [
                        self.pose[:, 0] + disp[:, 0] * frac,
                        self.pose[:, 1] + disp[:, 1] * frac,
                        wrap_angle(self.pose[:, 2] + dth),
                    ],
                    axis=-1,
                )
                # the wheels' common (driving) part stalls against the wall; their difference (the
                # turn) goes on: a robot touching a wall can still turn away from it
                turn = (self.wheel[:, 1] - self.wheel[:, 0]) / 2.0
                spin = np.stack([-turn, turn], axis=-1)
                self.wheel_angle += np.where(hit[:, None], spin * h + (self.wheel - spin) * h * frac[:, None],
                                             self.wheel * h)
                self.wheel[hit] = spin[hit]
                collided |= hit
            else:
                self.wheel_angle += self.wheel * h
            self.pose = new
        self._update_encoders_and_odometry(dt, rng, odometry)
        return collided

    def _update_encoders_and_odometry(self, dt: float, rng: np.random.Generator | None, odometry: bool = True) -> None:
        cfg = self.cfg
        if cfg.encoder_noise_ticks > 0 and rng is not None:
            self._enc_noise += rng.normal(0.0, cfg.encoder_noise_ticks, size=self._enc_noise.shape)
        new_enc = np.floor(self.wheel_angle / self._rad_per_tick + self._enc_noise).astype(np.int64)
        dphi = (new_enc - self.enc) * self._rad_per_tick
        self.enc = new_enc
        self.meas_wheel = dphi / dt
        if not odometry:
            return
        v, w = wheels_to_body(cfg, dphi[:, 0], dphi[:, 1])  # per step: displacement, rotation
        self.odom = arc_step(self.odom, v, w, 1.0)

    def reset_odometry(self, pose: np.ndarray | None = None) -> None:
        """Set the odometry pose (default: the true pose), as the runtime does at start."""
        self.odom = (self.pose if pose is None else np.asarray(pose, dtype=np.float64).reshape(-1, 3)).copy()
