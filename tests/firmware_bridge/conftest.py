"""Fixtures for the link tests: a Python fake MCU on a real pty, the compiled emulator, and a
relay that sits on the wire between the emulator and the link to inject faults."""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from pathlib import Path
from typing import Callable

import pytest

from firmware_bridge import native, protocol
from firmware_bridge.emulator import Emulator
from firmware_bridge.protocol import MsgType

def wait_until(predicate: Callable[[], object], timeout: float = 3.0, what: str = "condition"):
    """Poll ``predicate`` until truthy and return its value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(name="wait_until")
def _wait_until_fixture():
    return wait_until


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _repoint(link_path: Path, target: str) -> None:
    tmp = link_path.with_name(link_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link_path)


class FakeMCU:
    """A scripted MCU in Python on the master side of a pty (reachable via the symlink
    ``port``). It records every frame the host sends, answers acked commands with ACK (or
    drops / NACKs them on request) and sends TELEMETRY or HELLO when the test asks."""

    def __init__(self, link_path: Path):
        self.port = str(link_path)
        self._link_path = link_path
        self.received: list[protocol.Frame] = []
        self.drop_acks = 0           # swallow this many acked commands without answering
        self.nack_error: int | None = None
        self.seq = 0
        self.mcu_time_us = 1_000_000
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._plug()

    def _plug(self) -> None:
        self.master, self._slave, self.pty_path = _open_pty()
        self._decoder = protocol.FrameDecoder()
        _repoint(self._link_path, self.pty_path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-mcu")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for frame in self._decoder.feed(data):
                with self._lock:
                    self.received.append(frame)
                if frame.type in protocol.ACKED_TYPES:
                    if self.drop_acks > 0:
                        self.drop_acks -= 1
                        continue
                    if self.nack_error is not None:
                        self.send(MsgType.NACK, acked_seq=frame.seq, acked_type=int(frame.type),
                                  error=self.nack_error)
                    else:
                        self.send(MsgType.ACK, acked_seq=frame.seq, acked_type=int(frame.type))

    def frames(self, msg_type: MsgType) -> list[protocol.Frame]:
        with self._lock:
            return [f for f in self.received if f.type == msg_type]

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def send(self, msg_type: MsgType, seq: int | None = None, **fields) -> None:
        with self._lock:
            if seq is None:
                seq = self.seq
            self.seq = (seq + 1) % 0x10000
            self.write(protocol.encode(msg_type, seq, 0, **fields))

    def telemetry(self, enc=(0, 0), speeds=(0.0, 0.0), status=0, dt_us=10_000, seq=None,
                  mcu_time_us=None) -> None:
        self.mcu_time_us = self.mcu_time_us + dt_us if mcu_time_us is None else mcu_time_us
        self.send(MsgType.TELEMETRY, seq=seq, enc_left=enc[0], enc_right=enc[1],
                  speed_left=speeds[0], speed_right=speeds[1], ranges_mm=[500] * 8,
                  mcu_time_us=self.mcu_time_us % 2**32, status=status, last_cmd_seq=0)

    def hello(self, boot_count: int) -> None:
        self.send(MsgType.HELLO, seq=0, protocol_version=protocol.PROTOCOL_VERSION,
                  fw_version=0x0100, boot_count=boot_count, reset_reason=1)

    def unplug(self) -> None:
        """Close the pty like a pulled cable: the host's reads fail, the path disappears."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        os.close(self.master)
        os.close(self._slave)

    def replug(self, mcu_time_us: int = 1_000_000) -> None:
        """Come back on a new pty (the symlink follows), as a freshly booted MCU."""
        self.seq = 0
        self.mcu_time_us = mcu_time_us
        self._plug()

    def close(self) -> None:
        if not self._stop.is_set():
            self.unplug()
        self._link_path.unlink(missing_ok=True)


@pytest.fixture
def fake_mcu(tmp_path):
    mcu = FakeMCU(tmp_path / "ttyFAKE")
    yield mcu
    mcu.close()


def _emulator_or_skip() -> Path:
    try:
        return native.emulator_executable()
    except FileNotFoundError as e:
        pytest.skip(f"fw_emulator is not built ({e})")


@pytest.fixture
def emulator(tmp_path):
    """The compiled emulator behind a stable symlink ``emulator.port`` (skips if not built)."""
    exe = _emulator_or_skip()
    emu = Emulator(stable_path=tmp_path / "edge-esp32", executable=exe)
    emu.start()
    yield emu
    emu.close()


class WireRelay:
    """Forwards bytes between the emulator's pty and a new pty the link opens (``port``), and
    can inject bytes into the device -> host direction, like noise on a real cable."""

    def __init__(self, device_path: str, link_path: Path):
        self._device = os.open(device_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._device)
        self._master, self._slave, pty_path = _open_pty()
        _repoint(link_path, pty_path)
        self.port = str(link_path)
        self._inject: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="wire-relay")
        self._thread.start()

    def inject_to_host(self, data: bytes) -> None:
        """Insert ``data`` into the device -> host stream between two device reads."""
        with self._lock:
            self._inject.append(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._device, self._master], [], [], 0.02)
            try:
                if self._device in ready:
                    data = os.read(self._device, 4096)
                    with self._lock:
                        extra, self._inject = b"".join(self._inject), []
                    os.write(self._master, extra + data)
                if self._master in ready:
                    os.write(self._device, os.read(self._master, 4096))
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        for fd in (self._device, self._master, self._slave):
            os.close(fd)


@pytest.fixture
def relay(emulator, tmp_path):
    wire = WireRelay(emulator.pty_path, tmp_path / "ttyRELAY")
    yield wire
    wire.close()
