"""`edge-profile`: latency of each runtime stage on the device, in trtexec's conventions.

Examples:
    edge-profile --device pi --bundle models/default --precision fp32,int8 --json pi.json --png pi.png
    edge-profile --device cpu --bundle models/default --port /dev/ttyUSB0        # + link round trip
    edge-profile --device cpu --bundle models/default --sweep N=64,256,1024 --checkpoint runs/default_sensor
    edge-profile --compare pi.json jetson.json

Stages (each: ``--warmup`` untimed calls, then ``--iterations`` timed calls, one at a time):

=======  ===========================================================================================
encode   ``backend.encode(sensor)`` (or sensor + camera frame for a camera bundle)
plan     one call of the fused MPPI planner graph (J iterations x N samples x H steps)
tick     one full :meth:`edge.loop.ControlLoop.tick` without hardware: observe (from a static
         in-memory telemetry snapshot) + encode + plan + decide + safety guard + send (no-op)
link     PING -> ACK round trip to the motor controller over ``--port`` (only with ``--port``)
=======  ===========================================================================================

``--period-ms P`` paces the calls at one per P ms with the device idle in between, as in
``edge-run`` (50 ms at 20 Hz); back to back (the default, as trtexec) measures a warm core and
can read half the in-loop latency.

Statistics per stage: min / max / mean / median / p90 / p95 / p99 (ms, linear-interpolated
percentiles), throughput (sequential calls per second, 1000 / mean), and the coefficient of
variation (std / mean) with a warning above ``--cv-warn`` (unstable: another process, thermal
throttling or frequency scaling is interfering; the recorded conditions help tell which).

Sweep over N: the planner's sample count N is fixed when the graph is exported, so
``--sweep N=...`` re-exports the planner at each N from the training run (``--checkpoint``)
with ``python -m training.export`` in a subprocess (needs torch: a desktop-side convenience;
``edge/`` itself never imports torch), keeping the bundle's H and J, then profiles each. On a
robot without torch, export the variants on the desktop (``edge-export --N 256 ...``) and
profile each bundle.

Conditions (device model, CPU/GPU frequencies and governors, temperatures before and after,
Pi throttling flags, Jetson power mode, runtime versions, threads) come from
:mod:`edge.sysinfo` and are stored in the JSON report.

Never imports torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge import sysinfo

REPORT_SCHEMA = "edge-profile/1"
STAGES = ("encode", "plan", "tick", "link")
DEVICES = ("cpu", "pi", "jetson")
PRECISIONS = ("fp32", "fp16", "int8")


class ProfileError(Exception):
    """A user-facing problem (bad argument, missing bundle/port/torch); printed as one line."""


# ----------------------------------------------------------------------------- measurement core


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary of one stage; all times in milliseconds.

    ``cv`` = std / mean (dimensionless); ``throughput_per_s`` = 1000 / mean_ms (sequential calls).
    """

    n: int
    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    throughput_per_s: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        """Summarise ``samples_ms`` (>= 1 finite values).

        Raises:
            ValueError: empty or non-finite samples.
        """
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError("LatencyStats needs at least one finite sample")
        mean = float(x.mean())
        std = float(x.std(ddof=1)) if x.size > 1 else 0.0
        p90, p95, p99, median = (float(v) for v in np.percentile(x, [90, 95, 99, 50]))
        return cls(n=int(x.size), min_ms=float(x.min()), max_ms=float(x.max()), mean_ms=mean, median_ms=median,
                   p90_ms=p90, p95_ms=p95, p99_ms=p99, std_ms=std, cv=std / mean if mean > 0 else 0.0,
                   throughput_per_s=1000.0 / mean if mean > 0 else math.inf)


