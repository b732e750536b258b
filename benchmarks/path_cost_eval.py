"""Planning success with and without the kinematic-path planner terms (training/path_cost.py).

Example (docs/TRAINING.md items 13-14; the default grid took 12 min on 2 CPU cores)::

    python -m edge.sim.collect --episodes 512 --steps 200 --out data/sensor --seed 0
    nice -n 5 python -m training.train configs/sensor_default.yaml
    nice -n 5 python benchmarks/path_cost_eval.py --run runs/sensor_default
    # the camera model distilled from it (docs/TRAINING.md item 14), alone and with both terms:
    nice -n 5 python benchmarks/path_cost_eval.py --run runs/camera_distilled --settings alone,both \
        --single-seed-settings "" --out benchmarks/results/path_cost_eval_camera.json

Each setting is a named set of ``planner.*`` overrides (``SETTINGS``); each runs ``edge-eval``
on the same ``--episodes`` other-room episodes (start and goal on opposite sides of the
dividing wall, random walls) for every seed in ``--seeds``. The table gives successes per seed
and pooled over the seeds, with the Wilson 95% interval of the pooled rate, the mean steps to
the goal and the batched planning time per tick. Reports go under ``RUN/path_cost_eval/``
(kept: a rerun reuses a finished ``eval.json`` unless ``--rerun``). Writes
``benchmarks/results/path_cost_eval.json`` and a bar chart beside it (``.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS: dict[str, list[str]] = {
    "alone": [],
    "clearance": ["planner.clearance=20"],
    "visit": ["planner.visit=2"],
    "both": ["planner.clearance=20", "planner.visit=2"],
    "both_memory60": ["planner.clearance=20", "planner.visit=1", "planner.visit_memory=60"],
}


def _evaluate(run: Path, setting: str, seed: int, episodes: int, max_steps: int | None, rerun: bool) -> dict:
    out = run / "path_cost_eval" / (f"{setting}_s{seed}_n{episodes}" + ("" if max_steps is None else f"_t{max_steps}"))
    report = out / "eval.json"
    if report.is_file() and not rerun:
        return json.loads(report.read_text())
    cmd = [sys.executable, "-m", "training.evaluate", str(run), "--episodes", str(episodes), "--seed", str(seed),
           "--gifs", "0", "--no-diagnostics", "--out", str(out), *SETTINGS[setting], "train.threads=1"]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"edge-eval {run} {' '.join(SETTINGS[setting])} --seed {seed} failed "
                           f"(exit {r.returncode}): {r.stderr.strip()[-600:]}")
    return json.loads(report.read_text())


def summarise(setting: str, reports: dict[int, dict]) -> dict:
    """Pool one setting's per-seed reports: successes per seed, pooled rate and Wilson interval."""
    from training.evaluate import wilson_interval

    k = sum(r["planning"]["successes"] for r in reports.values())
    n = sum(r["planning"]["episodes"] for r in reports.values())
    steps = [(r["planning"]["steps_to_goal_mean"], r["planning"]["successes"]) for r in reports.values()
             if r["planning"]["successes"]]
    lo, hi = wilson_interval(k, n)
    return {
        "setting": setting,
        "overrides": SETTINGS[setting],
        "per_seed": {str(s): {"successes": r["planning"]["successes"], "episodes": r["planning"]["episodes"],
                              "steps_to_goal_mean": r["planning"]["steps_to_goal_mean"],
                              "batched_plan_time_s_per_tick": r["planning"]["batched_plan_time_s_per_tick"],
                              "single_plan_time": r.get("timing")}
                     for s, r in sorted(reports.items())},
        "successes": k,
        "episodes": n,
        "success_rate": k / n,
        "success_ci95": [lo, hi],
        "steps_to_goal_mean": sum(m * c for m, c in steps) / k if k else None,
        "batched_plan_time_s_per_tick_mean": sum(r["planning"]["batched_plan_time_s_per_tick"]
                                                 for r in reports.values()) / len(reports),
        "planner": next(iter(reports.values()))["planner"],
    }


