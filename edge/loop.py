"""The fixed-rate control loop: observe -> encode -> plan -> decide -> guard -> send -> record.

One :class:`ControlLoop` drives one robot. Every tick:

=========  ==================================================================================
stage      what happens
=========  ==================================================================================
observe    latest telemetry from the link (stale -> link lost: stop, wait for reconnect),
           odometry integrated from the encoder counts, latest camera frame, the sensor
           vector built with ``edge.sim.obs.sensor_vector`` and the bundle's constants
encode     ``backend.encode(sensor, frame)`` -> ``z [E]``
plan       ONE ``backend.plan`` call, warm-started with the previous plan shifted by one
           step, noise ``[J, N, H, A]`` taken from a ring refilled after the command is sent
decide     confidence from the plan; the planner's first action, or an accepted fallback
           macro-action, or the hold action while a fallback request is in flight, or a stop
           when confidence has been low for ``confidence.low_ticks`` ticks and no fallback;
           then :class:`edge.safety.StuckRecovery` (``recovery``) replaces a planner command
           with a short back-off while the robot is stuck against an obstacle, and then with
           wall following until the embedding distance to the goal beats the stuck point's
guard      :class:`edge.safety.SafetyGuard` (range guard, limits, sensor faults)
send       SET_VEL with wheel targets in rad/s (normalised action * ``max_wheel_speed``)
record     flight recorder channels (docs/FLIGHT_LOG.md) and the status view
=========  ==================================================================================

Scheduling is on absolute times: tick ``k`` is due at ``start + k / rate_hz``, so the loop
does not drift. A tick that ends after its deadline is counted as an overrun and logged; when
a tick overruns by more than a whole period the missed slots are skipped (and counted), the
loop never tries to "catch up" with a burst of ticks.

Every dependency is injected (link, backend, clock, camera, recorder, fallback), so the loop
is tested with fakes. Never imports torch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge.config import RunConfig
from edge.fallback.base import Fallback, FallbackEvent, MacroAction, Situation
from edge.odometry import Odometry, wrap_angle
from edge.safety import EStop, SafetyGuard, StuckRecovery, plan_is_clear
from edge.sim.obs import SensorNormalisation, sensor_vector

log = logging.getLogger("edge.loop")

STAGES: tuple[str, ...] = ("observe", "encode", "plan", "decide", "guard", "send", "record")


# --------------------------------------------------------------------------- boundaries


class Clock(Protocol):
    """Time source of the loop. ``now()`` in loop seconds; ``sleep_until(t)`` blocks until
    ``now() >= t`` or ``wake`` is set; ``scale`` = loop seconds per wall second (1 on a robot,
    > 1 when the simulator runs faster than real time); ``monotonic()`` is the wall clock the
    link stamps telemetry with."""

    scale: float

    def now(self) -> float: ...

    def sleep_until(self, t: float, wake: threading.Event | None = None) -> None: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """Real time, optionally scaled (``scale`` loop seconds per wall second)."""

    def __init__(self, scale: float = 1.0):
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"clock scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.scale

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float, wake: threading.Event | None = None) -> None:
        delay = (t - self.now()) / self.scale
        if delay <= 0:
            return
        if wake is not None:
            wake.wait(delay)  # returns early on e-stop (signal handlers set the event)
        else:
            time.sleep(delay)


class RobotLink(Protocol):
    """What the loop needs from the motor-controller link (``firmware_bridge.link.SerialLink``).

    ``latest()`` returns the newest telemetry (attributes ``enc_left``, ``enc_right``,
    ``speed_left``, ``speed_right`` rad/s, ``ranges_m`` (8, NaN = none), ``mcu_time_us``,
    ``last_cmd_seq``, ``host_time`` (``clock.monotonic()`` seconds), ``estop_latched``) or None.
    ``send_velocity(left, right)`` sends wheel targets in rad/s and raises a ``ConnectionError``
    while the port is down. ``stats()`` returns a dataclass of counters.
    """

    def latest(self) -> Any: ...

    def send_velocity(self, left: float, right: float) -> None: ...

    def stats(self) -> Any: ...


class FrameSource(Protocol):
    """Latest camera frame ``uint8 [64, 64, 3]`` RGB, or None if none yet."""

    def latest(self) -> np.ndarray | None: ...


# --------------------------------------------------------------------------- noise ring


class NoiseRing:
    """Standard-normal noise tensors drawn ahead of time, off the control tick's hot path.

    ``take()`` hands out a ready tensor; ``refill()`` (called by the loop after the command
    was sent, in the slack before the next tick) redraws the consumed slots. If ``take`` finds
    nothing ready it draws inline and counts it in ``inline_draws``.

    Args:
        shape: ``(J, N, H, A)``.
        slots: tensors kept ready.
        seed: generator seed (same seed -> same noise sequence).
    """

    def __init__(self, shape: tuple[int, ...], slots: int = 2, seed: int | None = None):
        self.shape = tuple(int(s) for s in shape)
        self._rng = np.random.default_rng(seed)
        self._ready: deque[np.ndarray] = deque()
        self._slots = int(slots)
        self.inline_draws = 0
        self.refill()

    def _draw(self) -> np.ndarray:
        return self._rng.standard_normal(self.shape, dtype=np.float32)

    def take(self) -> np.ndarray:
        """A ``float32 shape`` tensor of N(0, 1) noise."""
        if self._ready:
            return self._ready.popleft()
        self.inline_draws += 1
        return self._draw()

    def refill(self) -> None:
        """Top the ring up to ``slots`` ready tensors."""
        while len(self._ready) < self._slots:
            self._ready.append(self._draw())


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Observation:
    """What the robot sensed in one tick (SI units)."""

    ranges_m: np.ndarray          # [8] metres, NaN = no reading
    pose: tuple[float, float, float]  # odometry (x, y, theta)
    wheel_speeds: tuple[float, float]  # measured rad/s
    frame: np.ndarray | None       # [64, 64, 3] uint8 RGB
    sensor: np.ndarray             # [14] the sensor model's input vector
    mcu_time_us: int | None = None
    seq_applied: int | None = None


@dataclass
class TickInfo:
    """Everything that happened in one tick (what the status view and the summary consume)."""

    tick: int
    t: float                                  # loop seconds since start
    action: tuple[float, float]               # normalised command actually sent
    source: str                               # planner | recovery | fallback | hold | safety | estop
    timings_ms: dict[str, float]              # per stage, wall milliseconds
    total_ms: float
    overrun: bool
    link_ok: bool
    pred_error: float | None = None           # mean confidence-head error along the plan
    confidence: float | None = None           # in [0, 1], 1 = confident
    low_confidence: bool = False
    low_reason: str | None = None             # why confidence is low (predicted error, no progress)
    via_head: bool = False                    # the plan head acted: the planner missed its deadline
    goal_distance_m: float | None = None
    embedding_distance: float | None = None
    guard_reasons: tuple[str, ...] = ()
    plan_mean: np.ndarray | None = None       # [H, 2]
    pose: tuple[float, float, float] | None = None
    true_pose: tuple[float, float, float] | None = None
    recovery_started: bool = False            # the unsticking reflex started this tick
    follow_started: bool = False              # a wall following started this tick


@dataclass
class LoopResult:
    """How a run of the loop ended."""

    reason: str                     # goal_reached | duration | max_ticks | estop | error
    ticks: int
    overruns: int
    skipped_slots: int
    elapsed_s: float
    goal_reached: bool
    message: str = ""
    events: list[tuple[float, str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- goal


@dataclass(frozen=True)
class GoalTarget:
    """The goal as the loop uses it: its embedding, and a pose when one is known.

    ``pose`` is in the odometry frame for saved goals, the world frame in simulation.
    """

    z: np.ndarray                                 # [E]
    pose: tuple[float, float, float] | None
    source: str = "config"


def shift_plan(mean: np.ndarray) -> np.ndarray:
    """Warm start: the previous plan ``[H, A]`` advanced by one step, last step repeated."""
    out = np.empty_like(mean)
    out[:-1] = mean[1:]
    out[-1] = mean[-1]
    return out


def confidence_from_error(pred_error: float, scale: float) -> float:
    """Map the confidence head's predicted error (>= 0, lower is better) to ``(0, 1]``:
    ``exp(-error / scale)``; NaN -> 0."""
    if not math.isfinite(pred_error):
        return 0.0
    return float(math.exp(-max(pred_error, 0.0) / scale))


# --------------------------------------------------------------------------- the loop


class ControlLoop:
    """Fixed-rate control of one robot.

    Args:
        config: the run configuration (rate, limits, confidence, fallback hold settings).
        link: the motor-controller link (:class:`RobotLink`).
        backend: an ``edge.backends.InferenceBackend`` (``encode``, ``plan``) with ``.bundle``.
        odometry: pose from encoder counts.
        clock: time source (:class:`SystemClock` or a fake).
        camera: frame source, or None.
        recorder: ``edge.recorder.FlightRecorder`` or None.
        fallback: an ``edge.fallback.Fallback`` or None.
        estop: the run's :class:`EStop` (signals); a fresh one if None.
        truth: simulation only: returns the robot's true pose (recorded, used for the goal).
        on_tick: called with each :class:`TickInfo` (status view).
        noise_seed: seed of the planner noise.
        plan_head: the bundle's amortized planning head, ``(z [E], z_goal [E], pose4 [4]) ->
            actions [H, A]``, or None.
        head_warm_start: the head's actions are the planner's warm start (else the previous
            plan shifted by one step).
        head_fallback: the planner runs against the tick's deadline; when it is late the
            head's first action is sent.
    """

    def __init__(self, config: RunConfig, link: RobotLink, backend: Any, odometry: Odometry,
                 clock: Clock | None = None, camera: FrameSource | None = None, recorder: Any = None,
                 fallback: Fallback | None = None, estop: EStop | None = None,
                 truth: Callable[[], tuple[float, float, float]] | None = None,
                 on_tick: Callable[[TickInfo], None] | None = None, noise_seed: int | None = None,
                 plan_head: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
                 head_warm_start: bool = False, head_fallback: bool = False):
        self.cfg = config
        self.link = link
        self.backend = backend
        self.odometry = odometry
        self.clock = clock or SystemClock()
        self.camera = camera
        self.recorder = recorder
        self.fallback = fallback
        self.estop = estop or EStop()
        self.truth = truth
        self.on_tick = on_tick
        self.plan_head = plan_head
        self.head_warm_start = bool(plan_head is not None and head_warm_start)
        self.head_fallback = bool(plan_head is not None and head_fallback)
        self._executor: Any = None
        self._pending: Any = None
        self.head_actions = 0  # ticks where the plan head acted because the planner was late

        bundle = backend.bundle
        p = bundle.planner
        self.norm = SensorNormalisation.from_dict(bundle.normalisation)
        self.max_wheel_speed = float(bundle.max_wheel_speed)
        self.H, self.A = int(p.H), int(p.A)
        self.std_init = np.full((p.H, p.A), np.float32(p.std_init), dtype=np.float32)
        self.noise = NoiseRing((p.J, p.N, p.H, p.A), slots=2, seed=noise_seed)
        self.guard = SafetyGuard(config.limits, self.norm.max_range_m, self.max_wheel_speed)
        self.period = 1.0 / config.rate_hz
        self.recovery = (StuckRecovery(config.recovery, self.period, seed=noise_seed)
                         if config.recovery.enabled else None)
        self.error_scale = self._error_scale(config, bundle)
        self.uses_camera = p.encoder == "camera"

        self._mean = np.zeros((p.H, p.A), np.float32)
        self.action_repeat = int((bundle.manifest.get("planner") or {}).get("action_repeat", 1) or 1)
        if self.action_repeat < 1:
            raise ValueError(f"bundle {bundle.path}: planner.action_repeat must be >= 1, got {self.action_repeat}")
        self._planned = 0         # planner calls since the goal was set
        self._shift_next = True   # shift the warm start by one planner step before the next call
        self._goal: GoalTarget | None = None
        self._low_count = 0
        self._retry_at = 0                                      # first tick a new request may start
        self._macro: tuple[MacroAction, float] | None = None   # (macro, end time)
        self._recent: deque[tuple[float, float]] = deque(maxlen=8)
        self._cost_hist: deque[float] = deque(maxlen=max(config.confidence.stall_ticks, 1))
        self._speed_hist: deque[float] = deque(maxlen=max(config.confidence.stall_ticks, 1))
        self._link_ok = True
        self._link_lost_at: float | None = None
        self._resets_seen = 0
        self._device_estop = False
        self._last_stats_t = -math.inf
        self.tick_index = 0
        self.overruns = 0
        self._overruns_logged = 0
        self._last_overrun_log = -math.inf
        self.skipped_slots = 0
        self.events: list[tuple[float, str, str]] = []
        self.last_obs: Observation | None = None
        self._t0 = 0.0

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _error_scale(config: RunConfig, bundle: Any) -> float:
        """Predicted error at which confidence is 1/e: the config's ``confidence.error_scale``,
        else the manifest's ``planner.conf_error_scale``, else twice the validation prediction
        error the model reached in training (``training.metrics.val_pred`` /
        ``val_pred_stepT``, the same units as the confidence head: mean squared embedding error)."""
        if config.confidence.error_scale is not None:
            return float(config.confidence.error_scale)
        manifest = bundle.manifest
        value = (manifest.get("planner") or {}).get("conf_error_scale")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        metrics = (manifest.get("training") or {}).get("metrics") or {}
        val = [float(metrics[k]) for k in ("val_pred", "val_pred_stepT")
               if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k]) and metrics[k] > 0]
        if val:
            return 2.0 * max(val)
        raise ValueError(
            f"bundle {bundle.path} records no confidence scale (planner.conf_error_scale or "
            "training.metrics.val_pred); set confidence.error_scale in the config "
            "(--set confidence.error_scale=VALUE)")

    def set_goal(self, goal: GoalTarget) -> None:
        """Plan toward ``goal`` from the next tick on (resets the warm start)."""
        self._goal = goal
        self._mean = np.zeros_like(self._mean)
        self._planned, self._shift_next = 0, True
        self._low_count = 0
        self._cost_hist.clear()
        self._speed_hist.clear()
        self._macro = None
        if self.recovery is not None:
            self.recovery.reset()
        if self.recorder is not None:
            pose = list(goal.pose) if goal.pose is not None else [None, None, None]
            self.recorder.write("/goal", self.tick_index, self._now(), {"pose": pose, "source": goal.source})

    def encode_goal(self, sensor: np.ndarray, frame: np.ndarray | None) -> np.ndarray:
        """Embedding ``[E]`` of a goal observation (sensor vector ``[14]`` + optional frame)."""
        return np.asarray(self.backend.encode(sensor, frame if self.uses_camera else None), np.float32)

    # ----------------------------------------------------------------- helpers
    def _now(self) -> float:
        return self.clock.now() - self._t0

    def _event(self, kind: str, message: str) -> None:
        t = self._now()
        self.events.append((t, kind, message))
        log.info("%s: %s", kind, message)
        if self.recorder is not None:
            self.recorder.write("/events", self.tick_index, t, {"kind": kind, "message": message})

    def _send(self, left: float, right: float) -> bool:
        """Send a normalised command; False when the link is down (nothing sent)."""
        try:
            self.link.send_velocity(left * self.max_wheel_speed, right * self.max_wheel_speed)
            return True
        except ConnectionError:
            return False

    def stop_motors(self, attempts: int = 3) -> bool:
        """Command zero wheel speed (several frames, in case one is lost). True if one was sent."""
        sent = False
        for _ in range(attempts):
            sent = self._send(0.0, 0.0) or sent
        self.guard.reset()
        return sent

    def _goal_distance(self, pose: tuple[float, float, float], true_pose: Any) -> float | None:
        """Distance to the goal pose: from the true pose in simulation, else from odometry."""
        if self._goal is None or self._goal.pose is None:
            return None
        ref = true_pose if true_pose is not None else pose
        return math.hypot(ref[0] - self._goal.pose[0], ref[1] - self._goal.pose[1])

    # ----------------------------------------------------------------- observe
    def observe(self) -> Observation | None:
        """Latest telemetry -> :class:`Observation`; None while the link is lost."""
        tel = self.link.latest()
        now_wall = self.clock.monotonic()
        lost_after = self.cfg.link.lost_after_s
        fresh = tel is not None and (now_wall - tel.host_time) <= lost_after
        if not fresh:
            if self._link_ok:
                self._link_ok = False
                self._link_lost_at = now_wall
                age = "never" if tel is None else f"{(now_wall - tel.host_time) * 1000:.0f} ms ago"
                self._event("link_lost", f"no telemetry for {lost_after:g} s (last: {age}); stopping, "
                                         "waiting for the link to come back")
            return None
        if not self._link_ok:
            if tel.host_time <= (self._link_lost_at or -math.inf):
                return None  # still the old snapshot
            self._link_ok = True
            self.guard.reset()
            self._mean[:] = 0.0
            self._event("link_restored", "telemetry is flowing again; resuming control")
        resets = getattr(self.link, "resets", None)
        if resets is not None:
            n = len(resets() if callable(resets) else resets)
            if n > self._resets_seen:
                self._resets_seen = n
                self._event("link_reset", "the motor controller reset; the link re-based the encoder "
                                          "counts and re-sent its configuration")
        latched = bool(getattr(tel, "estop_latched", False))
        if latched != self._device_estop:
            self._device_estop = latched
            self._event("device_estop" if latched else "device_estop_cleared",
                        "the motor controller's e-stop is latched: it ignores wheel commands until "
                        "CLEAR_ESTOP" if latched else "the motor controller's e-stop was cleared")
        pose = self.odometry.update(tel.enc_left, tel.enc_right)
        ranges = np.asarray(tel.ranges_m, dtype=np.float64)
        speeds = (float(tel.speed_left), float(tel.speed_right))
        frame = self.camera.latest() if self.camera is not None else None
        sensor = sensor_vector(ranges, np.asarray(pose), np.asarray(speeds), self.norm)
        return Observation(ranges, pose, speeds, frame, sensor,
                           getattr(tel, "mcu_time_us", None), getattr(tel, "last_cmd_seq", None))

    # ----------------------------------------------------------------- decide
    def _decide(self, plan: Any, pred_error: float, confidence: float, obs: Observation,
                now: float) -> tuple[tuple[float, float], str, bool, str | None]:
        """Choose the command and its source; returns (command, source, low, reason).

        Order: a finished fallback request is taken in; a running macro-action goes on until
        its end; a request in flight holds; ``low_ticks`` consecutive low-confidence ticks ask
        the fallback (again after a rejection, ``low_ticks`` later) and hold, or stop when
        there is no fallback; otherwise the planner's first action.
        """
        if self.fallback is not None:
            event = self.fallback.poll()
            if event is not None:
                self._on_fallback_event(event, now)
        low = confidence < self.cfg.confidence.threshold
        stall = self._stalled(plan, obs)
        reason = None
        if low or stall:
            self._low_count += 1
            reason = (f"predicted error {pred_error:.3g} (confidence {confidence:.2f} < "
                      f"{self.cfg.confidence.threshold:g}) for {self._low_count} ticks" if low else stall)
            low = True
        else:
            self._low_count = 0

        if self._macro is not None:
            macro, end = self._macro
            if now < end:
                return macro.wheel_command(self.cfg.fallback.macro_speed), "fallback", low, reason
            self._macro = None
            self._low_count = 0
            self._cost_hist.clear()
            self._speed_hist.clear()
            self._mean[:] = 0.0
            self._event("fallback", f"macro-action {macro.action} finished; planner in control")

        if self.fallback is not None and self.fallback.in_flight:
            return self._hold(), "hold", low, reason
        if self._low_count >= self.cfg.confidence.low_ticks:
            if self.fallback is None:
                return (0.0, 0.0), "safety", low, reason
            if self.tick_index >= self._retry_at and self.fallback.submit(
                    self._situation(obs, reason or "low confidence")):
                self._event("fallback", f"asking the fallback: {reason}")
            return self._hold(), "hold", low, reason
        first = np.clip(plan.mean_out[0], -1.0, 1.0)
        return (float(first[0]), float(first[1])), "planner", low, reason

    def _plan(self, z: np.ndarray, warm: np.ndarray, deadline: float, have_head: bool) -> Any:
        """One fused planner call. With the plan head as deadline fallback, the call runs on a
        worker thread and the loop waits only until ``deadline`` minus a reserve for the rest of
        the tick (a fifth of the period); None = not finished in time (the head acts). A late
        call is not abandoned: its plan seeds the next warm start, and no new call starts until
        it has finished (the head acts meanwhile)."""
        noise = self.noise.take()
        if not (self.head_fallback and have_head):
            return self.backend.plan(z, self._goal.z, warm, self.std_init, noise)
        if self._pending is not None:
            if not self._pending.done():
                return None
            late, self._pending = self._pending, None
            try:
                warm = shift_plan(np.asarray(late.result().mean_out, np.float32))
            except Exception:  # the late call failed: plan afresh from the head
                log.exception("a late planner call failed")
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        future = self._executor.submit(self.backend.plan, z, self._goal.z, warm, self.std_init, noise)
        wait_s = (deadline - 0.2 * self.period - self.clock.now()) / self.clock.scale
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            return future.result(timeout=max(wait_s, 0.0))
        except FutureTimeout:
            self._pending = future
            return None

    def _stalled(self, plan: Any, obs: Observation) -> str | None:
        """Cost statistics: the planner's best cost has not improved by ``stall_improvement``
        (relative) over ``stall_ticks`` ticks while the wheels barely turned (< 5 % of max speed
        on average): the robot is stuck. Returns the reason, or None."""
        n = self.cfg.confidence.stall_ticks
        if n == 0:
            return None
        self._cost_hist.append(float(plan.best_cost))
        self._speed_hist.append(max(abs(obs.wheel_speeds[0]), abs(obs.wheel_speeds[1])) / self.max_wheel_speed)
        if len(self._cost_hist) < n:
            return None
        first, best = self._cost_hist[0], min(self._cost_hist)
        moving = sum(self._speed_hist) / len(self._speed_hist)
        if best >= first - self.cfg.confidence.stall_improvement * abs(first) and moving < 0.05:
            return (f"no progress: the plan's best cost went from {first:.3g} to at best {best:.3g} over "
                    f"{n} ticks while the robot barely moved")
        return None

    def _hold(self) -> tuple[float, float]:
        s = self.cfg.fallback.hold_speed
        return {"stop": (0.0, 0.0), "turn_left": (-s, s), "turn_right": (s, -s)}[self.cfg.fallback.hold_action]

    def _on_fallback_event(self, event: FallbackEvent, now: float) -> None:
        if self.recorder is not None:
            macro = None if event.macro is None else {"action": event.macro.action,
                                                      "duration_s": event.macro.duration_s}
            self.recorder.write("/fallback", self.tick_index, now, {
                "request_id": event.request_id, "prompt": event.prompt, "reply_text": event.reply_text,
                "latency_s": event.latency_s, "macro": macro, "rejected_reason": event.rejected_reason})
        if event.macro is not None:
            self._macro = (event.macro, now + event.macro.duration_s)
            self._event("fallback", f"executing {event.macro.action} for {event.macro.duration_s:g} s "
                                    f"(reply after {event.latency_s:.2f} s)")
        else:
            self._retry_at = self.tick_index + self.cfg.confidence.low_ticks  # hold, ask again later
            self._event("fallback", f"request {event.request_id} rejected: {event.rejected_reason}")

    def _situation(self, obs: Observation, reason: str) -> Situation:
        bearing = distance = None
        if self._goal is not None and self._goal.pose is not None:
            x, y, th = obs.pose
            gx, gy = self._goal.pose[0], self._goal.pose[1]
            distance = math.hypot(gx - x, gy - y)
            bearing = wrap_angle(math.atan2(gy - y, gx - x) - th)
        return Situation(ranges_m=tuple(float(r) for r in obs.ranges_m), goal_bearing_rad=bearing,
                         goal_distance_m=distance, recent_actions=tuple(self._recent), reason=reason)

    # ----------------------------------------------------------------- one tick
    def tick(self, deadline: float) -> TickInfo:
        """Run one tick that must finish by loop time ``deadline``; returns what happened.

        Stage timings are wall-clock milliseconds (``time.perf_counter``); the deadline is
        checked on the loop clock (simulated time in simulation).
        """
        timings: dict[str, float] = {}
        t_start = self.clock.now()
        t = t_start - self._t0
        wall_start = time.perf_counter()
        mark = wall_start

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            timings[stage] = (now - mark) * 1000.0
            mark = now

        obs = self.observe()
        lap("observe")
        plan = None
        pred_error = confidence = None
        low = False
        reason = None
        z = None
        emb_dist = None
        via_head = False
        guard_reasons: tuple[str, ...] = ()
        recovery_started = False
        follow_started = False
        if obs is None:
            command, source = (0.0, 0.0), "safety"
            for stage in ("encode", "plan", "decide", "guard"):
                timings[stage] = 0.0
            self._send(0.0, 0.0)
            self.guard.reset()
            if self.recovery is not None:  # the robot was stopped: no stale motion history after the outage
                self.recovery.reset()
            lap("send")
        else:
            self.last_obs = obs
            if self._goal is None:
                raise RuntimeError("ControlLoop.tick: no goal set (call set_goal first)")
            z = np.asarray(self.backend.encode(obs.sensor, obs.frame if self.uses_camera else None), np.float32)
            lap("encode")
            head = None
            if self.plan_head is not None:
                head = np.clip(np.asarray(self.plan_head(z, self._goal.z, obs.sensor[8:12]), np.float32)
                               .reshape(self.H, self.A), -1.0, 1.0)
            warm = head if (head is not None and self.head_warm_start) else (
                shift_plan(self._mean) if self._shift_next else self._mean)
            plan = self._plan(z, warm, deadline, head is not None)
            lap("plan")
            emb_dist = float(np.linalg.norm(z - self._goal.z))
            if plan is not None:
                self._mean = np.asarray(plan.mean_out, np.float32)
                self._planned += 1
                # one planner step = action_repeat ticks: advance the warm start a step every r ticks
                self._shift_next = self._planned % self.action_repeat == 0
                pred_error = float(np.mean(plan.conf))
                confidence = confidence_from_error(pred_error, self.error_scale)
                command, source, low, reason = self._decide(plan, pred_error, confidence, obs, t)
            else:  # the planner missed its deadline: the plan head's first action, through the guard
                self.head_actions += 1
                self._mean = head
                via_head = True
                command, source = (float(head[0, 0]), float(head[0, 1])), "planner"
            if self.recovery is not None:
                if source == "planner":
                    was_following = bool(self.recovery.following[0])
                    ranges = np.array([obs.ranges_m], dtype=np.float64)
                    clear = (plan_is_clear(self._mean[None], ranges, self.period, self.action_repeat,
                                           self.cfg.robot.wheel_radius_m, self.cfg.robot.wheel_base_m,
                                           self.max_wheel_speed)
                             if self.recovery.following[0] else None)  # only a following's end needs it
                    sent, override, started = self.recovery.step(
                        np.array([command]), np.array([obs.pose[:2]]), None, ranges, np.array([emb_dist]), clear)
                    if override[0]:
                        command, source = (float(sent[0, 0]), float(sent[0, 1])), "recovery"
                    if started[0]:
                        recovery_started = True
                        then = ""
                        if self.recovery.following[0] and not was_following:
                            follow_started = True
                            then = (f", then following the wall on the "
                                    f"{'left' if self.recovery.side[0] > 0 else 'right'} until the embedding "
                                    f"distance to the goal is below {self.recovery.leave_distance[0]:.2f}")
                        self._event("recovery", f"stuck: the robot was asked to drive but has not moved "
                                                f"for {self.recovery.stuck_ticks} ticks; backing off for "
                                                f"{self.recovery.backoff_ticks} ticks{then}")
                    elif ended := self.recovery.follow_ended[0]:
                        self._event("recovery", "wall following ended: "
                                    + ("the goal is closer than where the robot got stuck" if ended == "closer"
                                       else f"no progress in {self.recovery.cfg.follow_max_s:g} s"))
                else:  # fallback, hold or safety in control: start the motion history afresh
                    self.recovery.reset()
            lap("decide")
            g = self.guard.guard(command[0], command[1], obs.ranges_m, obs.wheel_speeds, obs.pose,
                                 self.period)
            if g.modified and source in ("planner", "recovery", "fallback", "hold"):
                guard_reasons = g.reasons
                if g.sensor_fault:
                    source = "safety"
                    if self.recovery is not None:
                        self.recovery.reset()
            command = (g.left, g.right)
            lap("guard")
            if not self._send(*command):
                command, source = (0.0, 0.0), "safety"
            lap("send")
        self._recent.append(command)

        true_pose = self.truth() if self.truth is not None else None
        goal_distance = None if obs is None else self._goal_distance(obs.pose, true_pose)
        if self.recorder is not None:
            self._record(t, obs, z, emb_dist, plan, pred_error, low, reason, command, source, true_pose, via_head)
        lap("record")
        total_ms = (mark - wall_start) * 1000.0
        t_end = self.clock.now()
        overrun = t_end > deadline
        to_ms = 1000.0 / self.clock.scale  # loop seconds -> wall milliseconds
        deadline_ms = self.period * to_ms
        if self.recorder is not None:
            self.recorder.write("/timings", self.tick_index, t, {
                "read_ms": timings["observe"], "encode_ms": timings["encode"], "plan_ms": timings["plan"],
                "decide_ms": timings["decide"], "guard_ms": timings["guard"], "send_ms": timings["send"],
                "record_ms": timings["record"], "total_ms": total_ms, "deadline_ms": deadline_ms,
                "late_ms": max(0.0, (t_start - (deadline - self.period)) * to_ms), "overrun": overrun})
        info = TickInfo(tick=self.tick_index, t=t, action=command, source=source, timings_ms=timings,
                        total_ms=total_ms, overrun=overrun, link_ok=self._link_ok, pred_error=pred_error,
                        confidence=confidence, low_confidence=low, low_reason=reason, via_head=via_head,
                        goal_distance_m=goal_distance,
                        embedding_distance=emb_dist, guard_reasons=guard_reasons,
                        plan_mean=None if plan is None else self._mean.copy(),
                        pose=None if obs is None else obs.pose, true_pose=true_pose,
                        recovery_started=recovery_started, follow_started=follow_started)
        if overrun:
            self.overruns += 1
            now_wall = time.monotonic()
            if now_wall - self._last_overrun_log >= 1.0:  # every overrun is counted; logs at most 1/s
                late = max(0.0, (t_start - (deadline - self.period)) * to_ms)
                more = self.overruns - self._overruns_logged - 1
                log.warning("tick %d missed its deadline: started %.1f ms late, took %.1f ms, period %.1f ms "
                            "(%s)%s", self.tick_index, late, total_ms, deadline_ms,
                            ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
                            f"; {more} more missed since the last report" if more > 0 else "")
                self._last_overrun_log = now_wall
                self._overruns_logged = self.overruns
        return info

    def _record(self, t: float, obs: Observation | None, z: np.ndarray | None, emb_dist: float | None,
                plan: Any, pred_error: float | None, low: bool, reason: str | None,
                command: tuple[float, float], source: str, true_pose: Any, via_head: bool = False) -> None:
        rec, k = self.recorder, self.tick_index
        if obs is not None:
            fields: dict[str, Any] = {"ranges_m": obs.ranges_m, "pose": list(obs.pose),
                                      "wheel_speeds": list(obs.wheel_speeds)}
            if obs.mcu_time_us is not None:
                fields["mcu_time_us"] = int(obs.mcu_time_us)
            if obs.seq_applied is not None:
                fields["seq_applied"] = int(obs.seq_applied)
            rec.write("/obs", k, t, fields)
            if obs.frame is not None and self.cfg.recorder.record_frames:
                from edge.sim.flight_log import encode_frame

                rec.write("/camera", k, t, encode_frame(obs.frame))
        action = {"left": command[0], "right": command[1], "source": source}
        if via_head:
            action["via"] = "plan_head"  # the planner missed its deadline; its amortized head acted
        rec.write("/action", k, t, action)
        if true_pose is not None:
            rec.write("/true_pose", k, t, {"pose": list(true_pose)})
        if plan is not None:
            rec.write("/plan", k, t, {"mean": plan.mean_out, "std": plan.std_out, "best_cost": plan.best_cost,
                                      "mean_cost": plan.mean_cost, "conf": plan.conf})
            rec.write("/embedding", k, t, {"z": z, "goal_distance": emb_dist})
            rec.write("/confidence", k, t, {
                "value": pred_error, "threshold": -math.log(max(self.cfg.confidence.threshold, 1e-12)) * self.error_scale,
                "low": low, "reason": reason,
                "confidence": confidence_from_error(pred_error if pred_error is not None else math.nan,
                                                    self.error_scale)})

    def _post_tick(self, t: float) -> None:
        """Work kept off the hot path: refill the noise ring, flush the recorder, link stats."""
        self.noise.refill()
        if self.recorder is not None:
            if t - self._last_stats_t >= 1.0:
                self._last_stats_t = t
                stats = self.link.stats()
                values = stats.__dict__ if hasattr(stats, "__dict__") else dict(stats)
                self.recorder.write("/link_stats", self.tick_index, t,
                                    {"stats": {k: v for k, v in values.items() if isinstance(v, (int, float))}})
            self.recorder.maybe_flush()

    # ----------------------------------------------------------------- run
    def run(self, max_ticks: int | None = None, duration_s: float | None = None) -> LoopResult:
        """Run ticks until the goal is reached, ``max_ticks`` / ``duration_s`` (loop seconds) is
        over, or the e-stop fires. The motors are commanded to zero on every way out, exceptions
        included (which are re-raised after the stop)."""
        if self._goal is None:
            raise RuntimeError("ControlLoop.run: no goal set (call set_goal first)")
        self._warm_up()
        self._t0 = self.clock.now()
        start = self._t0
        k = 0
        ticks = 0
        reason, message = "max_ticks", ""
        goal_reached = False
        self._event("start", f"control loop at {self.cfg.rate_hz:g} Hz")
        try:
            while True:
                if self.estop.triggered:
                    reason, message = "estop", self.estop.reason or "e-stop"
                    break
                if max_ticks is not None and ticks >= max_ticks:
                    reason = "max_ticks"
                    break
                if duration_s is not None and self._now() >= duration_s:
                    reason = "duration"
                    break
                deadline = start + (k + 1) * self.period
                info = self.tick(deadline)
                ticks += 1
                if self.on_tick is not None:
                    self.on_tick(info)
                self._post_tick(info.t)
                if self._reached(info):
                    goal_reached = True
                    reason = "goal_reached"
                    message = (f"goal reached after {info.t:.1f} s"
                               + (f" ({info.goal_distance_m:.2f} m from the goal pose)"
                                  if info.goal_distance_m is not None else ""))
                    break
                self.tick_index += 1
                k += 1
                now = self.clock.now()
                due = start + k * self.period
                if now > due:  # a tick ran past a whole period: skip the missed slots, no burst
                    missed = int((now - due) // self.period) + 1
                    self.skipped_slots += missed
                    k += missed
                    self._event("deadline", f"tick {self.tick_index - 1} (with its bookkeeping) ran into the "
                                            f"next slot; skipping {missed} slot(s)")
                self.clock.sleep_until(start + k * self.period, self.estop.event)
        except BaseException as e:
            reason, message = "error", f"{type(e).__name__}: {e}"
            raise
        finally:
            sent = self.stop_motors()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor, self._pending = None, None
            self._safe_event("motors_stopped", "zero wheel speed commanded" if sent else
                             "zero wheel speed could NOT be sent (link down); the firmware watchdog stops "
                             "the motors 200 ms after the last command")
            if reason == "error":
                self._safe_event("error", f"{message}: motors commanded to zero")
            elif reason == "estop":
                self._safe_event("estop", f"{message}: motors commanded to zero")
            else:
                self._safe_event("goal_reached" if goal_reached else "stop", message or reason)
        return LoopResult(reason=reason, ticks=ticks, overruns=self.overruns, skipped_slots=self.skipped_slots,
                          elapsed_s=self._now(), goal_reached=goal_reached, message=message,
                          events=list(self.events))

    def _warm_up(self) -> None:
        """One planner call before the first tick (first calls allocate and optimise; their
        latency would otherwise land on tick 0). Its result and noise are discarded."""
        p = self.backend.bundle.planner
        z = np.zeros(int(p.E), np.float32)
        self.backend.plan(z, z, np.zeros((self.H, self.A), np.float32), self.std_init,
                          np.zeros((int(p.J), int(p.N), self.H, self.A), np.float32))

    def _safe_event(self, kind: str, message: str) -> None:
        try:
            self._event(kind, message)
        except Exception:  # the recorder may be what failed; the stop matters more
            log.exception("could not record the %s event", kind)

    def _reached(self, info: TickInfo) -> bool:
        if info.goal_distance_m is not None and info.goal_distance_m <= self.cfg.goal.reach_m:
            return True
        thr = self.cfg.goal.reach_embedding
        return thr is not None and info.embedding_distance is not None and info.embedding_distance <= thr
