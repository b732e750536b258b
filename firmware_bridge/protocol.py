"""Wire protocol between the robot computer and the ESP32 motor controller.

The message tables below are data; :func:`encode` and :func:`decode` are pure functions over
them. The byte-level specification a firmware engineer reads is ``firmware_bridge/PROTOCOL.md``;
the C implementation is ``firmware_bridge/firmware/core/fw_protocol.c``. Both are checked
against the same golden frames (``firmware_bridge/golden_frames.json``).

One frame on the wire::

    COBS( header | payload | crc ) 0x00

    header  = version u8 | type u8 | seq u16 | ack u16      (6 bytes, little-endian)
    payload = the message's fixed struct                     (little-endian, no padding)
    crc     = CRC-16/CCITT-FALSE over header+payload, u16 little-endian

``seq`` counts the sender's frames (wraps at 65536); ``ack`` is the ``seq`` of the last valid
frame the sender received from its peer (0 before any).

Example::

    >>> wire = encode(MsgType.SET_VEL, seq=7, left=1.5, right=-1.5)
    >>> decoder = FrameDecoder()
    >>> [f.fields for f in decoder.feed(wire)]
    [{'left': 1.5, 'right': -1.5}]
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
"""Version byte of every frame; a frame with another version is rejected (NACK BAD_VERSION)."""

HEADER_FORMAT = "<BBHH"
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_PACKET_LEN = 64
"""Longest COBS-encoded packet (without the 0x00 delimiter) a receiver accepts; longer input
is discarded up to the next delimiter. The longest valid packet (TELEMETRY) is 49 bytes."""


class ProtocolError(Exception):
    """A packet could not be decoded, or a message could not be encoded."""


class CrcError(ProtocolError):
    """The packet's CRC-16 does not match its contents (corrupted on the wire)."""


class FrameError(ProtocolError):
    """The packet is malformed: bad COBS, too short, wrong version, unknown type or wrong
    payload length for its type."""


class EncodeError(ProtocolError, ValueError):
    """:func:`encode` was called with missing, unknown or out-of-range fields."""


class MsgType(enum.IntEnum):
    """Message type byte. Host -> MCU types are 0x01..0x7F, MCU -> host types 0x80..0xFF."""

    SET_VEL = 0x01
    SET_PWM = 0x02
    SET_PID = 0x03
    RESET_ENC = 0x04
    CONFIG = 0x05
    ESTOP = 0x06
    CLEAR_ESTOP = 0x07
    PING = 0x08
    TELEMETRY = 0x81
    ACK = 0x82
    NACK = 0x83
    HELLO = 0x84


class Direction(enum.Enum):
    """Who sends a message."""

    HOST_TO_MCU = "host->mcu"
    MCU_TO_HOST = "mcu->host"


class StatusBits(enum.IntFlag):
    """TELEMETRY ``status`` bitfield."""

    ESTOP_LATCHED = 0x0001
    """ESTOP received; motors held at 0 until CLEAR_ESTOP."""
    WATCHDOG_TRIPPED = 0x0002
    """No SET_VEL/SET_PWM for ``watchdog_ms`` while the motors were driven: motors stopped.
    Cleared by the next valid SET_VEL or SET_PWM."""
    MOTORS_ENABLED = 0x0004
    """Motors are being driven (velocity or PWM mode, not stopped by e-stop or watchdog)."""
    PWM_MODE = 0x0008
    """Open-loop duty mode (last motion command was SET_PWM), else closed-loop velocity."""
    RX_ERROR = 0x0010
    """At least one received frame was rejected (CRC, framing, oversize) since the last
    TELEMETRY."""


class ErrorCode(enum.IntEnum):
    """NACK ``error`` byte."""

    UNKNOWN_TYPE = 1
    """Type byte unknown, or an MCU -> host type sent to the MCU."""
    BAD_LENGTH = 2
    """Payload length does not match the type's struct."""
    BAD_VERSION = 3
    """Header version byte is not PROTOCOL_VERSION."""
    ESTOP_LATCHED = 4
    """A motion command (SET_PWM) arrived while the e-stop is latched; send CLEAR_ESTOP."""
    BAD_VALUE = 5
    """A field is out of range or not finite (the command was not applied)."""


