"""edge-link (firmware_bridge.cli) against a scripted Python MCU on a real pty."""

from __future__ import annotations

import threading

import pytest

from firmware_bridge.cli import main, ping_summary
from firmware_bridge.protocol import MsgType


@pytest.fixture
def ticking_mcu(fake_mcu):
    stop = threading.Event()

    def run():
        while not stop.wait(0.005):
            fake_mcu.telemetry(enc=(42, -42))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield fake_mcu
    stop.set()
    thread.join()


def test_ping_prints_percentiles(ticking_mcu, capsys):
    """--ping N sends N PINGs and prints p50/p90/p99/max in ms; exit 0."""
    assert main(["--port", ticking_mcu.port, "--ping", "25"]) == 0
    out = capsys.readouterr().out
    assert "25 answered, 0 lost" in out
    for key in ("p50", "p90", "p99", "max"):
        assert f"{key} " in out and " ms" in out
    assert len(ticking_mcu.frames(MsgType.PING)) == 25


def test_plain_telemetry_lines(ticking_mcu, capsys):
    """--plain --duration prints telemetry lines with the encoder counts, then exits 0."""
    assert main(["--port", ticking_mcu.port, "--plain", "--duration", "0.3", "--refresh-hz", "20"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) >= 2 and all("enc=      +42       -42" in line for line in lines)


def test_rich_table_renders(ticking_mcu, capsys):
    """The default live view renders a table containing the encoder counts."""
    assert main(["--port", ticking_mcu.port, "--duration", "0.2"]) == 0
    assert "+42  -42 counts" in capsys.readouterr().out


def test_missing_port_is_one_line_error(tmp_path, capsys):
    """A port that does not exist exits 1 with one 'edge-link: error:' line naming it."""
    port = str(tmp_path / "ttyUSB7")
    assert main(["--port", port, "--ping", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-link: error: Could not open") and port in err[0]


def test_bad_arguments_exit_2():
    """Port and emulator are mutually exclusive, one is required, and counts are checked."""
    for argv in ([], ["--port", "/dev/x", "--emulator"], ["--port", "/dev/x", "--ping", "-1"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_ping_summary_percentiles():
    """Percentiles are computed in ms over the given round trips."""
    s = ping_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100 and s["max_ms"] == pytest.approx(100.0)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)
