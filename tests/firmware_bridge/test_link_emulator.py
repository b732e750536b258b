"""The Python link against the compiled firmware emulator over a real pseudo-terminal.

These run the real C firmware core (``fw_emulator``); they skip, saying so, only when it has
not been built (`cmake -S . -B build/native && cmake --build build/native`). CI builds it.
"""

from __future__ import annotations

import statistics
import time

import pytest

from firmware_bridge import native, protocol
from firmware_bridge.cli import main as edge_link
from firmware_bridge.device import MotorController, MotorControllerConfig
from firmware_bridge.link import LinkConfig, LinkState, SerialLink
from firmware_bridge.protocol import MsgType, StatusBits

FAST = LinkConfig(ack_timeout_s=0.2, ack_retries=3, reopen_initial_s=0.02, reopen_max_s=0.1)


def _controller(port, **kw) -> MotorController:
    return MotorController(MotorControllerConfig(port=port, link=FAST, **kw))


def _drive_until(mc, left, right, predicate, timeout=3.0, period=0.02):
    """Send (left, right) every ``period`` s (the heartbeat) until ``predicate(telemetry)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mc.send_velocity(left, right)
        t = mc.wait_for_observation(timeout=1.0)
        if predicate(t):
            return t
        time.sleep(period)
    pytest.fail(f"telemetry never satisfied the condition; last: {t}")


def _observe_until(mc, predicate, timeout=3.0, what="condition"):
    """Read telemetry (sending nothing) until ``predicate(telemetry)``; returns all frames seen."""
    seen = []
    deadline = time.monotonic() + timeout
    after = time.monotonic()
    while time.monotonic() < deadline:
        t = mc.wait_for_observation(after=after, timeout=1.0)
        after = t.host_time
        seen.append(t)
        if predicate(t):
            return seen
    pytest.fail(f"timed out waiting for {what}; last telemetry: {seen[-1] if seen else None}")


def _periods_ms(mc, n):
    frames = []
    after = time.monotonic()
    while len(frames) < n:
        t = mc.wait_for_observation(after=after, timeout=1.0)
        frames.append(t)
        after = t.host_time
    deltas = [(b.mcu_time_us - a.mcu_time_us) / 1000 / ((b.seq - a.seq) % 65536 or 1)
              for a, b in zip(frames, frames[1:])]
    return statistics.median(deltas)


def test_velocity_command_applied(emulator):
    """SET_VEL at the control rate drives the simulated wheels to the target speed; the
    encoders count up and the device reports our last command's seq."""
    with _controller(emulator.port) as mc:
        start = mc.get_observation()
        t = _drive_until(mc, 5.0, -4.0, lambda t: abs(t.speed_left - 5.0) < 0.25
                         and abs(t.speed_right + 4.0) < 0.25)
        assert t.status & StatusBits.MOTORS_ENABLED
        assert t.enc_left > start.enc_left + 50 and t.enc_right < start.enc_right - 50
        assert mc.link.device_info.boot_count == 1 and mc.link.device_info.protocol_version == 1


def test_telemetry_period_follows_config(emulator):
    """Telemetry arrives at the configured period (device clock), and CONFIG changes it."""
    with _controller(emulator.port, telemetry_period_ms=20) as mc:
        assert _periods_ms(mc, 12) == pytest.approx(20.0, abs=1.0)
        mc.link.configure(telemetry_period_ms=5, watchdog_ms=200, max_wheel_speed=10.0, ticks_per_rev=1320)
        assert _periods_ms(mc, 25) == pytest.approx(5.0, abs=1.0)


