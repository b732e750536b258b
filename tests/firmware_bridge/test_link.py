"""SerialLink against a scripted Python MCU on a real pseudo-terminal (no emulator needed)."""

from __future__ import annotations

import errno
import math
import os
import re

import pytest
import serial

from firmware_bridge import protocol
from firmware_bridge.link import (
    AckTimeoutError,
    LinkConfig,
    LinkDisconnectedError,
    LinkState,
    NackError,
    PortOpenError,
    SerialLink,
    open_error_message,
)
from firmware_bridge.protocol import MsgType, StatusBits


FAST_LINK = LinkConfig(ack_timeout_s=0.2, ack_retries=2, reopen_initial_s=0.02, reopen_max_s=0.1)


@pytest.fixture
def link(fake_mcu):
    states = []
    resets = []
    lk = SerialLink(fake_mcu.port, FAST_LINK, on_state=states.append, on_reset=resets.append)
    lk.states, lk.reset_log = states, resets
    lk.open()
    yield lk
    lk.close()


def test_open_deasserts_dtr_rts_before_open(fake_mcu):
    """DTR and RTS are set False on the Serial object before open() is called, so opening
    cannot pulse EN/IO0 of the ESP32."""
    seen = {}

    class Recorder(serial.Serial):
        def open(self):
            seen["dtr"], seen["rts"], seen["open"] = self.dtr, self.rts, self.is_open
            super().open()

    lk = SerialLink(fake_mcu.port, FAST_LINK, serial_factory=Recorder)
    lk.open()
    try:
        assert seen == {"dtr": False, "rts": False, "open": False}
        assert lk.low_latency is False and "not supported" in lk.low_latency_note  # ptys refuse it
    finally:
        lk.close()


def test_missing_port_error_names_port_and_next_step(tmp_path):
    """Opening a path that does not exist raises PortOpenError naming the port and how to
    list ports; the link stays CLOSED."""
    missing = str(tmp_path / "ttyUSB9")
    lk = SerialLink(missing, FAST_LINK)
    with pytest.raises(PortOpenError, match="ttyUSB9.*no such device.*list_ports"):
        lk.open()
    assert lk.state == LinkState.CLOSED


@pytest.mark.parametrize("code,expected", [
    (errno.EACCES, "permission denied. Add yourself to the dialout group: sudo usermod -aG dialout"),
    (errno.EBUSY, "in use by another program.*fuser /dev/ttyUSB0"),
])
def test_open_error_messages(code, expected):
    """pyserial's errno-carrying SerialException is translated to the fix for that errno."""
    exc = serial.SerialException(code, f"could not open port /dev/ttyUSB0: [Errno {code}] {os.strerror(code)}")
    message = open_error_message("/dev/ttyUSB0", exc)
    assert message.startswith("Could not open '/dev/ttyUSB0'")
    assert re.search(expected, message)


def test_telemetry_snapshot_and_host_timestamp(link, fake_mcu):
    """Telemetry fields arrive decoded, with the host receive time and NaN for 0xFFFF ranges."""
    fake_mcu.send(MsgType.TELEMETRY, enc_left=12, enc_right=-7, speed_left=1.5, speed_right=-2.0,
                  ranges_mm=[100, 0xFFFF, 300, 400, 500, 600, 700, 800], mcu_time_us=5000,
                  status=int(StatusBits.MOTORS_ENABLED), last_cmd_seq=3)
    t = link.wait_for_telemetry(after=0.0, timeout=2.0)
    assert (t.enc_left, t.enc_right, t.speed_left, t.speed_right) == (12, -7, 1.5, -2.0)
    assert t.ranges_m[0] == 0.1 and math.isnan(t.ranges_m[1])
    assert t.status == StatusBits.MOTORS_ENABLED and not t.estop_latched
    assert t.host_time > 0 and link.stats().telemetry_rx == 1


