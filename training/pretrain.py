"""I-JEPA camera pretraining, then the camera world model on top of the pretrained ViT.

Example::

    python -m edge.sim.collect --episodes 128 --steps 200 --out data/cam --camera
    nice -n 10 python -m training.pretrain ijepa configs/ijepa_cpu.yaml out_dir=runs/ijepa
    nice -n 10 python -m training.pretrain world configs/ijepa_world.yaml ijepa.checkpoint=runs/ijepa \\
        ijepa.freeze_encoder=true train.out_dir=runs/cam_ijepa
    python -m training.pretrain export runs/cam_ijepa --out models/cam_ijepa

``ijepa`` writes ``OUT/ijepa.safetensors`` (online + EMA target encoder + predictor; the ViT
config, mask config and **preprocessing** in the safetensors metadata and in
``OUT/ijepa.json``), ``metrics.csv`` and ``curves.png``.

``world`` trains the action-conditioned JEPA (``training.jepa.JEPA``, same objective as
``edge-train``) with a :class:`training.ijepa.ViTCameraEncoder`: from the I-JEPA checkpoint
(``ijepa.checkpoint``; ``ijepa.freeze_encoder`` keeps the ViT fixed, otherwise it is
fine-tuned at ``train.lr * ijepa.encoder_lr_scale``) or from scratch (no checkpoint).
``ijepa.action_fraction`` keeps that fraction of the training episodes (low-data setting).
The run folder holds ``model.safetensors``, ``config.json`` (the ``edge-train`` config) and
``vit.json`` (backbone config, preprocessing, options); :func:`load_vit_world_model` returns a
``training.checkpoint.WorldModel`` usable by ``training.evaluate`` and ``training.export``.

Preprocessing: the pretraining run records it (image size, resize, channel order, per-channel
mean/std of the pretraining frames). ``world`` refuses a checkpoint whose preprocessing
differs from ``ijepa.preprocessing`` when that is given, and a dataset whose frames are not
``image_size``; ``export`` writes it to the bundle manifest (``encoders.camera.preprocessing``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from training.config import ConfigError, config_from_dict
from training.config import build_dataclass as config_build_dataclass
from training.ijepa import (
    IJEPA,
    IJEPAConfig,
    MaskConfig,
    Preprocessing,
    PreprocessingMismatch,
    ViTCameraEncoder,
    ViTConfig,
    check_preprocessing,
    sample_masks,
)

IJEPA_FILE = "ijepa.safetensors"
IJEPA_META = "ijepa.json"
VIT_META = "vit.json"


class PretrainError(RuntimeError):
    """Bad config, missing data or checkpoint (the message names the fix)."""


# --------------------------------------------------------------------------------------------
# config loading (YAML + dotted overrides into frozen dataclasses)
# --------------------------------------------------------------------------------------------
def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Nested dict -> frozen dataclass (``training.config.build_dataclass``), errors as PretrainError."""
    try:
        return config_build_dataclass(cls, values, prefix)
    except ConfigError as e:
        raise PretrainError(str(e)) from e


def _read_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise PretrainError(f"config file {str(p)!r} not found; pass e.g. configs/ijepa_cpu.yaml")
    d = yaml.safe_load(p.read_text()) or {}
    if not isinstance(d, dict):
        raise PretrainError(f"{p}: top level must be a mapping")
    return d


def _apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise PretrainError(f"override {item!r} must look like key=value, e.g. epochs=5 or vit.width=64")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return tree


def load_ijepa_config(path: str | Path | None = None, overrides: list[str] | None = None) -> IJEPAConfig:
    return build_dataclass(IJEPAConfig, _apply_overrides(_read_yaml(path), overrides or []))


# --------------------------------------------------------------------------------------------
# I-JEPA pretraining
# --------------------------------------------------------------------------------------------
def load_frames(path: str, max_frames: int = 0) -> np.ndarray:
    """All camera frames ``uint8 [N, S, S, 3]`` of a dataset (episode order), optionally the first ``max_frames``."""
    from edge.sim.dataset import DatasetError, WindowDataset

    try:
        ds = WindowDataset(path, k=1, frames=True)
    except (FileNotFoundError, DatasetError) as e:
        raise PretrainError(f"cannot read camera frames at {path!r} ({e}); collect some with "
                            f"python -m edge.sim.collect --camera --episodes 128 --steps 200 --out {path}") from e
    frames = ds.frame
    return frames[:max_frames] if max_frames else frames


