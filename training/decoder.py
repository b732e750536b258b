"""State decoder for inspection: embeddings (observed or imagined) back to camera frames and range scans.

Trained after the world model on **frozen** embeddings (``--encoder target``: the deployed EMA
target encoder, whose space the predictor predicts in; ``--encoder online``: the online
encoder). It never changes the world model. Heads:

- frame: ``z [B, E] -> Linear -> [C, 8, 8] -> 3 x (ConvTranspose 4x4 stride 2 + ReLU) -> conv -> sigmoid``
  = ``[B, 3, 64, 64]`` in [0, 1] (camera models only);
- ranges: ``z -> MLP -> sigmoid * max_range`` = ``[B, 8]`` metres (every model; the sensor
  model's only picture).

Example::

    nice -n 10 python -m training.decoder train runs/sensor_default --out runs/decoder_sensor
    nice -n 10 python -m training.decoder train runs/cam_ijepa --out runs/decoder_cam --encoder target
    python -m training.decoder imagine runs/cam_ijepa --decoder runs/decoder_cam --out docs/img/imagine.gif
    python -m training.evaluate runs/cam_ijepa --imagine runs/decoder_cam    # the same through edge-eval

``imagine`` plans from the start of an evaluation episode with the reference MPPI, executes the
plan open loop in the simulator (each action held ``data.action_repeat`` control ticks), and
writes a GIF with, per plan step, the real frame (or scan) next to the frame (or scan) decoded
from the predictor's imagined embedding along that plan. ``train`` records the encoder and the
sha256 of the run's weights in ``decoder.json``; ``imagine`` refuses a decoder fit on another
model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

DEC_FILE = "decoder.safetensors"
DEC_META = "decoder.json"
ENCODER_CHOICES = ("target", "online")


class DecoderError(RuntimeError):
    """Bad input or missing run/decoder (the message names the fix)."""


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder sizes. ``frames``: also decode camera frames (camera models)."""

    embed_dim: int = 32
    frames: bool = False
    image_size: int = 64
    channels: int = 32  # channels at 8x8, halved by each upsampling
    hidden: int = 256
    max_range: float = 2.0  # m, range scale (the simulator's RangeConfig.max_range)

    def __post_init__(self) -> None:
        if self.image_size != 64 and self.frames:
            raise ValueError(f"DecoderConfig.image_size must be 64 (8 -> 64 in 3 upsamplings), got {self.image_size}")
        if self.embed_dim < 1 or self.channels < 4 or self.hidden < 1 or self.max_range <= 0:
            raise ValueError(f"bad DecoderConfig {self}")


