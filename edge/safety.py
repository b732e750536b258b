"""Safety: every wheel command passes :class:`SafetyGuard`; signals end the run through :class:`EStop`.

The guard, in order:

1. **Sensor check**: NaN ranges, ranges outside ``[0, max_range]``, non-finite or implausible
   wheel speeds, a non-finite pose. More than ``limits.max_bad_sensor_ticks`` consecutive bad
   ticks -> stop (the command becomes zero) until the sensors are good again.
2. **Range guard**: no forward motion while the forward range (bearing 0) is closer than
   ``limits.range_guard_m`` or a diagonal front range (+-45 degrees) is closer than half of
   it (diagonal beams also see walls beside the path, e.g. door posts while passing a door);
   the same for backward motion with the rear ranges (180, +-135 degrees). Turning in place
   stays allowed, so the robot can turn away. An unknown (NaN) range in a cone counts as an
   obstacle.
3. **Speed limit**: both wheels are scaled together so that ``max(|left|, |right|) <=
   limits.max_speed`` (the turning curvature is kept).
4. **Acceleration limit**: speeding a wheel up is limited to ``limits.max_accel * dt`` per
   tick. Slowing down is never limited: stopping is the safe direction.

All commands are normalised wheel speeds in ``[-1, 1]`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.config import LimitsConfig, RecoveryConfig

#: Sensor indices (index 0 forward, counter-clockwise, 45 degrees apart) per guarded direction,
#: with the fraction of ``range_guard_m`` each must keep clear.
FRONT_SENSORS: tuple[int, ...] = (0, 1, 7)
REAR_SENSORS: tuple[int, ...] = (4, 3, 5)
CONE_FRACTION = np.array([1.0, 0.5, 0.5])

#: Kinds of guard change; every reason text :meth:`SafetyGuard.guard` gives starts with its kind.
NON_FINITE, SENSOR_FAULT, RANGE_GUARD, SPEED_LIMIT, ACCEL_LIMIT = (
    "non-finite command", "sensor fault", "range guard", "speed limit", "acceleration limit")
#: In the order the run summary lists ties (the order a command meets the checks, faults last).
GUARD_REASON_KINDS: tuple[str, ...] = (RANGE_GUARD, SPEED_LIMIT, ACCEL_LIMIT, SENSOR_FAULT, NON_FINITE)


def guard_reason_kind(reason: str) -> str:
    """The kind of a guard reason text ("range guard: front sensor 0 reads ..." -> "range guard")."""
    for kind in GUARD_REASON_KINDS:
        if reason.startswith(kind):
            return kind
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class GuardResult:
    """A guarded command.

    Attributes:
        left, right: normalised wheel commands actually allowed, in [-1, 1].
        modified: True when the guard changed the requested command.
        reasons: why it was changed (e.g. ``"range guard: front 0.08 m < 0.12 m"``).
        sensor_fault: True when the command was zeroed because of bad sensor values.
    """

    left: float
    right: float
    modified: bool
    reasons: tuple[str, ...]
    sensor_fault: bool


def sensor_problems(ranges_m: Sequence[float], wheel_speeds: Sequence[float],
                    pose: Sequence[float], max_range_m: float, max_wheel_speed: float) -> list[str]:
    """Return what is wrong with one observation (empty when it is valid).

    Args:
        ranges_m: 8 ranges, metres; NaN = dropout (counted as a problem).
        wheel_speeds: measured (left, right) rad/s.
        pose: odometry (x m, y m, theta rad).
        max_range_m: the sensors' maximum range; values above it (5 % tolerance) are invalid.
        max_wheel_speed: rad/s; measured speeds above twice this are invalid.
    """
    problems = []
    r = np.asarray(ranges_m, dtype=np.float64)
    if r.shape != (8,):
        return [f"expected 8 ranges, got shape {r.shape}"]
    if np.isnan(r).any():
        problems.append(f"NaN range at {np.flatnonzero(np.isnan(r)).tolist()}")
    finite = r[~np.isnan(r)]
    if ((finite < 0.0) | (finite > 1.05 * max_range_m)).any():
        problems.append(f"range outside [0, {max_range_m:g}] m: {finite.round(3).tolist()}")
    w = np.asarray(wheel_speeds, dtype=np.float64)
    if not np.isfinite(w).all() or (np.abs(w) > 2.0 * max_wheel_speed).any():
        problems.append(f"implausible wheel speeds {w.tolist()} rad/s")
    if not np.isfinite(np.asarray(pose, dtype=np.float64)).all():
        problems.append(f"non-finite odometry pose {list(pose)}")
    return problems


class SafetyGuard:
    """Applies the limits of :class:`~edge.config.LimitsConfig` to every command.

    Args:
        limits: the configured limits.
        max_range_m: range sensors' maximum range (bundle normalisation).
        max_wheel_speed: rad/s at a normalised command of 1 (bundle action scaling).
    """

    def __init__(self, limits: LimitsConfig, max_range_m: float, max_wheel_speed: float):
        self.limits = limits
        self.max_range_m = float(max_range_m)
        self.max_wheel_speed = float(max_wheel_speed)
        self._prev = (0.0, 0.0)
        self._bad_ticks = 0
        self.interventions = 0   # ticks where the command was changed
        self.fault_ticks = 0     # ticks stopped for bad sensors

    @property
    def last_command(self) -> tuple[float, float]:
        """The last command this guard allowed (normalised)."""
        return self._prev

    def reset(self, command: tuple[float, float] = (0.0, 0.0)) -> None:
        """Set the command the acceleration limit starts from (after a stop or a reconnect)."""
        self._prev = (float(command[0]), float(command[1]))

    def guard(self, left: float, right: float, ranges_m: Sequence[float],
              wheel_speeds: Sequence[float], pose: Sequence[float], dt: float) -> GuardResult:
        """Guard one requested command for a tick of ``dt`` seconds."""
        reasons: list[str] = []
        req_l, req_r = float(left), float(right)
        problems = sensor_problems(ranges_m, wheel_speeds, pose, self.max_range_m, self.max_wheel_speed)
        if problems:
            self._bad_ticks += 1
        else:
            self._bad_ticks = 0
        if not (math.isfinite(req_l) and math.isfinite(req_r)):
            reasons.append(f"{NON_FINITE} ({req_l}, {req_r})")
            return self._stop(reasons, sensor_fault=False)
        if self._bad_ticks > self.limits.max_bad_sensor_ticks:
            self.fault_ticks += 1
            reasons.append(f"{SENSOR_FAULT}: " + "; ".join(problems))
            return self._stop(reasons, sensor_fault=True)
        l, r = max(-1.0, min(1.0, req_l)), max(-1.0, min(1.0, req_r))

        ranges = np.asarray(ranges_m, dtype=np.float64)
        v, w = 0.5 * (l + r), 0.5 * (r - l)
        guard_m = self.limits.range_guard_m
        if guard_m > 0.0:
            limit = guard_m * CONE_FRACTION
            for cone, name, moving in ((FRONT_SENSORS, "front", v > 0.0), (REAR_SENSORS, "rear", v < 0.0)):
                values = ranges[list(cone)]
                blocked = np.isnan(values) | (values < limit)
                if moving and blocked.any():
                    i = int(np.argmax(blocked))
                    reasons.append(f"{RANGE_GUARD}: {name} sensor {cone[i]} reads {values[i]:.3f} m "
                                   f"< {limit[i]:g} m")
                    v = 0.0
            l, r = v - w, v + w

        peak = max(abs(l), abs(r))
        if peak > self.limits.max_speed:
            scale = self.limits.max_speed / peak
            l, r = l * scale, r * scale
            reasons.append(f"{SPEED_LIMIT} {self.limits.max_speed:g}")

        step = self.limits.max_accel * max(dt, 0.0)
        l_lim = _limit_speedup(self._prev[0], l, step)
        r_lim = _limit_speedup(self._prev[1], r, step)
        if (l_lim, r_lim) != (l, r):
            reasons.append(f"{ACCEL_LIMIT} {self.limits.max_accel:g}/s")
        l, r = l_lim, r_lim

        self._prev = (l, r)
        modified = abs(l - req_l) > 1e-9 or abs(r - req_r) > 1e-9
        if modified:
            self.interventions += 1
        return GuardResult(l, r, modified, tuple(reasons), False)

    def _stop(self, reasons: list[str], sensor_fault: bool) -> GuardResult:
        self._prev = (0.0, 0.0)
        self.interventions += 1
        return GuardResult(0.0, 0.0, True, tuple(reasons), sensor_fault)


def _limit_speedup(prev: float, target: float, step: float) -> float:
    """Per-wheel acceleration limit: slowing toward zero is free, speeding up is ``<= step``."""
    if prev * target < 0.0:      # reversing: drop to zero freely, then speed up from zero
        prev = 0.0
    if abs(target) <= abs(prev):
        return target
    delta = max(-step, min(step, target - prev))
    return prev + delta


#: Wall follower constants, tuned in the simulator for the shipped robot geometry (0.16 m wheel
#: base, 0.5 m/s at a normalised command of 1); the settings a user may change are in
#: :class:`~edge.config.RecoveryConfig`.
FOLLOW_GAIN = 2.0          # turn per metre of side-distance error (normalised turn / m)
FOLLOW_ALIGN_GAIN = 1.0    # turn per metre of front-diagonal minus rear-diagonal range (keeps parallel)
FOLLOW_MAX_TURN = 0.35     # largest turn while tracking the wall (normalised)
FOLLOW_LOST_M = (0.4, 0.55)  # side / diagonal ranges beyond which the wall is lost (a door or a corner)
FOLLOW_ARC = (0.4, 0.16)   # (speed, turn) of the arc towards the lost wall: ~0.2 m radius round a door post
FOLLOW_BLOCKED_M = (0.15, 0.06)  # front range, or front diagonal projected on the side, below which
                                 # the follower turns in place, away from the wall
FOLLOW_SPIN = 0.5          # turn (normalised) of the follower's turns in place
FOLLOW_CORNER_M = (0.2, 0.35, 0.15)  # inner corner: front < [0], side < [1], after > [2] m along the wall
FOLLOW_UTURN_M = (0.3, 0.35)  # the turn in place after a turn-back ends when front > [0] and new side < [1]
FOLLOW_UTURN_S = 2.0       # ... or after this long (a half turn in place takes ~1 s)
FOLLOW_NEAR_M = 0.3        # a following starts only with a wall this close (a stall in the open does not)
FOLLOW_LEAVE_FRAC = 0.03   # leave when the goal distance is this fraction below where it got stuck
FOLLOW_CLEAR_S = 0.75      # ... and the planner's next this-many seconds of plan run clear of the ranges
FOLLOW_CLEAR_MARGIN_M = 0.05  # ... by this much (metres, beyond the body)
_DIAG_CAP_M = 0.6          # diagonal ranges are capped here (a far reading says only "no wall")


def wall_follow_command(ranges_m: np.ndarray, side: np.ndarray, distance_m: float, speed: float) -> np.ndarray:
    """Normalised wheel commands ``[B, 2]`` that follow the wall on ``side [B]`` (+1: the wall on
    the robot's left, -1: on its right) at a side range of ``distance_m``, from range readings
    ``ranges_m [B, 8]`` (metres, sensor ``i`` at bearing ``45 * i`` degrees, counter-clockwise;
    NaN counts as touching).

    Tracking: the turn is ``FOLLOW_GAIN * (d - distance_m)`` towards the wall, where ``d`` is
    the nearest of the side range and the two diagonal ranges projected on the side, plus
    ``FOLLOW_ALIGN_GAIN * (front diagonal - rear diagonal)`` (zero when parallel to a straight
    wall). When side and both diagonals see no wall (the end of a wall: a door or an outer
    corner) the robot arcs round towards that side, which takes it through a door. When the
    front is blocked (an inner corner, or facing the wall after a back-off) it turns in place
    away from the wall.
    """
    r = np.nan_to_num(np.asarray(ranges_m, dtype=np.float64), nan=0.0)
    s = np.asarray(side, dtype=np.float64)
    left = s > 0
    lat = np.where(left, r[:, 2], r[:, 6])
    diag = np.minimum(np.where(left, r[:, 1], r[:, 7]), _DIAG_CAP_M)
    rear = np.minimum(np.where(left, r[:, 3], r[:, 5]), _DIAG_CAP_M)
    d = np.minimum.reduce([lat, diag * math.sqrt(0.5), rear * math.sqrt(0.5)])
    w = s * np.clip(FOLLOW_GAIN * (d - distance_m) + FOLLOW_ALIGN_GAIN * math.sqrt(0.5) * (diag - rear),
                    -FOLLOW_MAX_TURN, FOLLOW_MAX_TURN)
    v = np.minimum(float(speed), 1.0 - np.abs(w))  # slower in sharp turns: no wheel command beyond 1
    lost = (lat > FOLLOW_LOST_M[0]) & (diag > FOLLOW_LOST_M[1]) & (rear > FOLLOW_LOST_M[1])
    v = np.where(lost, FOLLOW_ARC[0], v)
    w = np.where(lost, s * FOLLOW_ARC[1], w)
    blocked = (r[:, 0] < FOLLOW_BLOCKED_M[0]) | (diag * math.sqrt(0.5) < FOLLOW_BLOCKED_M[1])
    v = np.where(blocked, 0.0, v)
    w = np.where(blocked, -s * FOLLOW_SPIN, w)
    return np.stack([v - w, v + w], axis=-1)


def plan_is_clear(plan: np.ndarray, ranges_m: np.ndarray, period_s: float, ticks_per_step: int,
                  wheel_radius_m: float, wheel_base_m: float, max_wheel_speed: float,
                  horizon_s: float | None = None, margin_m: float | None = None) -> np.ndarray:
    """``[B] bool``: the planner's plan drives clear of the obstacles the range sensors see now.

    The first ``horizon_s`` of each plan ``[B, H, 2]`` (normalised wheel commands, one row per
    planner step of ``ticks_per_step`` control ticks of ``period_s``) is driven through the
    differential-drive kinematics from the robot's pose now; every point of the path must lie
    nearer than the range reading along its bearing (``ranges_m [B, n]``, metres from the body
    surface, beam ``i`` at ``360 * i / n`` degrees counter-clockwise; between two beams the
    nearer of the two counts; NaN counts as touching) less ``margin_m`` (defaults:
    ``FOLLOW_CLEAR_S`` and ``FOLLOW_CLEAR_MARGIN_M``). This is the leave
    condition of the Tangent Bug algorithm: the wall follower hands the robot back to the planner
    only where the planner would not drive it straight back into the wall.
    """
    horizon_s = FOLLOW_CLEAR_S if horizon_s is None else horizon_s
    margin_m = FOLLOW_CLEAR_MARGIN_M if margin_m is None else margin_m
    a = np.asarray(plan, dtype=np.float64)
    r = np.nan_to_num(np.asarray(ranges_m, dtype=np.float64), nan=0.0)
    b, h = a.shape[0], a.shape[1]
    n = r.shape[1]
    ticks = max(1, round(horizon_s / period_s))
    step = np.minimum(np.arange(ticks) // max(1, int(ticks_per_step)), h - 1)
    wheel = a[:, step] * max_wheel_speed * wheel_radius_m        # [B, T, 2] wheel rim speeds, m/s
    v = wheel.mean(axis=-1)
    w = (wheel[..., 1] - wheel[..., 0]) / wheel_base_m
    th = np.cumsum(w * period_s, axis=1)
    x = np.cumsum(v * np.cos(th) * period_s, axis=1)
    y = np.cumsum(v * np.sin(th) * period_s, axis=1)
    rho = np.hypot(x, y)
    beam = np.mod(np.arctan2(y, x), 2 * np.pi) / (2 * np.pi / n)  # fractional beam index
    lo = np.floor(beam).astype(np.int64) % n
    frac = beam - np.floor(beam)
    rows = np.arange(b)[:, None]
    between = np.minimum(r[rows, lo], r[rows, (lo + 1) % n])
    nearest = r[rows, np.rint(beam).astype(np.int64) % n]
    free = np.where((frac > 0.25) & (frac < 0.75), between, nearest)
    return np.all((rho <= free - margin_m) | (rho < 1e-3), axis=1)  # standing still hits nothing


class StuckRecovery:
    """The unsticking reflex and the wall follower of :class:`~edge.config.RecoveryConfig`,
    batched over ``B`` robots (``edge-run`` uses one; ``edge-eval`` with ``eval.recovery=true``
    runs all its episodes at once).

    Each tick, :meth:`step` takes the commands the planner asks for and the odometry position,
    and returns the commands to send. A robot is *stuck* when for ``stuck_s`` the command it
    was sent asked to drive (``|mean wheel command| > drive_threshold``) while its odometry moved
    slower than ``min_speed_mps``: it is pressed against an obstacle or the range guard holds it.
    A stuck robot then drives the other way for ``backoff_s`` with a turn of random direction
    (``[-s - t, -s + t]`` after a forward push).

    With ``follow_wall`` (and :meth:`step` given the ranges and the embedding distance to the
    goal), the robot then follows the wall, as the Bug algorithms of motion planning do: it
    remembers the embedding distance to the goal where it got stuck and hands control back to the
    planner as soon as the distance is ``FOLLOW_LEAVE_FRAC`` (3%) below it (the robot has got round
    the obstacle, e.g. through a door; the margin keeps embedding noise from handing a robot still
    at the wall back to the planner, which would push it into the wall again) and, when
    :meth:`step` is given it, the planner's plan runs clear of the walls the range sensors see
    (:func:`plan_is_clear`: the leave condition of the Tangent Bug algorithm; a robot that gets
    closer to the goal along the wall, with the goal still behind it, is not handed back to be
    pushed into it again), or after ``follow_max_s``. The nearest range beam gives the wall's
    bearing; the robot follows the wall towards the longer of the two beams 90 degrees either side
    of it (more wall that way, so more likely the door; for a robot facing the wall these are its
    side ranges), except when that wall lies beside the push, 90 degrees from where the robot
    pushed (the range guard held it while it drove along a wall that does not block its way): then
    it follows that wall on in the push direction, round inner corners too, and the remembered
    direction is left to a wall that does block the way. When the back-off ends it first turns in
    place, the short way round, until the wall lies along that side (after a backward push the wall
    is behind the robot). It turns back at the first inner corner (the wall ended without an
    opening): it turns in place until the wall lies along its other side, and the way back gets a
    whole ``follow_max_s`` of its own. Later followings in the same episode keep the last
    direction; after a timeout on the first way they go the other way. A stall with no wall within
    ``FOLLOW_NEAR_M`` (e.g. a robot turning in place from rest) gets the back-off only. Stuck while
    following: the back-off runs, then the following goes on.

    Why: the world models this runtime plans with are least accurate in contact with walls (a
    predictor that takes the robot through a wall keeps the planner pushing against it), the
    embedding distance to a goal behind a wall behaves like the straight-line distance (the
    planner has a local minimum at the wall), and the simulated robot, like one with a bumper,
    does not slide along a wall it touches. Measured in docs/TRAINING.md ("What still fails",
    items 8 and 9).

    Stall detection uses the wheel encoders' odometry: a robot whose wheels spin on the floor
    while it stands still is not detected (a current sensor or an IMU would be needed).

    Args:
        cfg: the reflex settings.
        period_s: control period (seconds per :meth:`step` call).
        batch: number of robots B.
        seed: seed of the turn directions.
    """

    def __init__(self, cfg: RecoveryConfig, period_s: float, batch: int = 1, seed: int | None = None):
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"StuckRecovery: period_s must be a finite number > 0, got {period_s!r}")
        if batch < 1:
            raise ValueError(f"StuckRecovery: batch must be >= 1, got {batch!r}")
        self.cfg = cfg
        self.period_s = float(period_s)
        self.batch = int(batch)
        self.stuck_ticks = max(1, round(cfg.stuck_s / period_s))
        self.backoff_ticks = max(1, round(cfg.backoff_s / period_s))
        self.follow_max_ticks = max(1, round(cfg.follow_max_s / period_s))
        self.uturn_ticks = max(1, round(FOLLOW_UTURN_S / period_s))
        self.rng = np.random.default_rng(seed)
        self.count = np.zeros(batch, dtype=np.int64)        # recoveries started per robot
        self.follows = np.zeros(batch, dtype=np.int64)      # wall followings started per robot
        self.follow_ticks = np.zeros(batch, dtype=np.int64)  # ticks spent following the wall per robot
        self._xy = np.full((batch, 2), np.nan)             # odometry position at the last step (NaN: none yet)
        self._sent_v = np.zeros(batch)                     # mean wheel command sent at the last step
        self._stuck = np.zeros(batch, dtype=np.int64)      # consecutive ticks pushing without moving
        self._left = np.zeros(batch, dtype=np.int64)       # reflex ticks still to drive
        self._command = np.zeros((batch, 2))               # the running reflex's command
        self._follow = np.zeros(batch, dtype=bool)         # following the wall
        self._side = np.zeros(batch)                       # +1 wall on the left, -1 on the right
        self._next_side = np.zeros(batch)                  # side of the next following (0: choose by the ranges)
        self._d_hit = np.zeros(batch)                      # embedding goal distance where it got stuck
        self._xy_hit = np.zeros((batch, 2))                # odometry position where it got stuck
        self._turned = np.zeros(batch, dtype=bool)         # turned back at an inner corner already
        self._uturn = np.zeros(batch, dtype=np.int64)      # ticks left of the follower's turn in place
        self._spin = np.zeros(batch)                       # its turn (normalised, + counter-clockwise)
        self._align = np.zeros(batch, dtype=bool)          # turn the wall onto the side when the back-off ends
        self._ticks = np.zeros(batch, dtype=np.int64)      # ticks of the current following
        #: ``[B]`` why a following ended at the last step: "" (it did not), "closer" or "timeout"
        self.follow_ended = np.full(batch, "", dtype="<U7")

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget the motion history and stop following (all robots, or those in ``mask [B]
        bool``): after a goal change, a stop or a link loss. Counters are kept."""
        m = np.ones(self.batch, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        self._xy[m] = np.nan
        self._sent_v[m] = 0.0
        self._stuck[m] = 0
        self._left[m] = 0
        self._follow[m] = False
        self._uturn[m] = 0
        self._align[m] = False
        self._next_side[m] = 0.0
        self._ticks[m] = 0

    @property
    def recovering(self) -> np.ndarray:
        """``[B] bool``: the reflex will drive these robots at the next :meth:`step`."""
        return self._left > 0

    @property
    def following(self) -> np.ndarray:
        """``[B] bool``: these robots are following a wall."""
        return self._follow.copy()

    @property
    def stuck_distance(self) -> np.ndarray:
        """``[B]``: the embedding distance to the goal where the last following started."""
        return self._d_hit.copy()

    @property
    def leave_distance(self) -> np.ndarray:
        """``[B]``: the embedding distance to the goal below which the current following ends
        (``FOLLOW_LEAVE_FRAC`` below :attr:`stuck_distance`)."""
        return self._d_hit * (1 - FOLLOW_LEAVE_FRAC)

    @property
    def side(self) -> np.ndarray:
        """``[B]``: +1 follows with the wall on the left, -1 on the right (meaningful while following)."""
        return self._side.copy()

    def step(self, requested: np.ndarray, xy: np.ndarray, active: np.ndarray | None = None,
             ranges_m: np.ndarray | None = None,
             goal_distance: np.ndarray | None = None,
             plan_clear: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tick.

        Args:
            requested: ``[B, 2]`` normalised wheel commands the planner asks for.
            xy: ``[B, 2]`` odometry position (metres) now, i.e. after the last command.
            active: ``[B] bool`` robots that may start a reflex (default all); others pass through
                and stop following.
            ranges_m: ``[B, 8]`` range readings (metres) now; with ``goal_distance``, enables the
                wall follower (when ``follow_wall`` is on).
            goal_distance: ``[B]`` embedding distance from the current observation to the goal.
            plan_clear: ``[B] bool`` the planner's plan runs clear of the obstacles in view
                (:func:`plan_is_clear`); when given, a following ends on a closer goal only where
                it is true (default: not checked).
        Returns:
            ``command [B, 2]`` to send, ``override [B] bool`` (the command is the reflex's or the
            wall follower's, not the planner's), ``started [B] bool`` (a reflex started this tick).
        """
        req = np.asarray(requested, dtype=np.float64).reshape(self.batch, 2)
        pos = np.asarray(xy, dtype=np.float64).reshape(self.batch, 2)
        c = self.cfg
        ok = np.ones(self.batch, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        follow_on = c.follow_wall and ranges_m is not None and goal_distance is not None
        self.follow_ended[:] = ""
        if follow_on:
            r = np.nan_to_num(np.asarray(ranges_m, dtype=np.float64).reshape(self.batch, 8), nan=0.0)  # NaN: touching
            n = np.argmin(r, axis=1)  # the beam that points at the nearest wall
            d = np.asarray(goal_distance, dtype=np.float64).reshape(self.batch)
            self._follow &= ok
            closer = self._follow & (d < self.leave_distance)
            if plan_clear is not None:  # the planner would drive the robot straight back into the wall
                closer &= np.asarray(plan_clear, dtype=bool).reshape(self.batch)
            timeout = self._follow & ~closer & (self._ticks >= self.follow_max_ticks)
            # after a turn-back the robot already heads the other way: the next following keeps it
            self._next_side = np.where(timeout & ~self._turned, -self._side, self._next_side)
            self._follow &= ~(closer | timeout)
            self.follow_ended[closer] = "closer"
            self.follow_ended[timeout] = "timeout"
            side_range = np.where(self._side > 0, r[:, 2], r[:, 6])
            along = np.hypot(*(pos - self._xy_hit).T)
            corner = (self._follow & ~self._turned & (r[:, 0] < FOLLOW_CORNER_M[0])
                      & (side_range < FOLLOW_CORNER_M[1]) & (along > FOLLOW_CORNER_M[2]))
            self._side = np.where(corner, -self._side, self._side)
            self._turned |= corner
            self._next_side = np.where(corner, self._side, self._next_side)
            self._ticks = np.where(corner, 0, self._ticks)  # the way back gets a full follow_max_s
            self._uturn = np.where(corner, self.uturn_ticks, self._uturn)
            self._spin = np.where(corner, -self._side * FOLLOW_SPIN, self._spin)  # towards the wall it followed
            # the back-off is over: turn in place the short way round until the wall (the nearest beam)
            # lies along the side the robot follows it on, so the follower starts along the wall, not
            # in an arc in the open (after a backward push the wall is behind the robot)
            align = self._follow & self._align & (self._left == 0)
            bearing = n * (math.pi / 4) - self._side * (math.pi / 2)
            turn = np.sign(np.mod(bearing + math.pi, 2 * math.pi) - math.pi)
            self._uturn = np.where(align, self.uturn_ticks, self._uturn)
            self._spin = np.where(align, turn * FOLLOW_SPIN, self._spin)
            self._align &= ~align
            side_new = np.where(self._side > 0, r[:, 2], r[:, 6])
            along_new = (r[:, 0] > FOLLOW_UTURN_M[0]) & (side_new < FOLLOW_UTURN_M[1])
            self._uturn = np.where(~self._follow | along_new, 0, self._uturn)
            follow_cmd = wall_follow_command(r, self._side, c.follow_distance_m, c.follow_speed)
            # the turn-back and the start: turn in place until the wall lies along the side
            spin = np.stack([-self._spin, self._spin], axis=-1)
            follow_cmd = np.where((self._uturn > 0)[:, None], spin, follow_cmd)
            self._uturn = np.maximum(self._uturn - 1, 0)
            req = np.where(self._follow[:, None], follow_cmd, req)
        with np.errstate(invalid="ignore"):
            speed = np.hypot(*(pos - self._xy).T) / self.period_s  # NaN on the first tick: not stuck
        self._xy = pos.copy()
        pushing = (np.abs(self._sent_v) > c.drive_threshold) & (speed < c.min_speed_mps) & (self._left == 0)
        self._stuck = np.where(pushing, self._stuck + 1, 0)
        started = (self._stuck >= self.stuck_ticks) & (self._left == 0) & ok
        if started.any():
            turn = self.rng.choice([-1.0, 1.0], size=self.batch)
            back = -np.sign(self._sent_v) * c.backoff_speed
            cmd = np.stack([back - c.backoff_turn * turn, back + c.backoff_turn * turn], axis=-1)
            self._command = np.where(started[:, None], cmd, self._command)
            self._left = np.where(started, self.backoff_ticks, self._left)
            self._stuck[started] = 0
            self.count += started
            if follow_on:
                new = started & ~self._follow
                new &= r.min(axis=1) < FOLLOW_NEAR_M  # a wall to follow is within reach
                # the nearest beam n points at the wall; travel along the wall towards the longer of the
                # beams 90 degrees either side: towards n + 2 (counter-clockwise of the wall) puts the
                # wall on the right, towards n - 2 on the left
                ar = np.arange(self.batch)
                towards = np.where(r[ar, (n + 2) % 8] > r[ar, (n - 2) % 8], -1.0, 1.0)
                # a wall beside the push (90 degrees either side of where the robot pushed: the range
                # guard held it while it drove along the wall) is not what blocks the way: follow it
                # on in the push direction, round inner corners too (no turn-back), and leave the
                # remembered direction to the wall that does block it
                rel = np.where(self._sent_v > 0, n, (n + 4) % 8)
                grazing = (rel == 2) | (rel == 6)
                side = np.where(grazing, np.where(rel == 2, 1.0, -1.0),
                                np.where(self._next_side != 0, self._next_side, towards))
                self._side = np.where(new, side, self._side)
                self._next_side = np.where(new & ~grazing, side, self._next_side)
                self._d_hit = np.where(new, d, self._d_hit)
                self._xy_hit = np.where(new[:, None], pos, self._xy_hit)
                self._turned = np.where(new, grazing, self._turned)
                self._ticks = np.where(new, 0, self._ticks)
                self._follow |= new
                self._align |= started & self._follow
                self.follows += new
        reflex = self._left > 0
        out = np.where(reflex[:, None], self._command, req)
        override = reflex | self._follow
        self._ticks += self._follow
        self.follow_ticks += self._follow
        self._left = np.maximum(self._left - 1, 0)
        self._sent_v = out.mean(axis=1)
        return out, override, started


class EStop:
    """SIGINT/SIGTERM -> a latched stop request the control loop checks every tick.

    Installs handlers on ``__enter__`` (main thread only; elsewhere it only offers
    :meth:`trigger`) and restores the previous ones on ``__exit__``. A second SIGINT or SIGTERM
    while the run is already stopping raises ``KeyboardInterrupt`` so a stuck shutdown can be
    broken (Ctrl-C twice, or systemd's stop sent twice); the caller's ``finally`` still commands
    the motors to zero.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._old: dict[int, object] = {}

    @property
    def triggered(self) -> bool:
        """True once a signal or :meth:`trigger` asked the run to stop."""
        return self.event.is_set()

    def trigger(self, reason: str) -> None:
        """Request an emergency stop (first reason wins)."""
        if self.reason is None:
            self.reason = reason
        self.event.set()

    def _handler(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            raise KeyboardInterrupt(f"second {name} while stopping")
        self.trigger(f"{name} received")

    def __enter__(self) -> EStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()
