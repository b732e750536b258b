"""Robot-computer recipes (build/jetson, build/pi): unit, udev rule and installer are consistent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICES = ("jetson", "pi")


def unit_lines(device: str) -> dict[str, list[str]]:
    section, out = None, {}
    for line in (REPO / "build" / device / "edge-run.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        out.setdefault(f"{section}.{line.split('=', 1)[0]}", []).append(line.split("=", 1)[1])
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_unit_runs_edge_run_at_boot_and_restarts_on_failure(device: str) -> None:
    """The unit starts edge-run for its device with the bundle and stable port, restarts it on
    failure but not on configuration errors (exit 2), stops it with SIGTERM (motors to zero),
    and is wanted by multi-user.target (boot)."""
    u = unit_lines(device)
    exec_start = u["Service.ExecStart"][0]
    assert exec_start.startswith("@EDGE_VENV@/bin/edge-run ")
    assert f"--device @EDGE_DEVICE@" in exec_start and "--bundle @EDGE_BUNDLE@" in exec_start
    assert "--port /dev/edge-esp32" in exec_start
    assert u["Service.Restart"] == ["on-failure"]
    assert u["Service.RestartPreventExitStatus"] == ["2"]
    assert u["Service.KillSignal"] == ["SIGTERM"]
    assert u["Service.User"] == ["@EDGE_USER@"]
    assert u["Install.WantedBy"] == ["multi-user.target"]
    assert r"dev-edge\x2desp32.device" in u["Unit.After"][0]


@pytest.mark.parametrize("device", DEVICES)
def test_udev_rule_names_the_common_usb_uart_chips(device: str) -> None:
    """CP210x, CH340 and ESP32-S3 USB-CDC each get SYMLINK edge-esp32, dialout access and the
    systemd tag the unit's device dependency needs."""
    rules = [l for l in (REPO / "build" / device / "99-edge-esp32.rules").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    ids = {tuple(re.findall(r'ATTRS\{id(?:Vendor|Product)\}=="([0-9a-f]{4})"', l)) for l in rules}
    assert ids == {("10c4", "ea60"), ("1a86", "7523"), ("303a", "1001")}
    for line in rules:
        assert 'SUBSYSTEM=="tty"' in line and 'SYMLINK+="edge-esp32"' in line
        assert 'GROUP="dialout"' in line and 'TAG+="systemd"' in line


@pytest.mark.parametrize("device", DEVICES)
def test_install_script_is_valid_bash_and_renders_every_placeholder(device: str, tmp_path: Path) -> None:
    """install.sh parses, and its sed renderer replaces every @EDGE_*@ placeholder in the unit."""
    script = REPO / "build" / device / "install.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    unit = (REPO / "build" / device / "edge-run.service").read_text()
    placeholders = set(re.findall(r"@EDGE_[A-Z]+@", unit))
    assert placeholders == {"@EDGE_HOME@", "@EDGE_USER@", "@EDGE_DEVICE@", "@EDGE_BUNDLE@", "@EDGE_VENV@"}
    for ph in placeholders:
        assert f"s#{ph}#" in text, ph
    assert f"DEVICE={device}" in text
    assert "--self-test" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed here")
@pytest.mark.parametrize("device", DEVICES)
def test_unit_verifies_with_systemd(device: str, tmp_path: Path) -> None:
    """systemd-analyze accepts the rendered unit (where systemd tools exist)."""
    unit = (REPO / "build" / device / "edge-run.service").read_text()
    for ph, v in {"@EDGE_HOME@": str(tmp_path), "@EDGE_USER@": "root", "@EDGE_DEVICE@": device,
                  "@EDGE_BUNDLE@": str(tmp_path), "@EDGE_VENV@": "/usr"}.items():
        unit = unit.replace(ph, v)
    (tmp_path / "edge-run.service").write_text(unit)
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "edge-run.service")],
                         capture_output=True, text=True)
    assert "Unknown key" not in res.stderr and "Invalid" not in res.stderr, res.stderr
