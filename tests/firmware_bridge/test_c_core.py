"""Python codec vs C codec (libfwcore.so through ctypes), and the C core driven with a HAL
written in Python: frames encoded by one side are decoded identically by the other."""

from __future__ import annotations

import ctypes
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import native
from firmware_bridge import protocol as P
from firmware_bridge.protocol import FrameDecoder, MsgType, StatusBits, encode

from test_protocol_properties import messages  # same directory (pytest prepend import mode)

try:
    _LIB_PATH = native.core_library()
except FileNotFoundError as e:  # pragma: no cover - CI always builds it first
    pytest.skip(str(e), allow_module_level=True)

lib = ctypes.CDLL(str(_LIB_PATH))
u8p = ctypes.POINTER(ctypes.c_uint8)
lib.fw_crc16.restype = ctypes.c_uint16
lib.fw_crc16.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
lib.fw_cobs_encode.restype = ctypes.c_size_t
lib.fw_cobs_encode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
lib.fw_cobs_decode.restype = ctypes.c_long
lib.fw_cobs_decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
lib.fw_packet_reencode.restype = ctypes.c_long
lib.fw_packet_reencode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]

MOTOR_SET = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_float)
ENCODER_READ = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int)
RANGE_READ = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int)
MICROS = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
UART_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, u8p, ctypes.c_size_t)


class FwHal(ctypes.Structure):
    """fw_hal_t of firmware_bridge/firmware/core/hal.h."""

    _fields_ = [("ctx", ctypes.c_void_p), ("motor_set", MOTOR_SET), ("encoder_read", ENCODER_READ),
                ("range_read", RANGE_READ), ("micros", MICROS), ("uart_write", UART_WRITE)]


lib.fw_create.restype = ctypes.c_void_p
lib.fw_create.argtypes = [ctypes.POINTER(FwHal), ctypes.c_uint32, ctypes.c_uint8]
lib.fw_destroy.argtypes = [ctypes.c_void_p]
lib.fw_rx.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
lib.fw_poll.argtypes = [ctypes.c_void_p]
lib.fw_status.restype = ctypes.c_uint16
lib.fw_status.argtypes = [ctypes.c_void_p]
for _name in ("fw_target_speed", "fw_motor_duty", "fw_measured_speed"):
    getattr(lib, _name).restype = ctypes.c_float
    getattr(lib, _name).argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.fw_encoder_count.restype = ctypes.c_int32
lib.fw_encoder_count.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.fw_param.restype = ctypes.c_float
lib.fw_param.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.fw_last_cmd_seq.restype = ctypes.c_uint16
lib.fw_last_cmd_seq.argtypes = [ctypes.c_void_p]


def c_reencode(packet: bytes) -> tuple[int, bytes]:
    out = ctypes.create_string_buffer(128)
    n = lib.fw_packet_reencode(packet, len(packet), out, len(out))
    return n, out.raw[:n] if n > 0 else b""


@settings(max_examples=300, deadline=None)
@given(messages(allow_nan=True))
def test_python_encode_c_decode_and_reencode(msg):
    """Every message type with random fields: the C codec decodes the Python bytes and
    re-encodes them to exactly the same bytes (same layout, COBS and CRC on both sides)."""
    t, seq, ack, fields = msg
    wire = encode(t, seq, ack, **fields)
    n, back = c_reencode(wire[:-1])
    assert n == len(wire), n
    assert back == wire


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_c_and_python_agree_on_garbage(packet):
    """For any packet, C accepts it iff Python accepts it, a CRC error in one is a CRC error
    in the other, and accepted packets re-encode identically."""
    try:
        frame = P.decode(packet)
        py = "ok"
    except P.CrcError:
        py = "crc"
    except P.FrameError:
        py = "frame"
    n, back = c_reencode(packet)
    c = "ok" if n > 0 else "crc" if n == -3 else "frame"
    assert c == py, (packet.hex(), n)
    if py == "ok":
        assert back == encode(frame.type, frame.seq, frame.ack, **frame.fields)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1200))