def test_watchdog_stops_motors_when_host_goes_silent(emulator):
    """After the host stops sending, the firmware trips the watchdog, cuts the motors and the
    wheels coast to a stop; the next SET_VEL clears the trip."""
    with _controller(emulator.port) as mc:
        _drive_until(mc, 6.0, 6.0, lambda t: t.speed_left > 5.0)
        last_sent = time.monotonic()
        mc.send_velocity(6.0, 6.0)  # the last frame: the device receives it after last_sent
        seen = _observe_until(mc, lambda t: t.watchdog_tripped and abs(t.speed_left) < 0.05,
                              what="watchdog trip and wheels stopped")
        tripped = next(t for t in seen if t.watchdog_tripped)
        before = [t for t in seen if t.host_time < tripped.host_time]
        assert before and all(not t.watchdog_tripped for t in before)
        assert tripped.host_time - last_sent >= 0.2 - 0.002  # never before the 200 ms watchdog
        assert not tripped.status & StatusBits.MOTORS_ENABLED
        t = _drive_until(mc, 2.0, 2.0, lambda t: not t.watchdog_tripped and t.speed_left > 1.0)
        assert t.status & StatusBits.MOTORS_ENABLED


def test_estop_latches_until_cleared(emulator):
    """ESTOP stops the wheels and latches: SET_VEL is ignored until CLEAR_ESTOP; after it the
    next SET_VEL drives again."""
    with _controller(emulator.port) as mc:
        _drive_until(mc, 5.0, 5.0, lambda t: t.speed_left > 4.0)
        mc.estop()
        t = _drive_until(mc, 5.0, 5.0, lambda t: t.estop_latched and abs(t.speed_left) < 0.05)
        ignored = [_drive_until(mc, 5.0, 5.0, lambda t: True) for _ in range(10)]
        assert all(t.estop_latched and not t.status & StatusBits.MOTORS_ENABLED for t in ignored)
        # 10 frames of SET_VEL 5 rad/s would be ~100 counts; latched, only coasting residue moves
        assert abs(ignored[-1].enc_left - t.enc_left) <= 3
        mc.clear_estop()
        t = _drive_until(mc, 5.0, 5.0, lambda t: not t.estop_latched and t.speed_left > 4.0)
        assert t.status & StatusBits.MOTORS_ENABLED


def test_emulator_restart_reopens_and_detects_reset(emulator):
    """Killing the emulator (power cut) drops the link to DISCONNECTED; a new emulator behind
    the same stable symlink is reopened, its HELLO (boot count + 1) is seen as a device reset,
    the odometry stays continuous and the configuration is re-sent (telemetry period 20 ms
    again, the firmware default being 10 ms)."""
    states = []
    mc = MotorController(MotorControllerConfig(port=emulator.port, link=FAST, telemetry_period_ms=20),
                         on_state=states.append)
    with mc:
        _drive_until(mc, 5.0, 5.0, lambda t: t.enc_left > 300)
        _observe_until(mc, lambda t: abs(t.speed_left) < 0.01 and abs(t.speed_right) < 0.01,
                       what="wheels at rest")
        before = mc.get_observation()
        emulator.restart()
        deadline = time.monotonic() + 5.0
        while not mc.resets and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r.reason for r in mc.resets] == ["hello"]
        assert mc.resets[0].device.boot_count == 2
        assert states[-2:] == [LinkState.DISCONNECTED, LinkState.CONNECTED]
        after = mc.wait_for_observation(timeout=1.0)
        assert (after.raw_enc_left, after.raw_enc_right) == (0, 0)
        assert (after.enc_left, after.enc_right) == (before.enc_left, before.enc_right)
        deadline = time.monotonic() + 3.0
        while _periods_ms(mc, 6) != pytest.approx(20.0, abs=1.0):
            assert time.monotonic() < deadline, "CONFIG was not re-sent after the reset"
        _drive_until(mc, 3.0, 3.0, lambda t: t.speed_left > 2.0)
        stats = mc.stats()
        assert stats.device_resets == 1 and stats.reopens == 1


