"""Amortized planning head: imitate the MPPI planner in one MLP call.

``PlanHead(z [B, E], z_goal [B, E], pose4 [B, 4]) -> actions [B, H, A]`` in [-1, 1] (tanh),
trained by regression on (state, goal, planner output) pairs collected by running the torch
reference planner (``training.planner.MPCController``) in closed loop in the simulator. The
runtime can use it

- as the **warm start** of the fused planner (its ``mean`` input) so fewer MPPI iterations
  reach the same plan quality (J=1 with the head vs J=3 without), and
- as the **deadline fallback**: its first action when the planner cannot finish in time.

Example::

    nice -n 10 python -m training.plan_head collect runs/sensor_default --out data/plan_pairs.npz --episodes 64 --iterations 3 --goal-mode explore
    nice -n 10 python -m training.plan_head train data/plan_pairs.npz --out runs/plan_head
    nice -n 10 python -m training.plan_head evaluate runs/sensor_default --head runs/plan_head --episodes 100 --goal-mode explore
    python -m training.plan_head export --head runs/plan_head --bundle models/default

The bundle gains ``plan_head.onnx`` (inputs ``z [1, E]``, ``z_goal [1, E]``, ``pose4 [1, 4]``;
output ``actions [1, H, A]``) under the manifest key ``plan_head``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from training.models import ACTION_DIM, POSE4_DIM, _mlp

HEAD_FILE = "plan_head.safetensors"
HEAD_META = "plan_head.json"
HEAD_INPUTS = ("z", "z_goal", "pose4")
MODES = ("planner", "head_warm", "planner_short", "head_only")


class PlanHeadError(RuntimeError):
    """Bad input, missing file, or a failed export check (message names the fix)."""


@dataclass(frozen=True)
class PlanHeadConfig:
    """Head architecture: MLP ``[z, z_goal, pose4] (2E + 4) -> hidden x depth -> H * A``, tanh."""

    embed_dim: int = 32
    horizon: int = 16
    action_dim: int = ACTION_DIM
    hidden: int = 256
    depth: int = 2

    def __post_init__(self) -> None:
        for name in ("embed_dim", "horizon", "action_dim", "hidden", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlanHeadConfig.{name} must be >= 1, got {getattr(self, name)}")


class PlanHead(nn.Module):
    """``z [B, E], z_goal [B, E], pose4 [B, 4] -> actions [B, H, A]`` in [-1, 1]."""

    def __init__(self, cfg: PlanHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.net = _mlp([2 * cfg.embed_dim + POSE4_DIM] + [cfg.hidden] * cfg.depth + [cfg.horizon * cfg.action_dim])

    def forward(self, z: torch.Tensor, z_goal: torch.Tensor, pose4: torch.Tensor) -> torch.Tensor:
        e = self.cfg.embed_dim
        if z.shape[-1] != e or z_goal.shape[-1] != e or pose4.shape[-1] != POSE4_DIM:
            raise ValueError(f"PlanHead expects z [B, {e}], z_goal [B, {e}], pose4 [B, 4]; got {tuple(z.shape)}, "
                             f"{tuple(z_goal.shape)}, {tuple(pose4.shape)}")
        out = self.net(torch.cat([z, z_goal, pose4], dim=-1))
        return torch.tanh(out).reshape(z.shape[0], self.cfg.horizon, self.cfg.action_dim)


# --------------------------------------------------------------------------------------------
# closed loop in the simulator (collection and evaluation share it)
# --------------------------------------------------------------------------------------------
def _encoder(wm) -> Callable[[dict[str, np.ndarray]], torch.Tensor]:
    from training.evaluate import Encoder

    return Encoder(wm)


def closed_loop(wm, planner_cfg, episodes: int, max_steps: int, seed: int, mode: str = "planner",
                head: PlanHead | None = None, record: bool = False, progress: bool = True,
                goal_mode: str = "evaluate", action_repeat: int | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes batched: ``goal_mode`` ``evaluate`` (goal in the other room, as
    ``edge-eval``), ``explore`` (goal in a random room, often the start's) or ``same_room``.

    ``action_repeat`` (default: the model's ``data.action_repeat``): control ticks per predictor
    step. As in ``edge-eval`` and the runtime, the planner runs every tick and applies the first
    step of its plan, and the warm start is shifted by one plan step only every ``action_repeat``
    ticks. Finished episodes get zero actions and are no longer planned for.

    Modes: ``planner`` (MPPI with ``planner_cfg``, warm start = previous plan shifted);
    ``planner_short`` (same at ``planner_cfg.iterations``, usually 1); ``head_warm`` (MPPI whose
    starting mean is the head's output every tick); ``head_only`` (the head's first action).

    With ``record``: returns the pairs ``z, z_goal, pose4, plan [n, H, A], episode`` of every
    tick of an unfinished episode (the planner's output mean, the head's regression target).
    """
    from edge.sim.env import BatchSim, SimConfig
    from training.planner import MPCController

    if mode not in MODES:
        raise PlanHeadError(f"mode must be one of {MODES}, got {mode!r}")
    if mode in ("head_warm", "head_only") and head is None:
        raise PlanHeadError(f"mode {mode} needs a trained head (--head)")
    camera = wm.config.model.kind == "camera"
    sim_cfg = SimConfig()
    sim = BatchSim(sim_cfg, episodes, camera=camera, seed=seed)
    obs = sim.reset(seed=seed, mode=goal_mode)
    rng = np.random.default_rng(seed + 1)
    goal_pose = np.concatenate([sim.goal, rng.uniform(-np.pi, np.pi, size=(episodes, 1))], axis=-1)
    goal_obs = sim.observe_at(goal_pose)
    encode = _encoder(wm)
    z_goal = encode(goal_obs)
    if action_repeat is None:
        action_repeat = int(wm.config.data.action_repeat)
    ctl = MPCController(wm.predictor, planner_cfg, batch=episodes, seed=seed, action_repeat=action_repeat)
    success = np.zeros(episodes, bool)
    steps = np.full(episodes, -1)
    start_dist = sim.goal_distance().copy()
    rec: dict[str, list[np.ndarray]] = {k: [] for k in ("z", "z_goal", "pose4", "plan", "episode")}
    t_ctl = 0.0
    t = 0
    for t in tqdm(range(max_steps), desc=mode, disable=not progress, leave=False):
        z = encode(obs)
        pose4 = torch.from_numpy(np.asarray(obs["sensor"], np.float32)[:, 8:12])
        live = ~success
        t0 = time.perf_counter()
        with torch.no_grad():
            if mode == "head_only":
                actions = head(z, z_goal, pose4)[:, 0]
            else:
                if mode == "head_warm":
                    ctl.mean = head(z, z_goal, pose4)
                    ctl.std = torch.full_like(ctl.mean, planner_cfg.std_init)
                actions = ctl.act(z, z_goal, torch.from_numpy(live))
        t_ctl += time.perf_counter() - t0
        if record:  # ctl.last holds the plans of the live episodes only (in index order)
            rec["z"].append(z[live].numpy())
            rec["z_goal"].append(z_goal[live].numpy())
            rec["pose4"].append(pose4[live].numpy())
            rec["plan"].append(ctl.last.mean.numpy())
            rec["episode"].append(np.flatnonzero(live))
        a = actions.numpy().copy()
        a[success] = 0.0
        obs, info = sim.step(a)
        new = info["success"] & ~success
        steps[new] = t + 1
        success |= info["success"]
        if success.all():
            break
    k = int(success.sum())
    from training.evaluate import wilson_interval

    out: dict[str, Any] = {
        "mode": mode, "goal_mode": goal_mode, "action_repeat": action_repeat, "max_steps": max_steps,
        "seed": seed, "episodes": episodes, "successes": k, "success_rate": k / episodes,
        "success_ci95": list(wilson_interval(k, episodes)),
        "steps_to_goal_median": float(np.median(steps[success])) if k else None,
        "start_goal_distance_m_mean": float(start_dist.mean()),
        "final_goal_distance_m_mean": float(sim.goal_distance().mean()),
        "batched_control_s_per_tick": t_ctl / (t + 1),
    }
    if record:
        out["pairs"] = {k2: np.concatenate(v) for k2, v in rec.items()}
    return out