def measure(
    fn: Callable[[], Any],
    iterations: int,
    warmup: int = 10,
    between: Callable[[], Any] | None = None,
    timer: Callable[[], float] = time.perf_counter,
    period_s: float = 0.0,
    sleep: Callable[[float], Any] = time.sleep,
) -> np.ndarray:
    """Time ``fn()`` ``iterations`` times after ``warmup`` untimed calls.

    Args:
        fn: the work to time (no arguments).
        iterations: timed calls (>= 1). warmup: untimed calls first (>= 0).
        between: untimed work after each call (e.g. refilling the planner noise ring, as the
            control loop does off its hot path).
        timer: seconds clock.
        period_s: 0 (trtexec's convention): calls back to back. > 0: one call per period on an
            absolute schedule, idle in between, as the control loop runs them; a call that
            overruns its slot makes the next start at the next free slot (no catch-up burst).
            Only ``fn`` is timed, never the idle time.
        sleep: seconds sleep (tests pass a fake one with a fake ``timer``).
    Returns:
        float64 [iterations] latencies in milliseconds.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"measure: iterations must be >= 1 and warmup >= 0, got {iterations}, {warmup}")
    if not (math.isfinite(period_s) and period_s >= 0.0):
        raise ValueError(f"measure: period_s must be >= 0 seconds, got {period_s}")
    next_start: float | None = None  # start of the next slot; the first call starts at once

    def wait_for_slot() -> None:
        nonlocal next_start
        if period_s <= 0.0:
            return
        now = timer()
        if next_start is None:
            next_start = now
        elif now > next_start:  # the last call overran: the next free slot on the same grid
            next_start += (math.floor((now - next_start) / period_s) + 1) * period_s
        if next_start > now:
            sleep(next_start - now)
        next_start += period_s

    for _ in range(warmup):
        wait_for_slot()
        fn()
        if between is not None:
            between()
    out = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        wait_for_slot()
        t0 = timer()
        fn()
        out[i] = (timer() - t0) * 1000.0
        if between is not None:
            between()
    return out


def timer_overhead_ms(iterations: int = 2000) -> float:
    """Median cost in ms that :func:`measure` adds to one call (timing an empty callable)."""
    return float(np.median(measure(lambda: None, iterations, warmup=100)))


@dataclass
class StageResult:
    """One measured stage at one precision (and N)."""

    stage: str
    precision: str
    N: int | None
    stats: LatencyStats
    samples_ms: list[float]
    threads: int | None = None  # the backend's intra-op threads (ONNX Runtime), None if not applicable

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.precision}/N={self.N}"

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "precision": self.precision, "N": self.N, "key": self.key,
                "threads": self.threads, "stats": asdict(self.stats), "samples_ms": [round(v, 6) for v in self.samples_ms]}


# ----------------------------------------------------------------------------- stages


class _StaticLink:
    """In-memory telemetry snapshot for the hardware-free full tick (``edge.loop.RobotLink``)."""

    def __init__(self) -> None:
        self.sent = 0

    def latest(self) -> SimpleNamespace:
        return SimpleNamespace(enc_left=0, enc_right=0, speed_left=0.0, speed_right=0.0,
                               ranges_m=(1.0, 1.2, 1.5, 2.0, 2.0, 2.0, 1.5, 1.2), mcu_time_us=0,
                               last_cmd_seq=self.sent, host_time=time.monotonic(), estop_latched=False)

    def send_velocity(self, left: float, right: float) -> None:
        self.sent += 1

    def stats(self) -> dict[str, int]:
        return {"frames_tx": self.sent}


def _inputs(backend: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    p = backend.bundle.planner
    sensor = rng.uniform(-1.0, 1.0, 14).astype(np.float32)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) if p.encoder == "camera" else None
    z = np.asarray(backend.encode(sensor, frame), np.float32)
    return {
        "sensor": sensor, "frame": frame, "z0": z, "z_goal": -z,
        "mean": np.zeros((p.H, p.A), np.float32),
        "std": np.full((p.H, p.A), np.float32(p.std_init), np.float32),
        "noise": rng.standard_normal((p.J, p.N, p.H, p.A), dtype=np.float32),
    }


def _tick_callable(backend: Any, device: str, precision: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    from edge.config import ConfidenceConfig, RobotConfig, RunConfig
    from edge.loop import ControlLoop, GoalTarget, SystemClock
    from edge.odometry import Odometry

    # error_scale only maps the confidence head's error to [0, 1]; it does not change the work.
    cfg = RunConfig(device=device, precision=precision, confidence=ConfidenceConfig(error_scale=1.0))
    robot = RobotConfig()
    odometry = Odometry(robot.wheel_radius_m, robot.wheel_base_m, robot.ticks_per_rev)
    loop = ControlLoop(cfg, _StaticLink(), backend, odometry, clock=SystemClock(), noise_seed=0)
    p = backend.bundle.planner
    frame = np.zeros((64, 64, 3), np.uint8) if p.encoder == "camera" else None
    loop.set_goal(GoalTarget(z=loop.encode_goal(np.zeros(14, np.float32), frame), pose=None, source="profile"))
    if frame is not None:
        loop.camera = SimpleNamespace(latest=lambda: frame)
    return (lambda: loop.tick(math.inf)), loop.noise.refill


def profile_backend(backend: Any, device: str, precision: str, stages: Sequence[str], iterations: int,
                    warmup: int, seed: int = 0, period_s: float = 0.0) -> list[StageResult]:
    """Measure ``encode`` / ``plan`` / ``tick`` (those in ``stages``) on one backend
    (``period_s``: see :func:`measure`)."""
    rng = np.random.default_rng(seed)
    x = _inputs(backend, rng)
    N = int(backend.bundle.planner.N)
    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {
        "encode": (lambda: backend.encode(x["sensor"], x["frame"]), None),
        "plan": (lambda: backend.plan(x["z0"], x["z_goal"], x["mean"], x["std"], x["noise"]), None),
    }
    results = []
    for stage in stages:
        if stage == "link":
            continue
        fn, between = _tick_callable(backend, device, precision) if stage == "tick" else calls[stage]
        samples = measure(fn, iterations, warmup, between, period_s=period_s)
        results.append(StageResult(stage, precision, N, LatencyStats.from_samples(samples), samples.tolist(),
                                   getattr(backend, "threads", None)))
    return results


def profile_link(port: str, iterations: int, warmup: int, period_s: float = 0.0) -> StageResult:
    """PING round trip over the serial link at ``port``."""
    from firmware_bridge.link import LinkError, SerialLink

    try:
        with SerialLink(port) as link:
            samples = measure(lambda: link.ping(), iterations, warmup, period_s=period_s)
    except LinkError as e:
        raise ProfileError(f"link round trip on {port}: {e}") from e
    return StageResult("link", "-", None, LatencyStats.from_samples(samples), samples.tolist())


def reexport_for_n(checkpoint: Path, n: int, base: Any, precisions: Sequence[str], out: Path) -> Path:
    """Export the planner at ``n`` samples (same H, J as ``base``) from a training run, in a subprocess.

    Raises:
        ProfileError: torch/training not importable here, or the export failed (its last error line).
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("training") is None:
        raise ProfileError(
            "--sweep re-exports the planner at each N and needs torch (pip install 'edge-jepa[train]'); "
            "on a robot without torch, export each N on the desktop (edge-export --checkpoint RUN --N 256 "
            "--out models/NAME-n256) and profile each bundle"
        )
    p = base.planner
    cmd = [sys.executable, "-m", "training.export", "--checkpoint", str(checkpoint), "--out", str(out),
           "--N", str(n), "--H", str(p.H), "--J", str(p.J), "--precisions", ",".join(precisions),
           "--quiet", "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ProfileError(f"re-export at N={n} failed: {last} (command: {shlex.join(cmd)})")
    return out


# ----------------------------------------------------------------------------- report


def _stage_warnings(results: Sequence[StageResult], cv_warn: float) -> list[str]:
    return [f"{r.key}: coefficient of variation {r.stats.cv:.1%} > {cv_warn:.0%}: unstable measurement "
            f"(other load, thermal throttling or frequency scaling; see conditions)"
            for r in results if r.stats.cv > cv_warn]


def build_report(results: Sequence[StageResult], *, device: str, bundle: Any, iterations: int, warmup: int,
                 conditions_before: dict, conditions_after: dict, overhead_ms: float, cv_warn: float,
                 command: str, period_ms: float = 0.0) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "bundle": {"name": bundle.name, "path": str(bundle.path), "sha256": bundle.sha256,
                   "planner": {k: int(getattr(bundle.planner, k)) for k in ("N", "H", "J", "A", "E")},
                   "encoder": bundle.planner.encoder},
        "iterations": iterations,
        "warmup": warmup,
        "period_ms": period_ms,
        "timer_overhead_ms": overhead_ms,
        "conditions": conditions_before,
        "temperatures_after_c": conditions_after.get("temperatures_c"),
        "results": [r.as_dict() for r in results],
        "warnings": _stage_warnings(results, cv_warn),
    }


