"""edge-train: train a JEPA world model from simulator shards or flight logs.

Example::

    python -m edge.sim.collect --out data/sensor --episodes 400
    nice -n 5 python -m training.train configs/sensor_default.yaml train.out_dir=runs/sensor
    # two processes (DDP, gloo on CPU / nccl on GPU):
    torchrun --nproc_per_node 2 -m training.train configs/sensor_default.yaml

Writes to ``train.out_dir``: ``model.safetensors``, ``config.json``, ``train_state.*``
(resume with ``--resume``), ``metrics.csv`` (one row per epoch) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import CheckpointError, load_train_state, load_weights, save_checkpoint
from training.config import Config, ConfigError, load_config
from training.data import DataError, WindowTensors, load_windows
from training.jepa import JEPA
from training.losses import collapse_stats


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


class GeodesicPairs:
    """Simulated observation pairs for ``objective.geodesic`` (:func:`training.walls.geodesic_pairs`),
    drawn once; :meth:`add` puts ``n`` random ones into a batch as ``geo_sensor_a/b`` and ``geo_d``."""

    def __init__(self, n: int, seed: int, device: str | torch.device):
        from training.walls import geodesic_pairs

        self.pairs = {k: v.to(device) for k, v in geodesic_pairs(n, seed).items()}

    def add(self, batch: dict[str, torch.Tensor], n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(self.pairs["d"]), (n,), generator=generator).to(self.pairs["d"].device)
        batch.update({"geo_sensor_a": self.pairs["sensor_a"][idx], "geo_sensor_b": self.pairs["sensor_b"][idx],
                      "geo_d": self.pairs["d"][idx]})
        return batch


@torch.no_grad()
def validate(model: JEPA, val: WindowTensors, cfg: Config, device: str, max_batches: int = 20,
             geo: GeodesicPairs | None = None) -> dict[str, float]:
    """Mean loss parts on held-out windows plus collapse monitors of the deployed embedding."""
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    embeds = []
    partners = cfg.objective.distance > 0
    g = torch.Generator().manual_seed(0)
    for i, batch in enumerate(val.iter_batches(cfg.train.batch_size, g, shuffle=False, device=device, partners=partners)):
        if i >= max_batches:
            break
        if geo is not None:
            geo.add(batch, cfg.train.batch_size, g)
        _, parts = model(batch)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
        embeds.append(model.encode_target(batch)[:, 0])
    model.train()
    out = {f"val_{k}": v / max(count, 1) for k, v in sums.items()}
    z = torch.cat(embeds)
    out.update(collapse_stats(z))
    return out


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Training curves: total loss, parts, and collapse monitors per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    ep = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("train_loss", "val_loss"):
        axes[0].plot(ep, [float(r[key]) for r in rows], marker="o", label=key)
    axes[0].set_title("total loss")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    for key in rows[0]:
        if key.startswith("val_") and key != "val_loss":
            axes[1].plot(ep, [max(float(r[key]), 1e-8) for r in rows], label=key[4:])
    axes[1].set_yscale("log")
    axes[1].set_title("validation parts")
    axes[2].plot(ep, [float(r["emb_std"]) for r in rows], marker="o", label="embedding std")
    ax2 = axes[2].twinx()
    ax2.plot(ep, [float(r["eff_rank"]) for r in rows], marker="s", color="tab:red", label="effective rank")
    axes[2].set_title("collapse monitors (std left, eff. rank right)")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend()
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


@dataclass
class TrainResult:
    """What :func:`train` returns: the last epoch's metrics and the trained JEPA."""

    metrics: dict[str, float]
    model: JEPA


