"""``edge-distill``: a camera world model distilled from a trained sensor world model.

Training the camera JEPA from scratch with the sensor recipe needs about 23 CPU-hours here
(docs/TRAINING.md, "Not done"): every window unrolls the CNN over all its frames. This trains
only the camera encoder instead, per control tick: the Impala CNN over the 64x64 frame, fused
with the odometry pose, learns to output the **sensor model's deployed embedding of the same
tick** (its teacher sees the eight range beams; the camera never does). The sensor model's
predictor, confidence head and planner settings are reused unchanged, so the camera model
predicts in the sensor model's embedding space and ``edge-eval``, ``edge-export`` and the
planner take the result like any other run folder.

Loss: mean squared error to the teacher's embedding divided by the teacher embedding's total
variance (``nmse``; 0 = exact, 1 = no better than the mean). Episodes are split into training and
validation sets (``--val-fraction``); the validation ``nmse`` and R^2 are logged every epoch, and
at the end the validation ``nmse`` with every frame replaced by flat grey (how much of the match
comes from the picture rather than the odometry pose).

Example (docs/TRAINING.md item 14; the camera data and the trained sensor run first)::

    python -m edge.sim.collect --episodes 512 --steps 200 --camera --out data/camera --seed 0
    nice -n 5 python -m training.distill runs/sensor_default data/camera --out runs/camera_distilled   # ~10 min
    python -m training.evaluate runs/camera_distilled --episodes 100 --no-diagnostics

Writes ``OUT/model.safetensors`` + ``OUT/config.json`` (a camera run folder), ``OUT/metrics.csv``,
``OUT/curves.png``, ``OUT/distill.json`` (teacher, data, final metrics) and ``OUT/metrics.json``
(the teacher predictor's validation error, which sets the runtime's confidence scale).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpoint import CheckpointError, load_world_model, save_checkpoint
from training.config import Config, ConfigError, _merge, config_from_dict, parse_overrides
from training.jepa import pose4_from_sensor

FRAME_SCALE = 1.0 / 255.0


class DistillError(RuntimeError):
    """Bad distillation input (teacher, data or arguments), with the fix in the message."""


@torch.no_grad()
def teacher_embeddings(encoder: nn.Module, sensor: np.ndarray, batch: int = 8192) -> torch.Tensor:
    """The teacher's deployed embedding of every row of ``sensor [N, 14]`` -> ``[N, E]``."""
    encoder.eval()
    out = [encoder(torch.from_numpy(np.ascontiguousarray(sensor[i:i + batch]))) for i in range(0, len(sensor), batch)]
    return torch.cat(out)