def test_send_velocity_bytes_on_wire(link, fake_mcu, wait_until):
    """send_velocity puts one SET_VEL with the values (float32) and increasing seq on the wire."""
    link.send_velocity(1.25, -3.5)
    link.send_velocity(0.0, 0.5)
    frames = wait_until(lambda: len(fake_mcu.frames(MsgType.SET_VEL)) == 2 and fake_mcu.frames(MsgType.SET_VEL))
    assert [(f.fields["left"], f.fields["right"]) for f in frames] == [(1.25, -3.5), (0.0, 0.5)]
    assert frames[1].seq == (frames[0].seq + 1) % 65536
    with pytest.raises(ValueError, match="finite"):
        link.send_velocity(math.nan, 0.0)


def test_acked_command_retries_then_succeeds(link, fake_mcu):
    """A lost ACK is retried with a new seq; the command succeeds and the retry is counted."""
    fake_mcu.drop_acks = 1
    reply = link.command(MsgType.ESTOP)
    assert reply.type == MsgType.ACK and reply.fields["acked_type"] == MsgType.ESTOP
    estops = fake_mcu.frames(MsgType.ESTOP)
    assert len(estops) == 2 and estops[0].seq != estops[1].seq
    assert link.stats().retries == 1 and link.stats().ack_timeouts == 0


def test_acked_command_exhausted_names_port(link, fake_mcu):
    """When no ACK comes at all, AckTimeoutError names the port after 1 + retries attempts."""
    fake_mcu.drop_acks = 100
    with pytest.raises(AckTimeoutError, match=f"No ACK for CONFIG from '{fake_mcu.port}' after 3 attempts"):
        link.configure(telemetry_period_ms=10, watchdog_ms=200, max_wheel_speed=10.0, ticks_per_rev=1320)
    assert len(fake_mcu.frames(MsgType.CONFIG)) == 3
    assert link.stats().ack_timeouts == 1


def test_nack_raises_with_code(link, fake_mcu):
    """A NACK raises NackError carrying the device's error code."""
    fake_mcu.nack_error = int(protocol.ErrorCode.BAD_VALUE)
    with pytest.raises(NackError, match="refused SET_PID") as info:
        link.set_pid(kp=1.0, ki=0.0, kd=0.0, i_limit=1.0)
    assert info.value.error == protocol.ErrorCode.BAD_VALUE


def test_ping_round_trip(link, fake_mcu):
    """ping() returns a positive round trip and sends PING with a token."""
    rtt = link.ping()
    assert rtt > 0
    assert fake_mcu.frames(MsgType.PING)[0].fields["token"] == 1


def test_garbage_counted_and_resync(link, fake_mcu, wait_until):
    """Garbage, a corrupted frame and an oversize run are counted; the next frame decodes."""
    fake_mcu.telemetry(enc=(1, 1))
    link.wait_for_telemetry(after=0.0)
    good = protocol.encode(MsgType.TELEMETRY, 50, 0, enc_left=2, enc_right=2, speed_left=0.0,
                           speed_right=0.0, ranges_mm=[0] * 8, mcu_time_us=1_020_000, status=0,
                           last_cmd_seq=0)
    corrupted = bytearray(good)
    corrupted[5] ^= 0x40
    fake_mcu.write(b"\x13\x37garbage\x00" + bytes(corrupted) + b"\x55" * 200 + b"\x00")
    fake_mcu.telemetry(enc=(3, 3), seq=1)
    t = wait_until(lambda: (lambda x: x if x and x.enc_left == 3 else None)(link.latest()))
    stats = link.stats()
    assert t.enc_right == 3
    assert stats.frame_errors + stats.crc_errors >= 2 and stats.oversize_frames == 1
    assert stats.bytes_discarded >= 200


