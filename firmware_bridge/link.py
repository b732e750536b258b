"""Serial link to the ESP32 motor controller: reader thread, stats, acked commands, resets, reopen.

``SerialLink`` owns one serial port and one background reader thread. The reader decodes
frames (``firmware_bridge.protocol``), keeps the latest telemetry snapshot stamped with the
host receive time, resolves ACK/NACK for pending commands and counts everything that goes
wrong on the wire (``LinkStats``). Other threads only write.

Behaviour in one place:

* **Opening** never resets the ESP32: DTR and RTS are deasserted *before* the port is opened
  (on most dev boards they drive EN/IO0). Low-latency mode (``ASYNC_LOW_LATENCY``) is requested
  where the driver allows; pseudo-terminals refuse it, which is noted in ``low_latency_note``.
* **Heartbeat**: ``send_velocity`` at the control rate is the heartbeat (the firmware stops the
  motors when no valid frame arrived for its watchdog period, 200 ms by default). An optional
  heartbeat thread re-sends the last command, but only for ``heartbeat_hold_s`` after it was
  given: a hung control loop then gets explicit zeros, never a robot that keeps driving.
* **Acked commands** (ESTOP, CLEAR_ESTOP, CONFIG, SET_PID, SET_PWM, RESET_ENC, PING) are retried a
  bounded number of times; when exhausted, ``AckTimeoutError`` names the port and what to check.
* **Device reset** is detected by a HELLO frame, by the device sequence number going backwards
  (16-bit wrap excepted), or by the device clock (``mcu_time_us``) going backwards (32-bit wrap
  at ~71.6 min excepted; checked across reconnects too: a HELLO sent while the port was closed
  is usually lost on real USB bridges). Host time is never compared with the device clock: a
  stalled host (interpreter busy loading an LLM, frames buffered, then dropped) sees the device
  clock leap ahead of its own stamps, and that is not a reset. On a reset the
  link re-bases odometry (an encoder offset makes the first count after the reset continue
  from the last one before it, whether the device restarted its counters at 0 or not),
  re-sends the configuration it sent before (CONFIG, SET_PID, and a latched ESTOP the host has
  not cleared) and calls ``on_reset``.
* **Cable pulled**: read or write errors close the port; the reader retries opening with
  exponential backoff (``LinkState.DISCONNECTED`` until it succeeds, then ``CONNECTED``).
  The reader thread never dies from an exception.

Times are ``time.monotonic()`` seconds on the host, microseconds (``mcu_time_us``) on the MCU.
"""

from __future__ import annotations

import enum
import errno
import logging
import math
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import serial

from firmware_bridge import protocol
from firmware_bridge.protocol import MsgType, StatusBits

log = logging.getLogger(__name__)

_U16 = 0x10000
_U32 = 0x1_0000_0000
NO_RANGE_MM = protocol.RANGE_NO_READING  # ranges_mm value meaning "no reading"
_LIST_PORTS_HINT = "List serial ports with `python -m serial.tools.list_ports -v`"


class LinkError(ConnectionError):
    """Base class of everything the link raises; the message names the port and a next step."""


class PortOpenError(LinkError):
    """The serial port could not be opened (missing, permission denied, busy, ...)."""


class LinkDisconnectedError(LinkError):
    """The port is closed or vanished; the reader is reconnecting in the background."""


class AckTimeoutError(LinkError):
    """An acked command got no ACK after all retries."""


class NackError(LinkError):
    """The device refused a command (NACK); ``error`` is the device's error code."""

    def __init__(self, message: str, error: int):
        super().__init__(message)
        self.error = error


class LinkState(enum.Enum):
    CLOSED = "closed"              # never opened, or close() was called
    CONNECTED = "connected"        # port open, reader running
    DISCONNECTED = "disconnected"  # port lost; reader retrying open with backoff


