"""Torch glue over the simulator's window reader (``edge.sim.dataset.WindowDataset``).

Windows (contract "Dataset windows" in docs/ARCHITECTURE.md) are dicts of numpy arrays:
``sensor [k+1, 14] float32``, ``action [k, 2] float32``, optionally ``frame [k+1, 64, 64, 3]
uint8``, ``pose`` / ``true_pose [k+1, 3]``. Sensor windows are small, so they are stacked
once into tensors and batched by index (much faster on a CPU than a per-item DataLoader).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from training.config import Config

KEYS = ("sensor", "action", "frame", "pose", "true_pose")


class DataError(RuntimeError):
    """The dataset is missing, empty or does not match what the config needs."""


def stack_windows(windows: Iterable[dict[str, np.ndarray]], keys: tuple[str, ...] = KEYS, limit: int = 0) -> dict[str, torch.Tensor]:
    """Stack window dicts into tensors ``[W, ...]`` (keys absent from the first window are skipped)."""
    cols: dict[str, list[np.ndarray]] = {}
    for i, w in enumerate(windows):
        if limit and i >= limit:
            break
        if not cols:
            for k in keys:
                if k in w:
                    cols[k] = []
            if "sensor" not in cols or "action" not in cols:
                raise DataError(f"window has keys {sorted(w)}, needs at least 'sensor' and 'action'")
        for k in cols:
            cols[k].append(np.asarray(w[k]))
    if not cols:
        raise DataError("no windows: the dataset is empty (collect some with edge-collect)")
    return {k: torch.from_numpy(np.stack(v)) for k, v in cols.items()}


@dataclass
class WindowTensors:
    """All windows of a split as tensors, with batching by index.

    ``tensors['sensor'] [W, k+1, 14]``, ``tensors['action'] [W, k, 2]``, optional
    ``tensors['frame'] [W, k+1, 64, 64, 3] uint8`` and poses.
    """

    tensors: dict[str, torch.Tensor]
    episode: torch.Tensor | None = None  # [W] int64 episode id of each window (enables partner sampling)
    repeated: int = 0  # windows added by data.contact_oversample (copies of contact windows)
    _by_episode: tuple | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return int(self.tensors["sensor"].shape[0])

    @property
    def k(self) -> int:
        return int(self.tensors["action"].shape[1])

    def batch(self, idx: torch.Tensor, device: str | torch.device = "cpu", partners: bool = False,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The windows ``idx`` as a model batch (frames become float ``[B, k+1, 3, 64, 64]`` in [0, 1]).

        With ``partners``, also ``partner_sensor [B, 14]`` (and ``partner_frame [B, 3, 64, 64]``):
        the first observation of a random window of the *same episode* as each window (same
        layout, any time), the far pairs of the temporal-distance objective.
        """
        out = {}
        for key, t in self.tensors.items():
            v = t[idx]
            if key == "frame":
                v = v.permute(0, 1, 4, 2, 3).float().div_(255.0)
            out[key] = v.to(device, non_blocking=True)
        if partners:
            p = self.partner_index(idx, generator)
            out["partner_sensor"] = self.tensors["sensor"][p, 0].to(device, non_blocking=True)
            if "frame" in self.tensors:
                out["partner_frame"] = self.tensors["frame"][p, 0].permute(0, 3, 1, 2).float().div_(255.0).to(device)
        return out

    def partner_index(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """For each window in ``idx``, a uniformly random window of the same episode (possibly itself)."""
        if self.episode is None:
            raise DataError("these windows carry no episode ids, so same-episode partners cannot be drawn "
                            "(load them with training.data.load_windows, or set objective.distance=0)")
        if self._by_episode is None:
            order = torch.argsort(self.episode, stable=True)
            _, counts = torch.unique_consecutive(self.episode[order], return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            # rank of each window's episode among the sorted unique episodes
            ep_rank = torch.empty_like(self.episode)
            ep_rank[order] = torch.repeat_interleave(torch.arange(len(counts)), counts)
            self._by_episode = (order, starts, counts, ep_rank)
        order, starts, counts, ep_rank = self._by_episode
        idx = torch.as_tensor(idx)
        r = ep_rank[idx]
        u = torch.rand(len(idx), generator=generator)
        off = (u * counts[r]).long().clamp_max(counts[r] - 1)
        return order[starts[r] + off]

    def iter_batches(self, batch_size: int, generator: torch.Generator | None = None, rank: int = 0,
                     world_size: int = 1, shuffle: bool = True, limit: int = 0,
                     device: str | torch.device = "cpu", partners: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Batches over this rank's share of a (seeded) permutation; every rank gets the same count.

        ``partners``: add same-episode partner observations (see :meth:`batch`)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if limit:
            order = order[:limit]
        per_rank = len(order) // world_size
        order = order[rank * per_rank : (rank + 1) * per_rank]
        for start in range(0, per_rank - batch_size + 1 if per_rank >= batch_size else 1, batch_size):
            yield self.batch(order[start : start + batch_size], device, partners, generator)

    def num_batches(self, batch_size: int, world_size: int = 1, limit: int = 0) -> int:
        n = min(len(self), limit) if limit else len(self)
        per_rank = n // world_size
        return max(1, per_rank // batch_size) if per_rank >= batch_size else 1


def split_windows(tensors: dict[str, torch.Tensor], val_fraction: float, episode: torch.Tensor | None = None,
                  seed: int = 0) -> tuple[WindowTensors, WindowTensors]:
    """Split into train/val. With ``episode [W]`` ids, whole episodes go to one side (no leakage)."""
    n = int(tensors["sensor"].shape[0])
    if n < 2:
        raise DataError(f"only {n} window(s): need at least 2 to hold some out for validation")
    g = torch.Generator().manual_seed(seed)
    if episode is not None:
        eps = torch.unique(episode)
        perm = eps[torch.randperm(len(eps), generator=g)]
        n_val_eps = max(1, int(round(len(eps) * val_fraction)))
        if n_val_eps >= len(eps):
            raise DataError(f"only {len(eps)} episode(s): need at least 2 for a held-out split")
        is_val = torch.isin(episode, perm[:n_val_eps])
    else:
        n_val = max(1, int(round(n * val_fraction)))
        is_val = torch.zeros(n, dtype=torch.bool)
        is_val[n - n_val :] = True
    tr = {k: v[~is_val] for k, v in tensors.items()}
    va = {k: v[is_val] for k, v in tensors.items()}
    if episode is None:
        return WindowTensors(tr), WindowTensors(va)
    return WindowTensors(tr, episode[~is_val]), WindowTensors(va, episode[is_val])


def repeat_actions(tensors: dict[str, np.ndarray | torch.Tensor], r: int) -> dict[str, np.ndarray | torch.Tensor]:
    """Temporal abstraction: windows of ``k * r`` control ticks -> windows of ``k`` predictor steps.

    Observations (``sensor``, ``frame``, ``pose``, ``true_pose``, ``[W, k*r+1, ...]``) are
    subsampled every ``r`` ticks (``[::r]`` -> ``[W, k+1, ...]``); actions ``[W, k*r, A]`` are
    averaged over consecutive chunks of ``r`` ticks (-> ``[W, k, A]``). The predictor then learns
    r-tick transitions under the chunk's mean action; at run time a planned action is held for
    ``r`` ticks (``data.action_repeat``). ``r = 1`` returns the input unchanged.
    """
    if r == 1:
        return tensors
    return {key: mean_action_chunks(v, r) if key == "action" else v[:, ::r] for key, v in tensors.items()}


def mean_action_chunks(action: np.ndarray | torch.Tensor, r: int) -> np.ndarray | torch.Tensor:
    """``[W, k*r, A]`` per-tick actions -> ``[W, k, A]`` means over consecutive chunks of ``r`` ticks."""
    w, kr, a = action.shape
    if kr % r:
        raise DataError(f"action windows of {kr} ticks are not a multiple of data.action_repeat={r}")
    return action.reshape(w, kr // r, r, a).mean(2)


def load_windows(cfg: Config, k: int) -> tuple[WindowTensors, WindowTensors]:
    """Read ``cfg.data.path`` with the simulator's reader (shards and/or flight logs) and split by episode.

    ``k`` counts predictor steps: with ``data.action_repeat = r`` the reader takes ``k * r``
    control ticks per window, gathers the observations only every ``r`` ticks
    (``WindowDataset.batch(obs_stride=r)``) and :func:`mean_action_chunks` averages the actions:
    the result of :func:`repeat_actions` on the full window, without copying the skipped frames.
    """
    from edge.sim.dataset import DatasetError, WindowDataset

    r = cfg.data.action_repeat
    try:
        ds = WindowDataset(cfg.data.path, k=k * r, frames=cfg.data.with_frames)
    except (FileNotFoundError, DatasetError) as e:
        raise DataError(f"cannot read a dataset at {cfg.data.path!r} ({e}); collect one first, e.g. "
                        f"python -m edge.sim.collect --episodes 400 --steps 200 --out {cfg.data.path}") from e
    idx = np.arange(len(ds))
    if cfg.data.max_windows and cfg.data.max_windows < len(ds) and cfg.data.with_frames:
        idx = np.sort(np.random.default_rng(cfg.train.seed).choice(len(ds), cfg.data.max_windows, replace=False))
    b = ds.batch(idx, obs_stride=r)  # observations every r ticks: == repeat_actions(ds.batch(idx), r)
    b["action"] = mean_action_chunks(b["action"], r) if r > 1 else b["action"]
    tensors = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in b.items()}
    if cfg.data.with_frames and "frame" not in tensors:
        raise DataError(f"{cfg.data.path} has no camera frames; collect with --camera for a camera model")
    m = cfg.data.contact_oversample
    if m > 1:
        stall = stalled_ticks(ds.action, ds.pose)
        cs = np.concatenate([[0], np.cumsum(stall)])
        tensors["contact"] = torch.from_numpy(cs[ds.starts[idx] + ds.k] - cs[ds.starts[idx]] > 0)
    train, val = split_windows(tensors, cfg.data.val_fraction, torch.from_numpy(ds.window_episode[idx]), seed=cfg.train.seed)
    if m > 1:
        val.tensors.pop("contact")
        train = oversample_windows(train, train.tensors.pop("contact"), m)
    return train, val


def stalled_ticks(action: np.ndarray, pose: np.ndarray, min_command: float = 0.5, ratio: float = 0.3) -> np.ndarray:
    """Control ticks in which a wall stops the robot, from the commands and the odometry alone.

    ``action [N, 2]`` normalised wheel commands of tick ``t``; ``pose [N, 3]`` odometry before
    tick ``t`` (``pose[t + 1]`` after it; episodes concatenated, each ending with an all-zero
    action row, as :class:`edge.sim.dataset.WindowDataset` stores them). A tick stalls when both
    wheels are driven the same way (``|mean action| > min_command``, in this tick and the one
    before, so starting from rest does not count) but the odometry moves less than ``ratio``
    times what that command moves it when free. The free displacement per unit command is
    calibrated from the data (90th percentile over driven ticks), so flight logs from a robot
    with another speed or rate work unchanged; nothing needs the simulator's collision flag.
    Returns ``bool [N]``.
    """
    a = np.abs(np.asarray(action, np.float64).mean(axis=-1))
    pose = np.asarray(pose, np.float64)
    disp = np.zeros(len(a))
    disp[:-1] = np.linalg.norm(pose[1:, :2] - pose[:-1, :2], axis=-1)
    driven = (a > min_command) & (np.concatenate([[0.0], a[:-1]]) > min_command)
    if not driven.any():
        return np.zeros(len(a), dtype=bool)
    per_unit = np.percentile(disp[driven] / a[driven], 90)
    return driven & (disp < ratio * a * per_unit)


def oversample_windows(ws: WindowTensors, mask: torch.Tensor, m: int) -> WindowTensors:
    """``ws`` with the windows where ``mask [W]`` is true present ``m`` times instead of once."""
    if m < 1:
        raise ValueError(f"oversample factor must be >= 1, got {m}")
    extra = torch.nonzero(mask).flatten().repeat(m - 1)
    idx = torch.cat([torch.arange(len(ws)), extra])
    episode = ws.episode[idx] if ws.episode is not None else None
    return WindowTensors({k: v[idx] for k, v in ws.tensors.items()}, episode, repeated=len(extra))