def test_sequence_gap_counted(link, fake_mcu, wait_until):
    """A device seq skipping ahead by 3 is one gap with 3 dropped frames, not a reset."""
    fake_mcu.telemetry(seq=10)
    fake_mcu.telemetry(seq=11)
    fake_mcu.telemetry(seq=15, enc=(9, 9))
    wait_until(lambda: link.latest() and link.latest().enc_left == 9)
    stats = link.stats()
    assert (stats.seq_gaps, stats.frames_dropped, stats.device_resets) == (1, 3, 0)


def test_hello_after_traffic_is_a_reset_with_continuous_odometry(link, fake_mcu, wait_until):
    """HELLO after telemetry = device reset: callback fired, CONFIG re-sent, a latched ESTOP
    re-sent, and encoder counts continue from where they were."""
    link.configure(telemetry_period_ms=10, watchdog_ms=200, max_wheel_speed=10.0, ticks_per_rev=1320)
    link.estop()
    fake_mcu.telemetry(enc=(1000, -500))
    wait_until(lambda: link.latest() and link.latest().enc_left == 1000)
    fake_mcu.hello(boot_count=8)
    # No explicit seq: the link's restore thread is already sending ESTOP/CONFIG, and the fake
    # device's ACKs take sequence numbers from the same counter (as on the real firmware). A
    # hard-coded seq=1 raced with an ACK that had taken 1 and read as a second reset.
    fake_mcu.telemetry(enc=(20, 30), mcu_time_us=2_000)
    t = wait_until(lambda: (lambda x: x if x and x.raw_enc_left == 20 else None)(link.latest()))
    assert (t.enc_left, t.enc_right) == (1000, -500)  # continues from the last counts
    fake_mcu.telemetry(enc=(25, 40))
    t = wait_until(lambda: (lambda x: x if x and x.raw_enc_left == 25 else None)(link.latest()))
    assert (t.enc_left, t.enc_right) == (1005, -490)  # and then moves with the device
    wait_until(lambda: len(fake_mcu.frames(MsgType.CONFIG)) == 2, what="CONFIG re-sent")
    wait_until(lambda: len(fake_mcu.frames(MsgType.ESTOP)) == 2, what="ESTOP re-sent")
    assert fake_mcu.frames(MsgType.CONFIG)[1].fields == fake_mcu.frames(MsgType.CONFIG)[0].fields
    assert [e.reason for e in link.reset_log] == ["hello"]
    assert link.device_info.boot_count == 8 and link.stats().device_resets == 1


def test_first_hello_is_not_a_reset(link, fake_mcu):
    """A HELLO as the very first frame (device just booted) records the device, no reset."""
    fake_mcu.hello(boot_count=3)
    fake_mcu.telemetry(seq=1)
    link.wait_for_telemetry(after=0.0)
    assert link.device_info.boot_count == 3 and link.resets == []


def test_clock_going_backwards_is_a_reset(link, fake_mcu, wait_until):
    """Without a HELLO, a device clock that jumps backwards is detected as a reset."""
    fake_mcu.telemetry(enc=(100, 100), mcu_time_us=50_000_000)
    wait_until(lambda: link.latest() and link.latest().enc_left == 100)
    fake_mcu.telemetry(enc=(5, 5), mcu_time_us=300_000)
    t = wait_until(lambda: (lambda x: x if x and x.raw_enc_left == 5 else None)(link.latest()))
    assert t.enc_left == 100 and [e.reason for e in link.resets] == ["clock"]


def test_reset_enc_zeroes_host_offset(link, fake_mcu, wait_until):
    """After a reset re-based the counts, RESET_ENC makes the host counts zero again."""
    fake_mcu.telemetry(enc=(100, 100))
    wait_until(lambda: link.latest() and link.latest().enc_left == 100)
    fake_mcu.hello(boot_count=2)
    fake_mcu.telemetry(enc=(1, 1), mcu_time_us=1000, seq=1)
    wait_until(lambda: link.latest() and link.latest().raw_enc_left == 1)
    assert link.latest().enc_left == 100
    link.reset_encoders()
    fake_mcu.telemetry(enc=(0, 0), mcu_time_us=5000)
    t = wait_until(lambda: (lambda x: x if x and x.mcu_time_us == 5000 else None)(link.latest()))
    assert (t.enc_left, t.enc_right) == (0, 0)


