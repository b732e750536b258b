"""I-JEPA for the robot camera: compact ViT, block masking, predictor, EMA target, loss, export.

Image-based Joint-Embedding Predictive Architecture (Assran et al., CVPR 2023), sized for
64x64 frames on an edge CPU:

- :class:`ViT`: patch embedding (``patch_size`` 8 -> an 8x8 grid of 64 tokens), fixed 2-D
  sin-cos positions, pre-LN transformer blocks (attention written with MatMul/Softmax so the
  ONNX graph holds only TensorRT-parsable ops), final LayerNorm.
- :func:`sample_masks`: the paper's multi-block masking. ``num_targets`` target blocks whose
  area is a ``target_scale`` fraction of the grid and aspect ratio (h/w) in
  ``target_aspect``; one large context block (``context_scale``, aspect 1) with every target
  patch removed. As in the paper's collator, block sizes are drawn once per batch (positions
  per sample) and masks are truncated to the shortest one in the batch so they stack.
- :class:`IJEPAPredictor`: a narrow transformer (``pred_width`` < ``width``) over the
  projected context tokens plus one learned mask token per target patch, each carrying the
  positional embedding of the patch it must predict.
- :class:`IJEPA`: online (context) encoder, EMA target encoder (no gradient, momentum ramped
  ``ema_start -> ema_end``), predictor and the loss: mean squared error between predicted
  patch representations and the target encoder's **layer-normed** representations of the
  target patches (computed from the whole, unmasked image).
- :class:`ViTCameraEncoder`: the world model's camera encoder built on a (pretrained) ViT:
  the ``CameraEncoder`` contract ``frame [B, 3, 64, 64] in [0, 1], pose4 [B, 4] -> z [B, E]``
  (mean-pooled tokens fused with the odometry pose). It subclasses
  :class:`training.models.CameraEncoder` so ``training.export`` treats it as the camera
  encoder; normalisation by the recorded :class:`Preprocessing` is inside the module (and so
  inside the exported graph).

Preprocessing (:class:`Preprocessing`) is recorded in every checkpoint; whoever loads one
passes what it will feed and :func:`check_preprocessing` raises
:class:`PreprocessingMismatch` naming the field and both values.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.models import POSE4_DIM, CameraEncoder, _mlp

CHANNEL_ORDERS = ("RGB", "BGR")
RESIZE_MODES = ("none", "area", "bilinear")


class PreprocessingMismatch(ValueError):
    """Frames would be fed differently from how the encoder was pretrained."""


@dataclass(frozen=True)
class Preprocessing:
    """How a camera frame becomes the encoder's input (recorded in checkpoints and bundles).

    ``x = (frame_uint8[..., order] / 255 - mean) / std`` on a ``image_size`` square frame,
    channels first. The ``mean``/``std`` normalisation happens inside :class:`ViTCameraEncoder`
    (and its ONNX graph), whose input stays ``frame [B, 3, S, S]`` in [0, 1] (the contract).

    Attributes:
        image_size: frame side in pixels the encoder takes.
        resize: how a camera image of another size is brought to ``image_size`` (``area`` =
            OpenCV INTER_AREA as ``edge/camera.py`` does; ``none`` = must already match).
        channel_order: channel order of the encoder input (the contract is RGB).
        mean, std: per-channel statistics (of [0, 1] pixel values) subtracted / divided.
    """

    image_size: int = 64
    resize: str = "area"
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"Preprocessing.image_size must be >= 8, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Preprocessing.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"Preprocessing.channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"Preprocessing.mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = [round(float(v), 6) for v in self.mean]
        d["std"] = [round(float(v), 6) for v in self.std]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Preprocessing:
        return Preprocessing(image_size=int(d["image_size"]), resize=str(d["resize"]),
                             channel_order=str(d["channel_order"]),
                             mean=tuple(round(float(v), 6) for v in d["mean"]),
                             std=tuple(round(float(v), 6) for v in d["std"]))

    @staticmethod
    def from_frames(frames: np.ndarray, image_size: int | None = None) -> Preprocessing:
        """Statistics of ``uint8 [..., S, S, 3]`` RGB frames (channel mean / std of x / 255)."""
        x = np.asarray(frames).reshape(-1, 3).astype(np.float64) / 255.0
        std = np.maximum(x.std(0), 1e-3)
        return Preprocessing(image_size=image_size or int(np.asarray(frames).shape[-2]),
                             mean=tuple(round(float(v), 6) for v in x.mean(0)),
                             std=tuple(round(float(v), 6) for v in std))


def check_preprocessing(recorded: Preprocessing | dict, used: Preprocessing | dict, recorded_where: str,
                        used_where: str) -> None:
    """Raise :class:`PreprocessingMismatch` unless ``used`` equals ``recorded`` field by field."""
    a = recorded.as_dict() if isinstance(recorded, Preprocessing) else Preprocessing.from_dict(recorded).as_dict()
    b = used.as_dict() if isinstance(used, Preprocessing) else Preprocessing.from_dict(used).as_dict()
    diffs = []
    for k in a:
        va, vb = a[k], b[k]
        same = (np.allclose(va, vb, rtol=0, atol=1e-6) if isinstance(va, list) else va == vb)
        if not same:
            diffs.append(f"{k}: {recorded_where} has {va!r}, {used_where} has {vb!r}")
    if diffs:
        raise PreprocessingMismatch(
            "camera preprocessing mismatch (" + "; ".join(diffs) + "); the encoder must be fed exactly as it was "
            f"pretrained: use the preprocessing recorded in {recorded_where}, or pretrain again with the new one")


# --------------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViTConfig:
    """Compact ViT + I-JEPA predictor sizes (defaults: 8x8 patches -> 64 tokens, width 96).

    Chosen for the edge: 64 tokens keep attention cheap (T^2 = 4096) and the defaults give a
    0.32 M-parameter backbone at 46 MFLOP per frame (:func:`vit_flops`), run once per tick.
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 96
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 2.0
    pred_width: int = 48
    pred_depth: int = 2
    pred_heads: int = 2

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.width % self.heads or self.pred_width % self.pred_heads:
            raise ValueError("ViTConfig.width / pred_width must be divisible by heads / pred_heads")
        for name in ("width", "depth", "heads", "pred_width", "pred_depth", "pred_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if (self.width // self.heads) % 2 or self.width % 4 or self.pred_width % 4:
            raise ValueError("ViTConfig.width and pred_width must be multiples of 4 (2-D sin-cos positions)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding ``[grid*grid, dim]`` (MAE / I-JEPA); row-major patches."""
    if dim % 4:
        raise ValueError(f"sincos_pos_embed: dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")

    def emb(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([emb(ys), emb(xs)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention with explicit MatMul/Softmax (clean ONNX, TensorRT-parsable)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]``."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, ``x + mlp(ln(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [B, T, D]``, ``idx [B, K]`` -> ``[B, K, D]``."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class ViT(nn.Module):
    """Vision transformer over normalised frames: ``x [B, 3, S, S] -> tokens [B, T, D]``.

    ``forward(x, keep)`` with ``keep [B, K]`` patch indices encodes only those patches (the
    I-JEPA context encoder); positions are added before the selection.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.width, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList([Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        s = self.cfg.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"ViT expects x [B, 3, {s}, {s}], got {tuple(x.shape)}")
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, T, D]
        if keep is not None:
            t = gather_tokens(t, keep)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)


class IJEPAPredictor(nn.Module):
    """Narrow transformer: context tokens + positional mask tokens -> target-patch predictions.

    ``forward(ctx [B, Kc, D], ctx_idx [B, Kc], tgt_idx [B, Kt]) -> [B, Kt, D]``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.width, cfg.pred_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.pred_width))
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.pred_width, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList([Block(cfg.pred_width, cfg.pred_heads, cfg.mlp_ratio) for _ in range(cfg.pred_depth)])
        self.norm = nn.LayerNorm(cfg.pred_width)
        self.proj = nn.Linear(cfg.pred_width, cfg.width)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        b = ctx.shape[0]
        pos = self.pos_embed.expand(b, -1, -1)
        x = self.embed(ctx) + gather_tokens(pos, ctx_idx)
        m = self.mask_token.expand(b, tgt_idx.shape[1], -1) + gather_tokens(pos, tgt_idx)
        x = torch.cat([x, m], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.norm(x[:, ctx.shape[1]:]))


# --------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskConfig:
    """Multi-block masking (I-JEPA defaults: 4 targets of 15-20 %, aspect 0.75-1.5; context 85-100 %)."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 4  # fewest context patches kept after removing the targets

    def __post_init__(self) -> None:
        if self.num_targets < 1:
            raise ValueError(f"MaskConfig.num_targets must be >= 1, got {self.num_targets}")
        for name in ("target_scale", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"MaskConfig.{name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        lo, hi = self.target_aspect
        if not 0 < lo <= hi:
            raise ValueError(f"MaskConfig.target_aspect must satisfy 0 < lo <= hi, got {(lo, hi)}")
        if self.min_context < 1:
            raise ValueError(f"MaskConfig.min_context must be >= 1, got {self.min_context}")


def block_size(grid: int, scale: float, aspect: float) -> tuple[int, int]:
    """Block ``(h, w)`` in patches of area ``~scale * grid^2`` and ``h / w ~ aspect``, within the grid."""
    keep = scale * grid * grid
    h = max(1, min(grid, int(round(math.sqrt(keep * aspect)))))
    w = max(1, min(grid, int(round(math.sqrt(keep / aspect)))))
    return h, w


def _block(rng: np.random.Generator, grid: int, h: int, w: int) -> np.ndarray:
    top = rng.integers(0, grid - h + 1)
    left = rng.integers(0, grid - w + 1)
    m = np.zeros((grid, grid), bool)
    m[top:top + h, left:left + w] = True
    return m


@dataclass
class Masks:
    """One batch of masks (patch indices, row-major).

    ``context [B, Kc]`` (sorted), ``targets [B, M, Kt]``, and the block sizes used.
    """

    context: torch.Tensor
    targets: torch.Tensor
    target_hw: tuple[int, int]
    context_hw: tuple[int, int]


def sample_masks(batch: int, grid: int, cfg: MaskConfig, rng: np.random.Generator, max_tries: int = 50) -> Masks:
    """The I-JEPA collator: per batch one target size and one context size, per sample positions.

    Targets: ``cfg.num_targets`` blocks of the same ``(h, w)`` (scale and aspect drawn once per
    batch). Context: a block of ``context_scale`` (aspect 1) minus the union of the targets; a
    sample whose context keeps fewer than ``min_context`` patches redraws its positions. Each
    sample's context is cut to the shortest context in the batch (kept patches chosen at
    random) so contexts stack; targets are full blocks, so they all have ``h * w`` patches.
    """
    s_t = rng.uniform(*cfg.target_scale)
    a_t = math.exp(rng.uniform(math.log(cfg.target_aspect[0]), math.log(cfg.target_aspect[1])))
    th, tw = block_size(grid, s_t, a_t)
    ch, cw = block_size(grid, rng.uniform(*cfg.context_scale), 1.0)
    ctx_list, tgt_list = [], []
    for _ in range(batch):
        for _try in range(max_tries):
            blocks = [_block(rng, grid, th, tw) for _ in range(cfg.num_targets)]
            union = np.any(blocks, axis=0)
            ctx = _block(rng, grid, ch, cw) & ~union
            if ctx.sum() >= cfg.min_context:
                break
        else:
            raise ValueError(f"sample_masks: no context of >= {cfg.min_context} patches left after removing "
                             f"{cfg.num_targets} targets of {th}x{tw} in {max_tries} tries; lower target_scale/num_targets")
        ctx_list.append(np.flatnonzero(ctx.ravel()))
        tgt_list.append(np.stack([np.flatnonzero(b.ravel()) for b in blocks]))
    k = min(len(c) for c in ctx_list)
    ctx_arr = np.stack([np.sort(rng.choice(c, k, replace=False)) if len(c) > k else c for c in ctx_list])
    return Masks(context=torch.from_numpy(ctx_arr).long(), targets=torch.from_numpy(np.stack(tgt_list)).long(),
                 target_hw=(th, tw), context_hw=(ch, cw))


# --------------------------------------------------------------------------------------------
# I-JEPA model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IJEPAConfig:
    """A pretraining run (YAML: ``configs/ijepa_*.yaml``; dotted CLI overrides)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data_path: str = "data/cam"  # edge-collect --camera shards (frames only are used)
    max_frames: int = 0  # cap on frames read (0 = all)
    val_fraction: float = 0.1  # frames held out (last episodes) for the validation loss
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_epochs: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    out_dir: str = "runs/ijepa"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_frames < 0 or self.threads < 1:
            raise ValueError("max_frames must be >= 0 and threads >= 1")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel with the recorded preprocessing (buffers, exported)."""

    def __init__(self, pre: Preprocessing):
        super().__init__()
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class IJEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor; :meth:`forward` returns the loss.

    ``frames [B, 3, S, S]`` float in [0, 1] (RGB); normalisation by ``pre`` inside.
    """

    def __init__(self, cfg: ViTConfig, pre: Preprocessing, mask: MaskConfig = MaskConfig()):
        super().__init__()
        if pre.image_size != cfg.image_size:
            raise PreprocessingMismatch(f"preprocessing image_size {pre.image_size} != vit.image_size {cfg.image_size}")
        self.cfg = cfg
        self.mask_cfg = mask
        self.pre = pre
        self.normalize = Normalize(pre)
        self.encoder = ViT(cfg)
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.predictor = IJEPAPredictor(cfg)

    def loss(self, frames: torch.Tensor, masks: Masks) -> torch.Tensor:
        """I-JEPA loss: MSE(predicted target patches, layer-normed target-encoder patches)."""
        x = self.normalize(frames)
        b, m, kt = masks.targets.shape
        with torch.no_grad():
            h = self.target_encoder(x)
            h = F.layer_norm(h, (h.shape[-1],))
            tgt = gather_tokens(h, masks.targets.reshape(b, m * kt)).reshape(b * m, kt, -1)
        ctx = self.encoder(x, masks.context)  # [B, Kc, D]
        ctx_rep = ctx.repeat_interleave(m, dim=0)
        ctx_idx = masks.context.repeat_interleave(m, dim=0)
        pred = self.predictor(ctx_rep, ctx_idx, masks.targets.reshape(b * m, kt))
        return F.mse_loss(pred, tgt)

    def forward(self, frames: torch.Tensor, masks: Masks) -> torch.Tensor:
        return self.loss(frames, masks)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target <- m * target + (1 - m) * online``."""
        for pt, po in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)


# --------------------------------------------------------------------------------------------
# the world model's camera encoder on a ViT
# --------------------------------------------------------------------------------------------
class ViTCameraEncoder(CameraEncoder):
    """``frame [B, 3, S, S] in [0, 1] (RGB), pose4 [B, 4] -> z [B, E]`` on a ViT backbone.

    Same contract as :class:`training.models.CameraEncoder` (it is one, for ``training.export``
    and the bundle), different body: normalise -> ViT tokens -> mean pool -> Linear+ReLU, fused
    with ``Linear+ReLU(pose4)`` by an MLP to E. The ViT weights come from an I-JEPA checkpoint
    (:func:`load_pretrained`) or from scratch.

    Args:
        vit_cfg: backbone sizes. pre: the preprocessing the backbone was pretrained with.
        embed_dim: E. hidden: fusion MLP width.
    """

    def __init__(self, vit_cfg: ViTConfig, pre: Preprocessing, embed_dim: int = 32, hidden: int = 128):
        nn.Module.__init__(self)  # not CameraEncoder.__init__: no CNN
        if pre.image_size != vit_cfg.image_size:
            raise PreprocessingMismatch(f"preprocessing image_size {pre.image_size} != vit.image_size {vit_cfg.image_size}")
        self.embed_dim = embed_dim
        self.image_size = vit_cfg.image_size
        self.vit_cfg = vit_cfg
        self.pre = pre
        self.normalize = Normalize(pre)
        self.vit = ViT(vit_cfg)
        self.image_fc = nn.Linear(vit_cfg.width, hidden)
        self.pose_fc = nn.Linear(POSE4_DIM, hidden)
        self.head = _mlp([2 * hidden, hidden, embed_dim])

    def forward(self, frame: torch.Tensor, pose4: torch.Tensor) -> torch.Tensor:
        if frame.dim() != 4 or frame.shape[1] != 3 or frame.shape[2] != self.image_size or frame.shape[3] != self.image_size:
            raise ValueError(f"ViTCameraEncoder expects frame [B, 3, {self.image_size}, {self.image_size}], got {tuple(frame.shape)}")
        if pose4.shape[-1] != POSE4_DIM:
            raise ValueError(f"ViTCameraEncoder expects pose4 [B, 4], got {tuple(pose4.shape)}")
        tokens = self.vit(self.normalize(frame))
        x = F.relu(self.image_fc(tokens.mean(dim=1)))
        p = F.relu(self.pose_fc(pose4))
        return self.head(torch.cat([x, p], dim=-1))


def vit_flops(cfg: ViTConfig) -> int:
    """Multiply-accumulates x 2 of one ViT forward on one frame (matmuls only)."""
    t, d = cfg.num_patches, cfg.width
    hidden = int(d * cfg.mlp_ratio)
    per_block = t * (3 * d * d + d * d + 2 * d * hidden) + 2 * t * t * d
    return 2 * (cfg.depth * per_block + t * 3 * cfg.patch_size ** 2 * d)


# --------------------------------------------------------------------------------------------
# ONNX export of the camera encoder with parity and TensorRT checks
# --------------------------------------------------------------------------------------------
@dataclass
class EncoderExportReport:
    """Outcome of :func:`export_camera_encoder`: worst |onnx - torch| over the trials, ops, TRT issues."""

    path: str
    seed: int
    max_abs: float
    tolerance: float
    ops: list[str]
    trt_issues: list[str]


def export_camera_encoder(encoder: nn.Module, out: str | Path, tolerance: float = 1e-4, trials: int = 3,
                          seed: int | None = None, opset: int = 17) -> EncoderExportReport:
    """Export ``frame, pose4 -> z`` (dynamic batch), check ONNX Runtime vs torch and TensorRT ops.

    Uses ``training.export.export_encoder_onnx`` / ``check_encoder`` (same path as every bundle
    encoder) on fresh random inputs (batch 1, 7, 32); raises ``ValueError`` when the error
    exceeds ``tolerance`` or the graph has a TensorRT-incompatible op.
    """
    import onnx

    from edge.trt_compat import check_trt_compat
    from training.export import check_encoder, export_encoder_onnx

    encoder = encoder.eval()
    out = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_encoder_onnx(encoder, out, opset)
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    rep = check_encoder(out, encoder, trials=trials, seed=seed)
    issues = [str(i) for i in check_trt_compat(out)]
    ops = sorted({n.op_type for n in onnx.load(str(out)).graph.node})
    report = EncoderExportReport(str(out), seed, rep.worst, tolerance, ops, issues)
    if rep.worst > tolerance:
        raise ValueError(f"camera encoder ONNX differs from torch by {rep.worst:.2e} > {tolerance:.0e} (seed {seed})")
    if issues:
        raise ValueError(f"camera encoder ONNX is not TensorRT-compatible: {issues}")
    return report