@dataclass(frozen=True)
class LinkConfig:
    """How the host talks to the port. Defaults live here and nowhere else."""

    baudrate: int = 921600          # must match the firmware's UART rate (ignored by USB-CDC and ptys)
    ack_timeout_s: float = 0.05     # wait per attempt for ACK; a 921600 UART answers in ~1 ms
    ack_retries: int = 3            # extra attempts after the first, then AckTimeoutError
    write_timeout_s: float = 0.1    # a write blocked longer than this counts as a lost port
    reopen_initial_s: float = 0.05  # first wait before re-opening a lost port
    reopen_max_s: float = 1.0       # backoff ceiling while the port stays missing
    exclusive: bool = True          # flock the port so a second program cannot interleave bytes
    low_latency: bool = True        # request ASYNC_LOW_LATENCY (FTDI/CP210x: 16 ms -> 1 ms latency)
    heartbeat_hold_s: float = 0.5   # heartbeat re-sends a command at most this long, then zeros

    def __post_init__(self) -> None:
        if not isinstance(self.baudrate, int) or self.baudrate <= 0:
            raise ValueError(f"LinkConfig.baudrate must be a positive integer (e.g. 115200 or 921600), got {self.baudrate!r}")
        for name in ("ack_timeout_s", "write_timeout_s", "reopen_initial_s", "reopen_max_s",
                     "heartbeat_hold_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"LinkConfig.{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.ack_retries, int) or self.ack_retries < 0:
            raise ValueError(f"LinkConfig.ack_retries must be an integer >= 0, got {self.ack_retries!r}")
        if self.reopen_max_s < self.reopen_initial_s:
            raise ValueError(
                f"LinkConfig.reopen_max_s ({self.reopen_max_s}) must be >= reopen_initial_s ({self.reopen_initial_s})")


@dataclass(frozen=True)
class Telemetry:
    """One TELEMETRY frame as the host sees it.

    ``enc_left``/``enc_right`` are cumulative encoder counts made continuous across device
    resets (``raw_enc_*`` plus the link's offset); ``speed_*`` are wheel speeds in rad/s;
    ``ranges_mm`` holds 8 ranges in millimetres (index 0 forward, counter-clockwise,
    ``NO_RANGE_MM`` = no reading); ``host_time`` is ``time.monotonic()`` when it was decoded.
    """

    enc_left: int
    enc_right: int
    speed_left: float
    speed_right: float
    ranges_mm: tuple[int, ...]
    mcu_time_us: int
    status: StatusBits
    last_cmd_seq: int
    seq: int
    host_time: float
    raw_enc_left: int
    raw_enc_right: int

    @property
    def ranges_m(self) -> tuple[float, ...]:
        """The 8 ranges in metres, NaN where the sensor gave no reading."""
        return tuple(math.nan if r == NO_RANGE_MM else r / 1000.0 for r in self.ranges_mm)

    @property
    def estop_latched(self) -> bool:
        return bool(self.status & StatusBits.ESTOP_LATCHED)

    @property
    def watchdog_tripped(self) -> bool:
        return bool(self.status & StatusBits.WATCHDOG_TRIPPED)


@dataclass(frozen=True)
class DeviceInfo:
    """What the last HELLO said."""

    protocol_version: int
    fw_version: int
    boot_count: int
    reset_reason: int
    host_time: float


@dataclass(frozen=True)
class ResetEvent:
    """A detected device reset. ``reason``: 'hello', 'sequence' (device seq went backwards) or
    'clock' (device clock went backwards). ``device`` is set when a HELLO was seen."""

    reason: str
    host_time: float
    device: DeviceInfo | None


@dataclass(frozen=True)
class LinkStats:
    """Counters since the link was created (snapshot; all ints)."""

    bytes_rx: int = 0
    bytes_tx: int = 0
    frames_rx: int = 0            # valid frames decoded
    frames_tx: int = 0
    telemetry_rx: int = 0
    crc_errors: int = 0           # frames with a bad CRC (corrupted on the wire)
    frame_errors: int = 0         # malformed frames (bad COBS, wrong length, unknown type)
    oversize_frames: int = 0      # delimiter missing for longer than the largest frame
    bytes_discarded: int = 0      # bytes thrown away while resynchronising
    seq_gaps: int = 0             # times the device sequence number skipped ahead
    frames_dropped: int = 0       # device frames missing in those gaps
    acks: int = 0
    nacks: int = 0
    unmatched_acks: int = 0       # ACK/NACK for no pending command (late, after a timeout)
    retries: int = 0              # acked-command attempts after the first
    ack_timeouts: int = 0         # acked commands that exhausted their retries
    device_resets: int = 0
    disconnects: int = 0          # times the port was lost
    reopens: int = 0              # successful re-opens after a loss
    read_errors: int = 0
    write_errors: int = 0
    internal_errors: int = 0      # exceptions caught in the reader (callbacks included)


_COUNTERS = [f.name for f in LinkStats.__dataclass_fields__.values()]
_DECODER_COUNTERS = {"crc_errors": "crc_errors", "frame_errors": "frame_errors",
                     "oversize_frames": "oversize", "bytes_discarded": "bytes_discarded"}


class _Pending:
    __slots__ = ("msg_type", "event", "reply")

    def __init__(self, msg_type: MsgType):
        self.msg_type = msg_type
        self.event = threading.Event()
        self.reply: protocol.Frame | None = None


def open_error_message(port: str, exc: BaseException) -> str:
    """A one-paragraph explanation of why ``port`` could not be opened, with the next step."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EACCES or "Permission denied" in text:
        return (f"Could not open '{port}': permission denied. Add yourself to the dialout group: "
                "sudo usermod -aG dialout $USER, then log in again (or install the udev rule "
                "from build/pi/ or build/jetson/).")
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        return (f"Could not open '{port}': no such device. Check the USB cable and that the "
                f"board is powered. {_LIST_PORTS_HINT}.")
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return (f"Could not open '{port}': it is in use by another program (a serial monitor, "
                f"another edge-link?). Find it with `fuser {port}` and close it.")
    return f"Could not open '{port}': {text}. {_LIST_PORTS_HINT}."


class KeepInputSerial(serial.Serial):
    """``serial.Serial`` that does not flush the receive queue in ``open()``.

    pyserial discards pending input when it opens a port; bytes a device sent just before
    (a HELLO on a pseudo-terminal or a buffering bridge) would be lost. The frame decoder
    resynchronises on its own, so keeping them costs nothing."""

    def _reset_input_buffer(self) -> None:  # called by open() (pyserial 3.x, POSIX)
        pass


def _signed(value: int, modulus: int) -> int:
    value %= modulus
    return value - modulus if value >= modulus // 2 else value


class SerialLink:
    """One serial port to one motor controller.

    ``port`` is a device path; a stable symlink (e.g. ``/dev/edge-esp32`` from the udev rule) is
    followed again on every re-open, so a device that comes back under a new ttyUSB/pty name
    is found. ``on_reset(ResetEvent)``, ``on_state(LinkState)`` and ``on_telemetry(Telemetry)``
    (every frame, e.g. for a recorder) run on the reader thread: keep them short and
    non-blocking. ``serial_factory`` builds the unopened ``serial.Serial``
    (injectable for tests of other transports).
    """

    def __init__(self, port: str, config: LinkConfig | None = None, *,
                 on_reset: Callable[[ResetEvent], None] | None = None,
                 on_state: Callable[[LinkState], None] | None = None,
                 on_telemetry: Callable[[Telemetry], None] | None = None,
                 serial_factory: Callable[[], serial.Serial] = KeepInputSerial):
        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be a device path such as /dev/ttyUSB0, got {port!r}")
        self.port = port
        self.config = config or LinkConfig()
        self._on_reset = on_reset
        self._on_state = on_state
        self._telemetry_callback = on_telemetry
        self._serial_factory = serial_factory

        self._state = LinkState.CLOSED
        self._ser: serial.Serial | None = None
        self._tx_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._rx_cond = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._reopen_requested = False
        self.last_error: str | None = None
        self.low_latency = False
        self.low_latency_note = "port not opened yet"

        self._counts = {name: 0 for name in _COUNTERS}
        self._decoder = protocol.FrameDecoder()

        self._tx_seq = 0
        self._ping_token = 0
        self._rx_last_seq = 0
        self._expected_seq: int | None = None
        self._last_mcu: tuple[int, float] | None = None  # (mcu_time_us, host_time) of last telemetry
        self._enc_offset = (0, 0)
        self._last_visible: tuple[int, int] | None = None
        self._rebase_pending = False
        self._seen_device = False
        self._latest: Telemetry | None = None
        self.device_info: DeviceInfo | None = None
        self.version_mismatch: str | None = None
        self._resets: list[ResetEvent] = []

        self._restore_lock = threading.Lock()
        self._restore_thread: threading.Thread | None = None
        self._restore_again = False
        self._estop_requested = False
        self._saved: dict[MsgType, dict[str, Any]] = {}

        self._cmd_lock = threading.Lock()
        self._last_cmd = (0.0, 0.0)
        self._last_cmd_time = 0.0
        self._last_vel_send = 0.0
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def open(self) -> None:
        """Open the port (raises ``PortOpenError`` naming the port and the fix) and start the reader."""
        if self._reader is not None:
            raise LinkError(f"Link to '{self.port}' is already open")
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        try:
            self._open_port()
        except BaseException:
            self._close_wake_pipe()
            raise
        self._set_state(LinkState.CONNECTED)
        self._reader = threading.Thread(target=self._reader_main, name=f"link-reader {self.port}",
                                        daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Stop the threads and close the port. Pending commands fail with ``LinkDisconnectedError``."""
        self.stop_heartbeat()
        self._stop.set()
        self._wake()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader = None
        restore = self._restore_thread
        if restore is not None:
            restore.join(timeout=2.0)
        with self._tx_lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            _quiet_close(ser)
        self._fail_pending()
        self._close_wake_pipe()
        self._set_state(LinkState.CLOSED)

    def __enter__(self) -> SerialLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> LinkState:
        return self._state

    # ---------------------------------------------------------------- observation
    def latest(self) -> Telemetry | None:
        """The newest telemetry snapshot, or None before the first one arrived."""
        return self._latest

    def wait_for_telemetry(self, after: float | None = None, timeout: float = 1.0) -> Telemetry:
        """Block until a telemetry frame received after host time ``after`` (default: now)
        is available and return it; ``LinkError`` naming the port after ``timeout`` s."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout
        with self._rx_cond:
            while True:
                latest = self._latest
                if latest is not None and latest.host_time > after:
                    return latest
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LinkError(
                        f"No telemetry from '{self.port}' for {timeout:.2f} s (state "
                        f"{self._state.value}). Check the device is powered and running the "
                        f"edge-jepa firmware (edge-flash) at {self.config.baudrate} baud.")
                self._rx_cond.wait(remaining)

    def stats(self) -> LinkStats:
        """A snapshot of all counters (decoder counters included)."""
        counts = dict(self._counts)
        for name, attr in _DECODER_COUNTERS.items():
            counts[name] = getattr(self._decoder, attr)
        return LinkStats(**counts)

    @property
    def resets(self) -> list[ResetEvent]:
        """Device resets detected so far (oldest first)."""
        return list(self._resets)

    # ---------------------------------------------------------------- commands
    def send_velocity(self, left: float, right: float) -> None:
        """Send SET_VEL (wheel targets in rad/s, not acked). This is also the heartbeat.

        Raises ``LinkDisconnectedError`` while the port is down and ``ValueError`` for non-finite
        values (the caller decides what to send instead; nothing is sent)."""
        if not (math.isfinite(left) and math.isfinite(right)):
            raise ValueError(f"wheel velocity must be finite rad/s, got left={left!r} right={right!r}")
        now = time.monotonic()
        with self._cmd_lock:
            self._last_cmd = (float(left), float(right))
            self._last_cmd_time = now
            self._last_vel_send = now
        self._send(MsgType.SET_VEL, left=float(left), right=float(right))

    def send_pwm(self, left: float, right: float) -> None:
        """Send SET_PWM (open-loop duty in [-1, 1], acked; bypasses the PID, feeds the watchdog)."""
        for name, value in (("left", left), ("right", right)):
            if not math.isfinite(value) or abs(value) > 1.0:
                raise ValueError(f"PWM duty '{name}' must be a finite number in [-1, 1], got {value!r}")
        self.command(MsgType.SET_PWM, left=float(left), right=float(right))

    def command(self, msg_type: MsgType, *, timeout_s: float | None = None,
                retries: int | None = None, **fields: Any) -> protocol.Frame:
        """Send an acked command (``protocol.ACKED_TYPES``) and wait for its ACK (returned).

        Each attempt uses a fresh sequence number; an ACK for any attempt counts. Raises
        ``NackError`` when refused, ``AckTimeoutError`` after ``1 + retries`` silent attempts,
        ``LinkDisconnectedError`` when the port is down."""
        msg_type = MsgType(msg_type)
        if msg_type not in protocol.ACKED_TYPES:
            raise ValueError(f"{msg_type.name} is not an acked command; acked: "
                             f"{sorted(t.name for t in protocol.ACKED_TYPES)}")
        timeout_s = self.config.ack_timeout_s if timeout_s is None else timeout_s
        retries = self.config.ack_retries if retries is None else retries
        pending = _Pending(msg_type)
        seqs: list[int] = []
        try:
            for attempt in range(retries + 1):
                if attempt:
                    self._counts["retries"] += 1
                seqs.append(self._send(msg_type, pending=pending, **fields))
                if pending.event.wait(timeout_s):
                    break
            else:
                self._counts["ack_timeouts"] += 1
                raise AckTimeoutError(
                    f"No ACK for {msg_type.name} from '{self.port}' after {retries + 1} attempts "
                    f"({timeout_s * 1000:.0f} ms each). Check the device is powered, running the "
                    f"edge-jepa firmware (edge-flash) and set to {self.config.baudrate} baud.")
        finally:
            with self._pending_lock:
                for seq in seqs:
                    self._pending.pop(seq, None)
        reply = pending.reply
        if reply is None:
            raise LinkDisconnectedError(
                f"Link to '{self.port}' went down while waiting for the ACK of {msg_type.name}"
                + (f" ({self.last_error})" if self.last_error else "") + ". Check the USB cable.")
        if reply.type == MsgType.NACK:
            code = int(reply.fields.get("error", -1))
            raise NackError(f"'{self.port}' refused {msg_type.name} (NACK error {code}). "
                            "See firmware_bridge/PROTOCOL.md for the error codes.", code)
        if msg_type in (MsgType.CONFIG, MsgType.SET_PID):
            self._saved[msg_type] = dict(fields)
        elif msg_type == MsgType.ESTOP:
            self._estop_requested = True
        elif msg_type == MsgType.CLEAR_ESTOP:
            self._estop_requested = False
        return reply

    def ping(self, timeout_s: float | None = None) -> float:
        """Round trip PING -> ACK in seconds."""
        self._ping_token = (self._ping_token + 1) % _U32
        start = time.perf_counter()
        self.command(MsgType.PING, timeout_s=timeout_s, token=self._ping_token)
        return time.perf_counter() - start

    def estop(self) -> None:
        """Latch the e-stop on the device (acked). It stays latched, also across device resets
        (the link re-sends it), until ``clear_estop``."""
        self._estop_requested = True
        self.command(MsgType.ESTOP)

    def clear_estop(self) -> None:
        self.command(MsgType.CLEAR_ESTOP)

    def configure(self, **fields: Any) -> None:
        """Send CONFIG (acked); it is re-sent automatically after a device reset."""
        self.command(MsgType.CONFIG, **fields)

    def set_pid(self, **fields: Any) -> None:
        """Send SET_PID (acked); it is re-sent automatically after a device reset."""
        self.command(MsgType.SET_PID, **fields)

    def reset_encoders(self) -> None:
        """Zero the device's encoder counts and the host offset (acked)."""
        self.command(MsgType.RESET_ENC)

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (diagnostics, fault injection in tests)."""
        with self._tx_lock:
            ser = self._require_port()
            self._write(ser, data)

    # ---------------------------------------------------------------- heartbeat
    def start_heartbeat(self, rate_hz: float) -> None:
        """Re-send the last velocity command at ``rate_hz`` whenever ``send_velocity`` was not
        called for a period; after ``heartbeat_hold_s`` without a new command it sends zeros."""
        if not math.isfinite(rate_hz) or rate_hz <= 0:
            raise ValueError(f"heartbeat rate must be a positive number of Hz, got {rate_hz!r}")
        self.stop_heartbeat()
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(target=self._heartbeat_main, args=(1.0 / rate_hz,),
                                           name=f"link-heartbeat {self.port}", daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=2.0)
            self._hb_thread = None

    def _heartbeat_main(self, period: float) -> None:
        while not self._hb_stop.wait(period):
            now = time.monotonic()
            with self._cmd_lock:
                if now - self._last_vel_send < 0.9 * period:
                    continue
                fresh = now - self._last_cmd_time <= self.config.heartbeat_hold_s
                left, right = self._last_cmd if fresh else (0.0, 0.0)
                self._last_vel_send = now
            try:
                self._send(MsgType.SET_VEL, left=left, right=right)
            except LinkError:
                pass  # reconnecting; the firmware watchdog holds the motors at zero meanwhile

    # ---------------------------------------------------------------- writing
    def _require_port(self) -> serial.Serial:
        ser = self._ser
        if ser is None:
            raise LinkDisconnectedError(
                f"Link to '{self.port}' is {self._state.value}"
                + (f" ({self.last_error})" if self.last_error else "")
                + ("; reconnecting in the background. Check the USB cable." if self._state ==
                   LinkState.DISCONNECTED else ". Call open() first."))
        return ser

    def _send(self, msg_type: MsgType, pending: _Pending | None = None, **fields: Any) -> int:
        with self._tx_lock:
            ser = self._require_port()
            seq = self._tx_seq
            self._tx_seq = (seq + 1) % _U16
            packet = protocol.encode(msg_type, seq, self._rx_last_seq, **fields)
            if pending is not None:
                with self._pending_lock:
                    self._pending[seq] = pending
            self._write(ser, packet)
            self._counts["frames_tx"] += 1
        return seq

    def _write(self, ser: serial.Serial, data: bytes) -> None:
        try:
            ser.write(data)
        except (serial.SerialException, OSError, ValueError, TypeError) as e:
            self._counts["write_errors"] += 1
            self.last_error = f"write failed: {e}"
            self._request_reopen()
            raise LinkDisconnectedError(
                f"Write to '{self.port}' failed ({e}); reconnecting in the background. "
                "Check the USB cable.") from e
        self._counts["bytes_tx"] += len(data)

    # ---------------------------------------------------------------- port handling (reader thread)
    def _open_port(self) -> None:
        path = self.port
        ser = self._serial_factory()
        ser.port = path
        ser.baudrate = self.config.baudrate
        ser.timeout = 0
        ser.write_timeout = self.config.write_timeout_s
        ser.exclusive = self.config.exclusive
        ser.dtr = False   # deasserted *before* open: DTR/RTS wired to EN/IO0 would reset the ESP32
        ser.rts = False
        try:
            ser.open()
        except Exception as e:  # SerialException, OSError, termios.error, ValueError: all mean "cannot open"
            raise PortOpenError(open_error_message(path, e)) from e
        self._apply_low_latency(ser)
        with self._tx_lock:
            self._ser = ser
            self._reopen_requested = False
        self._decoder.reset()  # a partial packet from before the loss is not completed by new bytes
        self._expected_seq = None

    def _apply_low_latency(self, ser: serial.Serial) -> None:
        if not self.config.low_latency:
            self.low_latency, self.low_latency_note = False, "disabled in LinkConfig"
            return
        try:
            ser.set_low_latency_mode(True)
        except (ValueError, OSError, NotImplementedError, AttributeError) as e:
            self.low_latency = False
            self.low_latency_note = "not supported by this port's driver (ptys, some USB bridges); continuing without"
            log.info("%s: low-latency mode %s: %s", self.port, self.low_latency_note, e)
        else:
            self.low_latency, self.low_latency_note = True, "enabled"

    def _drop_port(self, reason: str) -> None:
        with self._tx_lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            _quiet_close(ser)
        self.last_error = reason
        self._counts["disconnects"] += 1
        self._fail_pending()
        log.warning("%s: link lost (%s); reconnecting", self.port, reason)
        self._set_state(LinkState.DISCONNECTED)

    def _request_reopen(self) -> None:
        self._reopen_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _reader_main(self) -> None:
        backoff = self.config.reopen_initial_s
        while not self._stop.is_set():
            try:
                ser = self._ser
                if ser is None:
                    try:
                        self._open_port()
                    except PortOpenError as e:
                        self.last_error = str(e)
                        self._stop.wait(backoff)
                        backoff = min(2 * backoff, self.config.reopen_max_s)
                        continue
                    backoff = self.config.reopen_initial_s
                    self._counts["reopens"] += 1
                    log.info("%s: link re-opened", self.port)
                    self._set_state(LinkState.CONNECTED)
                    self._schedule_restore()
                    continue
                if self._reopen_requested:
                    self._drop_port(self.last_error or "reopen requested")
                    continue
                try:
                    data = self._read_some(ser)
                except (OSError, serial.SerialException, ValueError, TypeError) as e:
                    self._counts["read_errors"] += 1
                    self._drop_port(f"read failed: {e}")
                    continue
                if data:
                    self._handle_bytes(data, time.monotonic())
            except Exception:  # the reader must survive anything, including bugs in callbacks
                self._counts["internal_errors"] += 1
                log.exception("%s: unexpected error in the link reader (continuing)", self.port)
                self._stop.wait(0.01)

    def _read_some(self, ser: serial.Serial) -> bytes:
        fd = ser.fileno()
        ready, _, _ = select.select([fd, self._wake_r], [], [], 0.2)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if fd not in ready:
            return b""
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b""
        if not data:
            raise OSError(errno.EIO, "port reported data but returned none (device unplugged?)")
        return data

    # ---------------------------------------------------------------- decoding (reader thread)
    def _handle_bytes(self, data: bytes, now: float) -> None:
        self._counts["bytes_rx"] += len(data)
        for frame in self._decoder.feed(data):
            self._counts["frames_rx"] += 1
            self._on_frame(frame, now)

    def _on_frame(self, frame: protocol.Frame, now: float) -> None:
        if frame.type == MsgType.HELLO:
            self._on_hello(frame, now)
        else:
            self._track_sequence(frame, now)
        self._rx_last_seq = frame.seq
        self._seen_device = True
        if frame.type == MsgType.TELEMETRY:
            self._on_telemetry(frame, now)
        elif frame.type in (MsgType.ACK, MsgType.NACK):
            self._on_ack(frame)

    def _on_hello(self, frame: protocol.Frame, now: float) -> None:
        f = frame.fields
        info = DeviceInfo(int(f["protocol_version"]), int(f["fw_version"]), int(f["boot_count"]),
                          int(f["reset_reason"]), now)
        previous, self.device_info = self.device_info, info
        if info.protocol_version != protocol.PROTOCOL_VERSION:
            self.version_mismatch = (
                f"'{self.port}' speaks protocol version {info.protocol_version}, this host "
                f"speaks {protocol.PROTOCOL_VERSION}. Flash matching firmware with edge-flash.")
            log.error(self.version_mismatch)
        else:
            self.version_mismatch = None
        self._expected_seq = (frame.seq + 1) % _U16
        seen_before = self._seen_device or previous is not None
        if seen_before:
            self._device_reset("hello", now, info)
        elif self._saved or self._estop_requested:
            self._schedule_restore()

    def _track_sequence(self, frame: protocol.Frame, now: float) -> None:
        expected = self._expected_seq
        self._expected_seq = (frame.seq + 1) % _U16
        if expected is None:
            return
        delta = _signed(frame.seq - expected, _U16)
        if delta > 0:
            self._counts["seq_gaps"] += 1
            self._counts["frames_dropped"] += delta
        elif delta < 0:
            self._device_reset("sequence", now, None)

    def _on_telemetry(self, frame: protocol.Frame, now: float) -> None:
        f = frame.fields
        mcu = int(f["mcu_time_us"])
        last = self._last_mcu
        # Only the device's own clock decides: backwards (in the signed 32-bit sense, so a wrap
        # from ~2**32 to a small value counts as forward) = the device rebooted. A forward leap,
        # however large against host time, is a host stall or lost frames, never a reset. Limit:
        # a reboot after > 35.8 min uptime (2**31 us) reads as a forward step here; HELLO and
        # the sequence check catch that case.
        if last is not None and _signed(mcu - last[0], _U32) < 0:
            self._device_reset("clock", now, None)
        self._last_mcu = (mcu, now)
        raw = (int(f["enc_left"]), int(f["enc_right"]))
        if self._rebase_pending:
            self._rebase_pending = False
            if self._last_visible is not None:
                self._enc_offset = (self._last_visible[0] - raw[0], self._last_visible[1] - raw[1])
        visible = (raw[0] + self._enc_offset[0], raw[1] + self._enc_offset[1])
        self._last_visible = visible
        telemetry = Telemetry(
            enc_left=visible[0], enc_right=visible[1],
            speed_left=float(f["speed_left"]), speed_right=float(f["speed_right"]),
            ranges_mm=tuple(int(r) for r in f["ranges_mm"]), mcu_time_us=mcu,
            status=StatusBits(int(f["status"])), last_cmd_seq=int(f["last_cmd_seq"]),
            seq=frame.seq, host_time=now, raw_enc_left=raw[0], raw_enc_right=raw[1])
        self._counts["telemetry_rx"] += 1
        with self._rx_cond:
            self._latest = telemetry
            self._rx_cond.notify_all()
        if self._telemetry_callback is not None:
            try:
                self._telemetry_callback(telemetry)
            except Exception:
                self._counts["internal_errors"] += 1
                log.exception("%s: on_telemetry callback failed", self.port)

    def _on_ack(self, frame: protocol.Frame) -> None:
        is_nack = frame.type == MsgType.NACK
        self._counts["nacks" if is_nack else "acks"] += 1
        acked_seq = int(frame.fields["acked_seq"])
        with self._pending_lock:
            pending = self._pending.get(acked_seq)
            if pending is None or int(frame.fields["acked_type"]) != pending.msg_type:
                self._counts["unmatched_acks"] += 1
                return
            if pending.event.is_set():
                return
            if pending.msg_type == MsgType.RESET_ENC and not is_nack:
                self._enc_offset = (0, 0)
                self._last_visible = None
                self._rebase_pending = False
            pending.reply = frame
            pending.event.set()

    def _fail_pending(self) -> None:
        with self._pending_lock:
            for pending in self._pending.values():
                pending.event.set()
            self._pending.clear()

    # ---------------------------------------------------------------- resets
    def _device_reset(self, reason: str, now: float, info: DeviceInfo | None) -> None:
        self._rebase_pending = True  # the next telemetry continues from the last counts seen
        self._last_mcu = None
        event = ResetEvent(reason, now, info)
        self._resets.append(event)
        self._counts["device_resets"] += 1
        log.warning("%s: device reset detected (%s); re-basing odometry and re-sending configuration",
                    self.port, reason)
        self._schedule_restore()
        if self._on_reset is not None:
            try:
                self._on_reset(event)
            except Exception:
                self._counts["internal_errors"] += 1
                log.exception("%s: on_reset callback failed", self.port)

    def _schedule_restore(self) -> None:
        if not (self._saved or self._estop_requested) or self._stop.is_set():
            return
        with self._restore_lock:
            if self._restore_thread is not None and self._restore_thread.is_alive():
                self._restore_again = True
                return
            self._restore_again = False
            self._restore_thread = threading.Thread(target=self._restore_main, daemon=True,
                                                    name=f"link-restore {self.port}")
            self._restore_thread.start()

    def _restore_main(self) -> None:
        while not self._stop.is_set():
            try:
                if self._estop_requested:
                    self.command(MsgType.ESTOP)
                for msg_type in (MsgType.CONFIG, MsgType.SET_PID):
                    if msg_type in self._saved:
                        self.command(msg_type, **self._saved[msg_type])
            except LinkError as e:
                log.warning("%s: could not restore the configuration after a reset: %s", self.port, e)
            with self._restore_lock:
                if not self._restore_again:
                    return
                self._restore_again = False

    def _set_state(self, state: LinkState) -> None:
        if state == self._state:
            return
        self._state = state
        with self._rx_cond:
            self._rx_cond.notify_all()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                self._counts["internal_errors"] += 1
                log.exception("%s: on_state callback failed", self.port)


def _quiet_close(ser: serial.Serial) -> None:
    try:
        ser.close()
    except Exception:  # closing a vanished device may fail in many ways; it is closed either way
        pass