def test_unplug_reopen_and_reset_detected(link, fake_mcu, wait_until):
    """Cable pulled: state goes DISCONNECTED, sends fail clearly; the device comes back on a
    new pty behind the same symlink: the link reopens, and a rebooted clock is detected as a
    reset with odometry continuous."""
    fake_mcu.telemetry(enc=(500, 600), mcu_time_us=90_000_000)
    wait_until(lambda: link.latest() and link.latest().enc_left == 500)
    fake_mcu.unplug()
    wait_until(lambda: link.state == LinkState.DISCONNECTED, what="DISCONNECTED")
    with pytest.raises(LinkDisconnectedError, match=fake_mcu.port):
        link.send_velocity(1.0, 1.0)
    fake_mcu.replug(mcu_time_us=10_000)
    wait_until(lambda: link.state == LinkState.CONNECTED, what="CONNECTED again")
    fake_mcu.telemetry(enc=(7, 8))
    t = wait_until(lambda: (lambda x: x if x and x.raw_enc_left == 7 else None)(link.latest()))
    assert (t.enc_left, t.enc_right) == (500, 600)
    assert link.states == [LinkState.CONNECTED, LinkState.DISCONNECTED, LinkState.CONNECTED]
    stats = link.stats()
    assert stats.disconnects == 1 and stats.reopens == 1 and stats.device_resets == 1
    link.send_velocity(0.5, 0.5)
    wait_until(lambda: fake_mcu.frames(MsgType.SET_VEL), what="SET_VEL after reopen")


def test_heartbeat_repeats_then_zeros(fake_mcu, wait_until):
    """The heartbeat re-sends the last command while it is fresh, then sends zeros: a hung
    caller never keeps the robot driving."""
    lk = SerialLink(fake_mcu.port, LinkConfig(heartbeat_hold_s=0.1))
    lk.open()
    try:
        lk.send_velocity(2.0, 2.0)
        lk.start_heartbeat(100.0)
        wait_until(lambda: any(f.fields["left"] == 0.0 for f in fake_mcu.frames(MsgType.SET_VEL)),
                   what="heartbeat zeros")
        lk.stop_heartbeat()
    finally:
        lk.close()
    values = [f.fields["left"] for f in fake_mcu.frames(MsgType.SET_VEL)]
    assert values[0] == 2.0 and values.count(2.0) >= 2  # repeated while fresh
    first_zero = values.index(0.0)
    assert all(v == 0.0 for v in values[first_zero:])  # never back to the stale command


def test_callback_exception_does_not_kill_reader(fake_mcu, wait_until):
    """A failing on_reset callback is counted; the reader keeps decoding."""
    def boom(event):
        raise RuntimeError("callback bug")

    lk = SerialLink(fake_mcu.port, FAST_LINK, on_reset=boom)
    lk.open()
    try:
        fake_mcu.telemetry()
        lk.wait_for_telemetry(after=0.0)
        fake_mcu.hello(boot_count=2)
        fake_mcu.telemetry(enc=(4, 4), seq=1)
        wait_until(lambda: lk.latest() and lk.latest().raw_enc_left == 4)
        assert lk.stats().internal_errors == 1
    finally:
        lk.close()


def test_config_validation():
    """Bad LinkConfig values are rejected naming the field."""
    with pytest.raises(ValueError, match="LinkConfig.ack_timeout_s"):
        LinkConfig(ack_timeout_s=0)
    with pytest.raises(ValueError, match="LinkConfig.baudrate"):
        LinkConfig(baudrate=-1)
    with pytest.raises(ValueError, match="reopen_max_s"):
        LinkConfig(reopen_initial_s=1.0, reopen_max_s=0.5)


