"""Wire protocol codec: golden frames, known vectors, streaming decoder behaviour."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from firmware_bridge import protocol as P
from firmware_bridge.protocol import (
    MESSAGES,
    CrcError,
    EncodeError,
    FrameDecoder,
    FrameError,
    MsgType,
    decode,
    encode,
)

GOLDEN = json.loads(
    (Path(P.__file__).resolve().parent / "golden_frames.json").read_text(encoding="utf-8")
)


def _crc_bitwise(data: bytes) -> int:
    """Independent bit-by-bit CRC-16/CCITT-FALSE (no table, no binascii)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def test_crc_check_value():
    """crc16 is CRC-16/CCITT-FALSE: the catalogue check value of b"123456789" is 0x29B1,
    and it agrees with a bitwise implementation on arbitrary data."""
    assert P.crc16(b"123456789") == 0x29B1
    data = bytes(range(256)) * 3
    assert P.crc16(data) == _crc_bitwise(data)


@pytest.mark.parametrize(
    "raw, enc",
    [  # vectors from Cheshire & Baker / the Wikipedia COBS article
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    ],
)
def test_cobs_known_vectors(raw, enc):
    """COBS encode gives the published bytes and decode inverts it."""
    assert P.cobs_encode(raw) == enc
    assert P.cobs_decode(enc) == raw


def test_hand_assembled_frame():
    """A SET_VEL frame assembled by hand from PROTOCOL.md (header, float32 LE payload, CRC LE,
    COBS, delimiter) equals encode()'s bytes."""
    body = bytes([1, 0x01, 7, 0, 0, 0]) + struct.pack("<ff", 1.5, -1.5)
    crc = _crc_bitwise(body)
    assert crc == 0x0864
    # zero bytes of body+crc at offsets 3..7 and 10..11 -> COBS blocks written out by hand
    expected = bytes.fromhex("04010107" "01010101" "03c03f" "01" "05c0bf6408" "00")
    assert encode(MsgType.SET_VEL, seq=7, ack=0, left=1.5, right=-1.5) == expected


@pytest.mark.parametrize("g", GOLDEN["frames"], ids=lambda g: g["name"])
def test_golden_frames_encode_and_decode(g):
    """Every golden frame: encode(fields) gives exactly the golden bytes, and decoding the
    golden bytes gives back type, seq, ack and every field value."""
    t = MsgType[g["type"]]
    assert int(t) == g["type_id"]
    wire = bytes.fromhex(g["wire_hex"])
    assert encode(t, g["seq"], g["ack"], **g["fields"]) == wire
    assert wire[-1] == 0 and 0 not in wire[:-1]
    frame = decode(wire[:-1])
    assert (frame.type, frame.seq, frame.ack) == (t, g["seq"], g["ack"])
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in g["fields"].items()}
    assert frame.fields == expected


def test_golden_covers_every_message_type():
    """The golden file has at least one frame of every message type."""
    assert {g["type"] for g in GOLDEN["frames"]} == {t.name for t in MsgType}
    assert GOLDEN["protocol_version"] == P.PROTOCOL_VERSION


@pytest.mark.parametrize("g", GOLDEN["invalid"], ids=lambda g: g["name"])
def test_golden_invalid_frames_rejected(g):
    """Each invalid golden packet raises the documented error class and the streaming
    decoder counts it in the matching counter without yielding a frame."""
    wire = bytes.fromhex(g["wire_hex"])
    exc = {"crc": CrcError, "frame": FrameError, "oversize": FrameError}[g["error"]]
    with pytest.raises(exc):
        decode(wire[:-1])
    d = FrameDecoder()
    assert d.feed(wire) == []
    counter = {"crc": "crc_errors", "frame": "frame_errors", "oversize": "oversize"}[g["error"]]
    assert getattr(d, counter) == 1
    assert d.frames_ok == 0
    assert d.crc_errors + d.frame_errors + d.oversize == 1


def test_frame_sizes_documented():
    """SET_VEL is 18 bytes and TELEMETRY 50 bytes on the wire (PROTOCOL.md's table);
    the longest packet fits MAX_PACKET_LEN."""
    assert len(bytes.fromhex(GOLDEN["frames"][0]["wire_hex"])) == 18
    tele = [g for g in GOLDEN["frames"] if g["type"] == "TELEMETRY"]
    assert {len(bytes.fromhex(g["wire_hex"])) for g in tele} == {50}
    longest = max(s.frame_struct.size for s in MESSAGES.values()) + P.CRC_SIZE
    assert longest + 1 <= P.MAX_PACKET_LEN
    assert MESSAGES[MsgType.TELEMETRY].payload_size == 40


def test_streaming_any_split():
    """Three frames split at every possible byte boundary decode identically."""
    frames = [bytes.fromhex(g["wire_hex"]) for g in GOLDEN["frames"][:3]]
    stream = b"".join(frames)
    want = [decode(f[:-1]) for f in frames]
    for cut in range(len(stream) + 1):
        d = FrameDecoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == want, cut
        assert d.frames_ok == 3 and d.bytes_discarded == 0


def test_streaming_byte_by_byte_and_memoryview():
    """Feeding one byte at a time (and memoryview input) yields the same frames."""
    stream = b"".join(bytes.fromhex(g["wire_hex"]) for g in GOLDEN["frames"])
    d = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += d.feed(memoryview(stream)[i:i + 1])
    assert [f.type.name for f in got] == [g["type"] for g in GOLDEN["frames"]]