def _console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def print_table(report: dict[str, Any], console: Any = None) -> None:
    from rich.table import Table

    console = console or _console()
    b = report["bundle"]
    table = Table(title=f"edge-profile: {b['name']} on {report['device']} "
                        f"({report['conditions'].get('device_model') or report['conditions'].get('cpu_model') or 'unknown device'})")
    for col in ("stage", "prec", "N", "min", "median", "mean", "p90", "p95", "p99", "max", "CV", "calls/s"):
        table.add_column(col, justify="left" if col in ("stage", "prec") else "right")
    for r in report["results"]:
        s = r["stats"]
        cv = f"{s['cv']:.1%}"
        table.add_row(r["stage"], r["precision"], "-" if r["N"] is None else str(r["N"]),
                      *(f"{s[k]:.3f}" for k in ("min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms",
                                                "max_ms")),
                      f"[yellow]{cv}[/]" if any(w.startswith(r["key"] + ":") for w in report["warnings"]) else cv,
                      f"{s['throughput_per_s']:.1f}")
    console.print(table)
    period = report.get("period_ms") or 0.0
    pacing = (f"one call every {period:g} ms (idle in between, as the control loop)" if period > 0
              else "calls back to back (the loop's idle gaps make calls slower: try --period-ms 50)")
    console.print(f"times in ms; {report['iterations']} timed calls after {report['warmup']} warm-up, {pacing}; "
                  f"timer overhead {report['timer_overhead_ms'] * 1000:.2f} us/call")
    c = report["conditions"]
    if c.get("absent"):
        console.print(f"conditions absent on this system: {', '.join(c['absent'])}")
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


