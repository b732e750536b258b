"""``edge-flash esp32``: write the motor-controller firmware with esptool, then check that it
speaks the host's protocol version.

Flash layout (what PlatformIO's ``pio run -t upload`` writes, Arduino-ESP32 framework):

============  ========  ==========  =========================================
image         esp32     esp32s3     ``.pio/build/<env>/`` file
============  ========  ==========  =========================================
bootloader    0x1000    0x0         ``bootloader.bin``
partitions    0x8000    0x8000      ``partitions.bin``
boot_app0     0xe000    0xe000      ``boot_app0.bin`` (OTA selector; PlatformIO's copy)
application   0x10000   0x10000     ``firmware.bin``
merged        0x0       0x0         one ``*merged*.bin`` (``esptool merge-bin``)
============  ========  ==========  =========================================

Flashing runs ``python -m esptool`` at ``--baud`` (921600 by default) and, if that fails (long
or poor USB cables often cannot keep up), once more at 115200. Afterwards the board is reset
and the link is opened without touching DTR/RTS again; the firmware's HELLO frame carries its
protocol version in the frame header, which must equal
:data:`firmware_bridge.protocol.PROTOCOL_VERSION` (a mismatch is refused with what to do).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from edge.flash.errors import FlashError

CHIPS = ("esp32", "esp32s3")
DEFAULT_BAUD = 921600
FALLBACK_BAUD = 115200
BOOTLOADER_OFFSET = {"esp32": 0x1000, "esp32s3": 0x0}
PARTITIONS_OFFSET = 0x8000
BOOT_APP0_OFFSET = 0xE000
APP_OFFSET = 0x10000
MERGED_OFFSET = 0x0
LINK_BAUD = 921600
"""UART rate of the firmware (``LinkConfig.baudrate``); USB-CDC ignores it."""
FIRMWARE_PROJECT = Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware" / "esp32"
PIO_ENV = {"esp32": "esp32dev", "esp32s3": "esp32s3"}
"""PlatformIO environment (``[env:...]`` in platformio.ini) that builds each chip."""
PIO_BOOT_APP0 = Path.home() / ".platformio" / "packages" / "framework-arduinoespressif32" / "tools" / \
    "partitions" / "boot_app0.bin"
"""Where PlatformIO keeps Arduino's boot_app0.bin (it is not copied into the build folder)."""
_HELLO_TYPE = 0x84  # protocol.MsgType.HELLO (checked against the protocol table in tests)