def to_input(frames_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [B, S, S, 3]`` RGB -> float ``[B, 3, S, S]`` in [0, 1] (the encoder contract)."""
    t = torch.as_tensor(np.asarray(frames_u8))
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Linear ramp ``start -> end`` over the run (I-JEPA)."""
    return start + (end - start) * min(step, total) / max(total, 1)


def save_ijepa(out_dir: Path, model: IJEPA, cfg: IJEPAConfig, epoch: int, metrics: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": "edge-jepa-ijepa", "epoch": str(epoch), "vit": json.dumps(dataclasses.asdict(cfg.vit)),
            "mask": json.dumps(dataclasses.asdict(cfg.mask)), "preprocessing": json.dumps(model.pre.as_dict())}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / (IJEPA_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out_dir / IJEPA_FILE)
    info = {"config": dataclasses.asdict(cfg), "preprocessing": model.pre.as_dict(), "epoch": epoch, "metrics": metrics}
    (out_dir / IJEPA_META).write_text(json.dumps(info, indent=2))
    return out_dir / IJEPA_FILE


@dataclass
class Pretrained:
    """A loaded I-JEPA checkpoint: backbone config, preprocessing, encoder weights (online and EMA target)."""

    vit: ViTConfig
    preprocessing: Preprocessing
    online: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]
    path: Path


def load_pretrained(path: str | Path) -> Pretrained:
    """Read ``ijepa.safetensors`` (a run folder or the file itself)."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / IJEPA_FILE
    if not p.is_file():
        raise PretrainError(f"{p} not found: pretrain first with python -m training.pretrain ijepa CONFIG")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "edge-jepa-ijepa":
        raise PretrainError(f"{p} is not an I-JEPA checkpoint (metadata format {meta.get('format')!r})")
    vit = ViTConfig(**json.loads(meta["vit"]))
    pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
    state = load_file(str(p))
    online = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    target = {k[len("target_encoder."):]: v for k, v in state.items() if k.startswith("target_encoder.")}
    return Pretrained(vit=vit, preprocessing=pre, online=online, target=target, path=p)


def pretrain(cfg: IJEPAConfig, frames: np.ndarray | None = None) -> dict[str, Any]:
    """Run I-JEPA pretraining per ``cfg``; returns per-epoch metrics (and writes the checkpoint).

    Args:
        frames: ``uint8 [N, S, S, 3]`` instead of reading ``cfg.data_path`` (tests).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    if frames is None:
        frames = load_frames(cfg.data_path, cfg.max_frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != cfg.vit.image_size or frames.shape[2] != cfg.vit.image_size:
        raise PretrainError(f"frames are {tuple(frames.shape[1:])}, vit.image_size is {cfg.vit.image_size}: "
                            f"collect {cfg.vit.image_size}x{cfg.vit.image_size} RGB frames or change vit.image_size")
    n_val = max(1, int(round(len(frames) * cfg.val_fraction)))
    if len(frames) - n_val < cfg.batch_size:
        raise PretrainError(f"only {len(frames)} frames: need more than batch_size {cfg.batch_size} + held-out {n_val}")
    train_f, val_f = frames[:-n_val], frames[-n_val:]
    pre = Preprocessing.from_frames(train_f, cfg.vit.image_size)
    model = IJEPA(cfg.vit, pre, cfg.mask).to(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_f) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1))))

    val_rng = np.random.default_rng(cfg.seed + 1)
    val_idx = val_rng.choice(len(val_f), min(len(val_f), 4 * cfg.batch_size), replace=False)
    val_masks = [sample_masks(min(cfg.batch_size, len(val_idx) - i), cfg.vit.grid, cfg.mask, val_rng)
                 for i in range(0, len(val_idx), cfg.batch_size)]
    val_masks = [dataclasses.replace(m, context=m.context.to(cfg.device), targets=m.targets.to(cfg.device)) for m in val_masks]

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        losses = [float(model(to_input(val_f[val_idx[i * cfg.batch_size:(i + 1) * cfg.batch_size]]).to(cfg.device), m))
                  for i, m in enumerate(val_masks)]
        model.train()
        return float(np.mean(losses))

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.monotonic()
    first_val = val_loss()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(train_f))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"ijepa {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for i in bar:
            x = to_input(train_f[order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]).to(cfg.device)
            masks = sample_masks(x.shape[0], cfg.vit.grid, cfg.mask, rng)
            masks = dataclasses.replace(masks, context=masks.context.to(cfg.device), targets=masks.targets.to(cfg.device))
            loss = model(x, masks)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"I-JEPA loss became {float(loss.detach())} at step {step}: lower lr")
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            model.update_target(ema_momentum(step, total, cfg.ema_start, cfg.ema_end))
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss(),
               "time_s": round(time.monotonic() - t0, 1)}
        history.append(row)
        if cfg.progress:
            tqdm.write(f"ijepa epoch {epoch + 1}: train {row['train_loss']:.4f} val {row['val_loss']:.4f}")
        save_ijepa(out, model, cfg, epoch + 1, {"val_loss_initial": first_val, "history": history})
    _write_history(out, history, first_val)
    return {"val_loss_initial": first_val, "history": history, "preprocessing": pre.as_dict(),
            "train_frames": len(train_f), "val_frames": len(val_f)}