def write_png(report: dict[str, Any], path: Path) -> None:
    """Latency histograms (one panel per stage, precisions/N overlaid) and, for a sweep, median and
    p99 against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    stages = [s for s in STAGES if any(r["stage"] == s for r in results)]
    ns = sorted({r["N"] for r in results if r["N"] is not None})
    sweep = len(ns) > 1
    cols = len(stages) + (1 if sweep else 0)
    fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for r in (r for r in results if r["stage"] == stage):
            x = np.asarray(r["samples_ms"])
            hi = np.percentile(x, 99.5)
            ax.hist(x[x <= hi], bins=40, alpha=0.55, label=f"{r['precision']} N={r['N']}" if r["N"] else r["precision"])
        ax.set_title(f"{stage} latency")
        ax.set_xlabel("ms (<= p99.5 shown)")
        ax.set_ylabel("calls")
        ax.legend(fontsize=7)
    if sweep:
        ax = axes[0][-1]
        for stage in ("plan", "tick"):
            for prec in sorted({r["precision"] for r in results if r["stage"] == stage}):
                pts = sorted((r["N"], r["stats"]["median_ms"], r["stats"]["p99_ms"]) for r in results
                             if r["stage"] == stage and r["precision"] == prec)
                if pts:
                    n, med, p99 = zip(*pts)
                    line = ax.plot(n, med, marker="o", label=f"{stage} {prec} median")[0]
                    ax.plot(n, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{stage} {prec} p99")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples per MPPI iteration)")
        ax.set_ylabel("ms")
        ax.set_title("sweep over N")
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['bundle']['name']} on {report['device']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Ratios B / A of median, p99 and mean latency (and A / B of throughput) per matching stage key."""
    for name, rep in (("A", a), ("B", b)):
        if rep.get("schema") != REPORT_SCHEMA:
            raise ProfileError(f"report {name} is not an {REPORT_SCHEMA} report (schema: {rep.get('schema')!r})")
    index_b = {r["key"]: r for r in b["results"]}
    rows = []
    for ra in a["results"]:
        rb = index_b.get(ra["key"])
        if rb is None:
            continue
        sa, sb = ra["stats"], rb["stats"]
        rows.append({"key": ra["key"], "median_a": sa["median_ms"], "median_b": sb["median_ms"],
                     "median_ratio": sb["median_ms"] / sa["median_ms"],
                     "p99_ratio": sb["p99_ms"] / sa["p99_ms"], "mean_ratio": sb["mean_ms"] / sa["mean_ms"]})
    if not rows:
        raise ProfileError("the two reports share no stage/precision/N to compare "
                           f"(A: {[r['key'] for r in a['results']]}, B: {[r['key'] for r in b['results']]})")
    return rows


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge-profile",
        description="Measure the latency of each runtime stage on this device (trtexec conventions).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  edge-profile --device pi --bundle models/default --precision fp32,int8 --json pi.json --png pi.png\n"
               "  edge-profile --device pi --bundle models/default --stages plan --period-ms 50   # as at 20 Hz\n"
               "  edge-profile --device cpu --bundle models/default --sweep N=64,256,1024 --checkpoint runs/default_sensor\n"
               "  edge-profile --compare pi.json jetson.json",
    )
    ap.add_argument("--device", choices=DEVICES, help="runtime target: cpu / pi (ONNX Runtime), jetson (TensorRT)")
    ap.add_argument("--bundle", help="model bundle folder, e.g. models/default")
    ap.add_argument("--precision", default="fp32", help="comma list of fp32,int8,fp16 (default fp32)")
    ap.add_argument("--stages", default="encode,plan,tick", help="comma list of encode,plan,tick (link: give --port)")
    ap.add_argument("--iterations", type=int, default=200, help="timed calls per stage (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    ap.add_argument("--period-ms", type=float, default=0.0,
                    help="start one call every PERIOD ms and idle in between, as the control loop does "
                         "(50 = edge-run's 20 Hz). Default 0: back to back (trtexec). Idle gaps make calls "
                         "slower (caches go cold, cores clock down): on a 2-core x86 VM the planner's median "
                         "was 1.2-1.9x its back-to-back value at a 50 ms period")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the backend's choice)")
    ap.add_argument("--port", help="serial port of the motor controller: adds the PING round-trip stage")
    ap.add_argument("--sweep", help="N=64,256,1024: re-export the planner at each N (needs torch and --checkpoint)")
    ap.add_argument("--checkpoint", help="edge-train run folder to re-export from for --sweep")
    ap.add_argument("--cv-warn", type=float, default=0.10, help="warn when std/mean exceeds this (default 0.10)")
    ap.add_argument("--json", dest="json_out", help="write the JSON report here")
    ap.add_argument("--png", dest="png_out", help="write latency histograms (and the sweep plot) here")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print ratios B/A of two reports")
    return ap


