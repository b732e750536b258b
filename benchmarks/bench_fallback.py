"""LLM-fallback and profiler benchmarks.

1. **Fallback decision latency** with the embedded SmolLM2-135M-Instruct (xllamacpp, loopback,
   ``EmbeddedConfig.n_threads`` threads): ``--requests`` situations with different range
   readings each (so only the system prompt is reused from llama.cpp's prompt cache), submitted
   one after another through :class:`edge.fallback.llm.LLMFallback`; submit -> event latency
   p50 / p99, the cold first request separately, and how many replies were accepted.
2. **Control-loop tick timing with and without a request in flight**: the real
   :class:`edge.loop.ControlLoop` at 20 Hz (ONNX Runtime backend, 1 intra-op thread, a
   random-weight bundle exported at ``--N/--H/--J``, default 128/12/2, unless ``--bundle``
   names one; static in-memory telemetry, no hardware) in interleaved blocks: ``idle`` (no
   request), ``in_flight_nice19`` (a driver thread keeps a request to the embedded server in
   flight the whole block; llama.cpp threads at the default ``EmbeddedConfig.nice=19``) and
   ``in_flight_nice0`` (same with a second server whose threads are not reniced). Tick
   latency (observe..record) p50 / p99 / max, start-time jitter p99, missed deadlines.
   Goal: no difference beyond noise. Blocks are interleaved so that changes in background
   load hit all conditions alike.
3. **Profiler overhead**: what ``edge.profile.measure`` reports for an empty callable (the
   cost its timing adds to every measured call).

Run:   python benchmarks/bench_fallback.py [--requests 20] [--blocks 3 --block-s 5]
Writes benchmarks/results/fallback.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.fallback import Situation  # noqa: E402
from edge.fallback.client import ChatClient, ClientConfig  # noqa: E402
from edge.fallback.embedded import EmbeddedConfig, EmbeddedLLMServer  # noqa: E402
from edge.fallback.llm import LLMFallback  # noqa: E402
from edge.profile import measure  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "fallback.json"

EXPORT_SNIPPET = """
import sys, torch
from training.export import ExportConfig, PlannerParams, export_bundle
from training.models import Predictor, SensorEncoder
torch.manual_seed(0)
N, H, J = (int(v) for v in sys.argv[2:5])
export_bundle(SensorEncoder(), Predictor(), PlannerParams(N=N, H=H, J=J), sys.argv[1], ExportConfig(precisions=("fp32",)),
              command="benchmarks/bench_fallback.py (random weights)", progress=False)