class StateDecoder(nn.Module):
    """``z [B, E] -> {"ranges": [B, 8] m, "frame": [B, 3, 64, 64] in [0, 1] (if cfg.frames)}``."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.ranges = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden),
                                    nn.ReLU(), nn.Linear(cfg.hidden, 8))
        if cfg.frames:
            c = cfg.channels
            self.fc = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, c * 64))
            self.up = nn.Sequential(
                nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(c // 2, c // 4, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(c // 4, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        if z.dim() != 2 or z.shape[1] != self.cfg.embed_dim:
            raise ValueError(f"StateDecoder expects z [B, {self.cfg.embed_dim}], got {tuple(z.shape)}")
        out = {"ranges": torch.sigmoid(self.ranges(z)) * self.cfg.max_range}
        if self.cfg.frames:
            x = self.fc(z).reshape(z.shape[0], self.cfg.channels, 8, 8)
            out["frame"] = torch.sigmoid(self.up(x))
        return out


# --------------------------------------------------------------------------------------------
# loading the frozen world model (online or target encoder)
# --------------------------------------------------------------------------------------------
@dataclass
class FrozenModel:
    config: Any
    encoder: nn.Module
    predictor: nn.Module
    camera: bool


def load_frozen(run_dir: str | Path, which: str = "target") -> FrozenModel:
    """The world model of a run (``edge-train`` or ``training.pretrain world``) with the chosen encoder."""
    from training.checkpoint import CheckpointError, load_config_json, load_weights

    if which not in ENCODER_CHOICES:
        raise DecoderError(f"encoder must be one of {ENCODER_CHOICES}, got {which!r}")
    run = Path(run_dir)
    try:
        cfg = load_config_json(run)
        if (run / "vit.json").is_file():
            from training.ijepa import Preprocessing, ViTCameraEncoder, ViTConfig
            from training.pretrain import build_world_jepa

            meta = json.loads((run / "vit.json").read_text())
            enc = ViTCameraEncoder(ViTConfig(**meta["vit"]), Preprocessing.from_dict(meta["preprocessing"]),
                                   embed_dim=cfg.model.embed_dim, hidden=cfg.model.enc_hidden)
            jepa = build_world_jepa(cfg, enc, freeze=False)
        else:
            from training.jepa import JEPA

            jepa = JEPA(cfg)
        load_weights(run, jepa)
    except CheckpointError as e:
        raise DecoderError(str(e)) from e
    jepa.eval()
    encoder = jepa.encoder if which == "online" or jepa.target_encoder is None else jepa.target_encoder
    for p in jepa.parameters():
        p.requires_grad_(False)
    return FrozenModel(cfg, encoder, jepa.predictor, cfg.model.kind == "camera")


@torch.no_grad()
def embed(model: FrozenModel, sensor: np.ndarray, frame: np.ndarray | None, batch: int = 256) -> torch.Tensor:
    """``sensor [N, 14]`` (+ ``frame uint8 [N, 64, 64, 3]``) -> ``z [N, E]`` with the frozen encoder."""
    zs = []
    for s in range(0, len(sensor), batch):
        sv = torch.from_numpy(np.asarray(sensor[s:s + batch], np.float32))
        if model.camera:
            f = torch.from_numpy(np.asarray(frame[s:s + batch])).permute(0, 3, 1, 2).float().div_(255.0)
            zs.append(model.encoder(f, sv[:, 8:12]))
        else:
            zs.append(model.encoder(sv))
    return torch.cat(zs)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderTrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    max_frames: int = 6000  # observations read from the dataset (0 = all)
    val_fraction: float = 0.15  # last observations (whole episodes at the end) held out
    channels: int = 32  # decoder channels at 8x8 (DecoderConfig.channels)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.val_fraction < 1 or self.max_frames < 0:
            raise ValueError(f"bad DecoderTrainConfig {self}")


def load_observations(path: str, frames: bool, max_n: int) -> dict[str, np.ndarray]:
    """``sensor [N, 14]``, ``ranges [N, 8]`` (m, NaN kept), optional ``frame [N, 64, 64, 3]``: consecutive observations."""
    from edge.sim.dataset import DatasetError, WindowDataset

    try:
        ds = WindowDataset(path, k=1, frames=frames)
    except (FileNotFoundError, DatasetError) as e:
        raise DecoderError(f"cannot read {path!r} ({e}); pass --data with an edge-collect folder"
                           + (" recorded with --camera" if frames else "")) from e
    n = len(ds.sensor) if not max_n else min(max_n, len(ds.sensor))
    out = {"sensor": ds.sensor[:n]}
    if frames:
        out["frame"] = ds.frame[:n]
    return out


def train_decoder(model: FrozenModel, obs: dict[str, np.ndarray], tcfg: DecoderTrainConfig = DecoderTrainConfig(),
                  max_range: float = 2.0, progress: bool = True) -> tuple[StateDecoder, dict[str, Any]]:
    """Fit a decoder on frozen embeddings of ``obs``; metrics on the held-out tail.

    Range targets are ``sensor[:, :8] * max_range`` (NaN dropouts became max range in the sensor
    vector). Frame loss: per-pixel MSE; range loss: MSE in (m / max_range)^2.
    """
    torch.manual_seed(tcfg.seed)
    z = embed(model, obs["sensor"], obs.get("frame"))
    ranges = torch.from_numpy(np.asarray(obs["sensor"][:, :8], np.float32)) * max_range
    frames = obs.get("frame") if model.camera else None
    n = len(z)
    n_val = max(1, int(round(n * tcfg.val_fraction)))
    if n - n_val < 2:
        raise DecoderError(f"only {n} observations: need more to train and hold some out")
    cfg = DecoderConfig(embed_dim=z.shape[1], frames=frames is not None, max_range=max_range, channels=tcfg.channels)
    dec = StateDecoder(cfg)
    opt = torch.optim.AdamW(dec.parameters(), lr=tcfg.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tcfg.epochs)

    def frames_t(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(frames[idx])).permute(0, 3, 1, 2).float().div_(255.0)

    def loss_of(idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        out = dec(z[idx])
        lr_ = F.mse_loss(out["ranges"] / max_range, ranges[idx] / max_range)
        parts = {"range_mse": float(lr_.detach())}
        total = lr_
        if frames is not None:
            lf = F.mse_loss(out["frame"], frames_t(idx))
            parts["frame_mse"] = float(lf.detach())
            total = total + lf
        return total, parts

    tr_n = n - n_val
    history = []
    for ep in tqdm(range(tcfg.epochs), desc="decoder", disable=not progress, leave=False):
        perm = np.random.default_rng(tcfg.seed + ep).permutation(tr_n)
        for s in range(0, tr_n, tcfg.batch_size):
            loss, _ = loss_of(perm[s:s + tcfg.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        history.append({"epoch": ep + 1, **evaluate_decoder(dec, z[tr_n:], ranges[tr_n:],
                                                             frames[tr_n:] if frames is not None else None)})
    metrics = dict(history[-1])
    metrics.update(_baselines(ranges[:tr_n], ranges[tr_n:], frames[:tr_n] if frames is not None else None,
                              frames[tr_n:] if frames is not None else None))
    metrics.update({"train_observations": tr_n, "heldout_observations": n_val, "history": history})
    return dec.eval(), metrics


@torch.no_grad()
def evaluate_decoder(dec: StateDecoder, z: torch.Tensor, ranges: torch.Tensor, frames: np.ndarray | None,
                     batch: int = 512) -> dict[str, float]:
    """Held-out reconstruction error: range MAE (m) and, with frames, pixel MSE and PSNR (dB)."""
    dec.eval()
    r_err, f_err, cnt = 0.0, 0.0, 0
    for s in range(0, len(z), batch):
        out = dec(z[s:s + batch])
        r_err += float((out["ranges"] - ranges[s:s + batch]).abs().mean(1).sum())
        if frames is not None:
            f = torch.from_numpy(np.asarray(frames[s:s + batch])).permute(0, 3, 1, 2).float().div_(255.0)
            f_err += float((out["frame"] - f).pow(2).mean(dim=(1, 2, 3)).sum())
        cnt += len(out["ranges"])
    dec.train()
    m = {"heldout_range_mae_m": r_err / cnt}
    if frames is not None:
        mse = f_err / cnt
        m["heldout_frame_mse"] = mse
        m["heldout_frame_psnr_db"] = float(10 * np.log10(1.0 / max(mse, 1e-12)))
    return m


def _baselines(r_tr: torch.Tensor, r_va: torch.Tensor, f_tr: np.ndarray | None, f_va: np.ndarray | None) -> dict[str, float]:
    """Errors of predicting the training mean (a decoder must beat these to carry information)."""
    out = {"baseline_mean_range_mae_m": float((r_va - r_tr.mean(0)).abs().mean())}
    if f_tr is not None:
        mean = f_tr.reshape(len(f_tr), -1).astype(np.float64).mean(0) / 255.0
        mse = float(((f_va.reshape(len(f_va), -1) / 255.0 - mean) ** 2).mean())
        out["baseline_mean_frame_mse"] = mse
        out["baseline_mean_frame_psnr_db"] = float(10 * np.log10(1.0 / mse))
    return out


def save_decoder(out_dir: str | Path, dec: StateDecoder, meta: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in dec.state_dict().items()}, str(out / DEC_FILE),
              metadata={"format": "edge-jepa-decoder", "config": json.dumps(dataclasses.asdict(dec.cfg))})
    (out / DEC_META).write_text(json.dumps({"config": dataclasses.asdict(dec.cfg), **meta}, indent=2))
    return out


def load_decoder(path: str | Path) -> StateDecoder:
    """A decoder saved by :func:`save_decoder` (its folder or its ``decoder.safetensors``); raises DecoderError."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        p = p / DEC_FILE
    if not p.is_file():
        raise DecoderError(f"{p} not found: train one with python -m training.decoder train RUN --out DIR")
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "edge-jepa-decoder":
            raise DecoderError(f"{p} is not a state-decoder checkpoint: train one with "
                               "python -m training.decoder train RUN --out DIR")
        dec = StateDecoder(DecoderConfig(**json.loads(meta["config"])))
        dec.load_state_dict(load_file(str(p)))
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError, RuntimeError) as e:
        if isinstance(e, DecoderError):
            raise
        raise DecoderError(f"{p} is not a readable state-decoder checkpoint ({type(e).__name__}: {e}); "
                           "train one again with python -m training.decoder train RUN --out DIR") from e
    return dec.eval()