def collect_pairs(wm, planner_cfg, episodes: int, max_steps: int, seed: int, progress: bool = True,
                  goal_mode: str = "evaluate", action_repeat: int | None = None) -> dict[str, np.ndarray]:
    """(state, goal, planner output) pairs from closed-loop reference-planner episodes."""
    r = closed_loop(wm, planner_cfg, episodes, max_steps, seed, "planner", record=True, progress=progress,
                    goal_mode=goal_mode, action_repeat=action_repeat)
    pairs = r["pairs"]
    pairs["success_rate"] = np.array(r["success_rate"], np.float32)
    return pairs


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadTrainConfig:
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15  # episodes held out
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.val_fraction < 1:
            raise ValueError(f"bad HeadTrainConfig {self}")


def train_head(pairs: dict[str, np.ndarray], cfg: PlanHeadConfig, tcfg: HeadTrainConfig = HeadTrainConfig(),
               progress: bool = True) -> tuple[PlanHead, dict[str, Any]]:
    """Fit the head by MSE on the planner's plans; held-out episodes pick the best epoch (early stopping)."""
    torch.manual_seed(tcfg.seed)
    n = len(pairs["z"])
    if pairs["plan"].shape[1:] != (cfg.horizon, cfg.action_dim) or pairs["z"].shape[1] != cfg.embed_dim:
        raise PlanHeadError(f"pairs have z {pairs['z'].shape[1:]}, plan {pairs['plan'].shape[1:]} but the head expects "
                            f"E={cfg.embed_dim}, H={cfg.horizon}, A={cfg.action_dim}")
    eps = np.unique(pairs["episode"])
    rng = np.random.default_rng(tcfg.seed)
    val_eps = rng.permutation(eps)[:max(1, int(round(len(eps) * tcfg.val_fraction)))]
    is_val = np.isin(pairs["episode"], val_eps)
    if is_val.all() or not is_val.any():
        raise PlanHeadError(f"need pairs from at least 2 episodes (got {len(eps)})")
    t = {k: torch.from_numpy(np.asarray(pairs[k], np.float32)) for k in ("z", "z_goal", "pose4", "plan")}
    tr = {k: v[torch.from_numpy(~is_val)] for k, v in t.items()}
    va = {k: v[torch.from_numpy(is_val)] for k, v in t.items()}
    head = PlanHead(cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tcfg.epochs)
    history = []

    def val_loss() -> float:
        with torch.no_grad():
            return float(((head(va["z"], va["z_goal"], va["pose4"]) - va["plan"]) ** 2).mean())

    base = float(((va["plan"] - tr["plan"].mean(0)) ** 2).mean())  # predict-the-mean baseline
    for ep in tqdm(range(tcfg.epochs), desc="plan head", disable=not progress, leave=False):
        perm = torch.randperm(len(tr["z"]))
        losses = []
        for s in range(0, len(perm), tcfg.batch_size):
            i = perm[s:s + tcfg.batch_size]
            loss = ((head(tr["z"][i], tr["z_goal"][i], tr["pose4"][i]) - tr["plan"][i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        history.append({"epoch": ep + 1, "train_mse": float(np.mean(losses)), "val_mse": val_loss()})
        if history[-1]["val_mse"] <= min(h["val_mse"] for h in history):
            best = {k: v.detach().clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best)  # early stopping: the epoch with the lowest held-out error
    head.eval()
    metrics = {"pairs_train": int(len(tr["z"])), "pairs_val": int(len(va["z"])), "val_mse": val_loss(),
               "best_epoch": int(np.argmin([h["val_mse"] for h in history]) + 1),
               "val_mse_mean_baseline": base, "val_first_action_mae": float(
                   (head(va["z"], va["z_goal"], va["pose4"])[:, 0] - va["plan"][:, 0]).abs().mean().detach()),
               "history": history}
    return head, metrics


def save_head(out_dir: str | Path, head: PlanHead, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE),
              metadata={"format": "edge-jepa-plan-head", "config": json.dumps(dataclasses.asdict(head.cfg))})
    (out / HEAD_META).write_text(json.dumps({"config": dataclasses.asdict(head.cfg), "metrics": metrics, **(extra or {})},
                                            indent=2))
    return out


def load_head(path: str | Path) -> PlanHead:
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / HEAD_FILE
    if not p.is_file():
        raise PlanHeadError(f"{p} not found: train a head first (python -m training.plan_head train ...)")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "edge-jepa-plan-head":
        raise PlanHeadError(f"{p} is not a planning-head checkpoint")
    head = PlanHead(PlanHeadConfig(**json.loads(meta["config"])))
    head.load_state_dict(load_file(str(p)))
    return head.eval()


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def export_head_onnx(head: PlanHead, out: str | Path, tolerance: float = 1e-5, trials: int = 3,
                     seed: int | None = None, opset: int = 17) -> dict[str, Any]:
    """Export to ONNX (dynamic batch) and compare ONNX Runtime with torch on fresh random inputs.

    Raises PlanHeadError when the max abs error exceeds ``tolerance`` (actions are in [-1, 1])
    or the graph is not TensorRT-compatible. Returns the check record for the manifest.
    """
    import onnxruntime as ort

    from edge.trt_compat import check_trt_compat

    head = head.eval()
    out = Path(out)
    e = head.cfg.embed_dim
    ex = (torch.randn(2, e), torch.randn(2, e), torch.randn(2, POSE4_DIM))
    dyn = {k: {0: "batch"} for k in (*HEAD_INPUTS, "actions")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, ex, str(out), input_names=list(HEAD_INPUTS), output_names=["actions"],
                          dynamic_axes=dyn, opset_version=opset, dynamo=False)
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    rng = np.random.default_rng(seed)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in range(trials):
        b = (1, 5, 64)[i % 3]
        feeds = {"z": rng.standard_normal((b, e)).astype(np.float32),
                 "z_goal": rng.standard_normal((b, e)).astype(np.float32),
                 "pose4": rng.uniform(-1, 1, (b, POSE4_DIM)).astype(np.float32)}
        got = sess.run(["actions"], feeds)[0]
        with torch.no_grad():
            want = head(*(torch.from_numpy(feeds[k]) for k in HEAD_INPUTS)).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    issues = [str(i) for i in check_trt_compat(out)]
    if worst > tolerance:
        raise PlanHeadError(f"plan head ONNX differs from torch by {worst:.2e} > {tolerance:.0e} (seed {seed}); export refused")
    if issues:
        raise PlanHeadError(f"plan head ONNX is not TensorRT-compatible: {issues}")
    return {"seed": seed, "trials": trials, "max_abs": worst, "tolerance": tolerance}


def add_head_to_bundle(head: PlanHead, bundle_dir: str | Path, warm_start: bool = True,
                       deadline_fallback: bool = True, metrics: dict | None = None) -> dict[str, Any]:
    """Export the head into a bundle: ``plan_head.onnx`` + manifest key ``plan_head``.

    Refuses a head whose E / H / A differ from the bundle planner's.
    """
    import tempfile

    from edge.bundle import load_bundle
    from training.pretrain import annotate_bundle

    b = load_bundle(bundle_dir)
    p = b.planner
    c = head.cfg
    if (c.embed_dim, c.horizon, c.action_dim) != (p.E, p.H, p.A):
        raise PlanHeadError(f"head has E={c.embed_dim}, H={c.horizon}, A={c.action_dim} but the bundle planner has "
                            f"E={p.E}, H={p.H}, A={p.A}; train the head on this model with this horizon")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "plan_head.onnx"
        check = export_head_onnx(head, onnx_path)
        entry = {"file": "plan_head.onnx", "inputs": {"z": {"shape": ["batch", c.embed_dim], "dtype": "float32"},
                                                      "z_goal": {"shape": ["batch", c.embed_dim], "dtype": "float32"},
                                                      "pose4": {"shape": ["batch", POSE4_DIM], "dtype": "float32"}},
                 "outputs": {"actions": {"shape": ["batch", c.horizon, c.action_dim], "dtype": "float32",
                                         "range": [-1.0, 1.0]}},
                 "H": c.horizon, "A": c.action_dim, "E": c.embed_dim, "hidden": c.hidden, "depth": c.depth,
                 "pose4": "sensor vector [8:12] = (x / half_width, y / half_height, sin theta, cos theta), odometry",
                 "use": {"warm_start": warm_start, "deadline_fallback": deadline_fallback},
                 "check": check, "metrics": metrics or {}}
        annotate_bundle(bundle_dir, {("plan_head",): entry}, files={"plan_head.onnx": onnx_path})
    return entry


# --------------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------------
def single_call_ms(wm, planner_cfg, head: PlanHead | None, calls: int = 20) -> dict[str, float]:
    """Median ms of one single-robot control decision (torch, this CPU): planner and head parts."""
    from training.planner import plan

    p = planner_cfg
    e = wm.config.model.embed_dim
    g = torch.Generator().manual_seed(0)
    z0, zg = torch.randn(e, generator=g), torch.randn(e, generator=g)
    pose4 = torch.zeros(1, 4)
    mean, std = torch.zeros(p.horizon, 2), torch.full((p.horizon, 2), p.std_init)
    plan_t, head_t = [], []
    for _ in range(calls + 3):
        noise = torch.randn(p.iterations, p.samples, p.horizon, 2, generator=g)
        t0 = time.perf_counter()
        if head is not None:
            with torch.no_grad():
                mean = head(z0[None], zg[None], pose4)[0]
        t1 = time.perf_counter()
        plan(wm.predictor, z0, zg, mean, std, noise, p)
        t2 = time.perf_counter()
        head_t.append(t1 - t0)
        plan_t.append(t2 - t1)
    return {"plan_ms_median": float(np.median(plan_t[3:]) * 1e3),
            "head_ms_median": float(np.median(head_t[3:]) * 1e3) if head is not None else 0.0}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _load_wm(run: str):
    from training.checkpoint import load_world_model

    if (Path(run) / "vit.json").is_file():
        from training.pretrain import load_vit_world_model

        return load_vit_world_model(run)
    return load_world_model(run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.plan_head", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="run the reference planner in simulation and save (state, goal, plan) pairs")
    c.add_argument("run_dir")
    c.add_argument("--out", required=True, help=".npz file")
    c.add_argument("--episodes", type=int, default=64)
    c.add_argument("--max-steps", type=int, default=300)
    c.add_argument("--seed", type=int, default=5000)
    c.add_argument("--samples", type=int, help="planner N (default: the run's planner.samples)")
    c.add_argument("--iterations", type=int, help="planner J (default: the run's planner.iterations)")
    c.add_argument("--goal-mode", choices=["evaluate", "explore", "same_room"], default="evaluate",
                   help="evaluate: goal in the other room; explore: goal in a random room; same_room: the start's room")
    c.add_argument("--action-repeat", type=int, help="control ticks per plan step (default: the run's data.action_repeat)")
    t = sub.add_parser("train", help="fit the head on collected pairs")
    t.add_argument("pairs", nargs="+", help=".npz files from collect")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=HeadTrainConfig.epochs)
    t.add_argument("--hidden", type=int, default=PlanHeadConfig.hidden)
    e = sub.add_parser("evaluate", help="closed-loop success: planner J, planner J=1, head warm start J=1, head alone")
    e.add_argument("run_dir")
    e.add_argument("--head", required=True)
    e.add_argument("--episodes", type=int, default=40)
    e.add_argument("--max-steps", type=int, default=300, help="control ticks per episode (edge-eval's default)")
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--samples", type=int)
    e.add_argument("--iterations", type=int, default=3, help="J of the full planner (default 3)")
    e.add_argument("--short-iterations", type=int, default=1, help="J with the head warm start (default 1)")
    e.add_argument("--goal-mode", choices=["evaluate", "explore", "same_room"], default="evaluate",
                   help="evaluate: goal in the other room (edge-eval); explore: goal in a random room; same_room")
    e.add_argument("--action-repeat", type=int, help="control ticks per plan step (default: the run's data.action_repeat)")
    e.add_argument("--modes", nargs="+", choices=list(MODES), default=["planner", "planner_short", "head_warm", "head_only"],
                   help="which decision settings to run (same episodes for each)")
    e.add_argument("--out", help="JSON report path")
    x = sub.add_parser("export", help="add plan_head.onnx to a bundle (parity-checked)")
    x.add_argument("--head", required=True)
    x.add_argument("--bundle", required=True)
    x.add_argument("--no-warm-start", action="store_true")
    x.add_argument("--no-fallback", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.cmd == "collect":
            wm = _load_wm(args.run_dir)
            pc = dataclasses.replace(wm.config.planner, **{k: v for k, v in (("samples", args.samples),
                                                                               ("iterations", args.iterations)) if v})
            pairs = collect_pairs(wm, pc, args.episodes, args.max_steps, args.seed, goal_mode=args.goal_mode,
                                  action_repeat=args.action_repeat)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.out, **pairs)
            print(f"{len(pairs['z'])} pairs from {args.episodes} episodes (planner success "
                  f"{float(pairs['success_rate']):.0%}) -> {args.out}")
        elif args.cmd == "train":
            parts = [dict(np.load(p, allow_pickle=False)) for p in args.pairs]
            off = 0
            for d in parts:
                d["episode"] = d["episode"] + off
                off = int(d["episode"].max()) + 1
            pairs = {k: np.concatenate([d[k] for d in parts]) for k in ("z", "z_goal", "pose4", "plan", "episode")}
            cfg = PlanHeadConfig(embed_dim=pairs["z"].shape[1], horizon=pairs["plan"].shape[1], hidden=args.hidden)
            head, m = train_head(pairs, cfg, HeadTrainConfig(epochs=args.epochs))
            save_head(args.out, head, m, {"pairs": args.pairs})
            print(f"plan head: val MSE {m['val_mse']:.4f} (predict-the-mean {m['val_mse_mean_baseline']:.4f}), "
                  f"first-action MAE {m['val_first_action_mae']:.3f} -> {args.out}")
        elif args.cmd == "evaluate":
            wm = _load_wm(args.run_dir)
            head = load_head(args.head)
            base = wm.config.planner
            if args.samples:
                base = dataclasses.replace(base, samples=args.samples)
            full = dataclasses.replace(base, iterations=args.iterations)
            short = dataclasses.replace(base, iterations=args.short_iterations)
            report = {"command": "python -m training.plan_head " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "planner": dataclasses.asdict(full), "short_iterations": args.short_iterations, "results": []}
            for mode, pc in (("planner", full), ("planner_short", short), ("head_warm", short), ("head_only", short)):
                if mode not in args.modes:
                    continue
                r = closed_loop(wm, pc, args.episodes, args.max_steps, args.seed, mode, head=head, goal_mode=args.goal_mode,
                                action_repeat=args.action_repeat)
                r["iterations"] = pc.iterations if mode != "head_only" else 0
                r.update(single_call_ms(wm, pc, head if mode in ("head_warm", "head_only") else None))
                if mode == "head_only":
                    r["plan_ms_median"] = 0.0
                report["results"].append(r)
                lo, hi = r["success_ci95"]
                print(f"{mode:14s} J={r['iterations']}: success {r['successes']}/{r['episodes']} ({lo:.0%}-{hi:.0%}) "
                      f"final dist {r['final_goal_distance_m_mean']:.2f} m; plan {r['plan_ms_median']:.1f} ms + head "
                      f"{r['head_ms_median']:.2f} ms")
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(report, indent=2))
        else:
            head = load_head(args.head)
            entry = add_head_to_bundle(head, args.bundle, not args.no_warm_start, not args.no_fallback)
            print(f"added plan_head.onnx to {args.bundle} (max |onnx - torch| {entry['check']['max_abs']:.1e})")
    except (PlanHeadError, FileNotFoundError, ValueError) as e:
        print(f"training.plan_head: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
