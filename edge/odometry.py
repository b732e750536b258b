"""Differential-drive odometry integrated from cumulative wheel-encoder counts.

The ESP32 reports cumulative quadrature counts per wheel (int32, wrapping). Each update takes
the count differences since the previous one, converts them to wheel travel, and integrates
the pose with the midpoint rule (exact for constant-curvature motion over a tick when the turn
is small). A device reset (counts restart at zero) or an implausible jump is not integrated:
the odometry re-bases on the new counts and keeps its pose.

Pose convention (docs/ARCHITECTURE.md): world frame ``(x m, y m, theta rad)``, theta CCW from
+x, wrapped to (-pi, pi].
"""

from __future__ import annotations

import math

_INT32 = 1 << 32


def wrap_angle(theta: float) -> float:
    """Wrap an angle to (-pi, pi] radians."""
    wrapped = math.fmod(theta + math.pi, 2.0 * math.pi)
    if wrapped <= 0.0:
        wrapped += 2.0 * math.pi
    return wrapped - math.pi


def _count_delta(new: int, old: int) -> int:
    """Difference of two int32 cumulative counters, allowing one wrap-around."""
    d = (int(new) - int(old)) % _INT32
    return d - _INT32 if d >= _INT32 // 2 else d


class Odometry:
    """Pose from encoder counts.

    Args:
        wheel_radius_m: wheel radius, metres.
        wheel_base_m: distance between the wheels' contact points, metres.
        ticks_per_rev: encoder counts per wheel revolution.
        pose: initial pose ``(x, y, theta)``.
        max_step_rev: a count change of more than this many wheel revolutions in one update is
            treated as a device reset (re-base, no motion integrated).
    """

    def __init__(self, wheel_radius_m: float, wheel_base_m: float, ticks_per_rev: float,
                 pose: tuple[float, float, float] = (0.0, 0.0, 0.0), max_step_rev: float = 5.0):
        if wheel_radius_m <= 0 or wheel_base_m <= 0 or ticks_per_rev <= 0:
            raise ValueError("Odometry: wheel_radius_m, wheel_base_m and ticks_per_rev must be > 0")
        self._m_per_tick = 2.0 * math.pi * wheel_radius_m / ticks_per_rev
        self._base = wheel_base_m
        self._max_step = max_step_rev * ticks_per_rev
        self._x, self._y, self._th = float(pose[0]), float(pose[1]), wrap_angle(float(pose[2]))
        self._last: tuple[int, int] | None = None
        self.rebases = 0  # how many times the counts were re-based (resets, jumps)

    @property
    def pose(self) -> tuple[float, float, float]:
        """Current pose ``(x m, y m, theta rad)``."""
        return (self._x, self._y, self._th)

    def reset(self, pose: tuple[float, float, float]) -> None:
        """Set the pose; the next update re-bases the counts."""
        self._x, self._y, self._th = float(pose[0]), float(pose[1]), wrap_angle(float(pose[2]))
        self._last = None

    def rebase(self) -> None:
        """Forget the previous counts (after a device reset); the pose is kept."""
        self._last = None
        self.rebases += 1

    def update(self, left_count: int, right_count: int) -> tuple[float, float, float]:
        """Integrate the motion since the previous counts and return the new pose."""
        counts = (int(left_count), int(right_count))
        if self._last is None:
            self._last = counts
            return self.pose
        dl_ticks = _count_delta(counts[0], self._last[0])
        dr_ticks = _count_delta(counts[1], self._last[1])
        self._last = counts
        if abs(dl_ticks) > self._max_step or abs(dr_ticks) > self._max_step:
            self.rebases += 1
            return self.pose
        dl = dl_ticks * self._m_per_tick
        dr = dr_ticks * self._m_per_tick
        ds = 0.5 * (dl + dr)
        dth = (dr - dl) / self._base
        mid = self._th + 0.5 * dth
        self._x += ds * math.cos(mid)
        self._y += ds * math.sin(mid)
        self._th = wrap_angle(self._th + dth)
        return self.pose