@dataclass(frozen=True)
class Esp32FlashConfig:
    """``edge-flash esp32`` settings; defaults live here only.

    Attributes:
        port: serial port of the board (``/dev/ttyUSB0``, ``/dev/ttyACM0``, ``/dev/edge-esp32``).
        firmware: PlatformIO build folder, an application ``.bin`` or a merged image;
            None = ``firmware_bridge/firmware/esp32/.pio/build/<env>/`` (:data:`PIO_ENV`).
        chip: ``esp32`` or ``esp32s3`` (sets the bootloader offset and esptool's ``--chip``).
        baud: flashing baud rate, tried first.
        fallback_baud: tried once when flashing at ``baud`` failed.
        hello_timeout_s: wait this long for the firmware's HELLO after flashing.
        verify_hello: open the link after flashing and check the protocol version.
        expected_protocol: protocol version the host speaks (None = PROTOCOL_VERSION).
    """

    port: str
    firmware: Path | None = None
    chip: str = "esp32"
    baud: int = DEFAULT_BAUD
    fallback_baud: int = FALLBACK_BAUD
    hello_timeout_s: float = 5.0
    verify_hello: bool = True
    expected_protocol: int | None = None

    def __post_init__(self) -> None:
        if self.chip not in CHIPS:
            raise FlashError(f"chip {self.chip!r} is not one of {', '.join(CHIPS)}")
        for name in ("baud", "fallback_baud"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 9600 <= value <= 5_000_000:
                raise FlashError(f"{name} {value!r} is not a baud rate (9600..5000000; try 921600 or 115200)")
        if not self.hello_timeout_s > 0:
            raise FlashError(f"hello_timeout_s must be > 0, got {self.hello_timeout_s}")
        if not self.port:
            raise FlashError("port is empty: give the ESP32's serial port, e.g. --port /dev/ttyUSB0")


@dataclass(frozen=True)
class FlashImage:
    """One file written at one flash offset (bytes)."""

    offset: int
    path: Path


def default_firmware_dir(chip: str) -> Path:
    """PlatformIO's build output for ``chip`` (``.pio/build/<env>``, env from :data:`PIO_ENV`)."""
    return FIRMWARE_PROJECT / ".pio" / "build" / PIO_ENV[chip]


def flash_images(firmware: Path | None, chip: str, boot_app0: Path | None = PIO_BOOT_APP0) -> list[FlashImage]:
    """The files to write and their offsets, from a build folder, an app or a merged image.

    ``boot_app0``: Arduino's OTA selector, written at 0xe000 so the bootloader starts the new
    app even if an earlier firmware switched to the second OTA slot; taken from the build
    folder if there, else from this path when it exists (PlatformIO's copy).
    Raises :class:`FlashError` naming what is missing and the command that builds it.
    """
    build_hint = (f"build it with `pio run -e {PIO_ENV[chip]}` in {FIRMWARE_PROJECT} "
                  "(see firmware_bridge/firmware/esp32/README.md)")
    folder = firmware if firmware is not None else default_firmware_dir(chip)
    if folder.is_dir():
        missing = [n for n in ("bootloader.bin", "partitions.bin", "firmware.bin") if not (folder / n).is_file()]
        if missing:
            raise FlashError(f"{folder} lacks {', '.join(missing)}: {build_hint}")
        images = [FlashImage(BOOTLOADER_OFFSET[chip], folder / "bootloader.bin"),
                  FlashImage(PARTITIONS_OFFSET, folder / "partitions.bin")]
        selector = folder / "boot_app0.bin"
        if not selector.is_file() and boot_app0 is not None and boot_app0.is_file():
            selector = boot_app0
        if selector.is_file():
            images.append(FlashImage(BOOT_APP0_OFFSET, selector))
        images.append(FlashImage(APP_OFFSET, folder / "firmware.bin"))
        return images
    if firmware is None:
        raise FlashError(f"no firmware build found at {folder}: {build_hint}, or pass --firmware PATH")
    if not firmware.is_file():
        raise FlashError(f"--firmware {firmware} does not exist: {build_hint}")
    if firmware.suffix != ".bin":
        raise FlashError(f"--firmware {firmware}: expected a .bin image or a PlatformIO build folder")
    if "merged" in firmware.name:
        return [FlashImage(MERGED_OFFSET, firmware)]
    siblings = firmware.parent
    if (siblings / "bootloader.bin").is_file() and (siblings / "partitions.bin").is_file():
        return flash_images(siblings, chip, boot_app0) if firmware.name == "firmware.bin" else [
            FlashImage(BOOTLOADER_OFFSET[chip], siblings / "bootloader.bin"),
            FlashImage(PARTITIONS_OFFSET, siblings / "partitions.bin"),
            FlashImage(APP_OFFSET, firmware)]
    return [FlashImage(APP_OFFSET, firmware)]


def esptool_argv(port: str, chip: str, baud: int, images: Sequence[FlashImage],
                 python: str = sys.executable) -> list[str]:
    """The esptool (v5) command that writes ``images`` and resets the board into the app."""
    argv = [python, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud),
            "--before", "default-reset", "--after", "hard-reset", "write-flash"]
    for image in images:
        argv += [f"0x{image.offset:x}", str(image.path)]
    return argv


EsptoolRunner = Callable[[list[str]], int]
"""Runs one esptool argv and returns its exit status (tests inject a recorder)."""


