"""Planner latency with and without the planning-head warm start (interleaved, same process).

Example::

    nice -n 10 python benchmarks/bench_plan_head.py --run runs/sensor_default --head runs/plan_head_default \
        --samples 128 --calls 100

(the runs come from ``edge-train configs/sensor_default.yaml`` and the ``training.plan_head``
commands of docs/IJEPA.md section 3).

Times one single-robot control decision with the torch reference planner (N samples, H
steps) at J=3 (warm start: previous plan) and at J=1 with the head's plan as the warm start
(head call included), plus the head alone; the three are interleaved call by call so machine
load hits them equally. Also reads the closed-loop success tables written by
``python -m training.plan_head evaluate --out benchmarks/results/plan_head_*.json`` when
present. Prints a table and writes ``benchmarks/results/plan_head_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/sensor_default", help="world-model run (edge-train output)")
    ap.add_argument("--head", default="runs/plan_head_default", help="plan head (python -m training.plan_head train)")
    ap.add_argument("--samples", type=int, default=128, help="MPPI samples N (the shipped planner: 128)")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/plan_head_latency.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import dataclasses

    from training.plan_head import _load_wm, load_head
    from training.planner import plan

    wm = _load_wm(args.run)
    head = load_head(args.head)
    base = dataclasses.replace(wm.config.planner, samples=args.samples)
    cfgs = {"J3": dataclasses.replace(base, iterations=3), "J1_head": dataclasses.replace(base, iterations=1)}
    e, h = wm.config.model.embed_dim, base.horizon
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"planner_J3": [], "head_warm_J1": [], "head_only": []}
    for i in range(args.calls + 5):
        z0, zg, pose4 = torch.randn(1, e, generator=g), torch.randn(1, e, generator=g), torch.rand(1, 4, generator=g)
        std = torch.full((h, 2), base.std_init)
        n3 = torch.randn(3, base.samples, h, 2, generator=g)
        t0 = time.perf_counter()
        plan(wm.predictor, z0[0], zg[0], torch.zeros(h, 2), std, n3, cfgs["J3"])
        t1 = time.perf_counter()
        with torch.no_grad():
            mean = head(z0, zg, pose4)[0]
        plan(wm.predictor, z0[0], zg[0], mean, std, n3[:1], cfgs["J1_head"])
        t2 = time.perf_counter()
        with torch.no_grad():
            head(z0, zg, pose4)
        t3 = time.perf_counter()
        if i >= 5:
            times["planner_J3"].append(t1 - t0)
            times["head_warm_J1"].append(t2 - t1)
            times["head_only"].append(t3 - t2)
    res = {k: {"median_ms": float(np.median(v) * 1e3), "p90_ms": float(np.percentile(v, 90) * 1e3)} for k, v in times.items()}
    res["speedup_J3_over_head_warm_J1"] = res["planner_J3"]["median_ms"] / res["head_warm_J1"]["median_ms"]
    out = {"run": args.run, "head": args.head, "N": args.samples, "H": h, "calls": args.calls, "torch_threads": 1,
           "latency": res, "closed_loop": {}}
    for mode in ("explore", "evaluate"):
        p = ROOT / f"benchmarks/results/plan_head_{mode}.json"
        if p.is_file():
            out["closed_loop"][mode] = [{k: r[k] for k in ("mode", "iterations", "successes", "episodes", "success_ci95",
                                                          "final_goal_distance_m_mean")}
                                        for r in json.loads(p.read_text())["results"]]
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{'decision':14s} {'median ms':>10s} {'p90 ms':>8s}   (N={args.samples}, H={h}, torch 1 thread, {args.calls} calls)")
    for k in ("planner_J3", "head_warm_J1", "head_only"):
        print(f"{k:14s} {res[k]['median_ms']:10.2f} {res[k]['p90_ms']:8.2f}")
    print(f"J=3 / (head + J=1): {res['speedup_J3_over_head_warm_J1']:.2f}x")
    for mode, rows in out["closed_loop"].items():
        for r in rows:
            lo, hi = r["success_ci95"]
            print(f"goals {mode:8s} {r['mode']:14s} J={r['iterations']}: {r['successes']}/{r['episodes']} "
                  f"(95% CI {lo:.0%}-{hi:.0%}), mean final distance {r['final_goal_distance_m_mean']:.2f} m")
    return 0


if __name__ == "__main__":
    sys.exit(main())
