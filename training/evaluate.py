"""edge-eval: closed-loop planning in the simulator plus embedding-space diagnostics.

Example::

    python -m training.evaluate runs/sensor_default --episodes 100 --gifs 3
    python -m training.evaluate runs/sensor_default planner.samples=128 planner.iterations=2 --no-diagnostics
    python -m training.evaluate runs/cam_ijepa --imagine runs/decoder_cam        # -> runs/cam_ijepa/eval/imagine.gif

Planning: ``--episodes`` two-rooms episodes with random walls, start and goal in different
rooms (``BatchSim.reset(mode="evaluate")``), all stepped together; the torch reference MPPI/CEM
plans towards the embedding of an observation taken at the goal (random heading). Success:
the true robot centre within the simulator's ``success_radius`` of the goal within
``--max-steps``. Reports the success rate with a Wilson 95% interval, steps to goal (successes)
and planning time per control tick for one robot (median over single-episode plan calls).
The override ``eval.recovery=true`` adds ``edge-run``'s unsticking reflex and wall follower
(``edge.safety.StuckRecovery``: back off when a drive command leaves the robot still, then follow
the wall until the embedding distance to the goal is 3% below where it got stuck and the
planner's plan runs clear of the walls in view), so the figure matches what the runtime does;
off by default, it measures the world model and planner alone.
The overrides ``planner.clearance=20 planner.visit=2`` add the planner's
terms on the robot's own driven path (``training/path_cost.py``: a cost for paths into what the
range beams see, and for odometry places visited in the last few seconds), fed with the simulated
robot's ranges and odometry; docs/TRAINING.md item 13 has what they do to success.

Diagnostics on held-out episodes (``data.path``'s validation split): a ridge linear probe of
the true (x, y) from the embedding (R^2), prediction error vs horizon, and confidence
calibration (Spearman rank correlation of predicted vs realised error, binned plot). In the
simulator, whether the model knows the dividing wall blocks the robot (``training.walls``):
the share of held-action rollouts the predictor drives through the wall while the simulated
robot was stopped ("phantom crossings"), and how the embedding distance to a goal ranks against
the geodesic and the straight-line distance.

Writes ``OUT/eval.json``, ``OUT/episode_*.gif``, ``OUT/calibration.png``, ``OUT/error_vs_horizon.png``
(``OUT`` defaults to ``RUN_DIR/eval``).

Imagine (``--imagine DECODER_DIR``, a state decoder from ``python -m training.decoder train``):
from the start of an evaluation episode (``--seed``), plan with the reference MPPI (the run's
planner config plus the overrides), execute each plan open loop, and write a GIF
(``--imagine-out``, default ``OUT/imagine.gif``) with, per plan step, the real camera frame (or
range scan, drawn from above) on the left and the one decoded from the predictor's imagined
embedding on the right, plus ``imagine.json`` beside it (decoded-vs-real error per plan step).
With ``--imagine`` the planning episodes and diagnostics are skipped unless ``--episodes`` is
given. A decoder fit on another model (embedding size, encoder, or weights fingerprint) is
refused with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import CheckpointError, WorldModel, load_world_model
from training.config import Config, ConfigError, config_from_dict, parse_overrides, _merge
from training.data import DataError, WindowTensors, load_windows
from training.decoder import ENCODER_CHOICES, DecoderError, imagine
from training.jepa import pose4_from_sensor
from training.planner import MPCController, plan, plan_batch


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def rank(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        xs = x[order]
        i = 0
        while i < len(xs):
            j = i
            while j + 1 < len(xs) and xs[j + 1] == xs[i]:
                j += 1
            r[order[i : j + 1]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = rank(np.asarray(a, float)), rank(np.asarray(b, float))
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


class Encoder:
    """Observation dict (``sensor [B, 14]``, optional ``frame [B, 64, 64, 3]`` uint8) -> z [B, E]."""

    def __init__(self, wm: WorldModel):
        self.wm = wm
        self.camera = wm.config.model.kind == "camera"

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        sensor = torch.from_numpy(np.asarray(obs["sensor"], np.float32))
        if not self.camera:
            return self.wm.encoder(sensor)
        frame = torch.from_numpy(np.asarray(obs["frame"])).permute(0, 3, 1, 2).float().div_(255.0)
        return self.wm.encoder(frame, pose4_from_sensor(sensor))


def goal_heading(seed: int, episodes: int) -> np.ndarray:
    """``float64 [episodes]``: the heading (rad) of the goal observation in :func:`evaluation_episodes`."""
    return np.random.default_rng(seed + 1).uniform(-np.pi, np.pi, size=episodes)


def evaluation_episodes(wm: WorldModel, episodes: int, seed: int, goal_headings: int = 1, goal_room: str = "other"):
    """The planning episodes of ``edge-eval`` for ``seed``: ``(sim, obs, encode, z_goal)``.

    ``sim`` is a reset :class:`edge.sim.env.BatchSim` (``goal_room`` ``"other"``: the goal is
    behind the dividing wall; ``"same"``: in the start's room), ``obs`` its first observation,
    ``encode`` an :class:`Encoder` and ``z_goal [B, E]`` the goal embedding: the encoding of an
    observation taken at the goal with a random heading, or, with ``goal_headings = K > 1``,
    the mean over K evenly spaced headings there. Anything planning the same seed plans the
    same starts, goals, layouts and goal embeddings.
    """
    if goal_room not in ("other", "same"):
        raise ValueError(f"goal_room must be 'other' or 'same', got {goal_room!r}")
    from edge.sim.env import BatchSim, SimConfig

    camera = wm.config.model.kind == "camera"
    sim_cfg = SimConfig()
    sim = BatchSim(sim_cfg, episodes, camera=camera, seed=seed)
    obs = sim.reset(seed=seed, mode="evaluate" if goal_room == "other" else "same_room")
    encode = Encoder(wm)
    goal_sim = BatchSim(sim_cfg, episodes, camera=camera, seed=seed + 2)
    heading0 = goal_heading(seed, episodes)[:, None]
    z_goals = []
    for k in range(goal_headings):
        goal_pose = np.concatenate([sim.goal, heading0 + 2 * np.pi * k / goal_headings], axis=-1)
        z_goals.append(encode(goal_sim.reset(layout=sim.layout, start=goal_pose, goal=sim.goal)))
    return sim, obs, encode, torch.stack(z_goals).mean(0)


def run_episodes(wm: WorldModel, cfg: Config, episodes: int, max_steps: int, seed: int, gifs: int,
                 out_dir: Path | None, progress: bool = True, goal_headings: int = 1, goal_room: str = "other") -> dict:
    """Closed-loop planning episodes (:func:`evaluation_episodes`); returns the planning metrics (and writes GIFs).

    ``goal_headings`` and ``goal_room``: see :func:`evaluation_episodes` (``"same"`` isolates
    the model's local accuracy from finding the door).
    """
    sim, obs, encode, z_goal = evaluation_episodes(wm, episodes, seed, goal_headings, goal_room)
    ctl = make_controller(wm.predictor, cfg, sim, seed)
    recovery = make_recovery(cfg, sim, seed)
    success = np.zeros(episodes, bool)
    steps_to_goal = np.full(episodes, -1)
    collisions = np.zeros(episodes, int)
    n_gif = min(gifs, episodes) if out_dir is not None else 0
    frames: list[list[np.ndarray]] = [[] for _ in range(n_gif)]
    trails = [[sim.robot.pose[i, :2].copy()] for i in range(n_gif)]
    start_dist = sim.goal_distance().copy()
    t_plan = 0.0
    for t in tqdm(range(max_steps), desc="episodes", disable=not progress, leave=False):
        z = encode(obs)
        t0 = time.perf_counter()
        actions = ctl.act(z, z_goal, torch.from_numpy(~success), obs["ranges"], obs["pose"]).numpy()
        t_plan += time.perf_counter() - t0
        if recovery is not None:
            gd = torch.linalg.vector_norm(z - z_goal, dim=-1).numpy()
            actions = recovery_step(recovery, ctl, sim, obs, actions, ~success, gd)
        obs, info = sim.step(actions)
        collisions += info["collided"] & ~success
        new = info["success"] & ~success
        steps_to_goal[new] = t + 1
        success |= info["success"]
        for i in range(n_gif):
            trails[i].append(sim.robot.pose[i, :2].copy())
            if t % 3 == 0 and (not success[i] or steps_to_goal[i] == t + 1):
                frames[i].append(sim.render_topdown(i, trail=np.array(trails[i]), px_per_m=80.0))
        if success.all():
            break
    for i in range(n_gif):
        _write_gif(frames[i], out_dir / f"episode_{i:02d}_{'success' if success[i] else 'fail'}.gif")
    k = int(success.sum())
    lo, hi = wilson_interval(k, episodes)
    return {
        "episodes": episodes,
        "successes": k,
        "success_rate": k / episodes,
        "success_ci95": [lo, hi],
        "steps_to_goal_mean": float(steps_to_goal[success].mean()) if k else None,
        "steps_to_goal_median": float(np.median(steps_to_goal[success])) if k else None,
        "start_goal_distance_m_mean": float(start_dist.mean()),
        "final_goal_distance_m_mean_failures": float(sim.goal_distance()[~success].mean()) if k < episodes else 0.0,
        "final_goal_distance_m_mean": float(sim.goal_distance().mean()),
        "collision_steps_mean": float(collisions.mean()),
        "batched_plan_time_s_per_tick": t_plan / max(t + 1, 1),
        "recovery": recovery is not None,
        "recoveries_mean": float(recovery.count.mean()) if recovery is not None else 0.0,
        "wall_follows_mean": float(recovery.follows.mean()) if recovery is not None else 0.0,
        "wall_follow_s_mean": float(recovery.follow_ticks.mean() * sim.cfg.dt) if recovery is not None else 0.0,
    }


def make_controller(model, cfg: Config, sim, seed: int) -> MPCController:
    """The receding-horizon controller for the episodes of ``sim``: ``cfg.planner`` over
    ``model``, with the kinematic-path terms (:mod:`training.path_cost`) of the simulated robot
    when ``planner.clearance`` or ``planner.visit`` is on."""
    from training.path_cost import Kinematics
    from training.planner import make_path_cost

    rb = sim.cfg.robot
    kin = Kinematics(rb.wheel_radius, rb.wheel_base, rb.max_wheel_speed, sim.cfg.dt, cfg.data.action_repeat)
    return MPCController(model, cfg.planner, batch=sim.num_envs, seed=seed, action_repeat=cfg.data.action_repeat,
                         path_cost=make_path_cost(cfg.planner, kin, sim.cfg.ranges.max_range))


def make_recovery(cfg: Config, sim, seed: int):
    """The runtime's unsticking reflex (:class:`edge.safety.StuckRecovery`, default
    :class:`edge.config.RecoveryConfig`) for the episodes of ``sim`` when ``cfg.eval.recovery``
    is on, else None."""
    if not cfg.eval.recovery:
        return None
    from edge.config import RecoveryConfig
    from edge.safety import StuckRecovery

    return StuckRecovery(RecoveryConfig(), sim.cfg.dt, batch=sim.num_envs, seed=seed + 3)


def recovery_step(recovery, ctl: MPCController, sim, obs: dict, actions: np.ndarray, active: np.ndarray,
                  goal_distance: np.ndarray) -> np.ndarray:
    """One :meth:`edge.safety.StuckRecovery.step` for the episodes of ``sim``, as ``edge-run``
    calls it: with the ranges, the embedding distance to the goal and whether the controller's
    latest plan runs clear of the walls in view (:func:`edge.safety.plan_is_clear`). Returns
    the commands to send ``[B, 2]``."""
    from edge.safety import plan_is_clear

    rb = sim.cfg.robot
    clear = plan_is_clear(ctl.plan.numpy(), obs["ranges"], sim.cfg.dt, ctl.action_repeat,
                          rb.wheel_radius, rb.wheel_base, rb.max_wheel_speed)
    return recovery.step(actions, obs["pose"][:, :2], active, obs["ranges"], goal_distance, clear)[0]


def _write_gif(frames: list[np.ndarray], path: Path) -> None:
    from PIL import Image

    if not frames:
        return
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=150, loop=0)


def single_plan_time(wm: WorldModel, cfg: Config, calls: int = 30) -> dict:
    """Median / p90 wall time (ms) of one planning call for one robot (N x H x J, torch, this CPU),
    with the kinematic-path terms (:mod:`training.path_cost`, full memory) when they are on."""
    from edge.sim.env import SimConfig
    from training.path_cost import Kinematics
    from training.planner import make_path_cost

    p = cfg.planner
    e = cfg.model.embed_dim
    g = torch.Generator().manual_seed(0)
    z0, zg = torch.randn(1, e, generator=g), torch.randn(1, e, generator=g)
    mean, std = torch.zeros(1, p.horizon, 2), torch.full((1, p.horizon, 2), p.std_init)
    sim_cfg = SimConfig()
    rb = sim_cfg.robot
    path = make_path_cost(p, Kinematics(rb.wheel_radius, rb.wheel_base, rb.max_wheel_speed, sim_cfg.dt,
                                        cfg.data.action_repeat), sim_cfg.ranges.max_range)
    if path is not None:
        path.set(0.1 + 1.9 * torch.rand(1, 8, generator=g), torch.randn(1, p.visit_memory, 2, generator=g))
    times = []
    for _ in range(calls + 3):
        noise = torch.randn(p.iterations, 1, p.samples, p.horizon, 2, generator=g)
        t0 = time.perf_counter()
        plan_batch(wm.predictor, z0, zg, mean, std, noise, p, path=path)
        times.append(time.perf_counter() - t0)
    ms = np.array(times[3:]) * 1e3
    return {"plan_ms_median": float(np.median(ms)), "plan_ms_p90": float(np.percentile(ms, 90)),
            "torch_threads": torch.get_num_threads(), "path_terms": path is not None}


@torch.no_grad()
def diagnostics(wm: WorldModel, val: WindowTensors, out_dir: Path | None, max_windows: int = 4000) -> dict:
    """Linear probe of position, prediction error vs horizon, confidence calibration on held-out windows."""
    n = min(len(val), max_windows)
    g = torch.Generator().manual_seed(0)
    batch = val.batch(torch.randperm(len(val), generator=g)[:n])
    sensor, action = batch["sensor"], batch["action"]
    enc = wm.encoder

    def encode(i_slice):
        s = sensor[:, i_slice]
        flat = s.reshape(-1, s.shape[-1])
        if wm.config.model.kind == "sensor":
            z = enc(flat)
        else:
            f = batch["frame"][:, i_slice]
            z = enc(f.reshape(-1, *f.shape[-3:]), pose4_from_sensor(flat))
        return z.reshape(s.shape[0], s.shape[1], -1)

    z_all = encode(slice(None))  # [n, k+1, E]
    out: dict = {}
    # linear probe of true (x, y) (odometry pose if no ground truth) from z_t
    pose = batch.get("true_pose", batch.get("pose"))
    if pose is not None:
        x = z_all[:, 0].double()
        y = pose[:, 0, :2].double()
        half = n // 2
        xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
        lam = 1e-3 * torch.eye(xa.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(xa[:half].T @ xa[:half] + lam, xa[:half].T @ y[:half])
        pred = xa[half:] @ w
        ss_res = ((pred - y[half:]) ** 2).sum(0)
        ss_tot = ((y[half:] - y[half:].mean(0)) ** 2).sum(0)
        r2 = (1 - ss_res / ss_tot).tolist()
        out["probe_r2_x"], out["probe_r2_y"] = r2
        out["probe_rmse_m"] = float(((pred - y[half:]) ** 2).sum(1).mean().sqrt())
    # prediction error vs horizon (autoregressive from z_0)
    z_pred, conf = wm.predictor.unroll(z_all[:, 0], action)
    err = (z_pred - z_all[:, 1:]).pow(2).mean(-1)  # [n, k]
    out["pred_error_vs_horizon"] = err.mean(0).tolist()
    scale = z_all.reshape(-1, z_all.shape[-1]).var(0).mean().item()
    out["embedding_variance"] = scale
    out["pred_error_vs_horizon_relative"] = (err.mean(0) / max(scale, 1e-12)).tolist()
    c, e = conf.flatten().numpy(), err.flatten().numpy()
    out["confidence_spearman"] = spearman(c, e)
    out["confidence_mean_predicted"] = float(c.mean())
    out["confidence_mean_realised"] = float(e.mean())
    # binned calibration: deciles of predicted error
    edges = np.quantile(c, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, 9)
    out["calibration_bins"] = [
        {"predicted": float(c[bins == b].mean()), "realised": float(e[bins == b].mean()), "count": int((bins == b).sum())}
        for b in range(10) if (bins == b).any()
    ]
    if out_dir is not None:
        _plot_diagnostics(out, out_dir)
    return out


def _plot_diagnostics(d: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    p = [b["predicted"] for b in d["calibration_bins"]]
    r = [b["realised"] for b in d["calibration_bins"]]
    ax.plot(p, r, "o-", label=f"deciles (Spearman {d['confidence_spearman']:.2f})")
    hi = max(max(p), max(r))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="ideal")
    ax.set_xlabel("predicted squared error (confidence head)")
    ax.set_ylabel("realised squared error")
    ax.set_title("confidence calibration (held-out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ys = d["pred_error_vs_horizon_relative"]
    ax.plot(range(1, len(ys) + 1), ys, "o-")
    ax.set_xlabel("prediction step")
    ax.set_ylabel("MSE / embedding variance")
    ax.set_title("prediction error vs horizon (held-out)")
    fig.tight_layout()
    fig.savefig(out_dir / "error_vs_horizon.png", dpi=90)
    plt.close(fig)


def evaluate(run_dir: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
             diagnose: bool = True, progress: bool = True, data: WindowTensors | None = None,
             goal_headings: int = 1, goal_room: str = "other") -> dict:
    """Planning episodes (+ diagnostics) for a trained run; returns the report dict and writes eval.json."""
    wm = load_world_model(run_dir)
    cfg = config_from_dict(_merge(wm.config.to_dict(), parse_overrides(overrides or [])))
    wm = dataclasses.replace(wm, config=cfg)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.train.threads)
    report: dict = {"run": str(run_dir), "planner": dataclasses.asdict(cfg.planner), "eval": dataclasses.asdict(cfg.eval)}
    report["planning"] = run_episodes(wm, cfg, cfg.eval.episodes, cfg.eval.max_steps, cfg.eval.seed, cfg.eval.gifs, out, progress,
                                      goal_headings, goal_room)
    report["goal_headings"] = goal_headings
    report["goal_room"] = goal_room
    report["timing"] = single_plan_time(wm, cfg)
    if diagnose:
        if data is None:
            _, data = load_windows(cfg, min(cfg.objective.horizon * 2, 16))
        report["diagnostics"] = diagnostics(wm, data, out)
        from training.walls import wall_diagnostics

        report["diagnostics"]["walls"] = wall_diagnostics(wm, seed=cfg.eval.seed)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def imagine_plans(run_dir: str | Path, decoder_dir: str | Path, out_gif: str | Path, overrides: list[str] | None = None,
                  plans: int = 4, encoder: str | None = None, seed: int | None = None) -> dict:
    """Real vs decoded-imagined GIF along plans (``training.decoder.imagine``) with edge-eval's config overrides.

    ``seed`` defaults to the resolved ``eval.seed``. Writes ``out_gif`` and ``out_gif`` with a
    ``.json`` suffix (the returned metrics). Raises ConfigError, CheckpointError, DecoderError.
    """
    from training.checkpoint import load_config_json

    cfg = config_from_dict(_merge(load_config_json(run_dir).to_dict(), parse_overrides(overrides or [])))
    torch.set_num_threads(cfg.train.threads)
    result = imagine(run_dir, decoder_dir, out_gif, seed=cfg.eval.seed if seed is None else seed, chunks=plans,
                     which=encoder, planner=cfg.planner)
    result.update({"run": str(run_dir), "decoder": str(decoder_dir), "planner": dataclasses.asdict(cfg.planner)})
    Path(out_gif).with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="run folder written by edge-train (model.safetensors + config.json)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. planner.samples=128 eval.episodes=50")
    parser.add_argument("--episodes", type=int, help="planning episodes (eval.episodes)")
    parser.add_argument("--max-steps", type=int, help="step budget per episode (eval.max_steps)")
    parser.add_argument("--seed", type=int, help="episode seed (eval.seed)")
    parser.add_argument("--gifs", type=int, help="episodes written as GIFs (eval.gifs)")
    parser.add_argument("--out", help="output folder (default RUN_DIR/eval)")
    parser.add_argument("--goal-headings", type=int, default=1,
                        help="goal embedding = mean over K headings at the goal (default 1: one random heading)")
    parser.add_argument("--goal-room", choices=("other", "same"), default="other",
                        help="other (default, the benchmark task): the goal is behind the dividing wall, so the robot "
                             "must find the door; same: the goal is in the start room (local accuracy only)")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the held-out embedding diagnostics")
    parser.add_argument("--imagine", metavar="DECODER_DIR",
                        help="write a GIF of real vs decoded imagined observations along plans, using the state decoder "
                             "in DECODER_DIR (python -m training.decoder train); skips the planning episodes and "
                             "diagnostics unless --episodes is given")
    parser.add_argument("--imagine-out", metavar="GIF", help="GIF path for --imagine (default OUT/imagine.gif)")
    parser.add_argument("--imagine-plans", type=int, default=4, help="plans executed one after another in the GIF (default 4)")
    parser.add_argument("--imagine-encoder", choices=ENCODER_CHOICES,
                        help="encoder whose embeddings are decoded (default: the one the decoder was fit on)")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    for flag, key in (("episodes", "eval.episodes"), ("max_steps", "eval.max_steps"), ("seed", "eval.seed"), ("gifs", "eval.gifs")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    episodes = args.imagine is None or args.episodes is not None
    try:
        if args.goal_headings < 1:
            raise ConfigError(f"--goal-headings must be >= 1, got {args.goal_headings}")
        if args.imagine is not None and args.imagine_plans < 1:
            raise ConfigError(f"--imagine-plans must be >= 1, got {args.imagine_plans}")
        if args.imagine is not None and not Path(args.imagine).exists():
            raise DecoderError(f"--imagine {args.imagine}: no such decoder folder; train one with "
                               f"python -m training.decoder train {args.run_dir} --out {args.imagine}")
        if args.imagine is not None:  # first: a mismatched decoder is refused before minutes of episodes
            gif = Path(args.imagine_out) if args.imagine_out else Path(args.out or Path(args.run_dir) / "eval") / "imagine.gif"
            r = imagine_plans(args.run_dir, args.imagine, gif, overrides, args.imagine_plans, args.imagine_encoder)
            print(f"imagine: wrote {r['gif']} ({r['frames']} plan steps, {r['control_ticks']} control ticks; "
                  f"left real, right decoded from the {r['encoder']} encoder's imagined embedding); decoded-vs-real "
                  f"{r['error_kind']} step 1 {r['error_by_plan_step'][0]:.4f}, step {len(r['error_by_plan_step'])} "
                  f"{r['error_by_plan_step'][-1]:.4f}")
        if episodes:
            _print_report(evaluate(args.run_dir, overrides, args.out, diagnose=not args.no_diagnostics,
                                   goal_headings=args.goal_headings, goal_room=args.goal_room))
    except (ConfigError, CheckpointError, DataError, DecoderError) as e:
        print(f"edge-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


def _print_report(report: dict) -> None:
    p = report["planning"]
    lo, hi = p["success_ci95"]
    print(f"success ({report.get('goal_room', 'other')} room goals) {p['successes']}/{p['episodes']} = {p['success_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}); "
          f"steps to goal median {p['steps_to_goal_median']}; plan {report['timing']['plan_ms_median']:.1f} ms/tick "
          f"(N={report['planner']['samples']} H={report['planner']['horizon']} J={report['planner']['iterations']})")
    if "diagnostics" in report:
        d = report["diagnostics"]
        print(f"probe R2 x {d.get('probe_r2_x', float('nan')):.3f} y {d.get('probe_r2_y', float('nan')):.3f}; "
              f"pred err rel step1 {d['pred_error_vs_horizon_relative'][0]:.4f} stepK {d['pred_error_vs_horizon_relative'][-1]:.4f}; "
              f"confidence Spearman {d['confidence_spearman']:.3f}")
        w = d.get("walls")
        if w:
            print(f"walls: {w['phantom_crossings']}/{w['rollouts'] - w['true_crossings']} held-action rollouts the simulator "
                  f"kept on their side are predicted through the dividing wall ({w['phantom_crossing_rate']:.0%}, "
                  f"{w['horizon']} steps); embedding distance to a goal ranks like the geodesic "
                  f"{w['geodesic_spearman']:.3f} vs the straight line {w['straight_spearman']:.3f} (Spearman)")


if __name__ == "__main__":
    sys.exit(main())