def test_crc_and_cobs_match(data):
    """fw_crc16 == protocol.crc16 and fw_cobs_encode/decode == protocol.cobs_encode/decode."""
    assert lib.fw_crc16(data, len(data)) == P.crc16(data)
    out = ctypes.create_string_buffer(len(data) + len(data) // 254 + 2)
    n = lib.fw_cobs_encode(data, len(data), out)
    assert out.raw[:n] == P.cobs_encode(data)
    back = ctypes.create_string_buffer(len(data) + 1)
    m = lib.fw_cobs_decode(out.raw[:n], n, back, len(back))
    assert back.raw[:m] == data


class PyBoard:
    """A HAL in Python: manual clock, settable encoders and ranges, captured UART frames."""

    def __init__(self) -> None:
        self.now_us = 5_000_000
        self.duty = [0.0, 0.0]
        self.counts = [0, 0]
        self.ranges = [0.5 + 0.25 * i for i in range(8)]
        self.decoder = FrameDecoder()
        self.frames: list[P.Frame] = []
        self.writes = 0
        self._cbs = (
            MOTOR_SET(self._motor_set), ENCODER_READ(lambda ctx, w: self.counts[w]),
            RANGE_READ(lambda ctx, i: self.ranges[i]), MICROS(lambda ctx: self.now_us),
            UART_WRITE(self._uart_write),
        )
        self.hal = FwHal(None, *self._cbs)
        self.fw = lib.fw_create(ctypes.byref(self.hal), 11, int(P.ResetReason.WATCHDOG))
        assert self.fw

    def _motor_set(self, ctx, wheel, duty):
        self.duty[wheel] = duty

    def _uart_write(self, ctx, buf, n):
        self.writes += 1
        self.frames += self.decoder.feed(ctypes.string_at(buf, n))

    def send(self, wire: bytes) -> None:
        lib.fw_rx(self.fw, wire, len(wire))

    def run_ms(self, ms: int) -> None:
        for _ in range(ms):
            self.now_us += 1000
            lib.fw_poll(self.fw)

    def close(self) -> None:
        lib.fw_destroy(self.fw)


@pytest.fixture
def board():
    b = PyBoard()
    yield b
    b.close()


def test_core_through_ctypes_hal(board):
    """The C core with a Python HAL: HELLO decodes in Python with the boot count and reset
    reason given to fw_create; a Python SET_VEL sets the C targets; a Python PING is answered
    by an ACK carrying its seq; TELEMETRY decoded in Python equals the C getters and the HAL's
    encoder and range values; every uart_write carried exactly one frame."""
    hello = board.frames[0]
    assert hello.type == MsgType.HELLO
    assert hello.fields == {"protocol_version": 1, "fw_version": 0x0100, "boot_count": 11,
                            "reset_reason": int(P.ResetReason.WATCHDOG)}
    board.send(encode(MsgType.SET_VEL, seq=300, ack=0, left=2.5, right=-1.25))
    assert lib.fw_target_speed(board.fw, 0) == 2.5 and lib.fw_target_speed(board.fw, 1) == -1.25
    board.send(encode(MsgType.PING, seq=301, token=0xCAFE))
    ack = board.frames[-1]
    assert ack.type == MsgType.ACK and ack.fields == {"acked_seq": 301, "acked_type": int(MsgType.PING)}
    assert ack.ack == 301
    board.counts = [1234, -99]
    board.run_ms(10)
    tele = [f for f in board.frames if f.type == MsgType.TELEMETRY][-1]
    assert tele.fields["enc_left"] == 1234 == lib.fw_encoder_count(board.fw, 0)
    assert tele.fields["enc_right"] == -99
    assert tele.fields["ranges_mm"] == tuple(round(r * 1000) for r in board.ranges)
    assert tele.fields["status"] == lib.fw_status(board.fw) == StatusBits.MOTORS_ENABLED
    assert tele.fields["last_cmd_seq"] == 301 == lib.fw_last_cmd_seq(board.fw)
    assert tele.fields["mcu_time_us"] == board.now_us & 0xFFFFFFFF
    assert [f.seq for f in board.frames] == list(range(len(board.frames)))
    assert board.writes == len(board.frames) and board.decoder.crc_errors == 0


def test_core_estop_and_config_through_ctypes(board):
    """ESTOP from Python zeroes the C motor duties at once and latches; SET_VEL is then
    ignored; CONFIG from Python changes the C parameters; an invalid CONFIG is NACKed."""
    board.send(encode(MsgType.SET_PWM, seq=1, left=0.5, right=0.5))
    board.run_ms(6)
    assert board.duty == [0.5, 0.5]
    board.send(encode(MsgType.ESTOP, seq=2))
    assert board.duty == [0.0, 0.0]
    board.send(encode(MsgType.SET_VEL, seq=3, left=5.0, right=5.0))
    board.run_ms(20)
    assert board.duty == [0.0, 0.0]
    assert StatusBits(lib.fw_status(board.fw)) & StatusBits.ESTOP_LATCHED
    board.send(encode(MsgType.CONFIG, seq=4, telemetry_period_ms=20, watchdog_ms=150,
                      max_wheel_speed=7.5, ticks_per_rev=600))
    assert [lib.fw_param(board.fw, i) for i in range(4)] == [20.0, 150.0, 7.5, 600.0]
    board.send(encode(MsgType.CONFIG, seq=5, telemetry_period_ms=20, watchdog_ms=150,
                      max_wheel_speed=math.nan, ticks_per_rev=600))
    nack = board.frames[-1]
    assert nack.type == MsgType.NACK
    assert nack.fields == {"acked_seq": 5, "acked_type": int(MsgType.CONFIG),
                           "error": int(P.ErrorCode.BAD_VALUE)}
    assert lib.fw_param(board.fw, 2) == 7.5


def test_c_nack_for_bad_version_decodes_in_python(board):
    """A CRC-valid frame with version 2 gets a NACK BAD_VERSION that Python decodes."""
    body = struct.pack("<BBHHff", 2, int(MsgType.SET_VEL), 77, 0, 1.0, 1.0)
    wire = P.cobs_encode(body + struct.pack("<H", P.crc16(body))) + b"\x00"
    board.send(wire)
    assert board.frames[-1].fields == {"acked_seq": 77, "acked_type": int(MsgType.SET_VEL),
                                       "error": int(P.ErrorCode.BAD_VERSION)}
    assert lib.fw_target_speed(board.fw, 0) == 0.0


def test_c_accepts_hello_of_another_version_like_python():
    """Both codecs accept a version-2 HELLO (frozen layout) and refuse a version-2 PING."""
    for t, payload, ok in ((MsgType.HELLO, struct.pack("<BHIB", 2, 0x0200, 5, 1), True),
                           (MsgType.PING, struct.pack("<I", 1), False)):
        body = struct.pack("<BBHH", 2, int(t), 0, 0) + payload
        packet = P.cobs_encode(body + struct.pack("<H", P.crc16(body)))
        n, back = c_reencode(packet)
        assert (n > 0) == ok
        if ok:  # C re-encodes with its own version byte; the payload is unchanged
            assert P.decode(back[:-1]).fields == P.decode(packet).fields
        else:
            assert n == -10 - int(P.ErrorCode.BAD_VERSION)