def run_esptool(argv: list[str]) -> int:
    """Default runner: esptool >= 5 in a subprocess, its progress shown on the terminal."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        major = int(version("esptool").split(".")[0])
    except PackageNotFoundError as e:
        raise FlashError("esptool is not installed: `pip install 'esptool>=5'`") from e
    if major < 5:
        raise FlashError(f"esptool {version('esptool')} is too old (the commands changed in v5): "
                         "`pip install -U 'esptool>=5'`")
    return subprocess.run(argv).returncode


def write_firmware(cfg: Esp32FlashConfig, runner: EsptoolRunner = run_esptool,
                   log: Callable[[str], None] = print, boot_app0: Path | None = PIO_BOOT_APP0) -> list[str]:
    """Flash; returns the esptool argv that succeeded. Falls back to ``fallback_baud`` once."""
    images = flash_images(cfg.firmware, cfg.chip, boot_app0)
    for image in images:
        log(f"  0x{image.offset:05x}  {image.path}  ({image.path.stat().st_size} bytes)")
    bauds = [cfg.baud] + ([cfg.fallback_baud] if cfg.fallback_baud != cfg.baud else [])
    status = 0
    for i, baud in enumerate(bauds):
        argv = esptool_argv(cfg.port, cfg.chip, baud, images)
        log("  $ " + " ".join(argv))
        status = runner(argv)
        if status == 0:
            return argv
        if i + 1 < len(bauds):
            log(f"  esptool failed at {baud} baud (exit {status}); retrying at {bauds[i + 1]} baud")
    raise FlashError(f"esptool could not flash the {cfg.chip} on {cfg.port} (exit {status}, also at "
                     f"{bauds[-1]} baud): check --chip, hold BOOT while tapping EN/RST to enter the bootloader, "
                     "use a data USB cable, and make sure you may open the port (`sudo usermod -aG dialout $USER`)")


@dataclass(frozen=True)
class HelloInfo:
    """The firmware's identity as its HELLO (or, lacking one, any frame header) reported it."""

    protocol_version: int
    fw_version: int | None
    boot_count: int | None
    from_hello: bool


def _packet_header(packet: bytes) -> tuple[int, int, bytes] | None:
    """(version byte, type byte, raw frame) of a COBS packet with a valid CRC, any version."""
    from firmware_bridge import protocol

    try:
        raw = protocol.cobs_decode(packet)
    except protocol.ProtocolError:
        return None
    if len(raw) < protocol.HEADER_SIZE + protocol.CRC_SIZE:
        return None
    if protocol.crc16(raw[:-2]) != (raw[-2] | (raw[-1] << 8)):
        return None
    return raw[0], raw[1], raw


