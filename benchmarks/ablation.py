"""Ablation of the JEPA objective: train one variant per removed term, plan with each, tabulate.

Example (the table in the default model card; ~40 min on 2 CPU cores)::

    nice -n 5 python benchmarks/ablation.py --config configs/sensor_default.yaml --episodes 50 --jobs 2

Each variant is ``--config`` plus dotted overrides (``VARIANTS``): every regulariser switched
off in turn and the three target-encoder modes. Each is trained from scratch with the same
seed and data, then evaluated by ``edge-eval`` (closed-loop planning, goal in the other room;
``--same-room`` adds goals in the start room, which isolates local accuracy from finding the
door). Collapse monitors (embedding std, effective rank) come from the last epoch's
validation. Runs go under ``--runs`` (kept, so a rerun skips trained variants unless
``--retrain``). Prints a Markdown table and writes ``benchmarks/results/ablation.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no_variance": ["objective.variance=0"],
    "no_covariance": ["objective.covariance=0"],
    "no_idm": ["objective.idm=0"],
    "no_distance": ["objective.distance=0"],
    "no_distance_temporal1": ["objective.distance=0", "objective.temporal=1"],
    "target_vjepa2": ["objective.target_mode=vjepa2"],
    "target_none": ["objective.target_mode=none"],
}


def _train(config: str, name: str, overrides: list[str], runs: Path, retrain: bool) -> Path:
    out = runs / name
    if (out / "model.safetensors").is_file() and not retrain:
        return out
    cmd = [sys.executable, "-m", "training.train", config, *overrides, f"train.out_dir={out}", "train.progress=false",
           "train.threads=1"]
    log = runs / f"{name}.train.log"
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {r.returncode}); see {log}")
    return out


def _evaluate(run: Path, episodes: int, goal_room: str, seed: int) -> dict:
    out = run / f"eval_{goal_room}"
    cmd = [sys.executable, "-m", "training.evaluate", str(run), "--episodes", str(episodes), "--seed", str(seed),
           "--gifs", "0", "--no-diagnostics", "--goal-room", goal_room, "--out", str(out), "train.threads=1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"edge-eval {run} failed: {r.stderr.strip()[-400:]}")
    return json.loads((out / "eval.json").read_text())["planning"]


def _last_metrics(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return {k: float(v) for k, v in rows[-1].items()}


def run_variant(name: str, args) -> dict:
    t0 = time.monotonic()
    run = _train(args.config, name, VARIANTS[name], Path(args.runs), args.retrain)
    m = _last_metrics(run)
    row = {"variant": name, "overrides": VARIANTS[name], "emb_std": m.get("emb_std"), "eff_rank": m.get("eff_rank"),
           "val_pred": m.get("val_pred"), "train_time_s": m.get("time_s")}
    other = _evaluate(run, args.episodes, "other", args.seed)
    row.update(other_successes=other["successes"], other_rate=other["success_rate"], other_ci95=other["success_ci95"])
    if args.same_room:
        same = _evaluate(run, args.episodes, "same", args.seed)
        row.update(same_successes=same["successes"], same_rate=same["success_rate"], same_ci95=same["success_ci95"])
    row["wall_s"] = round(time.monotonic() - t0, 1)
    print(f"  {name}: other-room {other['successes']}/{args.episodes}"
          + (f", same-room {row['same_successes']}/{args.episodes}" if args.same_room else "")
          + f" ({row['wall_s']:.0f} s)", flush=True)
    return row


def table(rows: list[dict], episodes: int, same_room: bool) -> str:
    head = "| variant | overrides | other-room success | " + ("same-room success | " if same_room else "") + \
           "emb std | eff. rank | val pred |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lo, hi = r["other_ci95"]
        cells = [r["variant"], " ".join(r["overrides"]) or "(config as is)",
                 f"{r['other_successes']}/{episodes} ({lo:.0%}-{hi:.0%})"]
        if same_room:
            slo, shi = r["same_ci95"]
            cells.append(f"{r['same_successes']}/{episodes} ({slo:.0%}-{shi:.0%})")
        cells += [f"{r['emb_std']:.3f}", f"{r['eff_rank']:.1f}", f"{r['val_pred']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sensor_default.yaml", help="base training config")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list among {', '.join(VARIANTS)}")
    ap.add_argument("--episodes", type=int, default=50, help="planning episodes per variant and goal room")
    ap.add_argument("--seed", type=int, default=1000, help="evaluation episode seed (same episodes for every variant)")
    ap.add_argument("--same-room", action="store_true", help="also evaluate goals in the start room")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained/evaluated at once (one CPU thread each)")
    ap.add_argument("--runs", default="runs/ablation", help="where variant runs are written (and reused)")
    ap.add_argument("--retrain", action="store_true", help="retrain variants that already have a checkpoint")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ablation.json"))
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"ablation: error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    if args.episodes < 1 or args.jobs < 1:
        print("ablation: error: --episodes and --jobs must be >= 1", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"ablation: error: no config {args.config}", file=sys.stderr)
        return 2
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    print(f"ablation of {args.config}: {len(names)} variants, {args.episodes} episodes each, {args.jobs} at once")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda n: run_variant(n, args), names))
    md = table(rows, args.episodes, args.same_room)
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "episodes": args.episodes, "seed": args.seed,
                                          "rows": rows, "markdown": md}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
