"""Start and stop the ESP32 emulator (``fw_emulator``): the real firmware core with simulated
motors, serving the protocol on a pseudo-terminal.

Example::

    from firmware_bridge.emulator import Emulator

    with Emulator(stable_path="/tmp/edge-esp32") as emu:    # like the udev symlink on a robot
        print(emu.port)          # /tmp/edge-esp32 -> /dev/pts/N
        emu.reset()              # MCU reset on the same pty (HELLO, boot count + 1)
        emu.restart()            # new process, boot count + 1, symlink re-pointed

A restarted emulator gets a new pty; a ``stable_path`` symlink that is re-pointed on every
start mirrors a robot's udev rule (``/dev/edge-esp32``), so a link opened on it finds the
device again, exactly as after a real ESP32 reset.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from firmware_bridge import native

_START_TIMEOUT_S = 5.0


class EmulatorError(RuntimeError):
    """The emulator could not be started (the message says why and what to do)."""


class Emulator:
    """One ``fw_emulator`` process.

    ``boot_count`` and ``reset_reason`` go into its HELLO; ``ranges_mm`` (0..65535) sets what the
    simulated range sensors report. ``stable_path``: a symlink kept pointing at the current pty.
    ``executable`` defaults to ``firmware_bridge.native.emulator_executable()``.
    """

    def __init__(self, *, boot_count: int = 1, reset_reason: int | None = None,
                 ranges_mm: int | None = None, stable_path: str | os.PathLike[str] | None = None,
                 executable: str | os.PathLike[str] | None = None):
        if not isinstance(boot_count, int) or boot_count < 0:
            raise ValueError(f"boot_count must be an integer >= 0, got {boot_count!r}")
        if ranges_mm is not None and not (isinstance(ranges_mm, int) and 0 <= ranges_mm <= 0xFFFF):
            raise ValueError(f"ranges_mm must be an integer in 0..65535, got {ranges_mm!r}")
        self.boot_count = boot_count
        self.reset_reason = reset_reason
        self.ranges_mm = ranges_mm
        self.stable_path = Path(stable_path) if stable_path is not None else None
        self._executable = Path(executable) if executable is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=50)
        self.pty_path: str | None = None

    @property
    def port(self) -> str:
        """The path to open: ``stable_path`` when given, else the pty itself."""
        if self.pty_path is None:
            raise EmulatorError("the emulator is not running; call start() first")
        return str(self.stable_path) if self.stable_path is not None else self.pty_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def output(self) -> str:
        """The emulator's last lines of output (stdout and stderr), for diagnostics."""
        return "\n".join(self._output)

    def start(self) -> str:
        """Start the process, wait for its ``PTY <path>`` line, point ``stable_path`` at it;
        returns ``port``. Raises ``EmulatorError`` (with its output) if it does not come up."""
        if self.running:
            raise EmulatorError(f"the emulator is already running (pid {self.pid})")
        exe = self._executable or native.emulator_executable()
        cmd = [str(exe), "--boot-count", str(self.boot_count)]
        if self.reset_reason is not None:
            cmd += ["--reset-reason", str(int(self.reset_reason))]
        if self.ranges_mm is not None:
            cmd += ["--ranges-mm", str(self.ranges_mm)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except OSError as e:
            raise EmulatorError(f"could not run {exe}: {e}. Rebuild it with `cmake --build build/native`.") from e
        self._proc = proc
        self._output.clear()
        try:
            self.pty_path = self._wait_for_pty(proc)
        except BaseException:
            self.stop()
            raise
        self._drain = threading.Thread(target=self._drain_main, args=(proc,), daemon=True,
                                       name=f"fw_emulator {proc.pid} output")
        self._drain.start()
        if self.stable_path is not None:
            tmp = self.stable_path.with_name(f".{self.stable_path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(self.pty_path, tmp)
            os.replace(tmp, self.stable_path)  # atomic re-point, like udev
        return self.port

    def _wait_for_pty(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + _START_TIMEOUT_S
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:  # stdout closed: the process is exiting
                    try:
                        proc.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        pass
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    self._output.append(line)
                    if line.startswith("PTY "):
                        return line[4:].strip()
            elif proc.poll() is not None:
                break
        code = proc.poll()
        state = f"exited with code {code}" if code is not None else f"printed no PTY line within {_START_TIMEOUT_S} s"
        raise EmulatorError(f"fw_emulator {state}. Its output:\n{self.output() or '(none)'}")

    def _drain_main(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self._output.append(raw.decode(errors="replace").rstrip())

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill=True``, like pulling the power) and wait; the pty
        vanishes. ``stable_path`` is left dangling, as a udev symlink would be. Safe to repeat."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3.0)
        if self._drain is not None:
            self._drain.join(timeout=1.0)
            self._drain = None
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None

    def reset(self) -> None:
        """Reset the simulated MCU in place (SIGUSR1): motors stop, the firmware core restarts
        with ``boot_count + 1`` and sends HELLO (reason SOFTWARE) on the same pty, as a host sees
        an ESP32 reset that does not drop the USB connection."""
        if not self.running:
            raise EmulatorError("the emulator is not running; call start() first")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGUSR1)
        self.boot_count += 1

    def restart(self, *, kill: bool = True) -> str:
        """Stop (SIGKILL by default: a power cut) and start again with ``boot_count + 1``,
        like an ESP32 reset; returns ``port``."""
        self.stop(kill=kill)
        self.boot_count += 1
        return self.start()

    def close(self) -> None:
        """Stop the process and remove ``stable_path``."""
        self.stop()
        if self.stable_path is not None and self.stable_path.is_symlink():
            self.stable_path.unlink()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