def _open_port(port: str, baud: int) -> int:
    """Open the tty raw without flushing (a HELLO already received stays readable) and with
    DTR/RTS released (on dev boards they drive EN/IO0)."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FlashError(f"no serial port {port}: is the ESP32 plugged in? List ports with "
                             "`python -m serial.tools.list_ports -v`") from e
        if e.errno == errno.EACCES:
            raise FlashError(f"permission denied opening {port}: `sudo usermod -aG dialout $USER`, "
                             "then log out and in") from e
        raise FlashError(f"cannot open {port}: {e}") from e
    try:
        attrs = termios.tcgetattr(fd)
        attrs[0] = 0                                       # iflag: raw
        attrs[1] = 0                                       # oflag
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
        attrs[3] = 0                                       # lflag: no echo, not canonical
        speed = getattr(termios, f"B{baud}", termios.B115200)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error as e:
        os.close(fd)
        raise FlashError(f"{port} is not a serial port ({e})") from e
    _modem_lines(fd, dtr=False, rts=False)
    return fd


def _modem_lines(fd: int, dtr: bool, rts: bool) -> bool:
    """Set DTR/RTS; False where the port has no modem lines (a pseudo-terminal)."""
    try:
        for bit, on in ((termios.TIOCM_DTR, dtr), (termios.TIOCM_RTS, rts)):
            fcntl.ioctl(fd, termios.TIOCMBIS if on else termios.TIOCMBIC, struct.pack("I", bit))
    except OSError:
        return False
    return True


def pulse_reset(fd: int) -> bool:
    """Reset the board through the auto-reset circuit (RTS -> EN low, DTR released -> normal
    boot). Returns False when the port has no modem lines."""
    if not _modem_lines(fd, dtr=False, rts=True):
        return False
    time.sleep(0.1)
    return _modem_lines(fd, dtr=False, rts=False)


_GONE = (errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOENT)
"""errno values of a port that vanished (a native-USB board re-enumerating after a reset)."""


def _open_if_present(port: str, baud: int) -> int | None:
    """:func:`_open_port`, or None while the port is absent (it may come back after a reset)."""
    try:
        return _open_port(port, baud)
    except FlashError as e:
        if isinstance(e.__cause__, OSError) and e.__cause__.errno in _GONE:
            return None
        raise


def read_hello(port: str, timeout_s: float = 5.0, baud: int = LINK_BAUD) -> HelloInfo:
    """Wait for the firmware's HELLO on ``port`` and return what it says.

    Reads what is already buffered first; if no HELLO came within a third of ``timeout_s``,
    resets the board (RTS) once so it boots and sends one. A port that vanishes meanwhile (a
    native-USB board re-enumerating) is opened again when it is back. When the board cannot be
    reset (no modem lines) but other valid frames arrive, their header version is reported
    (``from_hello=False``). Raises :class:`FlashError` when nothing valid arrives.
    """
    from firmware_bridge import protocol

    fd = _open_if_present(port, baud)
    buf = b""
    header_version: int | None = None
    start = time.monotonic()
    reset_done = False
    try:
        while time.monotonic() - start < timeout_s:
            if fd is None:
                time.sleep(0.1)
                fd = _open_if_present(port, baud)
                buf = b""
                continue
            if not reset_done and time.monotonic() - start > timeout_s / 3:
                reset_done = True
                pulse_reset(fd)
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno not in _GONE:
                    raise FlashError(f"reading {port} failed: {e}") from e
                chunk = b""
            if not chunk:  # end of file or gone: the device went away; open it again when back
                os.close(fd)
                fd = None
                continue
            buf += chunk
            *packets, buf = buf.split(b"\x00")
            for packet in packets:
                header = _packet_header(packet) if packet else None
                if header is None:
                    continue
                version, type_byte, _ = header
                if type_byte == _HELLO_TYPE:
                    if version == protocol.PROTOCOL_VERSION:
                        fields = protocol.decode(packet).fields
                        return HelloInfo(int(fields["protocol_version"]), int(fields["fw_version"]),
                                         int(fields["boot_count"]), True)
                    return HelloInfo(version, None, None, True)
                header_version = version
    finally:
        if fd is not None:
            os.close(fd)
    if header_version is not None:
        return HelloInfo(header_version, None, None, False)
    raise FlashError(f"no valid frame from the firmware on {port} within {timeout_s:.0f} s: did flashing "
                     "succeed, is it the right port, and does the firmware's UART run at "
                     f"{baud} baud? (press EN/RST and run `edge-link --port {port}` to watch it)")


def check_protocol(port: str, expected: int | None = None, timeout_s: float = 5.0,
                   log: Callable[[str], None] = print) -> HelloInfo:
    """Read the HELLO and refuse a protocol version other than ``expected`` (the host's)."""
    from firmware_bridge import protocol

    want = protocol.PROTOCOL_VERSION if expected is None else expected
    hello = read_hello(port, timeout_s)
    source = ("its HELLO" if hello.from_hello else
              "its frame headers; no HELLO seen, the port cannot reset the board")
    if hello.protocol_version != want:
        raise FlashError(f"the firmware on {port} speaks protocol version {hello.protocol_version} (from {source}), "
                         f"this host speaks {want}: flash the firmware from this same checkout "
                         "(`pio run` in firmware_bridge/firmware/esp32, then edge-flash esp32), or install "
                         "the edge-jepa version that matches the firmware")
    extra = ""
    if hello.fw_version is not None:
        extra = f", firmware {hello.fw_version >> 8}.{hello.fw_version & 0xFF}, boot #{hello.boot_count}"
    log(f"  protocol version {hello.protocol_version} matches the host (from {source}{extra})")
    return hello


def flash_esp32(cfg: Esp32FlashConfig, runner: EsptoolRunner = run_esptool,
                log: Callable[[str], None] = print, boot_app0: Path | None = PIO_BOOT_APP0) -> int:
    """Flash the firmware and check its protocol version; 0 on success, :class:`FlashError` otherwise."""
    if not os.path.exists(cfg.port):
        raise FlashError(f"no serial port {cfg.port}: is the ESP32 plugged in? List ports with "
                         "`python -m serial.tools.list_ports -v`")
    log(f"==> flash the {cfg.chip} on {cfg.port}")
    write_firmware(cfg, runner, log, boot_app0)
    if cfg.verify_hello:
        log(f"==> check the firmware's protocol version on {cfg.port}")
        check_protocol(cfg.port, cfg.expected_protocol, cfg.hello_timeout_s, log)
    log("done")
    return 0