def test_resync_after_garbage_and_oversize():
    """Garbage without a delimiter, then a frame: the garbage packet is rejected and the
    frame after the next 0x00 decodes. An oversize run is dropped and counted once."""
    good = encode(MsgType.PING, seq=3, token=99)
    d = FrameDecoder()
    frames = d.feed(b"\x13\x37\xff\xfe" + b"\x00" + good)
    assert [f.fields for f in frames] == [{"token": 99}]
    assert d.frame_errors + d.crc_errors == 1
    d2 = FrameDecoder()
    assert d2.feed(b"\x55" * 500) == []
    assert d2.oversize == 1 and d2.bytes_discarded == 500
    assert d2.feed(b"\x55" * 10 + b"\x00" + good)[0].fields == {"token": 99}
    assert d2.oversize == 1 and d2.bytes_discarded == 510


def test_empty_packets_ignored():
    """Consecutive 0x00 delimiters are not errors."""
    d = FrameDecoder()
    assert d.feed(b"\x00\x00\x00") == []
    assert (d.frame_errors, d.crc_errors, d.oversize, d.bytes_discarded) == (0, 0, 0, 0)


def test_reset_drops_partial_packet():
    """reset() forgets a half-received packet, so the next frame decodes cleanly."""
    good = encode(MsgType.ESTOP, seq=1)
    d = FrameDecoder()
    d.feed(good[:4])
    d.reset()
    assert [f.type for f in d.feed(good)] == [MsgType.ESTOP]
    assert d.frame_errors == 0


def test_float32_rounding():
    """Floats travel as float32: 0.1 decodes to the float32 nearest 0.1."""
    f = decode(encode(MsgType.SET_VEL, 1, left=0.1, right=-0.1)[:-1])
    assert f.fields["left"] == struct.unpack("<f", struct.pack("<f", 0.1))[0]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(left=1.0), "missing ['right']"),
        (dict(left=1.0, right=1.0, speed=2.0), "unknown ['speed']"),
        (dict(left="fast", right=1.0), "SET_VEL.left"),
    ],
)
def test_encode_errors_name_the_field(kwargs, needle):
    """encode() refuses wrong field sets and values with a message naming the field."""
    with pytest.raises(EncodeError, match=None) as ei:
        encode(MsgType.SET_VEL, 1, **kwargs)
    assert needle in str(ei.value)


def test_encode_range_errors():
    """Out-of-range ints (seq, uint16 fields, array lengths) raise EncodeError naming them."""
    with pytest.raises(EncodeError, match="seq"):
        encode(MsgType.PING, 70000, token=1)
    with pytest.raises(EncodeError, match="CONFIG.watchdog_ms"):
        encode(MsgType.CONFIG, 1, telemetry_period_ms=10, watchdog_ms=-1,
               max_wheel_speed=1.0, ticks_per_rev=10)
    base = dict(enc_left=0, enc_right=0, speed_left=0.0, speed_right=0.0, mcu_time_us=0,
                status=0, last_cmd_seq=0)
    with pytest.raises(EncodeError, match="ranges_mm must have 8"):
        encode(MsgType.TELEMETRY, 1, ranges_mm=[1, 2, 3], **base)
    with pytest.raises(EncodeError, match="unknown message type"):
        encode(0x42, 1)  # type: ignore[arg-type]


def test_decode_rejects_wrong_payload_length_with_valid_crc():
    """A frame whose CRC is right but whose payload length does not match its type is a
    FrameError, not a frame with garbage fields."""
    body = struct.pack("<BBHH", 1, int(MsgType.TELEMETRY), 1, 0) + b"\x01" * 39
    pkt = P.cobs_encode(body + struct.pack("<H", P.crc16(body)))
    with pytest.raises(FrameError, match="TELEMETRY payload is 39 bytes, expected 40"):
        decode(pkt)


def test_message_table_consistency():
    """Every type is in the table; host->MCU types are < 0x80 and MCU->host >= 0x80; the
    acked set is every host command except SET_VEL."""
    assert set(MESSAGES) == set(MsgType)
    for t, spec in MESSAGES.items():
        assert spec.type is t
        assert (spec.direction is P.Direction.HOST_TO_MCU) == (int(t) < 0x80)
    assert P.ACKED_TYPES == {t for t in MsgType if int(t) < 0x80} - {MsgType.SET_VEL}


def test_hello_of_another_version_still_decodes():
    """HELLO's layout is frozen: a HELLO whose header says version 2 decodes (so the host can
    report the firmware's version), while any other type with version 2 is a FrameError."""
    body = struct.pack("<BBHHBHIB", 2, int(MsgType.HELLO), 0, 0, 2, 0x0200, 5, 1)
    hello = P.cobs_encode(body + struct.pack("<H", P.crc16(body)))
    frame = decode(hello)
    assert frame.type == MsgType.HELLO and frame.fields["protocol_version"] == 2
    body = struct.pack("<BBHHI", 2, int(MsgType.PING), 0, 0, 1)
    ping = P.cobs_encode(body + struct.pack("<H", P.crc16(body)))
    with pytest.raises(FrameError, match="protocol version 2, this host speaks 1"):
        decode(ping)
