"""edge-profile: the statistics, the timing core, the recorded conditions (against a fake sysfs
tree and fake vcgencmd/nvpmodel executables), the CLI end to end on a tiny real bundle, the
sweep over N (re-export injected), the PING stage against the firmware emulator, --compare."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import profile, sysinfo
from edge.profile import LatencyStats, ProfileError, build_parser, compare, main, measure, parse_sweep, run_profile

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    pytest.importorskip("torch", reason="the test bundle is exported with torch (pip install 'edge-jepa[train]')")
    from bundle_fakes import shared_tiny_bundle

    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture(autouse=True)
def engine_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_JEPA_ENGINE_DIR", str(tmp_path / "engines"))


# ----------------------------------------------------------------------------- statistics and timing


def test_latency_stats_match_hand_computed_values():
    """1..100 ms: min 1, max 100, median 50.5, p90 90.1, p99 99.01 (linear), cv = std/mean, 1000/mean calls/s."""
    s = LatencyStats.from_samples(np.arange(1, 101, dtype=float))
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms, s.median_ms) == (100, 1.0, 100.0, 50.5, 50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p95_ms == pytest.approx(95.05) and s.p99_ms == pytest.approx(99.01)
    assert s.cv == pytest.approx(np.std(np.arange(1, 101), ddof=1) / 50.5)
    assert s.throughput_per_s == pytest.approx(1000 / 50.5)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])
    with pytest.raises(ValueError):
        LatencyStats.from_samples([1.0, float("nan")])


def test_measure_times_only_the_call_after_warmup():
    """With a fake clock: warm-up calls are not timed, `between` work is not timed, each sample is
    exactly the time the call spent."""
    clock = {"t": 0.0}
    calls = []

    def fn():
        calls.append(len(calls))
        clock["t"] += 0.002 * (1 + len(calls) % 3)

    def between():
        clock["t"] += 5.0

    samples = measure(fn, iterations=6, warmup=3, between=between, timer=lambda: clock["t"])
    assert len(calls) == 9
    expected = [2.0 * (1 + k % 3) for k in range(4, 10)]
    assert samples.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError):
        measure(fn, iterations=0)


def test_measure_paces_calls_on_an_absolute_period_and_times_only_the_call():
    """period_s: each call starts on the next slot of a fixed grid (idle time slept, not timed);
    a call that overruns its slot pushes the next one to the next free slot, with no burst."""
    clock = {"t": 0.0}
    starts, slept = [], []
    durations = iter([0.003, 0.003, 0.025, 0.003, 0.003])

    def fn():
        starts.append(round(clock["t"], 9))
        clock["t"] += next(durations)

    def sleep(dt):
        slept.append(dt)
        clock["t"] += dt

    samples = measure(fn, iterations=4, warmup=1, timer=lambda: clock["t"], period_s=0.010, sleep=sleep)
    # slots every 10 ms: warm-up at 0, then 10, 20 (runs 25 ms: slots 30 and 40 are taken), 50, 60
    assert starts == pytest.approx([0.0, 0.010, 0.020, 0.050, 0.060])
    assert samples.tolist() == pytest.approx([3.0, 25.0, 3.0, 3.0])
    assert all(dt > 0 for dt in slept)
    with pytest.raises(ValueError, match="period_s"):
        measure(fn, iterations=1, period_s=-1.0)


def test_parse_sweep():
    """Only N sweeps, integers >= 2, sorted and de-duplicated."""
    assert parse_sweep("N=1024,64,256,64") == [64, 256, 1024]
    for bad in ("H=4,8", "N=", "N=1,2", "N=a,b", "64,256"):
        with pytest.raises(ProfileError, match="--sweep"):
            parse_sweep(bad)


# ----------------------------------------------------------------------------- conditions


def _fake_root(root: Path) -> Path:
    def put(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    put("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    put("proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0b\n\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    for cpu, cur in (("cpu0", 2400000), ("cpu1", 1500000)):
        put(f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_cur_freq", f"{cur}\n")
        put(f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor", "ondemand\n")
        put(f"sys/devices/system/cpu/{cpu}/cpufreq/cpuinfo_max_freq", "2400000\n")
    put("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put("sys/class/thermal/thermal_zone0/temp", "61250\n")
    put("sys/class/thermal/thermal_zone1/temp", "garbage\n")
    put("proc/loadavg", "0.50 0.40 0.30 1/100 1234\n")
    put("proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n")
    return root


def test_sysinfo_reads_a_pi_like_tree(tmp_path):
    """Model, CPU model, per-CPU frequency/governor, temperatures (milli-C -> C), load and memory are
    read; an unreadable zone and missing sources are absent, not errors."""
    info = sysinfo.collect(_fake_root(tmp_path), commands=False)
    assert info["device_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert info["cpu_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert info["cpu_freq_khz"]["cpu0"]["cur_khz"] == 2400000 and info["cpu_freq_khz"]["cpu1"]["cur_khz"] == 1500000
    assert info["cpu_freq_khz"]["cpu0"]["governor"] == "ondemand" and info["cpu_freq_khz"]["cpu0"]["min_khz"] is None
    assert info["temperatures_c"] == {"cpu-thermal": pytest.approx(61.25)}
    assert info["loadavg"] == [0.5, 0.4, 0.3] and info["mem_available_kb"] == 6000000
    assert "gpu_freq_hz" in info["absent"] and "device_model" not in info["absent"]
    json.dumps(info)


def test_sysinfo_on_an_empty_tree_reports_everything_absent(tmp_path):
    """No sysfs/procfs at all: every hardware field is None and listed as absent; no exception."""
    info = sysinfo.collect(tmp_path, commands=False)
    for key in ("device_model", "cpu_model", "cpu_freq_khz", "temperatures_c", "gpu_freq_hz", "loadavg"):
        assert info[key] is None and key in info["absent"]
    assert info["runtime"]["onnxruntime"] and info["threads"]["logical_cpus"] >= 1


def test_dmi_model_when_no_device_tree(tmp_path):
    """On a PC the model is DMI vendor + product name."""
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/sys_vendor").write_text("ACME\n")
    (tmp_path / "sys/class/dmi/id/product_name").write_text("Robot PC 3\n")
    assert sysinfo.device_model(tmp_path) == "ACME Robot PC 3"


def test_throttle_flags_decoded():
    """0x50005 = under-voltage now (bit 0), throttled now (2), and both occurred (16, 18)."""
    d = sysinfo.decode_throttled("throttled=0x50005")
    on = {k for k, v in d["flags"].items() if v}
    assert on == {"under_voltage_now", "throttled_now", "under_voltage_occurred", "throttled_occurred"}
    assert sysinfo.decode_throttled("error") is None


def _fake_exe(folder: Path, name: str, output: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_vcgencmd_and_nvpmodel_are_used_when_present(tmp_path, monkeypatch):
    """With vcgencmd / nvpmodel executables on PATH their output is decoded; without them: None."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sysinfo.pi_throttled() is None and sysinfo.jetson_power() is None
    _fake_exe(tmp_path, "vcgencmd", "throttled=0x4")
    _fake_exe(tmp_path, "nvpmodel", "NV Power Mode: MAXN")
    assert sysinfo.pi_throttled()["flags"]["throttled_now"] is True
    assert sysinfo.jetson_power()["nvpmodel"] == "MAXN"