def decoder_meta(path: str | Path) -> dict[str, Any]:
    """``decoder.json`` next to the weights (``{}`` when absent): the run, encoder and fingerprint it was fit on."""
    p = Path(path)
    p = (p if p.is_dir() else p.parent) / DEC_META
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DecoderError(f"{p} is not valid JSON ({e}): train the decoder again") from e


def run_fingerprint(run_dir: str | Path) -> str | None:
    """sha256 of the run's ``model.safetensors`` (None when absent): ties a decoder to the weights it was fit on."""
    from edge.bundle import sha256_file
    from training.checkpoint import MODEL_FILE

    p = Path(run_dir) / MODEL_FILE
    return sha256_file(p) if p.is_file() else None


def check_decoder_matches(dec: StateDecoder, meta: dict[str, Any], decoder_dir: str | Path, run_dir: str | Path,
                          config: Any, which: str) -> None:
    """Refuse a decoder fit on another model's embeddings (its pictures would be meaningless).

    Checks the embedding size, the model kind (a frame decoder needs a camera model), the
    encoder (online/target) recorded in ``decoder.json`` and the
    sha256 of the run's weights recorded there (decoders saved before fingerprints existed skip
    the last two). Raises DecoderError naming both values and the command that fixes it.
    """
    fix = f"train one for this run: python -m training.decoder train {run_dir} --out DIR"
    e_run = config.model.embed_dim
    if dec.cfg.embed_dim != e_run:
        raise DecoderError(f"decoder {decoder_dir} is for E={dec.cfg.embed_dim}, the run {run_dir} embeds to E={e_run}; {fix}")
    if dec.cfg.frames and config.model.kind != "camera":
        raise DecoderError(f"decoder {decoder_dir} decodes camera frames (fit on a camera model), the run {run_dir} "
                           f"is a {config.model.kind} model; {fix}")
    if meta.get("encoder") not in (None, which):
        raise DecoderError(f"decoder {decoder_dir} was fit on the {meta['encoder']} encoder's embeddings, not the "
                           f"{which} encoder's; pass encoder {meta['encoder']} or {fix} --encoder {which}")
    recorded, actual = meta.get("run_weights_sha256"), run_fingerprint(run_dir)
    if recorded and actual and recorded != actual:
        raise DecoderError(f"decoder {decoder_dir} was fit on another model's embeddings (weights sha256 "
                           f"{recorded[:12]}.. of {meta.get('run', '?')}, this run's {actual[:12]}..); {fix}")


