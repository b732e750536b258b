"""Control-loop benchmark in simulation: timing at 20 Hz, the highest deadline-free rate, and
planning success of ``edge-run --sim``.

Everything runs the real ``edge-run --device cpu --sim`` path in-process (simulated ESP32 with
the real firmware core in a child process, pty link, backend, safety guard, MCAP recorder):

1. **20 Hz run** (``--duration``, 120 s for the report): p50 / p99 / max tick latency (wall ms,
   observe..record), missed deadlines (ticks ending after their slot) and skipped slots, for
   each ``--precisions`` variant of the planner (ratio int8 / fp32 in the same run).
2. **Rate sweep** (``--rates``, ``--sweep-duration`` s each): the highest control rate with no
   missed deadline (a tick ending after its slot; slots skipped because the bookkeeping after
   a tick ran late are reported beside it), and the rate the 20 Hz run's p50 / p99 tick
   latency would fit.
3. **Planning success** (``--episodes``, 50 for the report): two-rooms episodes with random walls
   and the goal in the other room; success = the simulator's success radius within its step
   budget. ``--time-scale`` runs the simulated robot faster than real time (the loop follows
   simulated time, so the control period stays 1/rate of robot time) -- only where the loop
   keeps up: a tick that takes longer than ``1 / (rate * time_scale)`` wall seconds holds its
   command longer than the model was trained for, so the default is real time (1.0).

Goal checks are disabled in parts 1 and 2 (``goal.reach_m`` tiny) so runs last their duration.
Prints a table and writes ``benchmarks/results/loop.json``.

Example (the report's figures)::

    python benchmarks/bench_loop.py --duration 120 --episodes 50
    python benchmarks/bench_loop.py --duration 10 --sweep-duration 5 --episodes 5   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.run import main as edge_run  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "loop.json"
NO_GOAL = ["--set", "goal.reach_m=0.0001", "--set", "sim.max_steps=1000000"]


def run(args: list[str]) -> dict:
    """One in-process edge-run; returns its summary.json."""
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        rc = edge_run(["--device", "cpu", "--sim", "--status", "off", "--set", "sim.gif=false",
                       "--out", tmp, *args])
        found = list(Path(tmp).glob("*/summary.json"))
        if len(found) != 1:
            raise SystemExit(f"bench_loop: edge-run {' '.join(args)} exited with status {rc} and wrote no "
                             "summary.json; its error is printed above")
        (summary,) = found
        out = json.loads(summary.read_text())
        out["exit_status"] = rc
        return out


def timing_row(s: dict) -> dict:
    return {"ticks": s["ticks"], "achieved_rate_hz": s["achieved_rate_hz"], "p50_ms": s["tick_ms"]["p50"],
            "p99_ms": s["tick_ms"]["p99"], "max_ms": s["tick_ms"]["max"], "deadline_ms": s["tick_ms"]["deadline"],
            "missed_deadlines": s["overruns"], "skipped_slots": s.get("skipped_slots", 0),
            "plan_p50_ms": s["stages"]["plan"]["p50_ms"], "plan_p99_ms": s["stages"]["plan"]["p99_ms"],
            # the loop's own cost: every stage but the planner call (sum of per-stage medians)
            "other_stages_p50_ms": sum(v["p50_ms"] for k, v in s["stages"].items() if k != "plan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/default", help="bundle folder (default models/default)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of the 20 Hz run (report: 120)")
    p.add_argument("--precisions", default="fp32,int8", help="planner variants timed at 20 Hz")
    p.add_argument("--rates", default="20,30,50,75,100,150,200", help="rates (Hz) of the sweep")
    p.add_argument("--sweep-duration", type=float, default=10.0, help="seconds per rate of the sweep")
    p.add_argument("--episodes", type=int, default=50, help="planning-success episodes (report: 50; 0 skips)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second (success part)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)

    from edge.bundle import load_bundle
    from edge.run import resolve_bundle_path

    bundle = load_bundle(resolve_bundle_path(a.bundle))
    precisions = [x for x in a.precisions.split(",") if x in bundle.planner.variants]
    report: dict = {"bundle": str(bundle.path), "bundle_sha256": bundle.sha256,
                    "planner": {k: getattr(bundle.planner, k) for k in ("N", "H", "J", "E")},
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "loadavg_start": os.getloadavg()},
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    print(f"== 20 Hz for {a.duration:g} s per precision ({', '.join(precisions)})", flush=True)
    report["rate20"] = {}
    for prec in precisions:
        s = run(["--bundle", str(bundle.path), "--precision", prec, "--rate", "20", "--duration", str(a.duration),
                 "--seed", str(a.seed), *NO_GOAL])
        report["rate20"][prec] = timing_row(s)
    if "fp32" in report["rate20"] and "int8" in report["rate20"]:
        f, i = report["rate20"]["fp32"], report["rate20"]["int8"]
        report["rate20"]["plan_p50_ratio_fp32_over_int8"] = f["plan_p50_ms"] / i["plan_p50_ms"]

    print(f"== rate sweep {a.rates} Hz, {a.sweep_duration:g} s each", flush=True)
    report["sweep"] = {}
    best = None
    for rate in [float(r) for r in a.rates.split(",")]:
        s = run(["--bundle", str(bundle.path), "--rate", str(rate), "--duration", str(a.sweep_duration),
                 "--seed", str(a.seed), *NO_GOAL])
        row = timing_row(s)
        report["sweep"][f"{rate:g}"] = row
        if row["missed_deadlines"] == 0:
            best = rate if best is None else max(best, rate)
    report["highest_rate_without_missed_deadline_hz"] = best
    base = report["rate20"].get("fp32") or next(v for v in report["rate20"].values() if isinstance(v, dict))
    # the rate whose period the measured tick latency fits in (median / p99 tick of the 20 Hz run)
    report["rate_capacity_hz"] = {"from_p50": 1000.0 / base["p50_ms"], "from_p99": 1000.0 / base["p99_ms"]}

    if a.episodes > 0:
        print(f"== planning success over {a.episodes} episodes (time scale {a.time_scale:g})", flush=True)
        t0 = time.monotonic()
        s = run(["--bundle", str(bundle.path), "--episodes", str(a.episodes), "--seed", str(a.seed),
                 "--time-scale", str(a.time_scale)])
        eps = s["episode_results"]
        k = sum(e["goal_reached"] for e in eps)
        report["success"] = {"episodes": len(eps), "successes": k, "success_rate": k / max(len(eps), 1),
                             "ticks_to_goal_median": sorted(e["ticks"] for e in eps if e["goal_reached"])[k // 2]
                             if k else None,
                             "time_scale": a.time_scale, "wall_s": time.monotonic() - t0,
                             "missed_deadlines": s["overruns"], "tick_p99_ms": s["tick_ms"]["p99"]}
    report["machine"]["loadavg_end"] = os.getloadavg()

    print(f"\nbundle {bundle.path} (N={bundle.planner.N} H={bundle.planner.H} J={bundle.planner.J}); "
          f"load average at start {report['machine']['loadavg_start'][0]:.1f}")
    print(f"{'run':<18}{'ticks':>7}{'Hz':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'deadline':>10}{'missed':>8}"
          f"{'skipped':>9}{'plan p50':>10}{'rest p50':>10}")
    rows = [(f"20 Hz {k}", v) for k, v in report["rate20"].items() if isinstance(v, dict)]
    rows += [(f"sweep {k} Hz", v) for k, v in report["sweep"].items()]
    for name, r in rows:
        print(f"{name:<18}{r['ticks']:>7}{r['achieved_rate_hz'] or 0:>7.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['max_ms']:>9.2f}{r['deadline_ms']:>10.1f}{r['missed_deadlines']:>8}{r['skipped_slots']:>9}"
              f"{r['plan_p50_ms']:>10.2f}{r['other_stages_p50_ms']:>10.2f}")
    if "plan_p50_ratio_fp32_over_int8" in report["rate20"]:
        print(f"plan p50 fp32 / int8 in the loop: {report['rate20']['plan_p50_ratio_fp32_over_int8']:.2f}x")
    print(f"highest rate without a missed deadline: {best} Hz; the 20 Hz run's tick latency fits a period "
          f"of {report['rate_capacity_hz']['from_p50']:.0f} Hz (p50) / {report['rate_capacity_hz']['from_p99']:.0f} Hz (p99)")
    if "success" in report:
        sc = report["success"]
        print(f"planning success: {sc['successes']}/{sc['episodes']} = {sc['success_rate']:.0%} "
              f"(median {sc['ticks_to_goal_median']} ticks to goal, {sc['wall_s']:.0f} s wall)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
