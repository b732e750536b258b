"""``edge-flash``: put the runtime on a robot computer, and the firmware on the ESP32.

Examples::

    # runtime + default bundle + systemd service on a Raspberry Pi (ssh key already installed)
    edge-flash robot --host pi@robot.local --device pi
    # a Jetson, another bundle, show every command first without changing anything
    edge-flash robot --host nvidia@jetson.local --device jetson --bundle models/camera --dry-run
    # motor controller firmware (PlatformIO build output), then check its protocol version
    edge-flash esp32 --port /dev/ttyUSB0

Step by step, with the robot layout and rollback: docs/FLASHING.md. Never imports torch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edge.flash.errors import FlashError

__all__ = ["FlashError", "main"]

_EPILOG = """examples:
  edge-flash robot --host pi@robot.local --device pi
  edge-flash robot --host nvidia@jetson.local --device jetson --bundle models/default --dry-run
  edge-flash esp32 --port /dev/ttyUSB0
  edge-flash esp32 --port /dev/ttyACM0 --chip esp32s3 --firmware firmware_bridge/firmware/esp32/.pio/build/esp32s3

details: docs/FLASHING.md
"""


def _parser() -> argparse.ArgumentParser:
    from edge.flash.esp32 import CHIPS, DEFAULT_BAUD
    from edge.flash.robot import DEFAULT_SELF_TEST, DEVICES
    from edge.flash.ssh import TRANSFERS
    from edge.flash.wheel import default_cache_dir

    parser = argparse.ArgumentParser(prog="edge-flash", description=__doc__.split("\n\n")[0],
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{robot,esp32}")

    robot = sub.add_parser(
        "robot", help="install the runtime, a bundle and the service on a robot computer over SSH",
        epilog="example:\n  edge-flash robot --host pi@robot.local --device pi --bundle models/default --dry-run\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    robot.add_argument("--host", required=True, help="USER@HOST of the robot computer (or an ssh config alias)")
    robot.add_argument("--device", required=True, choices=DEVICES,
                       help="jetson: TensorRT from JetPack; pi: ONNX Runtime on the CPU (any Linux computer)")
    robot.add_argument("--bundle", type=Path, default=Path("models/default"), help="model bundle folder to install")
    robot.add_argument("--port", type=int, default=None, help="SSH port (default: your ssh config's, usually 22)")
    robot.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra `ssh -o` option, repeatable (e.g. ProxyJump=gateway)")
    robot.add_argument("--identity-file", default=None, help="SSH private key (default: ssh config / agent)")
    robot.add_argument("--ssh-config", default=None, help="ssh config file instead of ~/.ssh/config (ssh -F)")
    robot.add_argument("--remote-dir", default="~/edge-jepa", help="install root on the robot (default ~/edge-jepa)")
    robot.add_argument("--dry-run", action="store_true",
                       help="print every step and the exact commands; change nothing (the robot is only probed)")
    robot.add_argument("--no-systemd", dest="systemd", action="store_false",
                       help="install the unit and udev rule under <remote-dir>/systemd/, udev/ and print how to "
                            "activate them, instead of installing and restarting the service (needs no root)")
    robot.add_argument("--python", default="python3", help="Python on the robot that creates the venv (>= 3.10)")
    robot.add_argument("--system-site-packages", action=argparse.BooleanOptionalAction, default=None,
                       help="let the venv see system packages (default: on for jetson, for JetPack's TensorRT)")
    robot.add_argument("--reuse-site-packages", default=None, metavar="PYTHON",
                       help="a Python on the robot whose installed packages the venv reuses (e.g. a hand-built OpenCV)")
    robot.add_argument("--no-deps", dest="install_deps", action="store_false",
                       help="install only the runtime wheel; its dependencies must already be importable")
    robot.add_argument("--pip-args", default="", help="extra arguments for the robot's pip install, one string")
    robot.add_argument("--self-test", default=DEFAULT_SELF_TEST,
                       help="command run on the robot before switching; {venv} {bundle} {device} {release} "
                            "become the new release's paths (default: %(default)s)")
    robot.add_argument("--self-test-timeout", type=float, default=900.0,
                       help="seconds (building TensorRT engines takes minutes; default 900)")
    robot.add_argument("--transfer", choices=TRANSFERS, default="scp", help="how files are copied (default scp)")
    robot.add_argument("--wheel", type=Path, default=None, help="install this prebuilt wheel instead of building one")
    robot.add_argument("--recipes", type=Path, default=None, metavar="DIR",
                       help="install this folder's edge-run.service / udev rule / install.sh instead of "
                            "build/<device>/ (a customised unit)")
    robot.add_argument("--wheel-cache", type=Path, default=default_cache_dir(),
                       help="where built wheels are cached by source hash (default %(default)s)")

    esp = sub.add_parser(
        "esp32", help="flash the motor-controller firmware with esptool and check its protocol version",
        epilog="example:\n  edge-flash esp32 --port /dev/ttyUSB0 --chip esp32\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    esp.add_argument("--port", required=True, help="serial port of the ESP32 (e.g. /dev/ttyUSB0, /dev/edge-esp32)")
    esp.add_argument("--firmware", type=Path, default=None,
                     help="PlatformIO build folder (bootloader.bin, partitions.bin, firmware.bin), an app .bin, or "
                          "a merged image (*merged*.bin, written at 0x0); default: the PlatformIO build of --chip")
    esp.add_argument("--chip", choices=CHIPS, default="esp32", help="ESP32 variant (default esp32)")
    esp.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                     help="flashing baud rate; falls back to 115200 if it fails (default %(default)s)")
    esp.add_argument("--hello-timeout", type=float, default=5.0,
                     help="seconds to wait for the firmware's HELLO after flashing (default 5)")
    esp.add_argument("--no-verify-hello", dest="verify_hello", action="store_false",
                     help="only flash; do not open the link to check the protocol version")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-flash``; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "robot":
            from edge.flash.robot import RobotFlashConfig, flash_robot

            cfg = RobotFlashConfig(
                host=args.host, device=args.device, bundle=args.bundle, port=args.port,
                ssh_options=tuple(args.ssh_option), identity_file=args.identity_file, ssh_config=args.ssh_config,
                remote_dir=args.remote_dir, dry_run=args.dry_run, systemd=args.systemd, python=args.python,
                system_site_packages=args.system_site_packages, reuse_site_packages=args.reuse_site_packages,
                install_deps=args.install_deps, pip_args=tuple(shlex.split(args.pip_args)),
                self_test=args.self_test, self_test_timeout_s=args.self_test_timeout, transfer=args.transfer,
                wheel=args.wheel, wheel_cache=args.wheel_cache, recipes=args.recipes)
            return flash_robot(cfg)
        from edge.flash.esp32 import Esp32FlashConfig, flash_esp32

        cfg32 = Esp32FlashConfig(port=args.port, firmware=args.firmware, chip=args.chip, baud=args.baud,
                                 hello_timeout_s=args.hello_timeout, verify_hello=args.verify_hello)
        return flash_esp32(cfg32)
    except FlashError as e:
        if e.details:
            print(e.details, file=sys.stderr)
        print(f"edge-flash: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = ("the robot runs what it ran before, unless the switch step had already begun"
                 if args.command == "robot" else "flash again: an interrupted write leaves no valid firmware")
        print(f"edge-flash: interrupted; {where}", file=sys.stderr)
        return 130