# --------------------------------------------------------------------------------------------
# imagine: real vs decoded imagined observations along a plan
# --------------------------------------------------------------------------------------------
def scan_image(ranges_m: np.ndarray, max_range: float, size: int = 64, color=(40, 160, 255)) -> np.ndarray:
    """A top view of 8 range readings (robot at the centre, forward = up): ``uint8 [size, size, 3]``."""
    import cv2

    img = np.full((size, size, 3), 255, np.uint8)
    c = size // 2
    scale = (size / 2 - 2) / max_range
    pts = []
    for i, r in enumerate(np.nan_to_num(np.asarray(ranges_m, float), nan=max_range)):
        ang = np.pi / 2 + i * np.pi / 4
        p = (int(round(c + np.cos(ang) * r * scale)), int(round(c - np.sin(ang) * r * scale)))
        cv2.line(img, (c, c), p, (200, 200, 200), 1)
        pts.append(p)
    cv2.polylines(img, [np.array(pts, np.int32)], True, color, 1)
    cv2.circle(img, (c, c), 3, (0, 0, 0), -1)
    return img


@torch.no_grad()
def imagine(run_dir: str | Path, decoder_dir: str | Path, out_gif: str | Path, seed: int = 1000, chunks: int = 4,
            scale: int = 3, which: str | None = None, planner: Any = None) -> dict[str, Any]:
    """Plan, execute open loop, and write ``out_gif``: real (left) vs decoded imagined (right) per plan step.

    Each of ``chunks`` rounds: encode the current observation, plan with the reference MPPI
    (``planner``, default the run's planner config), unroll the predictor along the planned mean
    (the imagined future), execute those H actions in the simulator, each held for
    ``data.action_repeat`` control ticks (one predictor step), and show the real observation
    reached after each step beside the one decoded from its predicted embedding.

    GIF frames: ``uint8 [64 * scale, (2 * 64 + 2) * scale, 3]`` (a 2-pixel white gap between the
    halves), one per executed plan step. ``which``: the encoder (online/target) whose embeddings
    are decoded; None = the one the decoder was fit on (``decoder.json``), else target.
    Returns the GIF path, frame and control-tick counts, and per-plan-step decoded-vs-real errors
    (frame MSE in [0, 1]^2 when both the model and the decoder have frames, else range MAE in m).
    Raises DecoderError for a missing or mismatched run/decoder (see :func:`check_decoder_matches`).
    """
    from PIL import Image

    from edge.sim.env import BatchSim, SimConfig
    from training.planner import MPCController

    if chunks < 1 or scale < 1:
        raise DecoderError(f"imagine needs chunks >= 1 and scale >= 1, got chunks={chunks}, scale={scale}")
    dec = load_decoder(decoder_dir)
    meta = decoder_meta(decoder_dir)
    which = which or meta.get("encoder") or "target"
    model = load_frozen(run_dir, which)
    check_decoder_matches(dec, meta, decoder_dir, run_dir, model.config, which)
    planner = planner if planner is not None else model.config.planner
    repeat = model.config.data.action_repeat
    sim_cfg = SimConfig()
    sim = BatchSim(sim_cfg, 1, camera=model.camera, seed=seed)
    obs = sim.reset(seed=seed, mode="evaluate")
    rng = np.random.default_rng(seed + 1)
    goal_obs = sim.observe_at(np.concatenate([sim.goal, rng.uniform(-np.pi, np.pi, (1, 1))], axis=-1))
    z_goal = embed(model, goal_obs["sensor"], goal_obs.get("frame"))
    ctl = MPCController(model.predictor, planner, batch=1, seed=seed, action_repeat=repeat)
    frames_out, errs, steps_of = [], [], []
    max_r = dec.cfg.max_range
    ticks, done = 0, False
    for _ in range(chunks):
        z = embed(model, obs["sensor"], obs.get("frame"))
        ctl.act(z, z_goal)
        plan = ctl.last.mean  # [1, H, A]
        z_pred, _ = model.predictor.unroll(z, plan)  # [1, H, E]
        decoded = dec(z_pred[0])
        for t in range(plan.shape[1]):
            for _ in range(repeat):  # one predictor step = action_repeat control ticks
                obs, info = sim.step(plan[:, t].numpy())
                ticks += 1
                done = bool(info["success"][0])
                if done:
                    break
            if model.camera and dec.cfg.frames:
                real = obs["frame"][0]
                fake = (decoded["frame"][t].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                errs.append(float(((real / 255.0 - fake / 255.0) ** 2).mean()))
            else:
                real = scan_image(obs["ranges"][0], max_r, color=(0, 0, 0))
                fake = scan_image(decoded["ranges"][t].numpy(), max_r)
                errs.append(float(np.abs(np.nan_to_num(obs["ranges"][0], nan=max_r) - decoded["ranges"][t].numpy()).mean()))
            steps_of.append(t)
            pair = np.concatenate([real, np.full((real.shape[0], 2, 3), 255, np.uint8), fake], axis=1)
            frames_out.append(np.kron(pair, np.ones((scale, scale, 1), np.uint8)))
            if done:
                break
        ctl.reset()  # the whole plan was executed: plan afresh
        if done:
            break
    out = Path(out_gif)
    out.parent.mkdir(parents=True, exist_ok=True)
    imgs = [Image.fromarray(f) for f in frames_out]
    imgs[0].save(out, save_all=True, append_images=imgs[1:], duration=120, loop=0, optimize=True)
    errs_a, steps_a = np.array(errs), np.array(steps_of)
    per_step = [float(errs_a[steps_a == i].mean()) for i in range(int(steps_a.max()) + 1)]
    return {"gif": str(out), "frames": len(frames_out), "control_ticks": ticks, "action_repeat": repeat,
            "encoder": which, "reached_goal": done,
            "error_kind": "frame_mse" if model.camera and dec.cfg.frames else "range_mae_m",
            "error_by_plan_step": per_step, "error_mean": float(errs_a.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.decoder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit a decoder on frozen embeddings of a trained run")
    t.add_argument("run_dir")
    t.add_argument("--out", required=True)
    t.add_argument("--encoder", choices=ENCODER_CHOICES, default="target", help="which encoder's embeddings (default target)")
    t.add_argument("--data", help="dataset folder (default: the run's data.path)")
    t.add_argument("--epochs", type=int, default=DecoderTrainConfig.epochs)
    t.add_argument("--max-frames", type=int, default=DecoderTrainConfig.max_frames)
    i = sub.add_parser("imagine", help="GIF: real frames beside frames decoded from the imagined rollout of a plan")
    i.add_argument("run_dir")
    i.add_argument("--decoder", required=True)
    i.add_argument("--out", required=True, help="GIF path")
    i.add_argument("--seed", type=int, default=1000)
    i.add_argument("--chunks", type=int, default=4, help="plans executed one after another")
    i.add_argument("--encoder", choices=ENCODER_CHOICES, help="default: the encoder the decoder was fit on")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.cmd == "train":
            from edge.sim.env import SimConfig

            model = load_frozen(args.run_dir, args.encoder)
            obs = load_observations(args.data or model.config.data.path, model.camera, args.max_frames)
            dec, m = train_decoder(model, obs, DecoderTrainConfig(epochs=args.epochs, max_frames=args.max_frames),
                                   max_range=SimConfig().ranges.max_range)
            save_decoder(args.out, dec, {"run": str(args.run_dir), "encoder": args.encoder,
                                         "run_weights_sha256": run_fingerprint(args.run_dir), "metrics": m})
            msg = f"held-out range MAE {m['heldout_range_mae_m']:.3f} m (mean baseline {m['baseline_mean_range_mae_m']:.3f})"
            if "heldout_frame_mse" in m:
                msg += (f"; frame MSE {m['heldout_frame_mse']:.4f} = {m['heldout_frame_psnr_db']:.1f} dB "
                        f"(mean-frame baseline {m['baseline_mean_frame_psnr_db']:.1f} dB)")
            print(msg + f" -> {args.out}")
        else:
            r = imagine(args.run_dir, args.decoder, args.out, args.seed, args.chunks, which=args.encoder)
            print(f"wrote {r['gif']} ({r['frames']} steps); decoded-vs-real {r['error_kind']} mean {r['error_mean']:.4f}")
    except (DecoderError, ValueError) as e:
        print(f"training.decoder: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