def table(rows: list[dict], seeds: list[int]) -> str:
    head = "| setting | overrides | " + " | ".join(f"seed {s}" for s in seeds) + \
           " | pooled (Wilson 95%) | steps to goal | plan s/tick |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lo, hi = r["success_ci95"]
        per = [f"{r['per_seed'][str(s)]['successes']}/{r['per_seed'][str(s)]['episodes']}"
               if str(s) in r["per_seed"] else "" for s in seeds]
        steps = f"{r['steps_to_goal_mean']:.0f}" if r["steps_to_goal_mean"] is not None else "-"
        lines.append("| " + " | ".join([r["setting"], " ".join(r["overrides"]) or "(the model alone)", *per,
                                         f"{r['successes']}/{r['episodes']} = {r['success_rate']:.1%} "
                                         f"({lo:.1%}-{hi:.1%})", steps,
                                         f"{r['batched_plan_time_s_per_tick_mean']:.3f}"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, goal: float = 0.95) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    x = range(len(rows))
    rates = [r["success_rate"] * 100 for r in rows]
    err = [[(r["success_rate"] - r["success_ci95"][0]) * 100 for r in rows],
           [(r["success_ci95"][1] - r["success_rate"]) * 100 for r in rows]]
    ax.bar(x, rates, yerr=err, capsize=4, color="#4c78a8")
    ax.axhline(goal * 100, color="#e45756", ls="--", lw=1, label=f"goal {goal:.0%}")
    for i, r in enumerate(rows):
        ax.text(i, 2, f"{r['successes']}/{r['episodes']}", ha="center", color="white", fontsize=8)
    ax.set_xticks(list(x), [r["setting"] for r in rows], rotation=20)
    ax.set_ylabel("other-room success %")
    ax.set_ylim(0, 100)
    ax.set_title("planning success by planner path terms (Wilson 95%)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/sensor_default", help="run folder written by edge-train")
    ap.add_argument("--settings", default="alone,clearance,visit,both",
                    help=f"comma list among {', '.join(SETTINGS)} (default: alone,clearance,visit,both)")
    ap.add_argument("--seeds", default="1000,2000,3000,4000", help="episode seeds, comma list (100 episodes each by default)")
    ap.add_argument("--single-seed-settings", default="clearance,visit",
                    help="settings evaluated on the first seed only (they are ablations; default clearance,visit)")
    ap.add_argument("--episodes", type=int, default=100, help="episodes per seed")
    ap.add_argument("--max-steps", type=int, help="step budget per episode (default: the run's eval.max_steps)")
    ap.add_argument("--jobs", type=int, default=2, help="evaluations at once (one CPU thread each)")
    ap.add_argument("--rerun", action="store_true", help="re-evaluate even where a report exists")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/path_cost_eval.json"))
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    single = {s.strip() for s in args.single_seed_settings.split(",") if s.strip()}
    unknown = [s for s in names + sorted(single) if s not in SETTINGS]
    if unknown:
        print(f"path_cost_eval: error: unknown setting(s) {unknown}; choose from {list(SETTINGS)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"path_cost_eval: error: --seeds must be integers separated by commas, got {args.seeds!r}", file=sys.stderr)
        return 2
    if not seeds or args.episodes < 1 or args.jobs < 1:
        print("path_cost_eval: error: need at least one seed, --episodes >= 1 and --jobs >= 1", file=sys.stderr)
        return 2
    run = Path(args.run)
    if not (run / "model.safetensors").is_file():
        print(f"path_cost_eval: error: {run} has no model.safetensors; train one first with "
              "`python -m training.train configs/sensor_default.yaml` (see this script's --help)", file=sys.stderr)
        return 2
    jobs = [(name, seed) for name in names for seed in (seeds[:1] if name in single else seeds)]
    print(f"path_cost_eval of {run}: {len(jobs)} evaluations of {args.episodes} episodes, {args.jobs} at once", flush=True)
    t0 = time.monotonic()
    done = 0

    def one(job: tuple[str, int]) -> tuple[str, int, dict]:
        nonlocal done
        name, seed = job
        rep = _evaluate(run, name, seed, args.episodes, args.max_steps, args.rerun)
        done += 1
        p = rep["planning"]
        print(f"  [{done}/{len(jobs)}] {name} seed {seed}: {p['successes']}/{p['episodes']} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
        return name, seed, rep

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, jobs))
    rows = [summarise(name, {seed: rep for n, seed, rep in results if n == name}) for name in names]
    print(table(rows, seeds))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "episodes_per_seed": args.episodes, "seeds": seeds,
                               "max_steps": args.max_steps, "goal_room": "other", "rows": rows,
                               "wall_s": round(time.monotonic() - t0, 1)}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