def _write_history(out: Path, history: list[dict[str, float]], first_val: float) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ep = [0] + [r["epoch"] for r in history]
    ax.plot(ep[1:], [r["train_loss"] for r in history], "o-", label="train")
    ax.plot(ep, [first_val] + [r["val_loss"] for r in history], "s-", label="held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("I-JEPA loss (MSE, layer-normed targets)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the camera world model on a (pretrained) ViT
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldOptions:
    """The ``ijepa:`` section of a world-model YAML (the rest is an ``edge-train`` config)."""

    checkpoint: str = ""  # I-JEPA run folder or file; "" = ViT from scratch
    use_target: bool = True  # initialise from the EMA target encoder (I-JEPA's evaluation choice) or the online one
    freeze_encoder: bool = True  # keep the ViT fixed (the fusion head is always trained)
    encoder_lr_scale: float = 0.1  # fine-tuning: ViT learning rate = train.lr * this
    action_fraction: float = 1.0  # fraction of the training episodes used (low-data settings)
    stride: int = 2  # step between window starts
    vit: ViTConfig = field(default_factory=ViTConfig)  # backbone for scratch runs (a checkpoint brings its own)
    image_size: int = 64  # scratch preprocessing image size
    pre_mean: tuple[float, ...] = ()  # if given (with pre_std): preprocessing the checkpoint must match
    pre_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.action_fraction <= 1:
            raise ValueError(f"ijepa.action_fraction must be in (0, 1], got {self.action_fraction}")
        if not 0 < self.encoder_lr_scale <= 1:
            raise ValueError(f"ijepa.encoder_lr_scale must be in (0, 1], got {self.encoder_lr_scale}")
        if self.stride < 1:
            raise ValueError(f"ijepa.stride must be >= 1, got {self.stride}")
        if bool(self.pre_mean) != bool(self.pre_std):
            raise ValueError("ijepa.pre_mean and ijepa.pre_std must be given together")


def load_world_config(path: str | Path | None, overrides: list[str] | None = None):
    """(training Config, WorldOptions) from a YAML with an ``ijepa:`` section."""

    tree = _apply_overrides(_read_yaml(path), overrides or [])
    opts = build_dataclass(WorldOptions, tree.pop("ijepa", {}) or {}, "ijepa.")
    try:
        cfg = config_from_dict(tree)
    except ConfigError as e:
        raise PretrainError(str(e)) from e
    if cfg.model.kind != "camera":
        raise PretrainError(f"model.kind must be camera for an I-JEPA world model, got {cfg.model.kind!r}")
    return cfg, opts


def build_vit_encoder(cfg, opts: WorldOptions) -> tuple[ViTCameraEncoder, dict[str, Any]]:
    """The world model's ViT camera encoder (pretrained weights loaded when ``opts.checkpoint``)."""
    info: dict[str, Any] = {"pretrained": bool(opts.checkpoint)}
    if opts.checkpoint:
        pt = load_pretrained(opts.checkpoint)
        if opts.pre_mean:
            wanted = dataclasses.replace(pt.preprocessing, mean=tuple(opts.pre_mean), std=tuple(opts.pre_std))
            check_preprocessing(pt.preprocessing, wanted, f"I-JEPA checkpoint {pt.path}", "ijepa.pre_mean/pre_std")
        enc = ViTCameraEncoder(pt.vit, pt.preprocessing, embed_dim=cfg.model.embed_dim, hidden=cfg.model.enc_hidden)
        enc.vit.load_state_dict(pt.target if opts.use_target else pt.online)
        info["checkpoint"] = str(pt.path)
    else:
        vit = dataclasses.replace(opts.vit, image_size=opts.image_size)
        pre = Preprocessing(image_size=opts.image_size)
        if opts.pre_mean:
            pre = dataclasses.replace(pre, mean=tuple(opts.pre_mean), std=tuple(opts.pre_std))
        enc = ViTCameraEncoder(vit, pre, embed_dim=cfg.model.embed_dim, hidden=cfg.model.enc_hidden)
    info["vit"] = dataclasses.asdict(enc.vit_cfg)
    info["preprocessing"] = enc.pre.as_dict()
    return enc, info


def build_world_jepa(cfg, encoder: ViTCameraEncoder, freeze: bool):
    """``training.jepa.JEPA`` with its camera encoder (and EMA target) replaced by ``encoder``."""
    from training.jepa import JEPA

    small = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cam_channels=(1,)))
    jepa = JEPA(small)
    jepa.cfg = cfg
    jepa.encoder = encoder
    if freeze:
        for p in encoder.vit.parameters():
            p.requires_grad_(False)
    if jepa.target_encoder is not None:
        jepa.target_encoder = copy.deepcopy(encoder)
        for p in jepa.target_encoder.parameters():
            p.requires_grad_(False)
    return jepa


