"""The conditions a latency measurement was taken under, read from the running system.

Every field is read only where it exists (sysfs, procfs, ``vcgencmd``, ``nvpmodel``,
``tegrastats``, importable runtimes) and is ``None`` when absent; :func:`collect` never raises
for a missing or unreadable source, and lists what was absent under ``"absent"``. ``root``
lets tests point the sysfs/procfs readers at a fake tree.

Fields (units): ``cpu_freq_khz`` per CPU {cur, min, max, hw_max} in kHz and ``governor``;
``temperatures_c`` {zone type: degrees Celsius}; ``gpu_freq_hz`` per devfreq device;
``pi_throttled`` {raw, flags: {name: bool}}; ``jetson`` {nvpmodel, tegrastats}.

Never imports torch.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: ``vcgencmd get_throttled`` bits (Raspberry Pi firmware documentation).
PI_THROTTLE_BITS: dict[int, str] = {
    0: "under_voltage_now",
    1: "arm_freq_capped_now",
    2: "throttled_now",
    3: "soft_temp_limit_now",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}

#: Environment variables that set thread counts of the numeric libraries.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ORT_NUM_THREADS")


def _read(path: Path, limit: int = 65536) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path, 64)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _run(cmd: list[str], timeout_s: float = 3.0) -> str | None:
    """Output of a command when the executable exists and succeeds within the timeout; else None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def decode_throttled(raw: str) -> dict[str, Any] | None:
    """Decode ``throttled=0x50005`` (``vcgencmd get_throttled``) into named flags; None if unparsable."""
    m = re.search(r"0x[0-9a-fA-F]+", raw)
    if m is None:
        return None
    value = int(m.group(0), 16)
    return {"raw": m.group(0), "flags": {name: bool(value >> bit & 1) for bit, name in PI_THROTTLE_BITS.items()}}


def device_model(root: Path = Path("/")) -> str | None:
    """Board model (``/proc/device-tree/model`` on Pi/Jetson) or DMI vendor + product on a PC."""
    model = _read(root / "proc/device-tree/model")
    if model:
        return model
    vendor = _read(root / "sys/class/dmi/id/sys_vendor")
    product = _read(root / "sys/class/dmi/id/product_name")
    joined = " ".join(p for p in (vendor, product) if p)
    return joined or None


def cpu_model(root: Path = Path("/")) -> str | None:
    """CPU model from ``/proc/cpuinfo`` (``model name``, or ``Model``/``Hardware`` on ARM)."""
    text = _read(root / "proc/cpuinfo", 1 << 20)
    if not text:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware", "CPU part") and value.strip():
            found.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "CPU part"):
        if key in found:
            return found[key]
    return None


def cpu_frequencies(root: Path = Path("/")) -> dict[str, dict[str, Any]] | None:
    """Per CPU: current/min/max scaling frequency and hardware max (kHz) and the governor."""
    out: dict[str, dict[str, Any]] = {}
    base = root / "sys/devices/system/cpu"
    for cpu_dir in sorted(glob.glob(str(base / "cpu[0-9]*")), key=lambda p: int(re.sub(r"\D", "", Path(p).name) or 0)):
        freq = Path(cpu_dir) / "cpufreq"
        if not freq.is_dir():
            continue
        out[Path(cpu_dir).name] = {
            "cur_khz": _read_int(freq / "scaling_cur_freq"),
            "min_khz": _read_int(freq / "scaling_min_freq"),
            "max_khz": _read_int(freq / "scaling_max_freq"),
            "hw_max_khz": _read_int(freq / "cpuinfo_max_freq"),
            "governor": _read(freq / "scaling_governor"),
        }
    return out or None


def temperatures(root: Path = Path("/")) -> dict[str, float] | None:
    """Thermal zones: ``{type: degrees C}`` from ``/sys/class/thermal/thermal_zone*/temp`` (milli-C)."""
    out: dict[str, float] = {}
    for zone in sorted(glob.glob(str(root / "sys/class/thermal/thermal_zone*"))):
        milli = _read_int(Path(zone) / "temp")
        if milli is None:
            continue
        name = _read(Path(zone) / "type") or Path(zone).name
        if name in out:
            name = f"{name}.{Path(zone).name}"
        out[name] = milli / 1000.0
    return out or None