def normalised_mse(pred: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``mean ||pred - target||^2 / sum(variance)``: 0 exact, 1 no better than predicting the mean."""
    return (pred - target).pow(2).sum(-1).mean() / variance.sum()


def camera_config(teacher: Config, data: str, out_dir: str, overrides: list[str] | None = None) -> Config:
    """The student's config: the teacher's, with a camera encoder of the same embedding size."""
    tree = _merge(teacher.to_dict(), {"model": {"kind": "camera"},
                                      "data": {"path": str(data), "with_frames": True},
                                      "train": {"out_dir": str(out_dir)}})
    cfg = config_from_dict(_merge(tree, parse_overrides(overrides or [])))
    if cfg.model.embed_dim != teacher.model.embed_dim or cfg.model.kind != "camera":
        raise ConfigError("edge-distill: model.kind and model.embed_dim come from the teacher; do not override them")
    return cfg


def _split(episode: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tick indices of training and validation episodes (whole episodes, seeded)."""
    n_ep = int(episode.max()) + 1
    n_val = max(1, int(round(n_ep * val_fraction))) if n_ep > 1 else 0
    val_eps = np.random.default_rng(seed).permutation(n_ep)[:n_val]
    is_val = np.isin(episode, val_eps)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def distill(teacher_dir: str | Path, data: str | Path, out_dir: str | Path, *, epochs: int = 4, batch_size: int = 256,
            lr: float = 2e-3, tick_stride: int = 1, val_fraction: float = 0.05, seed: int = 0, threads: int = 2,
            overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Train a camera encoder on the teacher's embeddings; returns the final metrics (see module doc)."""
    from edge.sim.dataset import DatasetError, WindowDataset
    from training.jepa import JEPA
    from training.train import seed_everything

    if epochs < 1 or batch_size < 1 or tick_stride < 1 or not 0.0 < val_fraction < 1.0 or lr <= 0:
        raise DistillError("edge-distill: need --epochs >= 1, --batch-size >= 1, --tick-stride >= 1, "
                           "0 < --val-fraction < 1 and --lr > 0")
    teacher = load_world_model(teacher_dir)
    if teacher.config.model.kind != "sensor":
        raise DistillError(f"edge-distill: the teacher {teacher_dir} is a {teacher.config.model.kind} model; "
                           "give a sensor run folder written by edge-train (e.g. runs/sensor_default)")
    cfg = camera_config(teacher.config, str(data), str(out_dir), overrides)
    seed_everything(seed)
    torch.set_num_threads(threads)
    try:
        ds = WindowDataset(data, 1, frames=True)
    except DatasetError as e:
        msg = str(e)
        if "frames" in msg:
            msg += ("; collect camera data with `python -m edge.sim.collect --episodes 512 --steps 200 "
                    "--camera --out data/camera --seed 0`")
        raise DistillError(f"edge-distill: {msg}") from e
    ticks = ds.starts[::tick_stride]  # k=1 windows: every tick but each episode's last
    episode = ds.window_episode[::tick_stride]
    train_i, val_i = _split(episode, val_fraction, seed)
    if len(val_i) == 0:
        raise DistillError(f"edge-distill: {data} holds one episode; distillation needs at least two "
                           "(whole episodes are held out for validation)")
    target = teacher_embeddings(teacher.encoder, ds.sensor[ticks])
    variance = target[train_i].var(0)
    sensor = torch.from_numpy(ds.sensor[ticks])
    frames = ds.frame[ticks]  # uint8 [N, 64, 64, 3], converted per batch

    model = JEPA(cfg)
    model.predictor.load_state_dict(teacher.predictor.state_dict())
    student = model.encoder
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_i) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "metrics.csv"
    gen = torch.Generator().manual_seed(seed)

    def encode(idx: np.ndarray, grey: bool = False) -> torch.Tensor:
        frame = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float().mul_(FRAME_SCALE)
        if grey:  # every pixel the frame's mean: what the pose alone gives
            frame = frame.mean(dim=(1, 2, 3), keepdim=True).expand_as(frame)
        return student(frame, pose4_from_sensor(sensor[idx]))

    @torch.no_grad()
    def validate(grey: bool = False) -> dict[str, float]:
        student.eval()
        preds = torch.cat([encode(val_i[i:i + 1024], grey) for i in range(0, len(val_i), 1024)])
        student.train()
        t = target[val_i]
        nmse = float(normalised_mse(preds, t, variance))
        r2 = 1.0 - float((preds - t).pow(2).sum(0).div(t.var(0) * len(t)).mean())
        return {"val_nmse": nmse, "val_r2": r2}

    t0 = time.monotonic()
    rows = []
    for epoch in range(1, epochs + 1):
        perm = train_i[torch.randperm(len(train_i), generator=gen).numpy()]
        total, n = 0.0, 0
        bar = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"distill epoch {epoch}/{epochs}", leave=False, file=sys.stderr)
        for b in bar:
            idx = perm[b * batch_size:(b + 1) * batch_size]
            loss = normalised_mse(encode(idx), target[idx], variance)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"edge-distill: loss is {float(loss)} at epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
            if progress:
                bar.set_postfix(nmse=f"{float(loss.detach()):.4f}")
        row = {"epoch": epoch, "train_nmse": total / n, **validate(), "time_s": round(time.monotonic() - t0, 1)}
        rows.append(row)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows(rows)
        print(f"distill epoch {epoch}: train nmse {row['train_nmse']:.4f} val nmse {row['val_nmse']:.4f} "
              f"val R^2 {row['val_r2']:.3f} ({row['time_s']:.0f} s)", file=sys.stderr, flush=True)
        if model.target_encoder is not None:  # the deployed encoder is the target one: same weights
            model.target_encoder.load_state_dict(student.state_dict())
        save_checkpoint(out, model, cfg, epoch=epoch)
    plot_distill(rows, out / "curves.png")
    (out / "metrics.json").write_text(json.dumps(run_metrics(Path(teacher_dir), rows[-1]), indent=2))
    report = {"teacher": str(teacher_dir), "data": str(data), "ticks_train": int(len(train_i)),
              "ticks_val": int(len(val_i)), "tick_stride": tick_stride, "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "seed": seed, "encoder_params": sum(p.numel() for p in student.parameters()),
              "final": rows[-1],
              # how much the picture matters: held-out nmse with every frame a flat grey (pose only)
              "val_nmse_grey_frames": validate(grey=True)["val_nmse"]}
    (out / "distill.json").write_text(json.dumps(report, indent=2))
    return report