def test_in_place_reset_detected_without_reopen(emulator):
    """An MCU reset that keeps the port (SIGUSR1 to the emulator) is seen through its HELLO:
    boot count + 1, reason SOFTWARE, no disconnect, odometry continuous, CONFIG re-sent."""
    with _controller(emulator.port, telemetry_period_ms=20) as mc:
        _drive_until(mc, 5.0, 5.0, lambda t: t.enc_left > 200)
        _observe_until(mc, lambda t: abs(t.speed_left) < 0.01 and abs(t.speed_right) < 0.01,
                       what="wheels at rest")
        before = mc.get_observation()
        emulator.reset()
        deadline = time.monotonic() + 5.0
        while not mc.resets and time.monotonic() < deadline:
            time.sleep(0.01)
        (event,) = mc.resets
        assert event.reason == "hello" and event.device.boot_count == 2
        assert event.device.reset_reason == protocol.ResetReason.SOFTWARE
        after = mc.wait_for_observation(timeout=1.0)
        assert abs(after.enc_left - before.enc_left) <= 2 and abs(after.enc_right - before.enc_right) <= 2
        deadline = time.monotonic() + 3.0
        while _periods_ms(mc, 6) != pytest.approx(20.0, abs=1.0):
            assert time.monotonic() < deadline, "CONFIG was not re-sent after the reset"
        stats = mc.stats()
        assert stats.disconnects == 0 and stats.device_resets == 1


def test_garbage_on_the_wire_is_counted_and_link_resyncs(relay):
    """Noise towards the host is counted (CRC/frame errors) and decoding resumes with the next
    frame; noise towards the device is dropped by the firmware (RX_ERROR) and commands still
    work."""
    with _controller(relay.port) as mc:
        base = mc.stats()
        frame = bytearray(protocol.encode(MsgType.TELEMETRY, 9, 0, enc_left=1, enc_right=2,
                                          speed_left=0.0, speed_right=0.0, ranges_mm=[0] * 8,
                                          mcu_time_us=0, status=0, last_cmd_seq=0))
        frame[7] ^= 0x10
        relay.inject_to_host(b"\x00\xde\xad\xbe\xef\x00" + bytes(frame))
        deadline = time.monotonic() + 3.0
        while mc.stats().crc_errors + mc.stats().frame_errors < base.crc_errors + base.frame_errors + 2:
            assert time.monotonic() < deadline, f"garbage not counted: {mc.stats()}"
            time.sleep(0.01)
        t0 = time.monotonic()
        assert mc.wait_for_observation(after=t0).seq  # decoding resumed
        mc.link.write_raw(b"\x07garbage!\x00" + bytes(frame))
        seen = _observe_until(mc, lambda t: t.status & StatusBits.RX_ERROR, what="RX_ERROR")
        assert seen and mc.ping() > 0
        _drive_until(mc, 3.0, 3.0, lambda t: t.speed_left > 2.0)


def test_context_manager_stops_motors_when_body_raises(emulator):
    """An exception inside the with block still leaves the wheels stopped by an explicit stop
    (the watchdog is set to 5 s here, so it cannot be what stopped them)."""
    with pytest.raises(RuntimeError, match="boom"):
        with _controller(emulator.port, watchdog_ms=5000) as mc:
            _drive_until(mc, 5.0, 5.0, lambda t: t.speed_left > 4.0)
            raise RuntimeError("boom")
    with SerialLink(emulator.port, FAST) as observer:
        deadline = time.monotonic() + 3.0
        while True:
            t = observer.wait_for_telemetry(timeout=1.0)
            if abs(t.speed_left) < 0.05 and abs(t.speed_right) < 0.05:
                break
            assert time.monotonic() < deadline, f"wheels still turning: {t}"
        assert not t.watchdog_tripped and not t.estop_latched


def test_edge_link_cli_against_emulator(capsys):
    """`edge-link --emulator --ping 50` starts the emulator and prints the percentiles."""
    try:
        native.emulator_executable()
    except FileNotFoundError as e:
        pytest.skip(f"fw_emulator is not built ({e})")
    assert edge_link(["--emulator", "--ping", "50"]) == 0
    assert "50 answered, 0 lost" in capsys.readouterr().out