class ResetReason(enum.IntEnum):
    """HELLO ``reset_reason`` byte (mapped from ``esp_reset_reason()`` on the ESP32)."""

    UNKNOWN = 0
    POWER_ON = 1
    EXTERNAL = 2
    """Reset pin / EN button, or DTR/RTS auto-reset from a serial adapter."""
    SOFTWARE = 3
    PANIC = 4
    WATCHDOG = 5
    """Interrupt, task or other hardware watchdog (not the command watchdog)."""
    BROWNOUT = 6
    DEEP_SLEEP = 7


RANGE_NO_READING = 0xFFFF
"""``ranges_mm`` value meaning "no reading" (sensor dropout or nothing in range)."""


@dataclass(frozen=True)
class FieldSpec:
    """One payload field: ``name``, struct code (``f`` float32, ``i`` int32, ``I`` uint32,
    ``H`` uint16, ``B`` uint8), element ``count`` (> 1 for a fixed array), unit, meaning."""

    name: str
    code: str
    count: int = 1
    unit: str = ""
    doc: str = ""


@dataclass(frozen=True)
class MessageSpec:
    """One message type: direction, whether the MCU answers it with ACK/NACK, payload fields."""

    type: MsgType
    direction: Direction
    acked: bool
    fields: tuple[FieldSpec, ...]
    doc: str
    frame_struct: struct.Struct = field(init=False, repr=False, compare=False)
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fmt = HEADER_FORMAT + "".join(
            (f"{f.count}{f.code}" if f.count > 1 else f.code) for f in self.fields
        )
        object.__setattr__(self, "frame_struct", struct.Struct(fmt))
        object.__setattr__(self, "names", tuple(f.name for f in self.fields))

    @property
    def payload_size(self) -> int:
        """Payload bytes (header and CRC excluded)."""
        return self.frame_struct.size - HEADER_SIZE


_H2M, _M2H = Direction.HOST_TO_MCU, Direction.MCU_TO_HOST

MESSAGES: dict[MsgType, MessageSpec] = {
    spec.type: spec
    for spec in (
        MessageSpec(MsgType.SET_VEL, _H2M, False, (
            FieldSpec("left", "f", unit="rad/s", doc="left wheel angular velocity target"),
            FieldSpec("right", "f", unit="rad/s", doc="right wheel angular velocity target"),
        ), "Closed-loop wheel speed targets, clamped to +-max_wheel_speed. Also the heartbeat "
           "that feeds the command watchdog. Not acked; NACK BAD_VALUE if not finite; "
           "ignored while the e-stop is latched."),
        MessageSpec(MsgType.SET_PWM, _H2M, True, (
            FieldSpec("left", "f", unit="duty", doc="left motor duty, -1..1"),
            FieldSpec("right", "f", unit="duty", doc="right motor duty, -1..1"),
        ), "Open-loop motor duty (clamped to -1..1), bypassing the PID. Feeds the watchdog."),
        MessageSpec(MsgType.SET_PID, _H2M, True, (
            FieldSpec("kp", "f", unit="duty/(rad/s)", doc="proportional gain"),
            FieldSpec("ki", "f", unit="duty/rad", doc="integral gain"),
            FieldSpec("kd", "f", unit="duty/(rad/s^2)", doc="derivative gain (on measurement)"),
            FieldSpec("i_limit", "f", unit="duty", doc="clamp of the integral term (anti-windup)"),
        ), "PID gains for both wheels; all finite and >= 0. Resets the integrators."),
        MessageSpec(MsgType.RESET_ENC, _H2M, True, (),
                    "Zero both reported encoder counts."),
        MessageSpec(MsgType.CONFIG, _H2M, True, (
            FieldSpec("telemetry_period_ms", "H", unit="ms", doc="TELEMETRY period, 0 = off"),
            FieldSpec("watchdog_ms", "H", unit="ms", doc="command watchdog timeout, 10..5000"),
            FieldSpec("max_wheel_speed", "f", unit="rad/s", doc="SET_VEL clamp, > 0"),
            FieldSpec("ticks_per_rev", "H", unit="counts", doc="encoder counts per wheel rev, > 0"),
        ), "Runtime configuration (defaults: 10 ms, 200 ms, 10 rad/s, 1320 counts)."),
        MessageSpec(MsgType.ESTOP, _H2M, True, (),
                    "Latch the e-stop: motors to 0 now and until CLEAR_ESTOP."),
        MessageSpec(MsgType.CLEAR_ESTOP, _H2M, True, (),
                    "Release the e-stop latch; motors stay at 0 until the next motion command."),
        MessageSpec(MsgType.PING, _H2M, True, (
            FieldSpec("token", "I", doc="opaque to the MCU; lets the host tag a probe"),
        ), "Round-trip probe: answered at once with ACK(acked_seq=seq of the PING, "
           "acked_type=PING). Does not feed the watchdog."),
        MessageSpec(MsgType.TELEMETRY, _M2H, False, (
            FieldSpec("enc_left", "i", unit="counts", doc="cumulative left encoder count"),
            FieldSpec("enc_right", "i", unit="counts", doc="cumulative right encoder count"),
            FieldSpec("speed_left", "f", unit="rad/s", doc="measured left wheel speed"),
            FieldSpec("speed_right", "f", unit="rad/s", doc="measured right wheel speed"),
            FieldSpec("ranges_mm", "H", count=8, unit="mm",
                      doc="range sensors, index 0 forward, CCW; 0xFFFF = no reading"),
            FieldSpec("mcu_time_us", "I", unit="us", doc="MCU clock, wraps every ~71.6 min"),
            FieldSpec("status", "H", doc="StatusBits"),
            FieldSpec("last_cmd_seq", "H", doc="seq of the last applied host command"),
        ), "Periodic state, every telemetry_period_ms."),
        MessageSpec(MsgType.ACK, _M2H, False, (
            FieldSpec("acked_seq", "H", doc="seq of the command acknowledged"),
            FieldSpec("acked_type", "B", doc="type byte of the command acknowledged"),
        ), "Command applied."),
        MessageSpec(MsgType.NACK, _M2H, False, (
            FieldSpec("acked_seq", "H", doc="seq of the command refused"),
            FieldSpec("acked_type", "B", doc="type byte of the command refused"),
            FieldSpec("error", "B", doc="ErrorCode"),
        ), "Command refused and not applied."),
        MessageSpec(MsgType.HELLO, _M2H, False, (
            FieldSpec("protocol_version", "B", doc="PROTOCOL_VERSION of the firmware"),
            FieldSpec("fw_version", "H", doc="firmware version, major << 8 | minor"),
            FieldSpec("boot_count", "I", doc="boots since flashing"),
            FieldSpec("reset_reason", "B", doc="ResetReason"),
        ), "Sent once at boot. Its seq is 0: the host treats it as a device reset."),
    )
}

