"""edge-sim-view: picture of a simulated episode (top-down view and camera side by side).

Examples:
    edge-sim-view --shard data/tworooms/shard-00000.npz --episode 3 --out ep3.gif
    edge-sim-view --seed 7 --steps 200 --out fresh.png

From a shard it replays the recorded true poses; without ``--shard`` it simulates a fresh
episode with the exploration policy. ``.gif`` writes an animation, ``.png`` the last frame
with the whole trail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge.sim.camera import Camera, render_topdown
from edge.sim.dataset import DatasetError, read_shard
from edge.sim.env import BatchSim, SimConfig, side_by_side
from edge.sim.policies import ExplorationPolicy, rollout
from edge.sim.world import Layout, segments


def _config_from_meta(meta: dict) -> SimConfig:
    from dataclasses import fields

    from edge.sim.camera import CameraConfig
    from edge.sim.robot import RobotConfig
    from edge.sim.sensors import RangeConfig
    from edge.sim.world import WorldConfig

    c = meta.get("config")
    if not c:
        return SimConfig()
    tup = lambda d: {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    parts = {"world": WorldConfig, "robot": RobotConfig, "ranges": RangeConfig, "camera": CameraConfig}
    kw = {k: cls(**tup(c[k])) for k, cls in parts.items() if k in c}
    kw.update({f.name: c[f.name] for f in fields(SimConfig) if f.name not in parts and f.name in c})
    return SimConfig(**kw)


def episode_images(cfg: SimConfig, layout: Layout, true_pose: np.ndarray, goal: np.ndarray | None,
                   ranges: np.ndarray | None = None, every: int = 1) -> list[np.ndarray]:
    """RGB images (top-down | camera) for each ``every``-th pose of ``true_pose [T+1, 3]``."""
    cam = Camera(cfg.camera, cfg.world)
    seg = segments(cfg.world, layout)
    frames = []
    for t in range(0, len(true_pose), every):
        top = render_topdown(
            cfg.world, layout, true_pose[t], radius=cfg.robot.radius, goal=goal, goal_radius=cfg.success_radius,
            trail=true_pose[: t + 1, :2], ranges=None if ranges is None else ranges[t],
        )
        frame = cam.render(true_pose[t : t + 1].astype(np.float64), seg, layout.wall_x)[0]
        frames.append(side_by_side(top, frame))
    return frames


def save_images(frames: list[np.ndarray], out: Path, fps: float = 20.0) -> Path:
    """Write a GIF (all frames) or a PNG (the last frame), chosen by ``out``'s suffix."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(out, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    elif out.suffix.lower() == ".png":
        Image.fromarray(frames[-1]).save(out)
    else:
        raise ValueError(f"output must end in .gif or .png, got {out.name!r}")
    return out


def write_episode_preview(shard: Path, episode: int, out: Path, every: int = 2) -> Path:
    """Preview image/animation of episode ``episode`` of a shard."""
    d = read_shard(shard)
    n = d["action"].shape[0]
    if not (0 <= episode < n):
        raise DatasetError(f"{shard}: episode {episode} out of range (shard has {n})")
    cfg = _config_from_meta(d["meta"])
    layout = Layout.from_array(d["layout"][episode])
    frames = episode_images(cfg, layout, d["true_pose"][episode].astype(np.float64), d["goal"][episode],
                            d["ranges"][episode], every=every)
    return save_images(frames, out, fps=20.0 / every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edge-sim-view",
        description="Write a PNG/GIF of a simulated episode: top-down view and camera side by side.",
        epilog="example: edge-sim-view --shard data/tworooms/shard-00000.npz --episode 3 --out ep3.gif",
    )
    p.add_argument("--shard", type=Path, help="replay an episode of this shard (default: simulate a fresh one)")
    p.add_argument("--episode", type=int, default=0, help="episode index in the shard (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of a fresh episode (default 0)")
    p.add_argument("--steps", type=int, default=200, help="steps of a fresh episode (default 200)")
    p.add_argument("--layout", choices=["random", "fixed"], default="random", help="layout of a fresh episode")
    p.add_argument("--every", type=int, default=2, help="draw every n-th step in a GIF (default 2)")
    p.add_argument("--out", type=Path, required=True, help="output .gif or .png")
    args = p.parse_args(argv)
    try:
        if args.out.suffix.lower() not in (".gif", ".png"):
            raise ValueError(f"--out must end in .gif or .png, got {args.out.name!r}")
        if args.steps < 1 or args.every < 1:
            raise ValueError("--steps and --every must be >= 1")
        if args.shard is not None:
            path = write_episode_preview(args.shard, args.episode, args.out, every=args.every)
        else:
            from dataclasses import replace

            base = SimConfig()
            cfg = replace(base, world=replace(base.world, layout=args.layout))
            sim = BatchSim(cfg, 1, seed=args.seed)
            sim.reset()
            ep = rollout(sim, ExplorationPolicy(sim, seed=args.seed + 1), args.steps)
            frames = episode_images(cfg, sim.layout, ep["true_pose"][0].astype(np.float64), sim.goal[0],
                                    ep["ranges"][0], every=args.every)
            path = save_images(frames, args.out, fps=20.0 / args.every)
    except (ValueError, DatasetError, OSError) as e:
        print(f"edge-sim-view: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
