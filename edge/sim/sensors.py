"""Eight range sensors (time-of-flight style) on the robot's rim.

Sensor ``i`` sits on the body edge at robot-relative bearing ``45 * i`` degrees (index 0
forward, counter-clockwise) and measures the distance from the body surface to the first wall
along that bearing: ``range = raycast_from_centre - robot_radius``, clipped to
``[0, max_range]``; ``max_range`` when nothing is within reach. Gaussian noise and random
dropouts (NaN) are optional.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.sim.geometry import raycast
from edge.sim.obs import NUM_RANGES

BEARINGS_RAD = np.deg2rad(np.arange(NUM_RANGES) * 45.0)


@dataclass(frozen=True)
class RangeConfig:
    """Range sensor model."""

    max_range: float = 2.0  # m; readings beyond are reported as max_range (VL53L1X-class sensor)
    noise_std: float = 0.0  # std of additive Gaussian noise (m)
    dropout_prob: float = 0.0  # probability that a reading is NaN (no return)

    def __post_init__(self) -> None:
        if not (self.max_range > 0):
            raise ValueError(f"RangeConfig.max_range must be > 0 m, got {self.max_range}")
        if self.noise_std < 0:
            raise ValueError(f"RangeConfig.noise_std must be >= 0 m, got {self.noise_std}")
        if not (0 <= self.dropout_prob < 1):
            raise ValueError(f"RangeConfig.dropout_prob must be in [0, 1), got {self.dropout_prob}")


def read_ranges(
    cfg: RangeConfig,
    pose: np.ndarray,
    robot_radius: float,
    seg: np.ndarray,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Range readings ``float64 [B, 8]`` (m, NaN = dropout) for poses ``[B, 3]`` and walls ``[B, S, 4]``."""
    ang = pose[:, 2:3] + BEARINGS_RAD[None, :]
    dirs = np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    dist, idx, _ = raycast(pose[:, :2], dirs, seg, max_dist=cfg.max_range + robot_radius)
    r = np.where(idx < 0, cfg.max_range, dist - robot_radius)
    if rng is not None and cfg.noise_std > 0:
        r = r + rng.normal(0.0, cfg.noise_std, size=r.shape)
    r = np.clip(r, 0.0, cfg.max_range)  # exactly max_range when nothing is within reach
    if rng is not None and cfg.dropout_prob > 0:
        r = np.where(rng.uniform(size=r.shape) < cfg.dropout_prob, np.nan, r)
    return r