def test_on_telemetry_sees_every_frame_in_order(fake_mcu, wait_until):
    """on_telemetry is called once per TELEMETRY frame, in wire order (nothing coalesced)."""
    got = []
    lk = SerialLink(fake_mcu.port, FAST_LINK, on_telemetry=got.append)
    lk.open()
    try:
        for i in range(20):
            fake_mcu.telemetry(enc=(i, -i))
        wait_until(lambda: len(got) == 20, what="20 telemetry callbacks")
    finally:
        lk.close()
    assert [t.enc_left for t in got] == list(range(20))


def test_sequence_going_backwards_is_a_reset(link, fake_mcu, wait_until):
    """A device seq that jumps backwards (HELLO lost) is a reset, even if the clock looks fine."""
    fake_mcu.telemetry(seq=300, enc=(40, 40))
    fake_mcu.telemetry(seq=301, enc=(41, 41))
    wait_until(lambda: link.latest() and link.latest().seq == 301)
    fake_mcu.telemetry(seq=2, enc=(3, 3))
    t = wait_until(lambda: (lambda x: x if x and x.seq == 2 else None)(link.latest()))
    assert [e.reason for e in link.resets] == ["sequence"] and t.enc_left == 41
    assert link.stats().seq_gaps == 0


def test_host_stall_is_not_a_device_reset_but_a_real_reset_still_is(link, fake_mcu, wait_until):
    """The host reader stalls (e.g. the interpreter busy loading an LLM) while the device keeps
    running: a backlog arrives at once, then frames whose MCU clock is 30 s ahead (frames were
    dropped meanwhile). The MCU clock is continuous, so this is a sequence gap, not a reset.
    A 32-bit microsecond wrap is not a reset either; the clock then going backwards is."""
    import threading

    fake_mcu.telemetry(enc=(10, 10), mcu_time_us=1_000_000, seq=100)
    wait_until(lambda: link.latest() and link.latest().enc_left == 10)

    release, stalled = threading.Event(), threading.Event()
    original = link._read_some

    def stalled_read(ser):
        stalled.set()
        release.wait(10.0)
        return original(ser)

    link._read_some = stalled_read  # the reader thread picks this up on its next read
    wait_until(stalled.is_set, what="reader stalled")
    fake_mcu.telemetry(enc=(11, 11), mcu_time_us=1_010_000, seq=101)  # buffered during the stall
    fake_mcu.telemetry(enc=(12, 12), mcu_time_us=31_010_000, seq=3101)  # device ran on, frames lost
    link._read_some = original
    release.set()
    t = wait_until(lambda: (lambda x: x if x and x.seq == 3101 else None)(link.latest()))
    assert t.enc_left == 12 and link.resets == [] and link.reset_log == []
    assert link.stats().seq_gaps == 1 and link.stats().device_resets == 0

    fake_mcu.telemetry(enc=(13, 13), mcu_time_us=2**31, seq=3102)  # uptime ~35.8 min
    fake_mcu.telemetry(enc=(13, 13), mcu_time_us=2**32 - 5_000, seq=3103)  # uptime ~71.6 min
    fake_mcu.telemetry(enc=(14, 14), mcu_time_us=2**32 + 5_000, seq=3104)  # wraps to 5000 us
    t = wait_until(lambda: (lambda x: x if x and x.seq == 3104 else None)(link.latest()))
    assert t.mcu_time_us == 5_000 and t.enc_left == 14 and link.resets == []

    fake_mcu.telemetry(enc=(1, 1), mcu_time_us=2_000, seq=3105)  # clock went backwards: rebooted
    t = wait_until(lambda: (lambda x: x if x and x.seq == 3105 else None)(link.latest()))
    assert [e.reason for e in link.resets] == ["clock"] and t.enc_left == 14
