"""JEPA loss terms, each a small module returning ``(loss, parts)`` for logging.

``parts`` maps names to detached scalar tensors. Shapes: ``N`` samples, ``E`` embedding size,
``T`` steps, ``A`` action size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Parts = dict[str, torch.Tensor]


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class PredictionLoss(nn.Module):
    """Multi-step prediction MSE: ``mean over (B, T, E) of (z_pred - z_target)^2``.

    Also reports the per-step error (``pred_step{t}``) for the first and last steps.
    """

    def forward(self, z_pred: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z_pred [B, T, E], z_target [B, T, E]`` (the target is used as given: detach upstream)."""
        if z_pred.shape != z_target.shape:
            raise ValueError(f"PredictionLoss: shapes differ {tuple(z_pred.shape)} vs {tuple(z_target.shape)}")
        per_step = (z_pred - z_target).pow(2).mean(dim=(0, 2))
        loss = per_step.mean()
        return loss, {"pred": loss.detach(), "pred_step1": per_step[0].detach(), "pred_stepT": per_step[-1].detach()}


class VICRegLoss(nn.Module):
    """VICReg variance + covariance terms on one batch of embeddings ``z [N, E]``.

    variance   = mean_e relu(gamma - sqrt(var_e + eps))       (unbiased variance)
    covariance = sum_{i != j} C_ij^2 / E,  C = cov(z)           (unbiased)
    loss       = w_var * variance + w_cov * covariance
    """

    def __init__(self, w_var: float = 1.0, w_cov: float = 0.04, gamma: float = 1.0, eps: float = 1e-4):
        super().__init__()
        self.w_var, self.w_cov, self.gamma, self.eps = w_var, w_cov, gamma, eps

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        n, e = z.shape
        if n < 2:
            raise ValueError("VICRegLoss needs at least 2 samples")
        zc = z - z.mean(dim=0)
        std = torch.sqrt(zc.pow(2).sum(dim=0) / (n - 1) + self.eps)
        var_loss = F.relu(self.gamma - std).mean()
        cov = zc.T @ zc / (n - 1)
        cov_loss = _off_diagonal(cov).pow(2).sum() / e
        loss = self.w_var * var_loss + self.w_cov * cov_loss
        return loss, {"variance": var_loss.detach(), "covariance": cov_loss.detach()}


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins between two views ``z1, z2 [N, E]``.

    Each view is standardised per dimension (biased std), ``C = z1n.T @ z2n / N``,
    ``loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.
    """

    def __init__(self, lambd: float = 0.005, eps: float = 1e-5):
        super().__init__()
        self.lambd, self.eps = lambd, eps

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        n = z1.shape[0]
        z1n = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + self.eps)
        z2n = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + self.eps)
        c = z1n.T @ z2n / n
        on = (1.0 - torch.diagonal(c)).pow(2).sum()
        off = _off_diagonal(c).pow(2).sum()
        loss = on + self.lambd * off
        return loss, {"barlow_on": on.detach(), "barlow_off": off.detach()}


class CenteringLoss(nn.Module):
    """DINO-style centred, sharpened cross-entropy between student and teacher embeddings.

    ``p_t = softmax((teacher - center) / t_teacher)``, ``loss = -sum p_t * log_softmax(student /
    t_student)`` averaged over samples; in training mode the centre then moves towards the
    batch mean of the teacher: ``center <- m * center + (1 - m) * mean(teacher)``. Centering
    stops one dimension dominating; sharpening stops the uniform solution.
    """

    def __init__(self, dim: int, t_student: float = 0.1, t_teacher: float = 0.04, momentum: float = 0.9):
        super().__init__()
        self.t_student, self.t_teacher, self.momentum = t_student, t_teacher, momentum
        self.register_buffer("center", torch.zeros(dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``student [N, E]``, ``teacher [N, E]`` (teacher treated as constant)."""
        teacher = teacher.detach()
        p_t = F.softmax((teacher - self.center) / self.t_teacher, dim=-1)
        loss = -(p_t * F.log_softmax(student / self.t_student, dim=-1)).sum(-1).mean()
        if self.training:
            with torch.no_grad():
                batch_center = teacher.mean(0)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(batch_center)
                    batch_center /= torch.distributed.get_world_size()
                self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)
        return loss, {"centering": loss.detach(), "center_norm": self.center.norm().detach()}


class InverseDynamicsLoss(nn.Module):
    """MSE between the inverse-dynamics head's action and the taken action."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, z_t: torch.Tensor, z_next: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z_t, z_next [N, E], action [N, A]``."""
        loss = F.mse_loss(self.head(z_t, z_next), action)
        return loss, {"idm": loss.detach()}


