"""Property tests (hypothesis) of the Python codec: round trips, decoder model, corruption."""

from __future__ import annotations

import math
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as P
from firmware_bridge.protocol import MESSAGES, FrameDecoder, MsgType, decode, encode

_INT_RANGES = {"i": (-(2**31), 2**31 - 1), "I": (0, 2**32 - 1), "H": (0, 0xFFFF), "B": (0, 0xFF)}


def _value(code: str, allow_nan: bool) -> st.SearchStrategy:
    if code == "f":
        return st.floats(width=32, allow_nan=allow_nan, allow_infinity=True)
    lo, hi = _INT_RANGES[code]
    return st.integers(lo, hi)


def fields_for(spec: P.MessageSpec, allow_nan: bool = False) -> st.SearchStrategy:
    parts = {}
    for f in spec.fields:
        v = _value(f.code, allow_nan)
        parts[f.name] = st.lists(v, min_size=f.count, max_size=f.count).map(tuple) if f.count > 1 else v
    return st.fixed_dictionaries(parts)


@st.composite
def messages(draw, allow_nan: bool = False):
    t = draw(st.sampled_from(list(MsgType)))
    fields = draw(fields_for(MESSAGES[t], allow_nan))
    seq = draw(st.integers(0, 0xFFFF))
    ack = draw(st.integers(0, 0xFFFF))
    return t, seq, ack, fields


@settings(max_examples=250, deadline=None)
@given(messages())
def test_round_trip_every_type(msg):
    """decode(encode(m)) gives back type, seq, ack and every field exactly (floats drawn as
    float32), the wire has its only 0x00 at the end and fits MAX_PACKET_LEN."""
    t, seq, ack, fields = msg
    wire = encode(t, seq, ack, **fields)
    assert wire[-1] == 0 and 0 not in wire[:-1]
    assert len(wire) - 1 <= P.MAX_PACKET_LEN
    assert len(wire) == MESSAGES[t].frame_struct.size + P.CRC_SIZE + 2
    frame = decode(wire[:-1])
    assert (frame.type, frame.seq, frame.ack) == (t, seq, ack)
    assert frame.fields == fields


@settings(max_examples=100, deadline=None)
@given(messages(allow_nan=True))
def test_nan_travels_bit_exact(msg):
    """NaN floats survive the codec as NaN (re-encoding the decoded frame is byte-identical)."""
    t, seq, ack, fields = msg
    wire = encode(t, seq, ack, **fields)
    frame = decode(wire[:-1])
    assert encode(frame.type, frame.seq, frame.ack, **frame.fields) == wire
    for k, v in fields.items():
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(frame.fields[k])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_cobs_round_trip_and_no_zero(data):
    """COBS: no 0x00 in the output, overhead <= ceil(n/254) + 1, and decode inverts encode."""
    enc = P.cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert P.cobs_decode(enc) == data


def _model_frames(stream: bytes, limit: int = P.MAX_PACKET_LEN) -> list[P.Frame]:
    """Reference model of FrameDecoder: split on 0x00, decode each complete packet alone."""
    out = []
    for pkt in stream.split(b"\x00")[:-1]:
        if not pkt or len(pkt) > limit:
            continue
        try:
            out.append(decode(pkt))
        except P.ProtocolError:
            pass
    return out


def _crc_ok(pkt: bytes) -> bool:
    raw = P.cobs_decode(pkt)
    return len(raw) >= 8 and struct.unpack("<H", raw[-2:])[0] == P.crc16(raw[:-2])


_streams = st.lists(
    st.one_of(
        st.binary(max_size=120),
        messages().map(lambda m: encode(m[0], m[1], m[2], **m[3])),
        st.just(b"\x00"),
        st.binary(min_size=60, max_size=300).map(lambda b: b.replace(b"\x00", b"\x01")),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams, st.lists(st.integers(1, 64), max_size=30))
def test_decoder_never_raises_and_matches_model(stream, cuts):
    """Any byte stream, cut into any chunks: FrameDecoder never raises, yields exactly the
    frames of the complete packets that decode on their own (none over the length cap), every
    yielded frame's packet has a correct CRC, and each non-empty packet is counted once (an
    unfinished one only once it is over the cap)."""
    d = FrameDecoder()
    got = []
    pos = 0
    for c in cuts:
        got += d.feed(stream[pos:pos + c])
        pos += c
    got += d.feed(stream[pos:])
    assert got == _model_frames(stream)
    for pkt in stream.split(b"\x00")[:-1]:
        if pkt and len(pkt) <= P.MAX_PACKET_LEN:
            try:
                decode(pkt)
            except P.ProtocolError:
                continue
            assert _crc_ok(pkt)
    *complete, trailing = stream.split(b"\x00")
    expected = len([p for p in complete if p]) + (len(trailing) > P.MAX_PACKET_LEN)
    assert d.frames_ok + d.crc_errors + d.frame_errors + d.oversize == expected


@settings(max_examples=200, deadline=None)
@given(messages(), st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=4))
def test_corrupted_frame_never_accepted(msg, edits):
    """A valid frame with 1-4 bytes changed (XOR with non-zero values, delimiter excluded) is
    never accepted (not even as the original: COBS encodings are unique), and the next frame
    is always received."""
    t, seq, ack, fields = msg
    wire = bytearray(encode(t, seq, ack, **fields))
    original = bytes(wire)
    for pos, x in edits:
        wire[pos % (len(wire) - 1)] ^= x
    if bytes(wire) == original:
        return
    nxt = encode(MsgType.PING, seq=1234, token=42)
    frames = FrameDecoder().feed(bytes(wire) + nxt)
    assert frames == [decode(nxt[:-1])]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), messages(), messages())
def test_resync_within_one_frame(garbage, m1, m2):
    """After arbitrary garbage, at most the first following frame is lost: the second one is
    always decoded, and so is the first if the garbage ended with 0x00."""
    w1 = encode(m1[0], m1[1], m1[2], **m1[3])
    w2 = encode(m2[0], m2[1], m2[2], **m2[3])
    frames = FrameDecoder().feed(garbage + w1 + w2)
    assert frames[-1] == decode(w2[:-1])
    if garbage.endswith(b"\x00") or not garbage:
        assert frames[-2] == decode(w1[:-1])
