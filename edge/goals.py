"""Goals are observations: what the robot would sense at the place it should reach.

- On a robot: ``edge-run --save-goal NAME`` stores the current snapshot (ranges, odometry
  pose, wheel speeds, camera frame if any) as ``goals/NAME.npz``; a later run with
  ``--goal goals/NAME.npz`` plans toward its embedding and stops when the odometry pose is within
  ``goal.reach_m`` (or, if set, when the embedding distance is below ``goal.reach_embedding``).
- In simulation: ``--goal-pose x,y,theta`` renders the observation at that pose.

The file holds plain arrays only (``np.savez``, loaded with ``allow_pickle=False``): raw
readings, not the normalised vector, so a goal stays valid for any bundle.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge.sim.obs import SensorNormalisation, sensor_vector

GOAL_FORMAT_VERSION = 1


class GoalError(ValueError):
    """A goal file is missing, unreadable or malformed (message names the file)."""


@dataclass(frozen=True)
class GoalObservation:
    """Raw readings at the goal.

    Attributes:
        ranges_m: ``[8]`` metres (NaN = no reading).
        pose: ``(x, y, theta)``: odometry frame (saved goals) or world frame (simulation).
        wheel_speeds: ``(left, right)`` rad/s (zero for a rendered goal).
        frame: ``uint8 [64, 64, 3]`` RGB, or None.
        name: label for logs.
    """

    ranges_m: np.ndarray
    pose: tuple[float, float, float]
    wheel_speeds: tuple[float, float] = (0.0, 0.0)
    frame: np.ndarray | None = None
    name: str = "goal"

    def sensor(self, norm: SensorNormalisation | Mapping[str, float]) -> np.ndarray:
        """The sensor vector ``float32 [14]`` with a bundle's normalisation constants.

        The goal's wheel speeds are taken as zero: the robot should arrive and stop there.
        """
        return sensor_vector(np.asarray(self.ranges_m, np.float64), np.asarray(self.pose, np.float64),
                             np.zeros(2), norm)


def save_goal(path: str | Path, goal: GoalObservation, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``goal`` to ``path`` (``.npz``, folders created). Returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "version": np.array(GOAL_FORMAT_VERSION, np.int32),
        "ranges_m": np.asarray(goal.ranges_m, np.float64).reshape(8),
        "pose": np.asarray(goal.pose, np.float64).reshape(3),
        "wheel_speeds": np.asarray(goal.wheel_speeds, np.float64).reshape(2),
        "name": np.array(goal.name),
        "saved_utc": np.array(_dt.datetime.now(_dt.timezone.utc).isoformat()),
    }
    if goal.frame is not None:
        arrays["frame"] = np.asarray(goal.frame, np.uint8)
    for k, v in (meta or {}).items():
        arrays[f"meta_{k}"] = np.array(str(v))
    np.savez(path, **arrays)
    return path


def load_goal(path: str | Path) -> GoalObservation:
    """Read a goal written by :func:`save_goal`.

    Raises:
        GoalError: missing file, not an npz, wrong version or shapes (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise GoalError(f"goal file {str(path)!r} not found; save one on the robot with "
                        "`edge-run --save-goal NAME` (writes goals/NAME.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile / format errors
        raise GoalError(f"goal file {str(path)!r} is not a readable .npz goal ({e})") from e
    version = int(arrays.get("version", -1))
    if version != GOAL_FORMAT_VERSION:
        raise GoalError(f"goal file {str(path)!r} has format version {version}, this runtime reads "
                        f"{GOAL_FORMAT_VERSION}; save the goal again with `edge-run --save-goal NAME`")
    try:
        ranges = np.asarray(arrays["ranges_m"], np.float64).reshape(8)
        pose = tuple(float(v) for v in np.asarray(arrays["pose"], np.float64).reshape(3))
        speeds = tuple(float(v) for v in np.asarray(arrays["wheel_speeds"], np.float64).reshape(2))
    except (KeyError, ValueError) as e:
        raise GoalError(f"goal file {str(path)!r} lacks ranges_m [8], pose [3] or wheel_speeds [2] ({e})") from e
    if not all(math.isfinite(v) for v in pose):
        raise GoalError(f"goal file {str(path)!r} has a non-finite pose {pose}")
    frame = arrays.get("frame")
    if frame is not None and (frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3):
        raise GoalError(f"goal file {str(path)!r}: frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    return GoalObservation(ranges, pose, speeds, frame, str(arrays.get("name", path.stem)))


def parse_pose(text: str) -> tuple[float, float, float]:
    """``"1.0,-0.5,0"`` -> ``(1.0, -0.5, 0.0)``; ValueError naming the expected form."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as e:
        raise ValueError(f"pose {text!r} must be x,y,theta in metres and radians, e.g. 1.0,-0.5,0") from e
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"pose {text!r} must be three finite numbers x,y,theta, e.g. 1.0,-0.5,0")
    return values  # type: ignore[return-value]
