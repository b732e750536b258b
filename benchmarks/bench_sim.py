"""Simulator throughput: env steps/s (range sensors only, and with the camera) and edge-collect
transitions/s, on one core.

    python benchmarks/bench_sim.py [--quick]

Throughput is reported per wall-clock second and per CPU second of this (single-threaded)
process; on a shared machine the CPU-second figure is the single-core number. Batched stepping
(``BatchSim``, vectorised over episodes) is compared with the single-episode
Gymnasium env in the same run; the full physics runs in every case (4 substeps with exact swept
collisions, 8 raycasts per robot, camera raycasts + floor casting per pixel). Prints a table and
writes ``benchmarks/results/bench_sim.json``.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edge.sim.camera import Camera  # noqa: E402
from edge.sim.collect import collect_shard  # noqa: E402
from edge.sim.env import BatchSim, SimConfig, TwoRoomsEnv  # noqa: E402
from edge.sim.policies import ExplorationConfig, ExplorationPolicy, door_crossing_fraction, rollout  # noqa: E402


class Timer:
    """Wall-clock and process CPU time of a block. On a shared machine the CPU-time rate is the
    fairer single-core figure (the process is single-threaded)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0

    def rates(self, n: float) -> tuple[float, float]:
        return n / self.wall, n / max(self.cpu, 1e-9)


def bench_batch(cfg: SimConfig, b: int, steps: int, camera: bool) -> tuple[float, float]:
    sim = BatchSim(cfg, b, camera=camera, seed=0)
    sim.reset()
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (steps, b, 2))
    sim.step(acts[0])
    with Timer() as t:
        for a in acts:
            sim.step(a)
    return t.rates(b * steps)


def bench_gym(steps: int, camera: bool) -> tuple[float, float]:
    env = TwoRoomsEnv(camera=camera)
    env.reset(seed=0)
    acts = np.random.default_rng(0).uniform(-1, 1, (steps, 2)).astype(np.float32)
    with Timer() as t:
        for a in acts:
            env.step(a)
    return t.rates(steps)


def bench_render(cfg: SimConfig, b: int, reps: int) -> tuple[float, float]:
    sim = BatchSim(cfg, b, seed=0)
    sim.reset()
    cam = Camera(cfg.camera, cfg.world)
    cam.render(sim.robot.pose, sim.seg, sim.layout.wall_x)
    with Timer() as t:
        for _ in range(reps):
            cam.render(sim.robot.pose, sim.seg, sim.layout.wall_x)
    return t.rates(b * reps)


def bench_collect(cfg: SimConfig, episodes: int, steps: int, camera: bool) -> tuple[tuple[float, float], float]:
    with tempfile.TemporaryDirectory() as d:
        with Timer() as t:
            entry = collect_shard(cfg, episodes, steps, camera, np.random.SeedSequence(0), Path(d) / "s.npz",
                                  ExplorationConfig())
        return t.rates(episodes * steps), entry["door_crossing"]


def door_crossing(cfg: SimConfig, episodes: int, steps: int, policy_cfg: ExplorationConfig) -> float:
    sim = BatchSim(cfg, episodes, seed=0)
    sim.reset()
    ep = rollout(sim, ExplorationPolicy(sim, policy_cfg, seed=0), steps)
    return door_crossing_fraction(ep["true_pose"], sim.layout.wall_x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="example: python benchmarks/bench_sim.py")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = p.parse_args(argv)
    q = 0.2 if args.quick else 1.0
    cfg = SimConfig()
    rows = []

    def row(name, b, rates, unit):
        wall, cpu = rates
        rows.append({"case": name, "batch": b, "per_wall_s": round(wall, 1), "per_cpu_s": round(cpu, 1), "unit": unit})
        print(f"{name:<34} {b:>6} {wall:>12,.0f} {cpu:>12,.0f} {unit:<14}", flush=True)

    print(f"{'case':<34} {'batch':>6} {'per wall s':>12} {'per CPU s':>12} {'unit':<14}")
    g1 = bench_gym(int(2000 * q), camera=False)
    row("gym env, ranges only", 1, g1, "steps/s")
    for b in (1, 64, 256, 1024):
        row("BatchSim, ranges only", b, bench_batch(cfg, b, max(20, int(20000 * q / b)), False), "steps/s")
    gc = bench_gym(int(500 * q), camera=True)
    row("gym env, camera", 1, gc, "frames/s")
    for b in (16, 64, 256):
        row("BatchSim, camera (step+render)", b, bench_batch(cfg, b, max(5, int(4000 * q / b)), True), "frames/s")
    for b in (64, 256):
        row("camera render only", b, bench_render(cfg, b, max(5, int(4000 * q / b))), "frames/s")
    tr, cross = bench_collect(cfg, 64, int(200 * q), camera=False)
    row("edge-collect shard, ranges only", 64, tr, "transitions/s")
    trc, _ = bench_collect(cfg, 64, int(100 * q), camera=True)
    row("edge-collect shard, camera", 64, trc, "transitions/s")
    crossing = {}
    for steps in (100, 300):
        crossing[f"mixed_{steps}_steps"] = door_crossing(cfg, 128, steps, ExplorationConfig())
        crossing[f"random_only_{steps}_steps"] = door_crossing(
            cfg, 128, steps, ExplorationConfig(p_waypoint=0.0, p_switch=0.0))
    print("door-crossing fraction (128 episodes): " + ", ".join(f"{k} {v:.0%}" for k, v in crossing.items()))
    best_range = max(r["per_cpu_s"] for r in rows if r["case"] == "BatchSim, ranges only")
    best_cam = max(r["per_cpu_s"] for r in rows if r["case"] == "BatchSim, camera (step+render)")
    ratios = {"batched_vs_gym_ranges": round(best_range / g1[1], 1), "batched_vs_gym_camera": round(best_cam / gc[1], 1)}
    goals = {"ranges_steps_per_s": {"goal": 20000, "best_batched_per_cpu_s": best_range, "met": best_range >= 20000},
             "camera_frames_per_s": {"goal": 2000, "best_batched_per_cpu_s": best_cam, "met": best_cam >= 2000}}
    for k, g in goals.items():
        print(f"goal {k} >= {g['goal']:,}: best batched {g['best_batched_per_cpu_s']:,.0f} per CPU s -> "
              f"{'met' if g['met'] else 'NOT met'}")
    print(f"batched / single-episode gym: ranges {ratios['batched_vs_gym_ranges']}x, camera {ratios['batched_vs_gym_camera']}x;"
          f" door crossing in the collect run: {cross:.0%}")
    out = Path(__file__).resolve().parent / "results" / "bench_sim.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rows": rows, "ratios": ratios, "goals": goals, "door_crossing_fraction": crossing, "quick": args.quick,
        "machine": {"python": sys.version.split()[0], "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
                    "load_avg_1m": os.getloadavg()[0]},
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