def _csv(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if not items or bad:
        raise ProfileError(f"{flag}: {bad or text!r} not in {list(allowed)}")
    return list(dict.fromkeys(items))


def parse_sweep(text: str) -> list[int]:
    """``N=64,256,1024`` -> [64, 256, 1024]; only N can be swept."""
    name, sep, values = text.partition("=")
    if name.strip() != "N" or not sep:
        raise ProfileError(f"--sweep: expected N=64,256,1024 (only the sample count N is swept), got {text!r}")
    try:
        ns = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ProfileError(f"--sweep: N values must be integers, got {values!r}") from None
    if not ns or any(n < 2 for n in ns):
        raise ProfileError(f"--sweep: N values must be integers >= 2, got {values!r}")
    return sorted(set(ns))


def _load_json(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ProfileError(f"cannot read report {path}: {e}") from e


def run_compare(path_a: str, path_b: str) -> int:
    from rich.table import Table

    a, b = _load_json(path_a), _load_json(path_b)
    rows = compare(a, b)
    table = Table(title=f"B / A   A = {path_a} ({a['device']}, {a['bundle']['name']})   "
                        f"B = {path_b} ({b['device']}, {b['bundle']['name']})")
    for col in ("stage/precision/N", "A median ms", "B median ms", "median B/A", "p99 B/A", "mean B/A"):
        table.add_column(col, justify="left" if col.startswith("stage") else "right")
    for r in rows:
        table.add_row(r["key"], f"{r['median_a']:.3f}", f"{r['median_b']:.3f}", f"{r['median_ratio']:.2f}x",
                      f"{r['p99_ratio']:.2f}x", f"{r['mean_ratio']:.2f}x")
    _console().print(table)
    print("ratios < 1: B is faster")
    return 0


def run_profile(args: argparse.Namespace, argv: Sequence[str],
                exporter: Callable[..., Path] = reexport_for_n) -> dict[str, Any]:
    """Measure everything the arguments ask for; returns the report (also written/printed by main)."""
    from edge.backends import make_backend
    from edge.bundle import BundleError, load_bundle

    if not args.device or not args.bundle:
        raise ProfileError("--device and --bundle are required (or use --compare A.json B.json)")
    if args.iterations < 1 or args.warmup < 0:
        raise ProfileError(f"--iterations must be >= 1 and --warmup >= 0, got {args.iterations}, {args.warmup}")
    if not (math.isfinite(args.period_ms) and args.period_ms >= 0):
        raise ProfileError(f"--period-ms must be >= 0 milliseconds (0 = back to back), got {args.period_ms}")
    period_s = args.period_ms / 1000.0
    if not (math.isfinite(args.cv_warn) and args.cv_warn > 0):
        raise ProfileError(f"--cv-warn must be > 0, got {args.cv_warn}")
    precisions = _csv(args.precision, PRECISIONS, "--precision")
    stages = _csv(args.stages, STAGES, "--stages")
    if args.port and "link" not in stages:
        stages.append("link")
    if "link" in stages and not args.port:
        raise ProfileError("--stages link needs --port (the motor controller's serial port)")
    sweep = parse_sweep(args.sweep) if args.sweep else None
    if sweep and not args.checkpoint:
        raise ProfileError("--sweep needs --checkpoint RUN (the edge-train run folder to re-export from)")
    try:
        base = load_bundle(args.bundle)
    except BundleError as e:
        raise ProfileError(str(e)) from e

    options = {"intra_op_threads": args.threads} if args.threads else {}
    conditions = sysinfo.collect()
    overhead = timer_overhead_ms()
    results: list[StageResult] = []
    with tempfile.TemporaryDirectory(prefix="edge-profile-") as tmp:
        bundles = [base]
        if sweep:
            bundles = []
            for n in sweep:
                if n == base.planner.N:
                    bundles.append(base)
                    continue
                print(f"edge-profile: exporting the planner at N={n} ...", file=sys.stderr)
                bundles.append(load_bundle(exporter(Path(args.checkpoint), n, base, precisions, Path(tmp) / f"n{n}")))
        for bundle in bundles:
            for precision in precisions:
                print(f"edge-profile: {bundle.name} N={bundle.planner.N} {precision}: {', '.join(s for s in stages if s != 'link')}",
                      file=sys.stderr)
                try:
                    backend = make_backend(bundle, args.device, precision, **options)
                except (ValueError, BundleError, ImportError) as e:
                    raise ProfileError(str(e)) from e
                try:
                    results += profile_backend(backend, args.device, precision, stages, args.iterations, args.warmup,
                                               period_s=period_s)
                finally:
                    backend.close()
    if args.port:
        results.append(profile_link(args.port, args.iterations, args.warmup, period_s))
    command = "edge-profile " + shlex.join(list(argv))
    return build_report(results, device=args.device, bundle=base, iterations=args.iterations, warmup=args.warmup,
                        conditions_before=conditions, conditions_after=sysinfo.collect(commands=False),
                        overhead_ms=overhead, cv_warn=args.cv_warn, command=command, period_ms=args.period_ms)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.compare:
            return run_compare(*args.compare)
        report = run_profile(args, argv)
        print_table(report)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json_out}")
        if args.png_out:
            write_png(report, Path(args.png_out))
            print(f"wrote {args.png_out}")
    except ProfileError as e:
        print(f"edge-profile: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