ACKED_TYPES = frozenset(t for t, s in MESSAGES.items() if s.acked)
"""Host -> MCU types the MCU answers with ACK or NACK."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``fields`` maps field names to ints/floats (arrays: tuples)."""

    type: MsgType
    seq: int
    ack: int
    fields: dict[str, Any]


_CRC_INIT = 0xFFFF
_crc_hqx = binascii.crc_hqx  # CRC-CCITT poly 0x1021, MSB-first; with init 0xFFFF = CCITT-FALSE
_CRC = struct.Struct("<H")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.
    ``crc16(b"123456789") == 0x29B1``."""
    return _crc_hqx(data, _CRC_INIT)


_CODE_BYTE = [bytes((i,)) for i in range(256)]


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (the result contains no 0x00). A run of 254 non-zero bytes is
    written as code 0xFF; the last block is always written, so ``b""`` -> ``b"\\x01"``."""
    if len(data) < 254:  # every frame: no block can reach 254 bytes
        code = _CODE_BYTE
        return b"".join([code[len(seg) + 1] + seg for seg in data.split(b"\x00")])
    out = bytearray()
    for seg in data.split(b"\x00"):
        while len(seg) >= 254:
            out.append(0xFF)
            out += seg[:254]
            seg = seg[254:]
        out.append(len(seg) + 1)
        out += seg
    return bytes(out)


