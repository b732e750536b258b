"""fw_emulator as a command-line program, talked to with raw protocol bytes (no link layer):
options, errors, the PTY line, per-sensor ranges, the simulated motors, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import serial

from firmware_bridge import native
from firmware_bridge.protocol import FrameDecoder, MsgType, StatusBits, encode

try:
    EXE = str(native.emulator_executable())
except FileNotFoundError as e:  # pragma: no cover - CI always builds it first
    pytest.skip(str(e), allow_module_level=True)


def test_help_and_bad_arguments():
    """--help exits 0 with an example; a bad value exits 2 with a one-line error naming the
    option and pointing at --help (no PTY line printed)."""
    out = subprocess.run([EXE, "--help"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 0 and "example: fw_emulator" in out.stdout
    for args, needle in ((["--reset-reason", "LATER"], "--reset-reason"),
                         (["--ranges-mm", "1,2,3"], "--ranges-mm"),
                         (["--boot-count", "-1"], "--boot-count"),
                         (["--frobnicate", "1"], "unknown option")):
        r = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=5)
        assert r.returncode == 2, args
        assert r.stdout == ""
        assert needle in r.stderr and "--help" in r.stderr and r.stderr.count("\n") == 1


def _read_until(port: serial.Serial, dec: FrameDecoder, pred, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in dec.feed(port.read(4096)):
            if pred(f):
                return f
    pytest.fail("expected frame did not arrive")


def test_emulator_session_end_to_end():
    """One session: HELLO (sent after --boot-delay-ms, so it is not flushed by open) carries
    the boot count and reason; 8 per-sensor ranges arrive with 65535 = no reading; SET_VEL
    drives the simulated wheels forward (counts and speed grow) and they stop after the
    watchdog; SIGUSR1 resets in place (HELLO, boot count + 1, SOFTWARE); SIGTERM exits 0."""
    ranges = "100,200,300,400,500,600,700,65535"
    proc = subprocess.Popen([EXE, "--boot-count", "9", "--reset-reason", "BROWNOUT",
                             "--ranges-mm", ranges, "--boot-delay-ms", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PTY /dev/")
        with serial.Serial(line.split()[1], 921600, timeout=0.02) as port:
            dec = FrameDecoder()
            hello = _read_until(port, dec, lambda f: f.type == MsgType.HELLO)
            assert (hello.seq, hello.fields["boot_count"], hello.fields["reset_reason"]) == (0, 9, 6)
            tele = _read_until(port, dec, lambda f: f.type == MsgType.TELEMETRY)
            assert tele.fields["ranges_mm"] == (100, 200, 300, 400, 500, 600, 700, 65535)
            for seq in range(25):  # 0.5 s of 50 Hz heartbeats
                port.write(encode(MsgType.SET_VEL, seq, left=4.0, right=4.0))
                time.sleep(0.02)
            moving = _read_until(port, dec, lambda f: f.type == MsgType.TELEMETRY
                                 and f.fields["last_cmd_seq"] == 24)
            assert moving.fields["enc_left"] > 100 and moving.fields["speed_left"] > 1.0
            assert moving.fields["status"] & StatusBits.MOTORS_ENABLED
            stopped = _read_until(
                port, dec, lambda f: f.type == MsgType.TELEMETRY
                and f.fields["status"] & StatusBits.WATCHDOG_TRIPPED and abs(f.fields["speed_left"]) < 0.1)
            assert not stopped.fields["status"] & StatusBits.MOTORS_ENABLED
            proc.send_signal(signal.SIGUSR1)
            again = _read_until(port, dec, lambda f: f.type == MsgType.HELLO)
            assert (again.fields["boot_count"], again.fields["reset_reason"]) == (10, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