def train(cfg: Config, resume: bool = False, data: tuple[WindowTensors, WindowTensors] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train per ``cfg``.

    Args:
        resume: continue from the checkpoint in ``train.out_dir``.
        data: (train, val) windows, bypassing the dataset reader (tests, notebooks).
        stop_after: stop after this epoch (1-based) as if interrupted; ``--resume`` continues.
    """
    rank, world = _dist_info()
    distributed = world > 1
    device = cfg.train.device
    if distributed:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    if device == "cpu":
        torch.set_num_threads(cfg.train.threads)
    try:
        return _train(cfg, resume, data, rank, world, device, stop_after)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def _train(cfg: Config, resume: bool, data, rank: int, world: int, device: str, stop_after: int | None) -> TrainResult:
    seed_everything(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)
    train_set, val_set = data if data is not None else load_windows(cfg, cfg.objective.horizon)
    if rank == 0 and train_set.repeated:
        n_contact = train_set.repeated // (cfg.data.contact_oversample - 1)
        print(f"data.contact_oversample={cfg.data.contact_oversample}: {n_contact} of {len(train_set) - train_set.repeated} "
              f"training windows have the robot stopped by a wall; {len(train_set)} windows per epoch", flush=True)
    model = JEPA(cfg).to(device)
    geo = geo_val = None
    if cfg.objective.geodesic > 0:  # the same pairs on every rank (seeded); held-out pairs for validation
        geo = GeodesicPairs(cfg.objective.geodesic_pairs, cfg.train.seed, device)
        geo_val = GeodesicPairs(4096, cfg.train.seed + 1_000_003, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start_epoch = 0
    if resume:
        load_weights(out_dir, model)
        meta = load_train_state(out_dir, optimizer)
        start_epoch = int(meta["epoch"])
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    steps_per_epoch = train_set.num_batches(cfg.train.batch_size, world, cfg.data.max_windows)
    total_steps = steps_per_epoch * cfg.train.epochs

    def lr_at(step: int) -> float:
        """Cosine decay from train.lr to 5% of it over the whole run."""
        return cfg.train.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1))))

    global_step = start_epoch * steps_per_epoch
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "metrics.csv"
    metrics: dict[str, float] = {}
    t0 = time.monotonic()
    last_epoch = cfg.train.epochs if stop_after is None else min(stop_after, cfg.train.epochs)
    for epoch in range(start_epoch, last_epoch):
        g = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(train_set.iter_batches(cfg.train.batch_size, g, rank, world, limit=cfg.data.max_windows, device=device,
                                           partners=cfg.objective.distance > 0),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=(rank != 0 or not cfg.train.progress), leave=False)
        g_geo = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch + 7919 * rank)
        for batch in bar:
            if geo is not None:
                geo.add(batch, cfg.train.batch_size, g_geo)
            loss, parts = ddp_model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1}: lower train.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step)
            optimizer.step()
            global_step += 1
            model.update_target()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            if n % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        metrics = {"epoch": epoch + 1, "time_s": round(time.monotonic() - t0, 2), "lr": lr_at(global_step)}
        metrics.update({f"train_{k}": v / max(n, 1) for k, v in sums.items()})
        if rank == 0:
            metrics.update(validate(model, val_set, cfg, device, geo=geo_val))
            _append_csv(csv_path, metrics, fresh=(epoch == 0 and not resume))
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == last_epoch:
                save_checkpoint(out_dir, model, cfg, optimizer, epoch + 1)
            if cfg.train.progress:
                tqdm.write(f"epoch {epoch + 1}: train {metrics['train_loss']:.4f} val {metrics['val_loss']:.4f} "
                           f"pred {metrics['val_pred']:.4f} std {metrics['emb_std']:.3f} rank {metrics['eff_rank']:.1f}")
    if rank == 0 and csv_path.is_file():
        plot_curves(csv_path, out_dir / "curves.png")
    return TrainResult(metrics=metrics, model=model)


def _append_csv(path: Path, row: dict[str, float], fresh: bool) -> None:
    if fresh or not path.is_file():
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)
        return
    with open(path, newline="") as f:
        fieldnames = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore").writerow(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/sensor_default.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 objective.target_mode=vjepa2")
    parser.add_argument("--resume", action="store_true", help="continue from train.out_dir's last checkpoint")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume)
    except (ConfigError, DataError, CheckpointError, FloatingPointError) as e:
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