def run_metrics(teacher_dir: Path, final: dict) -> dict:
    """``metrics.json`` of the camera run (what ``edge-export`` records in the bundle): the
    teacher's last training row as ``teacher_*``, its predictor's validation errors ``val_pred*``
    unprefixed (the camera run uses that predictor unchanged: the runtime's confidence scale is
    derived from them), and this distillation's final row as ``distill_*``."""
    out: dict = {}
    path = teacher_dir / "metrics.csv"
    if path.is_file():
        rows = list(csv.DictReader(path.open()))
        for k, v in (rows[-1].items() if rows else ()):
            try:
                value = float(v)
            except (TypeError, ValueError):
                continue
            out[f"teacher_{k}"] = value
            if k.startswith("val_pred"):
                out[k] = value
    out.update({f"distill_{k}": v for k, v in final.items()})
    return out


def plot_distill(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(ep, [r["train_nmse"] for r in rows], marker="o", label="train")
    ax.plot(ep, [r["val_nmse"] for r in rows], marker="s", label="validation (held-out episodes)")
    ax.set_yscale("log")
    ax.set_xticks(ep)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE / teacher embedding variance")
    ax.set_title("camera encoder vs the sensor model's embedding", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher", help="trained sensor run folder (edge-train's train.out_dir, e.g. runs/sensor_default)")
    ap.add_argument("data", help="camera dataset folder (edge-collect --camera) or shards / flight logs with frames")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the student config, e.g. model.cam_channels=[8,16,16]")
    ap.add_argument("--out", default="runs/camera_distilled", help="run folder to write (default runs/camera_distilled)")
    ap.add_argument("--epochs", type=int, default=4, help="passes over the training ticks (default 4: held-out error flat after 3)")
    ap.add_argument("--batch-size", type=int, default=256, help="frames per step (default 256)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (default 2e-3)")
    ap.add_argument("--tick-stride", type=int, default=1, help="use every n-th control tick (default 1: all)")
    ap.add_argument("--val-fraction", type=float, default=0.05, help="episodes held out for validation (default 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch remains)")
    args = ap.parse_intermixed_args(argv)
    try:
        if not (Path(args.teacher) / "config.json").is_file():
            raise DistillError(f"edge-distill: {args.teacher} is not a run folder (no config.json); train the "
                               "sensor model first: python -m training.train configs/sensor_default.yaml")
        r = distill(args.teacher, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    tick_stride=args.tick_stride, val_fraction=args.val_fraction, seed=args.seed,
                    threads=args.threads, overrides=args.overrides, progress=not args.no_progress)
    except (DistillError, ConfigError, CheckpointError, FloatingPointError) as e:
        print(str(e) if str(e).startswith("edge-distill") else f"edge-distill: error: {e}", file=sys.stderr)
        return 2
    f = r["final"]
    print(f"edge-distill: wrote {args.out} (camera encoder {r['encoder_params']:,} parameters; held-out "
          f"nmse {f['val_nmse']:.4f}, R^2 {f['val_r2']:.3f}); evaluate with "
          f"`python -m training.evaluate {args.out} --episodes 100`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