class EpisodeWindows:
    """Windows over a :class:`edge.sim.dataset.WindowDataset` without copying frames per window."""

    def __init__(self, ds, window_idx: np.ndarray):
        self.ds = ds
        self.idx = np.asarray(window_idx, np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def batch(self, sel: np.ndarray, device: str = "cpu") -> dict[str, torch.Tensor]:
        b = self.ds.batch(self.idx[sel])
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
        if "frame" in out:
            out["frame"] = out["frame"].permute(0, 1, 4, 2, 3).float().div_(255.0)
        return {k: v.to(device) for k, v in out.items()}

    def iter_batches(self, batch_size: int, rng: np.random.Generator | None, device: str = "cpu"):
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield self.batch(order[s:s + batch_size], device)


def split_episodes(ds, val_fraction: float, action_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train / val window indices, split by episode; train keeps ``action_fraction`` of its episodes."""
    eps = np.unique(ds.window_episode)
    if len(eps) < 2:
        raise PretrainError("need at least 2 episodes for a held-out split")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(eps)
    n_val = max(1, int(round(len(eps) * val_fraction)))
    val_eps, train_eps = perm[:n_val], perm[n_val:]
    keep = max(1, int(round(len(train_eps) * action_fraction)))
    train_eps = train_eps[:keep]
    tr = np.flatnonzero(np.isin(ds.window_episode, train_eps))
    va = np.flatnonzero(np.isin(ds.window_episode, val_eps))
    return tr, va, {"train_episodes": int(keep), "val_episodes": int(n_val), "train_windows": int(len(tr)),
                    "val_windows": int(len(va))}


def train_world(cfg, opts: WorldOptions, ds=None, progress: bool | None = None) -> dict[str, Any]:
    """Train the camera world model on a ViT encoder; writes the run folder; returns metrics."""
    from edge.sim.dataset import DatasetError, WindowDataset
    from training.checkpoint import save_checkpoint

    progress = cfg.train.progress if progress is None else progress
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    if cfg.train.device == "cpu":
        torch.set_num_threads(cfg.train.threads)
    encoder, info = build_vit_encoder(cfg, opts)
    if ds is None:
        try:
            ds = WindowDataset(cfg.data.path, k=cfg.objective.horizon, frames=True, stride=opts.stride)
        except (FileNotFoundError, DatasetError) as e:
            raise PretrainError(f"cannot read {cfg.data.path!r} ({e}); collect camera data with edge-collect --camera") from e
    size = ds.frame.shape[1]
    if size != encoder.pre.image_size or ds.frame.shape[2] != encoder.pre.image_size:
        raise PreprocessingMismatch(f"dataset {cfg.data.path} has {ds.frame.shape[1]}x{ds.frame.shape[2]} frames, the "
                                    f"encoder's preprocessing.image_size is {encoder.pre.image_size}")
    tr_idx, va_idx, split = split_episodes(ds, cfg.data.val_fraction, opts.action_fraction, cfg.train.seed)
    train_set, val_set = EpisodeWindows(ds, tr_idx), EpisodeWindows(ds, va_idx)
    jepa = build_world_jepa(cfg, encoder, opts.freeze_encoder).to(cfg.train.device)
    enc_params = [p for p in jepa.encoder.vit.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc_params}
    other = [p for p in jepa.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": other, "scale": 1.0}]
    if enc_params:
        groups.append({"params": enc_params, "scale": opts.encoder_lr_scale if opts.checkpoint else 1.0})
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    bs = cfg.train.batch_size
    steps_per_epoch = max(1, len(train_set) // bs)
    if cfg.data.max_windows:
        steps_per_epoch = max(1, min(steps_per_epoch, cfg.data.max_windows // bs))
    total = steps_per_epoch * cfg.train.epochs
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    step = 0
    t0 = time.monotonic()
    for epoch in range(cfg.train.epochs):
        sums: dict[str, float] = {}
        n = 0
        it = train_set.iter_batches(bs, rng, cfg.train.device)
        bar = tqdm(range(steps_per_epoch), desc=f"world {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
        for _ in bar:
            batch = next(it, None)
            if batch is None:
                break
            loss, parts = jepa(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)}: lower train.lr")
            lr = cfg.train.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
            for g in opt.param_groups:
                g["lr"] = lr * g["scale"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.train.grad_clip)
            opt.step()
            jepa.update_target()
            step += 1
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        row = {"epoch": epoch + 1, "time_s": round(time.monotonic() - t0, 1)}
        row.update({f"train_{k}": v / max(n, 1) for k, v in sums.items()})
        row.update(_validate(jepa, val_set, bs, cfg.train.device))
        history.append(row)
        if progress:
            tqdm.write(f"world epoch {epoch + 1}: train {row['train_loss']:.4f} val {row['val_loss']:.4f}")
    save_checkpoint(out, jepa, cfg, None, cfg.train.epochs)
    meta = {"options": dataclasses.asdict(opts), **info, "split": split, "history": history,
            "encoder_parameters": sum(p.numel() for p in encoder.parameters())}
    (out / VIT_META).write_text(json.dumps(meta, indent=2))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[-1]), extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    return meta


@torch.no_grad()
def _validate(jepa, val_set: EpisodeWindows, bs: int, device: str, max_batches: int = 8) -> dict[str, float]:
    jepa.eval()
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(val_set.iter_batches(bs, None, device)):
        if i >= max_batches:
            break
        _, parts = jepa(batch)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    jepa.train()
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}


def load_vit_world_model(run_dir: str | Path):
    """``training.checkpoint.WorldModel`` (deployed ViT encoder + predictor) of a ``world`` run."""
    from training.checkpoint import WorldModel, load_config_json, load_weights

    run = Path(run_dir)
    if not (run / VIT_META).is_file():
        raise PretrainError(f"{run / VIT_META} not found: {run} is not a run written by python -m training.pretrain world")
    meta = json.loads((run / VIT_META).read_text())
    cfg = load_config_json(run)
    vit = ViTConfig(**meta["vit"])
    pre = Preprocessing.from_dict(meta["preprocessing"])
    enc = ViTCameraEncoder(vit, pre, embed_dim=cfg.model.embed_dim, hidden=cfg.model.enc_hidden)
    jepa = build_world_jepa(cfg, enc, freeze=False)
    load_weights(run, jepa)
    jepa.eval()
    return WorldModel(config=cfg, encoder=jepa.deploy_encoder, predictor=jepa.predictor)


def export_world(run_dir: str | Path, out_dir: str | Path, precisions: tuple[str, ...] = ("fp32",), **planner) -> Path:
    """Bundle a ViT world model with ``training.export.export_bundle`` and record its preprocessing.

    The manifest gains ``encoders.camera.preprocessing`` (the :class:`Preprocessing` dict) and
    ``encoders.camera.backbone`` (``"vit"`` + its config), added by :func:`annotate_bundle`.
    """
    from training.export import ExportConfig, export_bundle, params_from_config

    wm = load_vit_world_model(run_dir)
    params = params_from_config(wm.config.planner, **planner)
    out = export_bundle(wm.encoder, wm.predictor, params, out_dir, ExportConfig(precisions=precisions),
                        training_config=wm.config.to_dict(), data_path=wm.config.data.path,
                        command="python -m training.pretrain export " + str(run_dir), progress=False)
    annotate_bundle(out, {("encoders", "camera", "preprocessing"): wm.encoder.pre.as_dict(),
                          ("encoders", "camera", "backbone"): {"kind": "vit", **dataclasses.asdict(wm.encoder.vit_cfg)}})
    return out


def annotate_bundle(bundle_dir: str | Path, entries: dict[tuple[str, ...], Any],
                    files: dict[str, Path] | None = None) -> None:
    """Add manifest keys (dotted paths) and extra files (hashed into ``files``) to a bundle, then verify it."""
    import shutil

    from edge.bundle import MANIFEST_NAME, load_bundle, sha256_file

    b = Path(bundle_dir)
    manifest = json.loads((b / MANIFEST_NAME).read_text())
    for rel, src in (files or {}).items():
        if Path(src).resolve() != (b / rel).resolve():
            shutil.copyfile(src, b / rel)
        manifest["files"][rel] = sha256_file(b / rel)
    for path, value in entries.items():
        node = manifest
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    tmp = b / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(b / MANIFEST_NAME)
    load_bundle(b)


def check_bundle_preprocessing(manifest: dict, used: Preprocessing | dict, used_where: str = "the runtime camera") -> None:
    """Refuse to feed a bundle's camera encoder with other preprocessing than it records."""
    rec = manifest.get("encoders", {}).get("camera", {}).get("preprocessing")
    if rec is None:
        raise PreprocessingMismatch("the bundle records no encoders.camera.preprocessing; re-export it with "
                                    "python -m training.pretrain export")
    check_preprocessing(rec, used, "the bundle manifest", used_where)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p1 = sub.add_parser("ijepa", help="I-JEPA pretraining of the camera ViT on unlabeled frames")
    p1.add_argument("config", help="YAML, e.g. configs/ijepa_cpu.yaml")
    p1.add_argument("overrides", nargs="*", help="key=value, e.g. epochs=3 vit.width=64")
    p2 = sub.add_parser("world", help="camera world model on the (pretrained) ViT")
    p2.add_argument("config", help="YAML, e.g. configs/ijepa_world.yaml")
    p2.add_argument("overrides", nargs="*", help="dotted, e.g. ijepa.checkpoint=runs/ijepa ijepa.freeze_encoder=false")
    p3 = sub.add_parser("export", help="bundle a world run (ViT encoder + fused planner) with its preprocessing")
    p3.add_argument("run_dir")
    p3.add_argument("--out", required=True, help="bundle folder, e.g. models/cam_ijepa")
    p3.add_argument("--precisions", default="fp32", help="comma list of fp32,int8,fp16")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "ijepa":
            r = pretrain(load_ijepa_config(args.config, args.overrides))
            h = r["history"][-1]
            print(f"I-JEPA: held-out loss {r['val_loss_initial']:.4f} -> {h['val_loss']:.4f} after {h['epoch']} epochs "
                  f"({h['time_s']} s); preprocessing {r['preprocessing']}")
        elif args.cmd == "world":
            cfg, opts = load_world_config(args.config, args.overrides)
            m = train_world(cfg, opts)
            print(f"world model: val loss {m['history'][-1]['val_loss']:.4f} ({m['split']}) -> {cfg.train.out_dir}")
        else:
            prec = tuple(dict.fromkeys(["fp32"] + [p for p in args.precisions.split(",") if p]))
            print(f"bundle: {export_world(args.run_dir, args.out, prec)}")
    except (PretrainError, PreprocessingMismatch, FloatingPointError) as e:
        print(f"training.pretrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
