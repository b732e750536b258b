"""The sensor model's observation vector (the contract in docs/ARCHITECTURE.md).

``sensor_vector`` maps raw readings to ``float32 [14]``:

| slice | content |
|---|---|
| 0:8 | ranges / max_range (NaN dropouts -> 1.0, clipped to [0, 1]) |
| 8 | x / half_width (odometry pose, arena-centred world frame) |
| 9 | y / half_height |
| 10, 11 | sin(theta), cos(theta) |
| 12, 13 | wheel speeds (left, right) / max_wheel_speed |

The constants travel in the bundle manifest under ``normalisation`` as
``SensorNormalisation.as_dict()``; the runtime reads them from there, never hard-codes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

SENSOR_DIM = 14
NUM_RANGES = 8
RANGE_BEARINGS_DEG = tuple(45 * i for i in range(NUM_RANGES))  # index 0 forward, CCW


@dataclass(frozen=True)
class SensorNormalisation:
    """Normalisation constants of the 14-vector (also the manifest's ``normalisation`` dict)."""

    max_range_m: float = 2.0  # range sensor maximum (m)
    half_width_m: float = 1.5  # arena half width (m)
    half_height_m: float = 1.0  # arena half height (m)
    max_wheel_speed_rad_s: float = 15.0  # wheel speed limit (rad/s)

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (float(v) > 0):
                raise ValueError(f"SensorNormalisation.{k} must be > 0, got {v}")

    def as_dict(self) -> dict[str, float]:
        """JSON-ready dict for the bundle manifest / flight log metadata."""
        return {k: float(v) for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(d: Mapping[str, float]) -> "SensorNormalisation":
        """Inverse of ``as_dict``; unknown keys are an error naming them."""
        known = set(SensorNormalisation.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown normalisation keys {sorted(extra)}; expected a subset of {sorted(known)}")
        return SensorNormalisation(**{k: float(v) for k, v in d.items()})


def sensor_vector(
    ranges_m: np.ndarray,
    pose: np.ndarray,
    wheel_speeds: np.ndarray,
    cfg: SensorNormalisation | Mapping[str, float],
) -> np.ndarray:
    """Build observation vectors.

    Args:
        ranges_m: ``[..., 8]`` metres, NaN for dropouts.
        pose: ``[..., 3]`` odometry (x, y, theta) in the arena-centred world frame.
        wheel_speeds: ``[..., 2]`` rad/s (left, right).
        cfg: ``SensorNormalisation`` or its ``as_dict()``.
    Returns:
        ``float32 [..., 14]``.
    """
    if not isinstance(cfg, SensorNormalisation):
        cfg = SensorNormalisation.from_dict(cfg)
    ranges_m = np.asarray(ranges_m, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    wheel_speeds = np.asarray(wheel_speeds, dtype=np.float64)
    if ranges_m.shape[-1] != NUM_RANGES or pose.shape[-1] != 3 or wheel_speeds.shape[-1] != 2:
        raise ValueError(
            f"sensor_vector expects ranges [..., 8], pose [..., 3], wheel_speeds [..., 2]; got "
            f"{ranges_m.shape}, {pose.shape}, {wheel_speeds.shape}"
        )
    r = np.clip(np.nan_to_num(ranges_m / cfg.max_range_m, nan=1.0), 0.0, 1.0)
    out = np.concatenate(
        [
            r,
            pose[..., 0:1] / cfg.half_width_m,
            pose[..., 1:2] / cfg.half_height_m,
            np.sin(pose[..., 2:3]),
            np.cos(pose[..., 2:3]),
            wheel_speeds / cfg.max_wheel_speed_rad_s,
        ],
        axis=-1,
    )
    return out.astype(np.float32)
