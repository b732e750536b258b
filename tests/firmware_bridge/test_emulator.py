"""firmware_bridge.emulator.Emulator: starting, stopping and restarting fw_emulator."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from firmware_bridge import native
from firmware_bridge.emulator import Emulator, EmulatorError
from firmware_bridge.link import LinkConfig, SerialLink

FAST = LinkConfig(ack_timeout_s=0.2, reopen_initial_s=0.02, reopen_max_s=0.1)


@pytest.fixture
def exe():
    try:
        return native.emulator_executable()
    except FileNotFoundError as e:
        pytest.skip(f"fw_emulator is not built ({e})")


def test_start_points_symlink_at_pty_and_stop_removes_process(exe, tmp_path):
    """start() returns the stable path, a symlink to the emulator's pty (a character device);
    close() ends the process and removes the symlink."""
    stable = tmp_path / "edge-esp32"
    emu = Emulator(stable_path=stable, executable=exe)
    port = emu.start()
    try:
        assert port == str(stable) and os.readlink(stable) == emu.pty_path
        assert stat.S_ISCHR(os.stat(port).st_mode) and emu.running
        with pytest.raises(EmulatorError, match="already running"):
            emu.start()
    finally:
        emu.close()
    assert not emu.running and not stable.is_symlink()


def test_hello_carries_boot_count_and_reason(exe):
    """--boot-count/--reset-reason and --ranges-mm reach the device: HELLO and telemetry show them."""
    with Emulator(boot_count=41, reset_reason=3, ranges_mm=750, executable=exe) as emu:
        with SerialLink(emu.port, FAST) as link:
            t = link.wait_for_telemetry(after=0.0, timeout=2.0)
            assert link.device_info is not None
            assert (link.device_info.boot_count, link.device_info.reset_reason) == (41, 3)
            assert t.ranges_mm == (750,) * 8


def test_restart_increments_boot_count_and_new_pty(exe, tmp_path):
    """restart() kills the process, starts a new one with boot_count + 1 on a fresh pty and
    re-points the symlink at it."""
    stable = tmp_path / "edge-esp32"
    with Emulator(stable_path=stable, executable=exe) as emu:
        first_pid = emu.pid
        emu.restart()
        assert emu.boot_count == 2 and emu.pid != first_pid and emu.running
        assert os.readlink(stable) == emu.pty_path
        with pytest.raises(ProcessLookupError):  # the old process is gone (the kernel may reuse its pty number)
            os.kill(first_pid, 0)


def test_failing_executable_reports_its_output(tmp_path):
    """An emulator that exits without printing its PTY line raises EmulatorError with the exit
    code and what it printed."""
    fake = tmp_path / "fw_emulator"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('cannot create a pseudo-terminal')\nsys.exit(3)\n")
    fake.chmod(0o755)
    with pytest.raises(EmulatorError, match="(?s)exited with code 3.*cannot create a pseudo-terminal"):
        Emulator(executable=fake).start()


def test_bad_arguments_rejected():
    """Constructor arguments are validated before anything starts."""
    with pytest.raises(ValueError, match="boot_count"):
        Emulator(boot_count=-1)
    with pytest.raises(ValueError, match="ranges_mm"):
        Emulator(ranges_mm=70000)
    with pytest.raises(EmulatorError, match="not running"):
        Emulator().port