def cobs_decode(packet: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`. Raises :class:`FrameError` on a 0x00 byte or a code
    pointing past the end."""
    if 0 in packet:
        raise FrameError("COBS packet contains a 0x00 byte")
    parts = []
    i = 0
    n = len(packet)
    while i < n:
        code = packet[i]
        end = i + code
        if end > n:
            raise FrameError(f"COBS code {code} at offset {i} runs past the packet end ({n})")
        if code == 0xFF:  # block without an implied zero: rare, take the general path
            return _cobs_decode_general(packet)
        parts.append(packet[i + 1:end])
        i = end
    return b"\x00".join(parts)


def _cobs_decode_general(packet: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(packet)
    while i < n:
        code = packet[i]
        end = i + code
        if end > n:
            raise FrameError(f"COBS code {code} at offset {i} runs past the packet end ({n})")
        out += packet[i + 1:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


class _Codec:
    """Per-type precompiled layout used by the hot path."""

    __slots__ = ("spec", "type", "type_id", "struct", "names", "name_set", "slices",
                 "scalar_only", "array_positions")

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self.type = spec.type
        self.type_id = int(spec.type)
        self.struct = spec.frame_struct
        self.names = spec.names
        self.name_set = frozenset(spec.names)
        self.scalar_only = all(f.count == 1 for f in spec.fields)
        slices = []
        pos = 4  # after version, type, seq, ack in the unpacked tuple
        for f in spec.fields:
            slices.append((f.name, pos, f.count))
            pos += f.count
        self.slices = tuple(slices)
        # positions of array fields in the getter's list, last first (flattened in place)
        self.array_positions = tuple(
            i for i in reversed(range(len(spec.fields))) if spec.fields[i].count > 1)


_CODECS: dict[int, _Codec] = {int(t): _Codec(s) for t, s in MESSAGES.items()}
_CODEC_BY_TYPE: dict[MsgType, _Codec] = {c.type: c for c in _CODECS.values()}
_HELLO_ID = int(MsgType.HELLO)


def _encode_error(codec: _Codec, seq: int, ack: int, fields: dict[str, Any],
                  exc: Exception) -> EncodeError:
    name = codec.type.name
    for label, value in (("seq", seq), ("ack", ack)):
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            return EncodeError(f"{name}: {label}={value!r} must be an int in 0..65535")
    for f in codec.spec.fields:
        values = fields[f.name]
        if f.count > 1:
            try:
                values = list(values)
            except TypeError:
                return EncodeError(f"{name}.{f.name} must be a sequence of {f.count} values")
            if len(values) != f.count:
                return EncodeError(f"{name}.{f.name} must have {f.count} values, got {len(values)}")
        else:
            values = [values]
        for v in values:
            try:
                struct.pack("<" + f.code, v)
            except (struct.error, TypeError) as e:
                return EncodeError(f"{name}.{f.name}={v!r} does not fit {f.code!r} ({e})")
    return EncodeError(f"{name}: cannot encode ({exc})")


def encode(msg_type: MsgType, seq: int, ack: int = 0, **fields: Any) -> bytes:
    """Complete wire bytes of one frame: ``COBS(header + payload + crc) + b"\\x00"``.

    ``fields`` must name exactly the message's fields (see :data:`MESSAGES`); floats are
    rounded to float32. Raises :class:`EncodeError` naming the field on a missing, unknown or
    out-of-range value."""
    codec = _CODEC_BY_TYPE.get(msg_type)
    if codec is None:
        raise EncodeError(f"unknown message type {msg_type!r}; use a MsgType member")
    if fields.keys() != codec.name_set:
        missing = sorted(codec.name_set - fields.keys())
        unknown = sorted(fields.keys() - codec.name_set)
        raise EncodeError(
            f"{codec.type.name} takes fields {list(codec.names)}; missing {missing}, unknown {unknown}"
        )
    values = [fields[n] for n in codec.names]
    try:
        for i in codec.array_positions:
            values[i:i + 1] = values[i]
        body = codec.struct.pack(PROTOCOL_VERSION, codec.type_id, seq, ack, *values)
    except (struct.error, TypeError) as e:
        raise _encode_error(codec, seq, ack, fields, e) from e
    return cobs_encode(body + _CRC.pack(_crc_hqx(body, _CRC_INIT))) + b"\x00"


def decode(packet: bytes) -> Frame:
    """Decode one COBS packet (without its 0x00 delimiter).

    Raises :class:`CrcError` when the CRC does not match, :class:`FrameError` for bad COBS,
    a packet shorter than header+CRC or longer than :data:`MAX_PACKET_LEN`, another protocol
    version (except HELLO, whose layout never changes: check its ``protocol_version``), an
    unknown type or a payload length that does not match the type."""
    if len(packet) > MAX_PACKET_LEN:
        raise FrameError(f"packet of {len(packet)} bytes exceeds MAX_PACKET_LEN={MAX_PACKET_LEN}")
    raw = cobs_decode(packet)
    n = len(raw)
    if n < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"frame of {n} bytes is shorter than header+crc ({HEADER_SIZE + CRC_SIZE})")
    got = raw[-2] | (raw[-1] << 8)
    want = _crc_hqx(raw[:-2], _CRC_INIT)
    if got != want:
        raise CrcError(f"CRC mismatch: frame says 0x{got:04X}, contents give 0x{want:04X}")
    version = raw[0]
    if version != PROTOCOL_VERSION and raw[1] != _HELLO_ID:
        # HELLO's layout is frozen across versions, so a host always learns which protocol
        # version the firmware speaks (HELLO.protocol_version) and can say so.
        raise FrameError(f"protocol version {version}, this host speaks {PROTOCOL_VERSION}: "
                         "flash matching firmware (firmware_bridge/firmware/esp32)")
    codec = _CODECS.get(raw[1])
    if codec is None:
        raise FrameError(f"unknown message type 0x{raw[1]:02X}")
    if n - CRC_SIZE != codec.struct.size:
        raise FrameError(f"{codec.type.name} payload is {n - CRC_SIZE - HEADER_SIZE} bytes, "
                         f"expected {codec.struct.size - HEADER_SIZE}")
    vals = codec.struct.unpack_from(raw)
    if codec.scalar_only:
        fields = dict(zip(codec.names, vals[4:]))
    else:
        fields = {}
        for name, start, count in codec.slices:
            fields[name] = vals[start] if count == 1 else vals[start:start + count]
    return Frame(codec.type, vals[2], vals[3], fields)


class FrameDecoder:
    """Streaming decoder: feed it any chunks of received bytes, get complete frames back.

    Resynchronises on every 0x00; a packet longer than ``max_packet_len`` is dropped up to the
    next 0x00. Rejected packets never raise: they are counted in ``crc_errors``,
    ``frame_errors`` or ``oversize`` (and their bytes in ``bytes_discarded``), and the text of
    the last rejection is kept in ``last_error``. Empty packets (two 0x00 in a row) are
    ignored: a sender may prefix a 0x00 to flush a receiver's partial packet."""

    def __init__(self, max_packet_len: int = MAX_PACKET_LEN) -> None:
        if max_packet_len < HEADER_SIZE + CRC_SIZE + 1:
            raise ValueError(f"max_packet_len={max_packet_len} cannot hold a frame; use >= 9")
        self.max_packet_len = max_packet_len
        self._buf = bytearray()
        self._discarding = False
        self.frames_ok = 0
        self.crc_errors = 0
        self.frame_errors = 0
        self.oversize = 0
        self.bytes_discarded = 0
        self.last_error: str | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the frames completed by it, in order."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        frames: list[Frame] = []
        start = 0
        n = len(data)
        buf = self._buf
        limit = self.max_packet_len
        while start < n:
            end = data.find(0, start)
            if end < 0:
                chunk_len = n - start
                if self._discarding:
                    self.bytes_discarded += chunk_len
                elif len(buf) + chunk_len > limit:
                    self._start_discard(len(buf) + chunk_len)
                else:
                    buf += data[start:]
                break
            if self._discarding:
                self.bytes_discarded += end - start
                self._discarding = False
            elif len(buf) + end - start > limit:
                self._start_discard(len(buf) + end - start)
                self._discarding = False
            elif buf:
                buf += data[start:end]
                self._packet(bytes(buf), frames)
                buf.clear()
            elif end > start:
                self._packet(data[start:end], frames)
            start = end + 1
        return frames

    def _start_discard(self, nbytes: int) -> None:
        self.oversize += 1
        self.bytes_discarded += nbytes
        self.last_error = f"packet longer than {self.max_packet_len} bytes dropped"
        self._buf.clear()
        self._discarding = True

    def _packet(self, packet: bytes, frames: list[Frame]) -> None:
        try:
            frames.append(decode(packet))
        except CrcError as e:
            self.crc_errors += 1
            self.bytes_discarded += len(packet)
            self.last_error = str(e)
            return
        except FrameError as e:
            self.frame_errors += 1
            self.bytes_discarded += len(packet)
            self.last_error = str(e)
            return
        self.frames_ok += 1

    def reset(self) -> None:
        """Drop any partial packet (e.g. after reopening the port); counters are kept."""
        self._buf.clear()
        self._discarding = False