# ----------------------------------------------------------------------------- CLI on a real bundle


def test_profile_cli_end_to_end(tiny_bundle, tmp_path, capsys):
    """Two precisions x (encode, plan, tick): JSON with stats/samples/conditions, a PNG, a table;
    --compare of a report with itself gives ratios of 1; a report with doubled latencies gives 2."""
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["--device", "cpu", "--bundle", str(tiny_bundle), "--precision", "fp32,int8", "--iterations", "8",
               "--warmup", "2", "--threads", "1", "--json", str(out), "--png", str(png)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "edge-profile/1" and report["device"] == "cpu"
    keys = [r["key"] for r in report["results"]]
    assert keys == [f"{s}/{p}/N=16" for p in ("fp32", "int8") for s in ("encode", "plan", "tick")]
    for r in report["results"]:
        assert r["stats"]["n"] == 8 and len(r["samples_ms"]) == 8 and r["threads"] == 1
        assert r["stats"]["min_ms"] <= r["stats"]["median_ms"] <= r["stats"]["p99_ms"] <= r["stats"]["max_ms"]
    tick = next(r for r in report["results"] if r["key"] == "tick/fp32/N=16")["stats"]["median_ms"]
    plan = next(r for r in report["results"] if r["key"] == "plan/fp32/N=16")["stats"]["min_ms"]
    assert tick > plan  # a full tick contains a plan call
    assert "runtime" in report["conditions"] and "absent" in report["conditions"]
    assert 0 < report["timer_overhead_ms"] < 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tick" in capsys.readouterr().out
    assert report["period_ms"] == 0.0

    paced = tmp_path / "paced.json"
    assert main(["--device", "cpu", "--bundle", str(tiny_bundle), "--stages", "plan", "--iterations", "4",
                 "--warmup", "1", "--period-ms", "20", "--json", str(paced)]) == 0
    assert json.loads(paced.read_text())["period_ms"] == 20.0
    assert "one call every 20 ms" in capsys.readouterr().out

    assert main(["--compare", str(out), str(out)]) == 0
    assert "1.00x" in capsys.readouterr().out
    slower = json.loads(out.read_text())
    for r in slower["results"]:
        for k in ("median_ms", "p99_ms", "mean_ms"):
            r["stats"][k] *= 2
    rows = compare(report, slower)
    assert all(row["median_ratio"] == pytest.approx(2.0) and row["p99_ratio"] == pytest.approx(2.0) for row in rows)


def test_sweep_profiles_each_exported_n(tiny_bundle, tmp_path):
    """--sweep N=8,16: the bundle's own N is reused, N=8 is re-exported (exporter injected here),
    and the report holds a plan result per N."""
    from bundle_fakes import tiny_models

    from training.export import ExportConfig, PlannerParams, export_bundle

    asked = []

    def exporter(checkpoint, n, base, precisions, out):
        asked.append((n, tuple(precisions)))
        enc, pred = tiny_models()
        return export_bundle(enc, pred, PlannerParams(N=n, H=base.planner.H, J=base.planner.J), out,
                             ExportConfig(precisions=("fp32",)), command="test sweep", progress=False)

    argv = ["--device", "cpu", "--bundle", str(tiny_bundle), "--stages", "plan", "--iterations", "3", "--warmup", "1",
            "--sweep", "N=8,16", "--checkpoint", str(tmp_path / "run"), "--threads", "1"]
    report = run_profile(build_parser().parse_args(argv), argv, exporter=exporter)
    assert asked == [(8, ("fp32",))]
    assert [r["key"] for r in report["results"]] == ["plan/fp32/N=8", "plan/fp32/N=16"]
    png = tmp_path / "sweep.png"
    profile.write_png(report, png)
    assert png.stat().st_size > 0


def test_sweep_without_torch_names_the_alternative(tiny_bundle, tmp_path, monkeypatch):
    """Where torch is missing the re-export refuses with the desktop-side command to use instead."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    from edge.bundle import load_bundle

    with pytest.raises(ProfileError, match="edge-export --checkpoint RUN --N 256"):
        profile.reexport_for_n(tmp_path, 64, load_bundle(tiny_bundle), ["fp32"], tmp_path / "out")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--device", "cpu"], "--device and --bundle are required"),
        (["--device", "cpu", "--bundle", "BUNDLE", "--precision", "fp64"], "--precision"),
        (["--device", "cpu", "--bundle", "BUNDLE", "--stages", "link"], "needs --port"),
        (["--device", "cpu", "--bundle", "BUNDLE", "--sweep", "N=64"], "needs --checkpoint"),
        (["--device", "cpu", "--bundle", "/nonexistent/bundle"], "/nonexistent/bundle"),
        (["--device", "cpu", "--bundle", "BUNDLE", "--iterations", "0"], "--iterations"),
        (["--device", "cpu", "--bundle", "BUNDLE", "--period-ms", "-5"], "--period-ms"),
        (["--compare", "/nonexistent/a.json", "/nonexistent/b.json"], "cannot read report"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, tiny_bundle, capsys):
    """User errors exit 2 with one line naming the problem, no traceback."""
    argv = [str(tiny_bundle) if a == "BUNDLE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and err.startswith("edge-profile: error:")


def test_link_round_trip_against_the_emulator(tmp_path):
    """--port adds a PING round-trip stage measured against the firmware emulator."""
    from firmware_bridge import native
    from firmware_bridge.emulator import Emulator

    try:
        exe = native.emulator_executable()
    except FileNotFoundError as e:
        pytest.skip(f"fw_emulator is not built ({e})")
    emu = Emulator(stable_path=tmp_path / "edge-esp32", executable=exe)
    emu.start()
    try:
        result = profile.profile_link(emu.port, iterations=10, warmup=2)
    finally:
        emu.close()
    assert result.stage == "link" and result.stats.n == 10 and result.stats.min_ms > 0
    with pytest.raises(ProfileError, match="link round trip"):
        profile.profile_link(str(tmp_path / "no-such-port"), iterations=1, warmup=0)


def test_profile_module_never_imports_torch():
    """edge.profile and edge.sysinfo load without torch in a fresh interpreter."""
    import subprocess

    code = "import sys, edge.profile, edge.sysinfo; sys.exit(1 if 'torch' in sys.modules else 0)"
    env = dict(os.environ)
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0
