"""``MotorController``: the device API of the ESP32 motor controller (connect, observe, command).

Example::

    from firmware_bridge.device import MotorController, MotorControllerConfig

    with MotorController(MotorControllerConfig(port="/dev/edge-esp32")) as mc:
        sent = mc.send_velocity(4.0, 4.0)      # rad/s, clipped to max_wheel_speed
        obs = mc.get_observation()            # latest Telemetry (encoders, speeds, ranges)
        rtt = mc.ping()                       # seconds
    # leaving the block - normally or by an exception - sends zero velocity, then closes

The control loop calls ``send_action`` / ``send_velocity`` every tick; that is the heartbeat the
firmware watchdog expects (motors stop ``watchdog_ms`` after the last one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from firmware_bridge.link import (
    LinkConfig,
    LinkError,
    LinkState,
    LinkStats,
    ResetEvent,
    SerialLink,
    Telemetry,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PidGains:
    """Wheel velocity PID gains sent with SET_PID (duty per rad/s error, etc.)."""

    kp: float   # duty per rad/s of speed error
    ki: float   # duty per rad of integrated error
    kd: float   # duty per rad/s^2 (derivative on measurement)
    i_limit: float  # clamp of the integral term, duty

    def __post_init__(self) -> None:
        for name in ("kp", "ki", "kd", "i_limit"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"PidGains.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class MotorControllerConfig:
    """Everything needed to talk to one motor controller; defaults live here only."""

    port: str                          # e.g. /dev/edge-esp32 (udev symlink) or /dev/ttyUSB0
    link: LinkConfig = field(default_factory=LinkConfig)  # baud rate, ack timeouts, reconnect backoff
    max_wheel_speed: float = 10.0      # rad/s; SET_VEL is clipped to +-this on the host and the MCU
    telemetry_period_ms: int = 10      # TELEMETRY every 10 ms = 100 Hz, enough for a 50 Hz loop
    watchdog_ms: int = 200             # the MCU stops the motors this long after the last command
    ticks_per_rev: int = 1320          # encoder counts per wheel revolution (after quadrature)
    pid: PidGains | None = None        # None keeps the firmware's built-in gains
    connect_timeout_s: float = 1.0     # wait this long for the first telemetry in connect()
    heartbeat_hz: float = 0.0          # > 0 starts the link's heartbeat thread; 0: the loop's commands are the heartbeat

    def __post_init__(self) -> None:
        if not isinstance(self.port, str) or not self.port:
            raise ValueError(f"MotorControllerConfig.port must be a device path such as /dev/ttyUSB0, got {self.port!r}")
        if not isinstance(self.max_wheel_speed, (int, float)) or not math.isfinite(self.max_wheel_speed) \
                or self.max_wheel_speed <= 0:
            raise ValueError(f"MotorControllerConfig.max_wheel_speed must be a positive number of rad/s, "
                             f"got {self.max_wheel_speed!r}")
        if not isinstance(self.telemetry_period_ms, int) or not 1 <= self.telemetry_period_ms <= 1000:
            raise ValueError(f"MotorControllerConfig.telemetry_period_ms must be an integer in 1..1000, "
                             f"got {self.telemetry_period_ms!r}")
        if not isinstance(self.watchdog_ms, int) or not 10 <= self.watchdog_ms <= 5000:
            raise ValueError(f"MotorControllerConfig.watchdog_ms must be an integer in 10..5000 "
                             f"(the firmware's range), got {self.watchdog_ms!r}")
        if not isinstance(self.ticks_per_rev, int) or not 1 <= self.ticks_per_rev <= 0xFFFF:
            raise ValueError(f"MotorControllerConfig.ticks_per_rev must be an integer in 1..65535, "
                             f"got {self.ticks_per_rev!r}")
        if not math.isfinite(self.connect_timeout_s) or self.connect_timeout_s <= 0:
            raise ValueError(f"MotorControllerConfig.connect_timeout_s must be > 0 s, got {self.connect_timeout_s!r}")
        if not math.isfinite(self.heartbeat_hz) or self.heartbeat_hz < 0:
            raise ValueError(f"MotorControllerConfig.heartbeat_hz must be >= 0 (0 = off), got {self.heartbeat_hz!r}")


class MotorController:
    """One ESP32 motor controller over a ``SerialLink``.

    Lifecycle: ``connect()`` -> ``get_observation()`` / ``send_velocity()`` ... ->
    ``disconnect()``, or a ``with`` block, which always ends with zero velocity sent (also when
    the body raises). All errors are ``LinkError`` subclasses naming the port and a next step.
    """

    def __init__(self, config: MotorControllerConfig, *,
                 on_reset: Callable[[ResetEvent], None] | None = None,
                 on_state: Callable[[LinkState], None] | None = None,
                 on_telemetry: Callable[[Telemetry], None] | None = None):
        """The callbacks are passed to ``SerialLink`` (they run on its reader thread)."""
        self.config = config
        self.link = SerialLink(config.port, config.link, on_reset=on_reset, on_state=on_state,
                               on_telemetry=on_telemetry)
        self._connected = False

    # ------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Open the port, wait for the first telemetry, send CONFIG (and SET_PID), stop the motors.

        Raises ``PortOpenError`` (missing, permission, busy), ``LinkError`` when the device
        stays silent, ``AckTimeoutError``/``NackError`` when it refuses the configuration."""
        cfg = self.config
        self.link.open()
        try:
            self.link.wait_for_telemetry(after=0.0, timeout=cfg.connect_timeout_s)
            if self.link.version_mismatch:
                raise LinkError(self.link.version_mismatch)
            self.link.configure(telemetry_period_ms=cfg.telemetry_period_ms, watchdog_ms=cfg.watchdog_ms,
                                max_wheel_speed=float(cfg.max_wheel_speed), ticks_per_rev=cfg.ticks_per_rev)
            if cfg.pid is not None:
                self.link.set_pid(kp=cfg.pid.kp, ki=cfg.pid.ki, kd=cfg.pid.kd, i_limit=cfg.pid.i_limit)
            self.link.send_velocity(0.0, 0.0)
        except BaseException:
            self.link.close()
            raise
        if cfg.heartbeat_hz > 0:
            self.link.start_heartbeat(cfg.heartbeat_hz)
        self._connected = True

    def disconnect(self) -> None:
        """Send zero velocity (best effort) and close the link. Safe to call twice."""
        if not self._connected:
            return
        self._connected = False
        self.link.stop_heartbeat()
        try:
            self.link.send_velocity(0.0, 0.0)
        except LinkError as e:
            log.warning("%s: could not send the final stop (%s); the firmware watchdog stops the "
                        "motors %d ms after the last command", self.config.port, e, self.config.watchdog_ms)
        finally:
            self.link.close()

    def __enter__(self) -> MotorController:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> LinkState:
        return self.link.state

    def stats(self) -> LinkStats:
        return self.link.stats()

    @property
    def resets(self) -> list[ResetEvent]:
        return self.link.resets

    # ------------------------------------------------------------ observation
    def get_observation(self) -> Telemetry:
        """The latest telemetry (encoder counts continuous across device resets, speeds in
        rad/s, ranges, status bits, ``host_time`` of receipt). Check ``host_time`` for age."""
        self._require_connected()
        telemetry = self.link.latest()
        if telemetry is None:
            raise LinkError(f"No telemetry from '{self.config.port}' yet; call connect() first.")
        return telemetry

    def wait_for_observation(self, after: float | None = None, timeout: float = 1.0) -> Telemetry:
        """Block until telemetry newer than host time ``after`` (default now) arrives."""
        self._require_connected()
        return self.link.wait_for_telemetry(after=after, timeout=timeout)

    # ------------------------------------------------------------ commands
    def send_velocity(self, left: float, right: float) -> tuple[float, float]:
        """Command wheel speeds in rad/s; returns what was sent after clipping to
        +-``max_wheel_speed``. A non-finite value sends a stop and raises ``ValueError``."""
        self._require_connected()
        if not (math.isfinite(left) and math.isfinite(right)):
            self.link.send_velocity(0.0, 0.0)
            raise ValueError(f"wheel velocity must be finite rad/s, got left={left!r} right={right!r}; "
                             "sent a stop instead")
        limit = float(self.config.max_wheel_speed)
        sent = (min(max(float(left), -limit), limit), min(max(float(right), -limit), limit))
        self.link.send_velocity(*sent)
        return sent

    def send_action(self, left: float, right: float) -> tuple[float, float]:
        """Command a normalised action in [-1, 1]^2 (wheel speed = action * max_wheel_speed);
        returns the normalised action actually sent after clipping."""
        limit = float(self.config.max_wheel_speed)
        sent = self.send_velocity(left * limit, right * limit)
        return sent[0] / limit, sent[1] / limit

    def stop(self) -> None:
        """Zero wheel speed targets (the PID brakes the wheels)."""
        self.send_velocity(0.0, 0.0)

    def estop(self) -> None:
        """Latch the e-stop (acked): SET_VEL is ignored until ``clear_estop``; survives resets."""
        self._require_connected()
        self.link.estop()

    def clear_estop(self) -> None:
        """Release the e-stop latch (acked); the motors stay stopped until the next command."""
        self._require_connected()
        self.link.clear_estop()

    def reset_encoders(self) -> None:
        """Zero the cumulative encoder counts (acked)."""
        self._require_connected()
        self.link.reset_encoders()

    def set_pid(self, gains: PidGains) -> None:
        """Send new PID gains (acked; re-sent after a device reset)."""
        self._require_connected()
        self.link.set_pid(kp=gains.kp, ki=gains.ki, kd=gains.kd, i_limit=gains.i_limit)

    def ping(self) -> float:
        """Round trip PING -> ACK in seconds."""
        self._require_connected()
        return self.link.ping()

    def _require_connected(self) -> None:
        if not self._connected:
            raise LinkError(f"Motor controller on '{self.config.port}' is not connected; call connect() "
                            "or use it as a context manager.")