class TemporalSimilarityLoss(nn.Module):
    """Consecutive embeddings stay close: ``mean over (B, T) of ||z_t+1 - z_t||^2 / E``."""

    def forward(self, z_seq: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z_seq [B, T+1, E]``."""
        loss = (z_seq[:, 1:] - z_seq[:, :-1]).pow(2).mean()
        return loss, {"temporal": loss.detach()}


class TemporalDistanceLoss(nn.Module):
    """Embedding distance that tracks time-to-reach: a symmetric (Euclidean) form of the
    quasimetric RL objective (Wang et al., 2023, "Optimal goal-reaching RL via quasimetric learning").

    Maximise the distance between observations of the same episode (same walls, any two times),
    saturating at ``cap``, subject to one predictor step moving the embedding at most ``step``::

        local  = mean_{b,t} relu(||z_{t+1} - z_t|| - step)^2 / step^2      (the one-step constraint)
        spread = mean_b softplus(cap - ||z_a - z_b||)                        (push same-episode pairs apart)
        loss   = w_local * local + spread

    The largest distances that respect the constraint are shortest-path lengths (in steps, times
    ``step``): two points on either side of a wall end up as far apart as the way round through
    the door, so a planner minimising embedding distance to a goal heads for the door instead of
    pressing against the wall. ``cap`` should exceed the longest trip in steps times ``step``.
    """

    def __init__(self, step: float = 0.25, cap: float = 8.0, w_local: float = 10.0):
        super().__init__()
        if not (step > 0 and cap > 0 and w_local >= 0):
            raise ValueError(f"TemporalDistanceLoss needs step > 0, cap > 0, w_local >= 0; got {step}, {cap}, {w_local}")
        self.step, self.cap, self.w_local = step, cap, w_local

    def forward(self, z_seq: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z_seq [B, T+1, E]`` consecutive embeddings; ``z_a, z_b [N, E]`` same-episode pairs."""
        d_step = torch.linalg.vector_norm(z_seq[:, 1:] - z_seq[:, :-1], dim=-1)
        local = F.relu(d_step - self.step).pow(2).mean() / (self.step * self.step)
        d_pair = torch.linalg.vector_norm(z_a - z_b, dim=-1)
        spread = F.softplus(self.cap - d_pair).mean()
        loss = self.w_local * local + spread
        return loss, {"dist_local": local.detach(), "dist_spread": spread.detach(),
                      "dist_pair_mean": d_pair.mean().detach(), "dist_step_mean": d_step.mean().detach()}


class GeodesicMetricLoss(nn.Module):
    """Embedding distance regressed onto the shortest-path distance around the walls (training only).

    ``loss = mean (||z_a - z_b|| / scale - d)^2`` over pairs of observations of one layout, ``d``
    their shortest-path distance in metres (privileged simulator geometry:
    :func:`training.walls.geodesic_pairs`), ``scale`` embedding units per metre. A memoryless
    encoder that cannot see the door regresses onto the distance expected over the doors its
    ranges allow, which is what a planner needs (``benchmarks/oracle_planning.py``, ``sim_belief``).
    """

    def __init__(self, scale: float = 2.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"GeodesicMetricLoss needs scale > 0 (embedding units per metre), got {scale}")
        self.scale = scale

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, d_m: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z_a, z_b [N, E]`` embeddings of pair ends, ``d_m [N]`` their shortest-path distance (m)."""
        d = torch.linalg.vector_norm(z_a - z_b, dim=-1) / self.scale
        loss = (d - d_m).pow(2).mean()
        return loss, {"geo": loss.detach(), "geo_abs_err_m": (d - d_m).abs().mean().detach()}


class RangeReconstructionLoss(nn.Module):
    """A linear head reads the normalised range readings back from the embedding (training only).

    ``loss = mean (W z + b - ranges)^2`` over the 8 ranges (``sensor[..., 0:8]``, in [0, 1]).
    The temporal-distance objective alone shapes the embedding into a map of the pose (effective
    rank ~3) that does not say where the walls are, so a predictor working from it cannot know
    that a wall will stop the robot; this term keeps the obstacle distances in ``z``.
    """

    def __init__(self, embed_dim: int, num_ranges: int = 8):
        super().__init__()
        self.head = nn.Linear(embed_dim, num_ranges)
        self.num_ranges = num_ranges

    def forward(self, z: torch.Tensor, sensor: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``z [..., E]``, ``sensor [..., 14]`` (same leading shape)."""
        loss = (self.head(z) - sensor[..., : self.num_ranges]).pow(2).mean()
        return loss, {"ranges": loss.detach()}


class ConfidenceLoss(nn.Module):
    """Regresses the confidence head onto the realised squared error (detached).

    ``err = mean_E (z_pred - z_target)^2`` per sample and step; ``loss = mean (conf - err)^2``.
    """

    def forward(self, conf: torch.Tensor, z_pred: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """``conf [B, T], z_pred, z_target [B, T, E]``."""
        err = (z_pred - z_target).detach().pow(2).mean(-1)
        loss = F.mse_loss(conf, err)
        return loss, {"confidence": loss.detach()}


@torch.no_grad()
def collapse_stats(z: torch.Tensor) -> dict[str, float]:
    """Collapse monitors on ``z [N, E]``: mean per-dimension std and effective rank.

    Effective rank = ``exp(entropy of the normalised singular values)`` of the centred batch
    (Roy & Vetterli 2007): E for isotropic embeddings, 1 for a line, ~0 spread for a point.
    """
    z = z.float()
    zc = z - z.mean(0)
    std = zc.std(0).mean().item() if z.shape[0] > 1 else 0.0
    s = torch.linalg.svdvals(zc)
    if s.sum() <= 1e-12:
        return {"emb_std": std, "eff_rank": 0.0}
    p = s / s.sum()
    p = p[p > 0]
    rank = torch.exp(-(p * p.log()).sum()).item()
    return {"emb_std": std, "eff_rank": rank}