"""


def pct(x, q) -> float:
    return float(np.percentile(np.asarray(x, dtype=float), q))


def situation(rng: np.random.Generator) -> Situation:
    return Situation(
        ranges_m=tuple(float(v) for v in rng.uniform(0.15, 2.0, 8)),
        goal_bearing_rad=float(rng.uniform(-math.pi, math.pi)),
        goal_distance_m=float(rng.uniform(0.3, 4.0)),
        recent_actions=tuple((float(a), float(b)) for a, b in rng.uniform(-0.5, 0.5, (3, 2))),
        reason=f"predicted error {rng.uniform(0.3, 1.5):.2f} above 0.3 for 20 ticks",
    )


def wait_event(fb: LLMFallback, timeout_s: float = 120.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        event = fb.poll()
        if event is not None:
            return event
        time.sleep(0.002)
    raise RuntimeError("no fallback event within the timeout")


def bench_decisions(fb: LLMFallback, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lat, accepted, actions = [], 0, {}
    for _ in range(n + 1):
        assert fb.submit(situation(rng))
        event = wait_event(fb)
        lat.append(event.latency_s * 1000.0)
        if event.macro is not None:
            accepted += 1
            actions[event.macro.action] = actions.get(event.macro.action, 0) + 1
    cold, warm = lat[0], lat[1:]
    return {"requests": n, "cold_first_ms": cold, "p50_ms": pct(warm, 50), "p99_ms": pct(warm, 99),
            "max_ms": max(warm), "accepted": accepted, "of": n + 1, "actions": actions}


def export_bundle(out: Path, n: int, h: int, j: int) -> Path:
    proc = subprocess.run([sys.executable, "-c", EXPORT_SNIPPET, str(out), str(n), str(h), str(j)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"bench_fallback: bundle export failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


class Driver:
    """Keeps one request of the current target fallback in flight while ``target`` is set."""

    def __init__(self) -> None:
        self.target: LLMFallback | None = None
        self.stop = threading.Event()
        self.completed = 0
        self._rng = np.random.default_rng(1)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            fb = self.target
            if fb is not None and not fb.in_flight:
                if fb.poll() is not None:
                    self.completed += 1
                fb.submit(situation(self._rng))
            time.sleep(0.005)


def bench_loop(bundle_path: Path, fallbacks: dict[str, LLMFallback], blocks: int, block_s: float,
               rate_hz: float) -> dict:
    """Alternate loop blocks: idle, then one block per fallback in ``fallbacks`` with its request in flight."""
    import logging

    from edge.backends import make_backend
    from edge.config import ConfidenceConfig, RobotConfig, RunConfig
    from edge.loop import ControlLoop, GoalTarget, SystemClock
    from edge.odometry import Odometry
    from edge.profile import _StaticLink

    logging.getLogger("edge.loop").setLevel(logging.ERROR)  # overruns are counted, not logged
    backend = make_backend(bundle_path, "cpu", "fp32", intra_op_threads=1)
    p = backend.bundle.planner
    robot = RobotConfig()
    driver = Driver()
    driver.thread.start()
    kinds = ["idle", *fallbacks]
    per = {k: {"total": [], "jitter": [], "overruns": 0, "in_flight_ticks": 0} for k in kinds}
    try:
        for b in range(blocks * len(kinds)):
            kind = kinds[b % len(kinds)]
            fb = fallbacks.get(kind)
            if fb is not None:
                driver.target = fb
                end = time.monotonic() + 10.0
                while not fb.in_flight and time.monotonic() < end:
                    time.sleep(0.005)
            cfg = RunConfig(rate_hz=rate_hz, confidence=ConfidenceConfig(error_scale=1e9))
            loop = ControlLoop(cfg, _StaticLink(), backend,
                               Odometry(robot.wheel_radius_m, robot.wheel_base_m, robot.ticks_per_rev),
                               clock=SystemClock(), noise_seed=b)
            loop.set_goal(GoalTarget(z=loop.encode_goal(np.zeros(14, np.float32), None), pose=None))
            ticks: list[tuple[float, float, bool]] = []
            loop.on_tick = lambda info, ticks=ticks, fb=fb: ticks.append(
                (info.t, info.total_ms, bool(fb is not None and fb.in_flight)))
            result = loop.run(duration_s=block_s)
            driver.target = None
            t = np.asarray([x[0] for x in ticks])
            per[kind]["total"] += [x[1] for x in ticks[1:]]
            per[kind]["jitter"] += (np.abs(np.diff(t) - 1.0 / rate_hz) * 1000.0).tolist()
            per[kind]["overruns"] += result.overruns
            per[kind]["in_flight_ticks"] += sum(1 for x in ticks if x[2])
            for other in fallbacks.values():  # no request may spill into the next block
                end = time.monotonic() + 120.0
                while other.in_flight and time.monotonic() < end:
                    time.sleep(0.01)
                other.poll()
    finally:
        driver.stop.set()
        backend.close()
    out = {"rate_hz": rate_hz, "planner": {"N": int(p.N), "H": int(p.H), "J": int(p.J), "E": int(p.E)},
           "blocks_per_condition": blocks, "block_s": block_s, "conditions": kinds,
           "requests_completed_during_blocks": driver.completed}
    for kind, d in per.items():
        out[kind] = {"ticks": len(d["total"]), "ticks_with_request_in_flight": d["in_flight_ticks"],
                     "p50_ms": pct(d["total"], 50), "p99_ms": pct(d["total"], 99), "max_ms": max(d["total"]),
                     "jitter_p99_ms": pct(d["jitter"], 99), "missed_deadlines": int(d["overruns"])}
        if kind != "idle":
            out[kind]["p99_ratio_over_idle"] = out[kind]["p99_ms"] / out["idle"]["p99_ms"]
            out[kind]["p50_ratio_over_idle"] = out[kind]["p50_ms"] / out["idle"]["p50_ms"]
    return out


def bench_profiler_overhead(n: int = 20000) -> dict:
    """What measure() adds per call: the latency it reports for an empty callable."""
    empty = measure(lambda: None, n, warmup=200)
    return {"calls": n, "empty_call_median_us": float(np.median(empty) * 1000),
            "empty_call_p99_us": pct(empty, 99) * 1000, "empty_call_min_us": float(empty.min() * 1000)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python benchmarks/bench_fallback.py --requests 20 --blocks 3 --block-s 5")
    ap.add_argument("--requests", type=int, default=20, help="fallback requests after the cold one")
    ap.add_argument("--threads", type=int, default=EmbeddedConfig.n_threads, help="llama.cpp threads")
    ap.add_argument("--blocks", type=int, default=3, help="loop blocks per condition (interleaved)")
    ap.add_argument("--block-s", type=float, default=5.0, help="seconds per loop block")
    ap.add_argument("--rate", type=float, default=20.0, help="control rate, Hz")
    ap.add_argument("--bundle", help="bundle to run the loop with (default: export a random-weight one)")
    ap.add_argument("--N", type=int, default=128, help="planner samples of the exported bundle")
    ap.add_argument("--H", type=int, default=12, help="planner horizon of the exported bundle")
    ap.add_argument("--J", type=int, default=2, help="MPPI iterations of the exported bundle")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    report: dict = {"machine": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg(), "llama_threads": args.threads}
    client = dict(timeout_s=120.0, max_retries=0)
    with tempfile.TemporaryDirectory(prefix="bench-fallback-") as tmp, \
            EmbeddedLLMServer(EmbeddedConfig(n_threads=args.threads)) as server, \
            EmbeddedLLMServer(EmbeddedConfig(n_threads=args.threads, nice=0)) as server0:
        bundle = Path(args.bundle) if args.bundle else export_bundle(Path(tmp) / "bundle", args.N, args.H, args.J)
        report["server_startup_s"] = server.startup_s
        fb = LLMFallback(ChatClient(ClientConfig(base_url=server.base_url, **client)))
        fb0 = LLMFallback(ChatClient(ClientConfig(base_url=server0.base_url, **client)))
        try:
            print(f"bench_fallback: {args.requests + 1} decisions with SmolLM2-135M ...", file=sys.stderr)
            report["decisions"] = bench_decisions(fb, args.requests)
            report["decisions"]["fallback_stats"] = fb.stats.as_dict()
            print(f"bench_fallback: control loop, {args.blocks} x 3 blocks of {args.block_s:g} s ...", file=sys.stderr)
            report["loop"] = bench_loop(bundle, {"in_flight_nice19": fb, "in_flight_nice0": fb0}, args.blocks,
                                        args.block_s, args.rate)
        finally:
            fb.close()
            fb0.close()
    report["profiler"] = bench_profiler_overhead()
    report["loadavg_end"] = os.getloadavg()

    d, lp, pr = report["decisions"], report["loop"], report["profiler"]
    print(f"\nfallback decision latency, SmolLM2-135M Q4_1, {args.threads} llama.cpp thread(s) at nice 19, "
          f"{d['requests']} requests (+1 cold)")
    print(f"  cold first {d['cold_first_ms']:.0f} ms | p50 {d['p50_ms']:.0f} ms | p99 {d['p99_ms']:.0f} ms | "
          f"max {d['max_ms']:.0f} ms | accepted {d['accepted']}/{d['of']} {d['actions']}")
    print(f"\ncontrol loop at {lp['rate_hz']:g} Hz, planner N={lp['planner']['N']} H={lp['planner']['H']} "
          f"J={lp['planner']['J']}, {lp['blocks_per_condition']} interleaved blocks of {lp['block_s']:g} s per condition")
    print(f"  {'condition':<17} {'ticks':>6} {'in flight':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'jitter p99':>10} {'missed':>6} {'p99/idle':>8}")
    for kind in lp["conditions"]:
        r = lp[kind]
        ratio = f"{r['p99_ratio_over_idle']:.2f}" if "p99_ratio_over_idle" in r else "-"
        print(f"  {kind:<17} {r['ticks']:>6} {r['ticks_with_request_in_flight']:>9} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['jitter_p99_ms']:>10.2f} {r['missed_deadlines']:>6} {ratio:>8}")
    print(f"\nprofiler overhead (edge.profile.measure on an empty callable, {pr['calls']} calls): median "
          f"{pr['empty_call_median_us']:.3f} us, p99 {pr['empty_call_p99_us']:.3f} us, min {pr['empty_call_min_us']:.3f} us")
    print(f"load average start {tuple(round(v, 1) for v in report['loadavg_start'])} end "
          f"{tuple(round(v, 1) for v in report['loadavg_end'])} ({os.cpu_count()} CPUs, shared machine: compare "
          f"conditions within this run only)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
