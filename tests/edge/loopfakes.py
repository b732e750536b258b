"""Small fakes of the loop's boundaries (clock, link, backend, fallback) for hardware-free tests."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from edge.backends import PlanResult


class FakeClock:
    """Loop time that only moves when the loop sleeps or a fake stage spends time."""

    scale = 1.0

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt

    def sleep_until(self, t: float, wake: threading.Event | None = None) -> None:
        if wake is not None and wake.is_set():
            return
        self.t = max(self.t, t)


@dataclass
class FakeStats:
    frames_rx: int = 0
    frames_tx: int = 0
    crc_errors: int = 0


class FakeLink:
    """A robot whose encoders integrate the last command; ranges are settable."""

    def __init__(self, clock: FakeClock, ticks_per_rad: float = 100.0):
        self.clock = clock
        self.sent: list[tuple[float, float]] = []
        self.down = False
        self.ranges = [1.5] * 8
        self.enc = [0, 0]
        self.speed = (0.0, 0.0)
        self.ticks_per_rad = ticks_per_rad
        self._last_t = clock.now()
        self._stats = FakeStats()
        self.stale_since: float | None = None

    def latest(self):
        now = self.clock.now()
        dt = now - self._last_t
        self._last_t = now
        for i in range(2):
            self.enc[i] += int(round(self.speed[i] * dt * self.ticks_per_rad))
        host_time = now if self.stale_since is None else self.stale_since
        return SimpleNamespace(enc_left=self.enc[0], enc_right=self.enc[1], speed_left=self.speed[0],
                               speed_right=self.speed[1], ranges_m=tuple(self.ranges), mcu_time_us=int(now * 1e6),
                               last_cmd_seq=len(self.sent), host_time=host_time, estop_latched=False)

    def send_velocity(self, left: float, right: float) -> None:
        if self.down:
            raise ConnectionError("fake port is down")
        self.sent.append((left, right))
        self.speed = (left, right)
        self._stats.frames_tx += 1

    def stats(self) -> FakeStats:
        return self._stats


class FakeBackend:
    """encode: the first E entries of the sensor vector; plan: a fixed action, recorded inputs."""

    def __init__(self, clock: FakeClock, H: int = 4, N: int = 8, J: int = 2, E: int = 6,
                 action=(0.5, 0.5), pred_error: float = 0.01, encoder: str = "sensor"):
        self.clock = clock
        self.bundle = SimpleNamespace(
            planner=SimpleNamespace(H=H, N=N, J=J, A=2, E=E, std_init=0.5, encoder=encoder),
            normalisation={"max_range_m": 2.0, "half_width_m": 1.5, "half_height_m": 1.0,
                           "max_wheel_speed_rad_s": 10.0},
            max_wheel_speed=10.0, manifest={"planner": {"conf_error_scale": 0.1}}, path="fake-bundle")
        self.action = np.asarray(action, np.float32)
        self.pred_error = pred_error
        self.plan_cost_s: dict[int, float] = {}   # call index -> seconds the call "takes"
        self.plan_sleep_s: dict[int, float] = {}  # call index -> real seconds the call sleeps
        self.calls: list[dict] = []
        self.raise_on: int | None = None

    def encode(self, sensor, frame=None):
        return np.asarray(sensor[: self.bundle.planner.E], np.float32)

    def plan(self, z0, z_goal, mean, std, noise):
        i = len(self.calls)
        self.calls.append({"mean": mean.copy(), "std": std.copy(), "noise": noise})
        if self.raise_on == i:
            raise RuntimeError("backend exploded")
        self.clock.advance(self.plan_cost_s.get(i, 0.0))
        if i in self.plan_sleep_s:
            import time

            time.sleep(self.plan_sleep_s[i])
        H = self.bundle.planner.H
        mean_out = np.tile(self.action, (H, 1)).astype(np.float32)
        mean_out[:, 0] += np.arange(H, dtype=np.float32) * 0.01  # distinguishable steps
        return PlanResult(mean_out=mean_out, std_out=std, best_cost=1.0, mean_cost=2.0,
                          conf=np.full(H, self.pred_error, np.float32), best_actions=mean_out)


@dataclass
class FakeFallback:
    """A fallback whose requests finish when the test says so."""

    submitted: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    busy: bool = False
    closed: bool = False

    def submit(self, situation) -> bool:
        if self.busy:
            return False
        self.submitted.append(situation)
        self.busy = True
        return True

    def finish(self, event) -> None:
        self.pending.append(event)
        self.busy = False

    def poll(self):
        return self.pending.pop(0) if self.pending else None

    @property
    def in_flight(self) -> bool:
        return self.busy

    def close(self) -> None:
        self.closed = True


class RealClock:
    """Wall time for tests that need a worker thread to really take time."""

    scale = 1.0

    def now(self) -> float:
        import time

        return time.monotonic()

    monotonic = now

    def advance(self, dt: float) -> None:
        """Fake stage costs are ignored in real time."""

    def sleep_until(self, t: float, wake: threading.Event | None = None) -> None:
        import time

        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
