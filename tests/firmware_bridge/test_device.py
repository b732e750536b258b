"""MotorController against a scripted Python MCU on a real pty: lifecycle, clipping, stops."""

from __future__ import annotations

import math
import threading

import pytest

from firmware_bridge.device import MotorController, MotorControllerConfig, PidGains
from firmware_bridge.link import LinkConfig, LinkError
from firmware_bridge.protocol import MsgType

FAST = LinkConfig(ack_timeout_s=0.2, ack_retries=2, reopen_initial_s=0.02, reopen_max_s=0.1)


class _Ticker:
    """Sends telemetry from the fake MCU every few ms so connect() sees a live device."""

    def __init__(self, mcu):
        self._mcu, self._stop = mcu, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            try:
                self._mcu.telemetry()
            except OSError:
                return

    def close(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def live_mcu(fake_mcu):
    ticker = _Ticker(fake_mcu)
    yield fake_mcu
    ticker.close()


def _config(port, **kw):
    return MotorControllerConfig(port=port, link=FAST, max_wheel_speed=8.0, **kw)


def test_connect_sends_config_pid_and_stop(live_mcu, wait_until):
    """connect() waits for telemetry, then sends CONFIG (with the configured values), SET_PID
    and a zero SET_VEL."""
    pid = PidGains(kp=0.2, ki=1.0, kd=0.0, i_limit=0.5)
    with MotorController(_config(live_mcu.port, watchdog_ms=150, pid=pid)) as mc:
        assert mc.is_connected and mc.get_observation().host_time > 0
    config = live_mcu.frames(MsgType.CONFIG)[0].fields
    assert config == {"telemetry_period_ms": 10, "watchdog_ms": 150, "max_wheel_speed": 8.0,
                      "ticks_per_rev": 1320}
    assert live_mcu.frames(MsgType.SET_PID)[0].fields["kp"] == pytest.approx(0.2)
    assert wait_until(lambda: live_mcu.frames(MsgType.SET_VEL))[0].fields == {"left": 0.0, "right": 0.0}


def test_send_velocity_clips_and_reports_what_was_sent(live_mcu, wait_until):
    """send_velocity clips to +-max_wheel_speed and returns the clipped values; send_action
    scales a normalised action and returns the normalised values sent."""
    with MotorController(_config(live_mcu.port)) as mc:
        assert mc.send_velocity(20.0, -3.0) == (8.0, -3.0)
        assert mc.send_action(0.5, -2.0) == (0.5, -1.0)
    frames = wait_until(lambda: len(live_mcu.frames(MsgType.SET_VEL)) >= 4 and live_mcu.frames(MsgType.SET_VEL))
    sent = [(f.fields["left"], f.fields["right"]) for f in frames]
    assert sent == [(0.0, 0.0), (8.0, -3.0), (4.0, -8.0), (0.0, 0.0)]


def test_non_finite_command_sends_stop_and_raises(live_mcu, wait_until):
    """A NaN command never reaches the wire: a stop is sent and ValueError explains."""
    with MotorController(_config(live_mcu.port)) as mc:
        mc.send_velocity(3.0, 3.0)
        with pytest.raises(ValueError, match="finite.*sent a stop"):
            mc.send_velocity(math.nan, 1.0)
        frames = wait_until(lambda: len(live_mcu.frames(MsgType.SET_VEL)) >= 3
                            and live_mcu.frames(MsgType.SET_VEL))
    values = [(f.fields["left"], f.fields["right"]) for f in frames]
    assert values == [(0.0, 0.0), (3.0, 3.0), (0.0, 0.0)]  # connect's stop, command, NaN -> stop


def test_context_manager_stops_motors_when_body_raises(live_mcu, wait_until):
    """Leaving the with block by an exception still sends zero velocity as the last command,
    and the exception propagates."""
    with pytest.raises(RuntimeError, match="planner crashed"):
        with MotorController(_config(live_mcu.port)) as mc:
            mc.send_velocity(5.0, 5.0)
            raise RuntimeError("planner crashed")
    frames = wait_until(lambda: len(live_mcu.frames(MsgType.SET_VEL)) >= 3 and live_mcu.frames(MsgType.SET_VEL))
    assert [f.fields["left"] for f in frames] == [0.0, 5.0, 0.0]  # connect, body, exit
    assert not mc.is_connected


def test_silent_device_fails_connect_with_next_step(fake_mcu):
    """A port that opens but never sends telemetry gives a LinkError naming the port and what
    to check, and the port is closed again."""
    mc = MotorController(_config(fake_mcu.port, connect_timeout_s=0.1))
    with pytest.raises(LinkError, match=f"No telemetry from '{fake_mcu.port}'.*edge-flash"):
        mc.connect()
    assert not mc.is_connected and mc.link.state.value == "closed"


def test_commands_need_connect(fake_mcu):
    """Using the controller before connect() raises a LinkError saying to connect."""
    mc = MotorController(_config(fake_mcu.port))
    with pytest.raises(LinkError, match="not connected; call connect"):
        mc.send_velocity(0.0, 0.0)


def test_estop_ping_and_reset_encoders_are_acked(live_mcu):
    """estop/clear_estop/reset_encoders/ping each put their acked command on the wire."""
    with MotorController(_config(live_mcu.port)) as mc:
        mc.estop()
        mc.clear_estop()
        mc.reset_encoders()
        assert mc.ping() > 0
    for msg_type in (MsgType.ESTOP, MsgType.CLEAR_ESTOP, MsgType.RESET_ENC, MsgType.PING):
        assert len(live_mcu.frames(msg_type)) == 1, msg_type


def test_config_validation():
    """Out-of-range settings are refused naming the field."""
    with pytest.raises(ValueError, match="max_wheel_speed"):
        MotorControllerConfig(port="/dev/ttyUSB0", max_wheel_speed=0.0)
    with pytest.raises(ValueError, match="watchdog_ms"):
        MotorControllerConfig(port="/dev/ttyUSB0", watchdog_ms=5)
    with pytest.raises(ValueError, match="port"):
        MotorControllerConfig(port="")
    with pytest.raises(ValueError, match="PidGains.ki"):
        PidGains(kp=1.0, ki=-1.0, kd=0.0, i_limit=1.0)
