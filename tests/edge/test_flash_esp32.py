"""``edge-flash esp32``: the exact esptool invocation (chip, offsets, files, baud fallback) with
an injected runner, and the HELLO protocol-version check against the real firmware emulator
(``build/native/fw_emulator``) and a pseudo-terminal speaking another protocol version."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import tty
from pathlib import Path

import pytest

from edge.flash import main
from edge.flash import esp32 as flash32
from edge.flash.errors import FlashError
from firmware_bridge import protocol
from firmware_bridge.emulator import Emulator


class RecordingRunner:
    """Records every esptool argv; returns the next exit status from ``statuses``."""

    def __init__(self, *statuses: int) -> None:
        self.calls: list[list[str]] = []
        self._statuses = list(statuses)

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return self._statuses.pop(0) if self._statuses else 0


def _build_dir(tmp_path: Path, boot_app0: bool = False) -> Path:
    d = tmp_path / "build"
    d.mkdir(parents=True)
    names = ["bootloader.bin", "partitions.bin", "firmware.bin"] + (["boot_app0.bin"] if boot_app0 else [])
    for name in names:
        (d / name).write_bytes(name.encode())
    return d


def _writes(argv: list[str]) -> list[tuple[str, str]]:
    """(offset, file name) pairs after write-flash."""
    rest = argv[argv.index("write-flash") + 1:]
    return [(rest[i], Path(rest[i + 1]).name) for i in range(0, len(rest), 2)]


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("chip, bootloader", [("esp32", "0x1000"), ("esp32s3", "0x0")])
def test_build_folder_offsets_per_chip(tmp_path, chip, bootloader):
    """A PlatformIO build folder is written as bootloader (0x1000 on esp32, 0x0 on esp32s3),
    partitions 0x8000 and the app 0x10000, with esptool's --chip, --port and --baud set and
    python -m esptool as the program."""
    runner = RecordingRunner(0)
    cfg = flash32.Esp32FlashConfig(port="/dev/ttyUSB7", firmware=_build_dir(tmp_path), chip=chip,
                                   verify_hello=False)
    flash32.write_firmware(cfg, runner, log=lambda _: None, boot_app0=None)
    (argv,) = runner.calls
    assert argv[:3] == [sys.executable, "-m", "esptool"]
    assert (_opt(argv, "--chip"), _opt(argv, "--port"), _opt(argv, "--baud")) == (chip, "/dev/ttyUSB7", "921600")
    assert _opt(argv, "--after") == "hard-reset"
    assert _writes(argv) == [(bootloader, "bootloader.bin"), ("0x8000", "partitions.bin"), ("0x10000", "firmware.bin")]


def test_boot_app0_and_merged_image(tmp_path):
    """boot_app0.bin (Arduino's OTA selector) goes to 0xe000, from the build folder or else
    PlatformIO's copy; a merged image is written alone at 0x0."""
    with_boot = flash32.flash_images(_build_dir(tmp_path, boot_app0=True), "esp32", boot_app0=None)
    assert [(hex(i.offset), i.path.name) for i in with_boot] == [
        ("0x1000", "bootloader.bin"), ("0x8000", "partitions.bin"), ("0xe000", "boot_app0.bin"),
        ("0x10000", "firmware.bin")]
    pio_copy = tmp_path / "pio" / "boot_app0.bin"
    pio_copy.parent.mkdir()
    pio_copy.write_bytes(b"\x00" * 32)
    plain = tmp_path / "plain"
    shutil.copytree(_build_dir(tmp_path / "x"), plain)
    images = flash32.flash_images(plain, "esp32s3", boot_app0=pio_copy)
    assert [(hex(i.offset), i.path) for i in images][2] == ("0xe000", pio_copy)
    assert [hex(i.offset) for i in flash32.flash_images(plain, "esp32s3", boot_app0=None)] == ["0x0", "0x8000",
                                                                                                 "0x10000"]
    merged = tmp_path / "edge-esp32-merged.bin"
    merged.write_bytes(b"\xe9" + b"\xff" * 15)
    runner = RecordingRunner(0)
    cfg = flash32.Esp32FlashConfig(port="/dev/ttyACM0", firmware=merged, chip="esp32s3", verify_hello=False)
    flash32.write_firmware(cfg, runner, log=lambda _: None)
    assert _writes(runner.calls[0]) == [("0x0", "edge-esp32-merged.bin")]


def test_lone_app_binary_goes_to_the_app_offset(tmp_path):
    """An application .bin without its bootloader beside it is written at 0x10000 only (an
    app update over an existing bootloader and partition table)."""
    app = tmp_path / "app.bin"
    app.write_bytes(b"app")
    assert [(i.offset, i.path) for i in flash32.flash_images(app, "esp32")] == [(0x10000, app)]


def test_baud_falls_back_to_115200(tmp_path):
    """When flashing at 921600 fails, the same invocation is retried once at 115200."""
    runner = RecordingRunner(2, 0)
    cfg = flash32.Esp32FlashConfig(port="/dev/ttyUSB0", firmware=_build_dir(tmp_path), verify_hello=False)
    used = flash32.write_firmware(cfg, runner, log=lambda _: None)
    assert [_opt(a, "--baud") for a in runner.calls] == ["921600", "115200"]
    assert _writes(runner.calls[0]) == _writes(runner.calls[1])
    assert used == runner.calls[1]


def test_flash_failure_is_a_clear_error(tmp_path):
    """Failing at both bauds raises an error naming the port and what to try (BOOT button,
    dialout group); nothing else is attempted."""
    runner = RecordingRunner(2, 2)
    cfg = flash32.Esp32FlashConfig(port="/dev/ttyUSB0", firmware=_build_dir(tmp_path), verify_hello=False)
    with pytest.raises(FlashError, match=r"/dev/ttyUSB0.*BOOT.*dialout"):
        flash32.write_firmware(cfg, runner, log=lambda _: None)
    assert len(runner.calls) == 2


def test_missing_build_names_the_build_command(tmp_path):
    """A build folder without bootloader/partitions names the missing files and `pio run`."""
    d = tmp_path / "partial"
    d.mkdir()
    (d / "firmware.bin").write_bytes(b"app")
    with pytest.raises(FlashError, match=r"bootloader.bin, partitions.bin.*pio run -e esp32s3"):
        flash32.flash_images(d, "esp32s3")
    assert flash32.default_firmware_dir("esp32").parts[-3:] == (".pio", "build", "esp32dev")


def test_hello_type_byte_matches_the_protocol_table():
    """The HELLO type byte read from raw frames is the protocol's."""
    assert flash32._HELLO_TYPE == int(protocol.MsgType.HELLO)


def test_hello_from_the_emulator_matches():
    """Against the real firmware core in the emulator, the check reads the boot HELLO: the
    host's protocol version, the emulator's boot count."""
    with Emulator(boot_count=41) as emu:
        hello = flash32.check_protocol(emu.port, timeout_s=3.0, log=lambda _: None)
    assert hello.from_hello
    assert hello.protocol_version == protocol.PROTOCOL_VERSION
    assert hello.boot_count == 41


def test_hello_version_mismatch_is_refused():
    """A host expecting another protocol version refuses the emulator's HELLO, naming both
    versions and how to fix it."""
    with Emulator(boot_count=1) as emu:
        with pytest.raises(FlashError, match=rf"speaks protocol version {protocol.PROTOCOL_VERSION} \(from its HELLO\)"
                                             rf", this host speaks {protocol.PROTOCOL_VERSION + 1}"):
            flash32.check_protocol(emu.port, expected=protocol.PROTOCOL_VERSION + 1, timeout_s=3.0,
                                   log=lambda _: None)


def _hello_packet(version: int) -> bytes:
    """A HELLO frame whose header (and field) claim protocol ``version``, with a valid CRC."""
    good = protocol.encode(protocol.MsgType.HELLO, 0, 0, protocol_version=protocol.PROTOCOL_VERSION,
                           fw_version=0x0203, boot_count=5, reset_reason=1)
    raw = bytearray(protocol.cobs_decode(good.rstrip(b"\x00")))
    raw[0] = version
    raw[protocol.HEADER_SIZE] = version
    crc = protocol.crc16(bytes(raw[:-2]))
    raw[-2:] = bytes([crc & 0xFF, crc >> 8])
    return protocol.cobs_encode(bytes(raw)) + b"\x00"


def test_firmware_speaking_another_version_is_refused():
    """Firmware from another protocol version (its frames do not even decode on this host) is
    recognised from the HELLO header and refused with both versions named."""
    master, slave = os.openpty()
    tty.setraw(slave)  # as a serial driver delivers bytes (the emulator does the same)
    try:
        other = protocol.PROTOCOL_VERSION + 1
        os.write(master, b"\x13\x37garbage\x00" + _hello_packet(other))
        with pytest.raises(FlashError, match=rf"speaks protocol version {other} \(from its HELLO\), this host "
                                             rf"speaks {protocol.PROTOCOL_VERSION}"):
            flash32.check_protocol(os.ttyname(slave), timeout_s=2.0, log=lambda _: None)
    finally:
        os.close(master)
        os.close(slave)


def test_silent_port_is_a_clear_error():
    """A port where no valid frame arrives fails with the port named and a next step."""
    master, slave = os.openpty()
    try:
        with pytest.raises(FlashError, match=r"no valid frame from the firmware on /dev/pts/.*edge-link"):
            flash32.read_hello(os.ttyname(slave), timeout_s=0.6)
    finally:
        os.close(master)
        os.close(slave)


def test_flash_then_check_against_the_emulator(tmp_path, capsys):
    """The whole subcommand: esptool (injected) writes the images, then the HELLO check runs on
    the same port and passes."""
    runner = RecordingRunner(0)
    with Emulator(boot_count=3) as emu:
        cfg = flash32.Esp32FlashConfig(port=emu.port, firmware=_build_dir(tmp_path), hello_timeout_s=3.0)
        assert flash32.flash_esp32(cfg, runner) == 0
    out = capsys.readouterr().out
    assert len(runner.calls) == 1 and _opt(runner.calls[0], "--port") == emu.port
    assert f"protocol version {protocol.PROTOCOL_VERSION} matches the host (from its HELLO" in out
    assert "boot #3" in out


def test_cli_missing_port_is_one_line_error(tmp_path, capsys):
    """`edge-flash esp32` on a port that does not exist exits 1 with one line naming it."""
    assert main(["esp32", "--port", str(tmp_path / "ttyUSB9"), "--firmware", str(_build_dir(tmp_path))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no serial port" in err[0] and "list_ports" in err[0]


def test_cli_rejects_unknown_chip(capsys):
    """--chip takes only the supported variants (argparse exits 2)."""
    with pytest.raises(SystemExit) as exc:
        main(["esp32", "--port", "/dev/ttyUSB0", "--chip", "esp8266"])
    assert exc.value.code == 2


def test_board_that_resets_is_followed_to_its_new_hello(tmp_path):
    """A port that vanishes while the check reads (the emulator killed and restarted behind a
    stable symlink, like a native-USB ESP32 re-enumerating after its reset) is opened again
    and the new boot's HELLO is read."""
    with Emulator(boot_count=1, stable_path=tmp_path / "edge-esp32") as emu:
        assert flash32.read_hello(emu.port, timeout_s=3.0).boot_count == 1  # the first boot's HELLO, consumed
        timer = threading.Timer(0.3, emu.restart)
        timer.start()
        try:
            hello = flash32.read_hello(emu.port, timeout_s=4.0)
        finally:
            timer.join()
    assert hello.from_hello and hello.boot_count == 2
