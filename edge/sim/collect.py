"""edge-collect: write a dataset of simulated two-rooms episodes (sharded, compressed).

Example:
    edge-collect --episodes 512 --steps 200 --out data/tworooms --camera --workers 2 --seed 0 --preview

Each shard holds ``--shard-episodes`` episodes simulated together (vectorised). Shard ``i`` is
seeded from ``SeedSequence(seed).spawn`` so the dataset does not depend on ``--workers``.
Writes ``DIR/shard-00000.npz ...`` and ``DIR/index.json`` (lengths, sha256, config); the
schema is ``docs/DATASET.md``. ``--preview`` also writes ``DIR/preview.gif`` (top-down view and
camera of the first episode).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from edge.sim.dataset import DatasetError, SCHEMA_VERSION, write_index, write_shard
from edge.sim.env import BatchSim, SimConfig
from edge.sim.policies import ExplorationConfig, ExplorationPolicy, door_crossing_fraction, rollout


def collect_shard(cfg: SimConfig, n_episodes: int, steps: int, camera: bool, seed_seq: np.random.SeedSequence,
                  path: Path, policy_cfg: ExplorationConfig) -> dict:
    """Simulate ``n_episodes`` episodes of ``steps`` steps and write them to ``path``.

    Returns the shard index entry plus ``door_crossing`` (fraction of episodes that changed room).
    """
    sim_seed, pol_seed = (int(s.generate_state(1)[0]) for s in seed_seq.spawn(2))
    sim = BatchSim(cfg, n_episodes, camera=camera, seed=sim_seed)
    sim.reset()
    policy = ExplorationPolicy(sim, policy_cfg, seed=pol_seed)
    ep = rollout(sim, policy, steps)
    ep["layout"] = sim.layout.as_array()
    ep["goal"] = sim.goal.astype(np.float32)
    meta = {
        "config": asdict(cfg),
        "policy": asdict(policy_cfg),
        "normalisation": cfg.normalisation().as_dict(),
        "seed_entropy": str(seed_seq.entropy),
        "seed_spawn_key": list(seed_seq.spawn_key),
    }
    entry = write_shard(path, ep, meta)
    entry["door_crossing"] = door_crossing_fraction(ep["true_pose"], sim.layout.wall_x)
    return entry


def _worker(args):
    return collect_shard(*args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-collect",
        description=__doc__.split("\n\n")[0],
        epilog="example: edge-collect --episodes 512 --steps 200 --out data/tworooms --camera --workers 2 --seed 0 --preview",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--episodes", type=int, required=True, help="number of episodes")
    p.add_argument("--steps", type=int, required=True, help="control steps per episode (20 Hz)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; must not hold shards)")
    p.add_argument("--camera", action="store_true", help="also record 64x64 camera frames")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--shard-episodes", type=int, default=64, help="episodes per shard (default 64)")
    p.add_argument("--layout", choices=["random", "fixed"], default="random", help="wall/door layout mode")
    p.add_argument("--range-noise", type=float, default=0.01, help="range noise std in m (default 0.01)")
    p.add_argument("--range-dropout", type=float, default=0.01, help="range dropout probability (default 0.01)")
    p.add_argument("--slip", type=float, default=0.02, help="wheel slip std fraction (default 0.02)")
    p.add_argument("--p-direct", type=float, default=0.0,
                   help="probability a route heads straight for the other room, ignoring the door, so the data "
                        "shows the dividing wall stopping the robot (default 0)")
    p.add_argument("--p-push", type=float, default=0.0,
                   help="probability the robot keeps pushing after a collision instead of backing up (default 0)")
    p.add_argument("--preview", action="store_true", help="write preview.gif of the first episode")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that already has shards")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("episodes", "steps", "workers", "shard_episodes"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        base = SimConfig()
        cfg = replace(
            base,
            world=replace(base.world, layout=args.layout),
            ranges=replace(base.ranges, noise_std=args.range_noise, dropout_prob=args.range_dropout),
            robot=replace(base.robot, slip_std=args.slip),
        )
        for name in ("p_direct", "p_push"):
            if not (0.0 <= getattr(args, name) <= 1.0):
                raise ValueError(f"--{name.replace('_', '-')} is a probability: give a value in [0, 1], got {getattr(args, name)}")
        policy_cfg = ExplorationConfig(p_direct=args.p_direct, p_push=args.p_push)
        out: Path = args.out
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the output folder --out {out} ({e.strerror}); choose a writable path") from e
        if any(out.glob("shard-*.npz")) and not args.overwrite:
            raise ValueError(f"{out} already holds shards; choose a new --out or pass --overwrite")
    except (ValueError, OSError) as e:
        print(f"edge-collect: error: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    n_shards = -(-args.episodes // args.shard_episodes)
    seqs = np.random.SeedSequence(args.seed).spawn(n_shards)
    jobs = []
    for i in range(n_shards):
        n = min(args.shard_episodes, args.episodes - i * args.shard_episodes)
        jobs.append((cfg, n, args.steps, args.camera, seqs[i], out / f"shard-{i:05d}.npz", policy_cfg))
    t0 = time.perf_counter()
    entries = []
    bar = tqdm(total=args.episodes * args.steps, unit="tr", desc="edge-collect", dynamic_ncols=True)
    try:
        if args.workers == 1:
            results = map(_worker, jobs)
        else:
            pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"))
            results = pool.map(_worker, jobs)
        for entry in results:
            entries.append(entry)
            bar.update(entry["episodes"] * entry["steps"])
    finally:
        bar.close()
        if args.workers > 1:
            pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - t0
    transitions = args.episodes * args.steps
    crossing = float(np.average([e["door_crossing"] for e in entries], weights=[e["episodes"] for e in entries]))
    write_index(out, entries, {
        "config": asdict(cfg),
        "normalisation": cfg.normalisation().as_dict(),
        "camera": bool(args.camera),
        "seed": args.seed,
        "door_crossing_fraction": crossing,
        "created_by": "edge-collect " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    print(
        f"wrote {len(entries)} shards, {args.episodes} episodes, {transitions} transitions to {out} "
        f"in {elapsed:.1f} s ({transitions / elapsed:.0f} transitions/s); "
        f"{crossing:.0%} of episodes crossed the door; schema v{SCHEMA_VERSION}"
    )
    if args.preview:
        from edge.sim.view import write_episode_preview

        try:
            path = write_episode_preview(out / entries[0]["file"], 0, out / "preview.gif")
        except DatasetError as e:
            print(f"edge-collect: error: {e}", file=sys.stderr)
            return 1
        print(f"preview: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