def gpu_frequencies(root: Path = Path("/")) -> dict[str, dict[str, Any]] | None:
    """devfreq devices (the GPU on Jetson): current/min/max Hz and governor."""
    out: dict[str, dict[str, Any]] = {}
    for dev in sorted(glob.glob(str(root / "sys/class/devfreq/*"))):
        d = Path(dev)
        out[d.name] = {
            "cur_hz": _read_int(d / "cur_freq"),
            "min_hz": _read_int(d / "min_freq"),
            "max_hz": _read_int(d / "max_freq"),
            "governor": _read(d / "governor"),
        }
    return out or None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, Any]:
    """Python, numpy, onnxruntime (+ providers) and TensorRT versions; None where not installed."""
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": _version("numpy"),
                            "onnxruntime": None, "onnxruntime_providers": None, "tensorrt": None}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            info["tensorrt"] = tensorrt.__version__
        except Exception as e:  # a broken install is a condition worth recording, not a crash
            info["tensorrt"] = f"import failed: {type(e).__name__}"
    return info


def thread_settings() -> dict[str, Any]:
    """Logical CPUs, CPUs this process may use, and thread-count environment variables."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {"logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "env": {k: os.environ.get(k) for k in THREAD_ENV}}


def load_and_memory(root: Path = Path("/")) -> dict[str, Any]:
    """1/5/15-minute load average and MemTotal/MemAvailable (kB); None where unreadable."""
    load = _read(root / "proc/loadavg")
    mem = _read(root / "proc/meminfo")
    out: dict[str, Any] = {"loadavg": None, "mem_total_kb": None, "mem_available_kb": None}
    if load:
        try:
            out["loadavg"] = [float(x) for x in load.split()[:3]]
        except ValueError:
            pass
    if mem:
        for line in mem.splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                digits = re.sub(r"\D", "", value)
                if digits:
                    out["mem_total_kb" if key == "MemTotal" else "mem_available_kb"] = int(digits)
    return out


def pi_throttled() -> dict[str, Any] | None:
    """Decoded ``vcgencmd get_throttled`` on a Raspberry Pi; None elsewhere."""
    raw = _run(["vcgencmd", "get_throttled"])
    return decode_throttled(raw) if raw else None


def jetson_power() -> dict[str, Any] | None:
    """Jetson power mode (``nvpmodel -q``) and one ``tegrastats`` sample (rails, EMC/GPU load); None elsewhere."""
    mode = _run(["nvpmodel", "-q"])
    stats = None
    if shutil.which("tegrastats"):
        try:
            proc = subprocess.Popen(["tegrastats", "--interval", "200"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            try:
                stats = proc.stdout.readline().strip() if proc.stdout else None
            finally:
                proc.terminate()
                proc.wait(timeout=2.0)
        except (OSError, subprocess.SubprocessError):
            stats = None
    jtop = _version("jetson-stats")
    if mode is None and stats is None and jtop is None:
        return None
    power_mode = None
    if mode:
        m = re.search(r"NV Power Mode:\s*(.+)", mode)
        power_mode = m.group(1).strip() if m else mode.splitlines()[0]
    return {"nvpmodel": power_mode, "tegrastats": stats or None, "jetson_stats_version": jtop}


def collect(root: Path = Path("/"), commands: bool = True) -> dict[str, Any]:
    """All conditions as a JSON-ready dict; absent sources are None and listed under ``absent``.

    Args:
        root: filesystem root for sysfs/procfs (tests pass a fake tree).
        commands: also run ``vcgencmd`` / ``nvpmodel`` / ``tegrastats`` where installed.
    """
    info: dict[str, Any] = {
        "os": platform.platform(),
        "machine": platform.machine(),
        "device_model": device_model(root),
        "cpu_model": cpu_model(root),
        "cpu_freq_khz": cpu_frequencies(root),
        "temperatures_c": temperatures(root),
        "gpu_freq_hz": gpu_frequencies(root),
        "pi_throttled": pi_throttled() if commands else None,
        "jetson": jetson_power() if commands else None,
        "runtime": runtime_versions(),
        "threads": thread_settings(),
        **load_and_memory(root),
    }
    info["absent"] = sorted(k for k, v in info.items() if v is None)
    return info
