"""Episode shards (writer and reader) and the training window reader.

Shards are ``np.savez_compressed`` files (never pickled; read with ``allow_pickle=False``)
holding a block of ``E`` episodes of ``T`` steps each; the schema is ``docs/DATASET.md``
(``SCHEMA_VERSION``). A dataset folder has an ``index.json`` with each shard's byte length and
sha256, checked on read. ``WindowDataset`` reads shards and MCAP flight logs
(``docs/FLIGHT_LOG.md``) and yields training windows (dicts of numpy arrays):

| key | shape | dtype |
|---|---|---|
| ``sensor`` | ``[k+1, 14]`` | float32 |
| ``frame`` | ``[k+1, 64, 64, 3]`` | uint8 (only with ``frames=True``) |
| ``action`` | ``[k, 2]`` | float32 |
| ``pose`` | ``[k+1, 3]`` | float32 (odometry) |
| ``true_pose`` | ``[k+1, 3]`` | float32 (only when every source has it; flight logs usually do not) |
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.bundle import sha256_file
from edge.sim.obs import SensorNormalisation, sensor_vector

SCHEMA_VERSION = 1
INDEX_NAME = "index.json"
SHARD_GLOB = "shard-*.npz"
FLIGHT_LOG_SUFFIX = ".mcap"

log = logging.getLogger(__name__)

# name -> (dtype, shape with E = episodes, T = steps, H/W = frame size); "frame" is optional.
SHARD_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ranges": ("float32", ("E", "T+1", "8")),
    "pose": ("float32", ("E", "T+1", "3")),
    "wheel_speeds": ("float32", ("E", "T+1", "2")),
    "true_pose": ("float32", ("E", "T+1", "3")),
    "action": ("float32", ("E", "T", "2")),
    "collided": ("bool", ("E", "T")),
    "layout": ("float32", ("E", "3")),
    "goal": ("float32", ("E", "2")),
    "frame": ("uint8", ("E", "T+1", "H", "W", "3")),
}
OPTIONAL_FIELDS = ("frame",)


class DatasetError(RuntimeError):
    """A shard or flight log is missing, corrupt, truncated or of the wrong schema (names the file)."""


def write_shard(path: str | Path, episodes: dict[str, np.ndarray], meta: dict) -> dict:
    """Write one shard atomically (temp file + rename).

    Args:
        path: output ``.npz`` path.
        episodes: arrays per ``SHARD_FIELDS`` (``frame`` optional).
        meta: JSON-serialisable metadata (config, normalisation, seed, policy); stored as text.
    Returns:
        The shard's index entry: ``file``, ``bytes``, ``sha256``, ``episodes``, ``steps``, ``camera``.
    Raises:
        ValueError: a missing field, or inconsistent shapes/dtypes.
    """
    path = Path(path)
    arrays = {}
    e, t = episodes["action"].shape[:2]
    dims = {"E": e, "T": t, "T+1": t + 1}
    if "frame" in episodes:
        dims["H"], dims["W"] = episodes["frame"].shape[2:4]
    for name, (dtype, shape) in SHARD_FIELDS.items():
        if name not in episodes:
            if name in OPTIONAL_FIELDS:
                continue
            raise ValueError(f"write_shard: missing field {name!r}")
        arr = np.asarray(episodes[name])
        want = tuple(dims.get(s, int(s) if s.isdigit() else -1) for s in shape)
        if arr.shape != want:
            raise ValueError(f"write_shard: field {name!r} has shape {arr.shape}, expected {want}")
        arrays[name] = arr.astype(dtype, copy=False)
    arrays["schema_version"] = np.array(SCHEMA_VERSION, dtype=np.int64)
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "episodes": int(e),
        "steps": int(t),
        "camera": "frame" in arrays,
    }


def write_index(folder: str | Path, entries: list[dict], meta: dict) -> Path:
    """Write ``index.json`` for a dataset folder (shard entries sorted by file name)."""
    folder = Path(folder)
    index = {
        "schema_version": SCHEMA_VERSION,
        "shards": sorted(entries, key=lambda d: d["file"]),
        "episodes": int(sum(d["episodes"] for d in entries)),
        "transitions": int(sum(d["episodes"] * d["steps"] for d in entries)),
        **meta,
    }
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    os.replace(tmp, folder / INDEX_NAME)
    return folder / INDEX_NAME


def _index_entry(path: Path) -> dict | None:
    idx = path.parent / INDEX_NAME
    if not idx.is_file():
        return None
    try:
        data = json.loads(idx.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{idx}: unreadable dataset index ({e}); delete it to read the shards without checks") from e
    for entry in data.get("shards", []):
        if entry.get("file") == path.name:
            return entry
    return None


def read_shard(path: str | Path, *, frames: bool = False, verify: bool = True) -> dict:
    """Load one shard fully into memory and check it.

    Returns a dict with the ``SHARD_FIELDS`` arrays (``frame`` only if ``frames``) and ``meta``
    (the decoded metadata dict).

    Raises:
        DatasetError: naming the file, for a truncated/corrupt file (size or sha256 mismatch
            against ``index.json``, bad zip, CRC error), a wrong schema version, a missing
            field, wrong shapes, or ``frames=True`` on a shard without frames.
    """
    path = Path(path)
    if verify:
        entry = _index_entry(path)
        if entry is not None:
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise DatasetError(
                    f"{path}: shard is {size} bytes but index.json says {entry['bytes']} (truncated or replaced); "
                    "re-run edge-collect or remove it"
                )
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise DatasetError(f"{path}: sha256 mismatch against index.json (corrupt shard); re-run edge-collect")
        else:
            # No index to check against: verify every member's zip CRC (also the ones not loaded).
            try:
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise DatasetError(f"{path}: corrupt or truncated shard ({type(e).__name__}: {e})") from e
            if bad is not None:
                raise DatasetError(f"{path}: corrupt shard (CRC error in member {bad!r}); re-run edge-collect")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if "schema_version" not in names:
                raise DatasetError(f"{path}: not an edge-jepa shard (no schema_version field)")
            version = int(z["schema_version"])
            if version != SCHEMA_VERSION:
                raise DatasetError(
                    f"{path}: shard schema version {version}, this reader supports {SCHEMA_VERSION}"
                )
            out = {"meta": json.loads(str(z["meta_json"]))}
            for name in SHARD_FIELDS:
                if name == "frame" and not frames:
                    continue
                if name not in names:
                    if name == "frame":
                        raise DatasetError(f"{path}: frames requested but the shard has no camera frames")
                    raise DatasetError(f"{path}: missing field {name!r}")
                out[name] = z[name]
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise DatasetError(f"{path}: corrupt or truncated shard ({type(e).__name__}: {e})") from e
    e, t = out["action"].shape[:2]
    for name, (_, shape) in SHARD_FIELDS.items():
        if name not in out:
            continue
        arr = out[name]
        if arr.shape[0] != e or ("T+1" in shape and arr.shape[1] != t + 1) or ("T" in shape and arr.shape[1] != t):
            raise DatasetError(f"{path}: field {name!r} has shape {arr.shape}, inconsistent with action {(e, t, 2)}")
    return out


def _collect_paths(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob(SHARD_GLOB)) + sorted(p.glob("*" + FLIGHT_LOG_SUFFIX))
            if not found:
                raise DatasetError(f"{p}: no shards ({SHARD_GLOB}) or flight logs (*.mcap) in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    return out


@dataclass
class _Episode:
    ranges: np.ndarray  # [T+1, 8]
    pose: np.ndarray  # [T+1, 3]
    wheel_speeds: np.ndarray  # [T+1, 2]
    action: np.ndarray  # [T, 2]
    true_pose: np.ndarray | None
    frame: np.ndarray | None
    norm: SensorNormalisation
    source: str


def _shard_episodes(path: Path, frames: bool, verify: bool, norm: SensorNormalisation | None) -> list[_Episode]:
    d = read_shard(path, frames=frames, verify=verify)
    meta_norm = d["meta"].get("normalisation")
    n = norm or (SensorNormalisation.from_dict(meta_norm) if meta_norm else SensorNormalisation())
    return [
        _Episode(
            d["ranges"][i], d["pose"][i], d["wheel_speeds"][i], d["action"][i], d["true_pose"][i],
            d["frame"][i] if frames else None, n, f"{path.name}#{i}",
        )
        for i in range(d["action"].shape[0])
    ]


def _read_mcap(path: Path) -> tuple[dict[str, list[dict]], dict[str, dict[str, str]], bool]:
    """Decode every JSON message of an MCAP file, tolerating a cut-off tail.

    Returns ``(topic -> messages in file order, metadata name -> dict, complete)`` where
    ``complete`` is False when the file ends before the MCAP footer (a crash). Records after a
    damaged one are not read (the stream cannot be resynchronised).

    Raises:
        DatasetError: not an MCAP file, or a message that is not JSON.
    """
    from mcap.records import Channel, Footer, Message, Metadata
    from mcap.stream_reader import StreamReader

    with open(path, "rb") as f:
        if f.read(8) != b"\x89MCAP0\r\n":
            raise DatasetError(f"{path}: not an MCAP file (bad magic); expected a flight log from edge-run")
    channels: dict[int, str] = {}
    messages: dict[str, list[dict]] = {}
    metadata: dict[str, dict[str, str]] = {}
    complete = False
    with open(path, "rb") as f:
        records = StreamReader(f, validate_crcs=True).records
        while True:
            try:
                rec = next(records)
            except StopIteration:
                break
            except Exception:  # noqa: BLE001 - the mcap library raises many types at a torn tail
                break
            if isinstance(rec, Channel):
                channels[rec.id] = rec.topic
            elif isinstance(rec, Message) and rec.channel_id in channels:
                try:
                    messages.setdefault(channels[rec.channel_id], []).append(json.loads(rec.data))
                except ValueError as e:
                    raise DatasetError(f"{path}: a {channels[rec.channel_id]} message is not JSON ({e})") from e
            elif isinstance(rec, Metadata):
                metadata[rec.name] = dict(rec.metadata)
            elif isinstance(rec, Footer):
                complete = True
    return messages, metadata, complete


def _flight_log_episodes(path: Path, frames: bool, norm: SensorNormalisation | None) -> list[_Episode]:
    from edge.sim.flight_log import decode_frame

    messages, metadata, complete = _read_mcap(path)
    if not complete:
        log.warning("%s: flight log is truncated (no MCAP footer, e.g. after a crash): using the ticks before the cut", path)
    topics = ["/obs", "/action", "/true_pose"] + (["/camera"] if frames else [])
    data: dict[str, dict[int, dict]] = {t: {} for t in topics}
    try:
        for t in topics:
            for msg in messages.get(t, []):
                data[t][int(msg["tick"])] = msg
        meta_norm = {k: float(json.loads(v)) for k, v in metadata.get("normalisation", {}).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed flight log message or metadata ({type(e).__name__}: {e})") from e
    for t in ("/obs", "/action") + (("/camera",) if frames else ()):
        if not data[t]:
            raise DatasetError(f"{path}: flight log has no {t} messages; training needs /obs and /action"
                               + (" and /camera (frames=True)" if frames else ""))
    if norm is None:
        base = SensorNormalisation().as_dict()
        base.update({k: v for k, v in meta_norm.items() if k in base})
        norm = SensorNormalisation.from_dict(base)

    obs, act, cam, tp = data["/obs"], data["/action"], data.get("/camera", {}), data["/true_pose"]
    has_tp = bool(tp) and set(obs) <= set(tp)

    def obs_ok(n: int) -> bool:
        return n in obs and (not frames or n in cam)

    def make(first: int, last: int) -> _Episode:
        n_obs = np.arange(first, last + 1)
        n_act = n_obs[:-1]
        try:
            ranges = np.array([[np.nan if r is None else r for r in obs[n]["ranges_m"]] for n in n_obs], dtype=np.float64)
            ep = _Episode(
                ranges=ranges,
                pose=np.array([obs[n]["pose"] for n in n_obs], dtype=np.float64),
                wheel_speeds=np.array([obs[n]["wheel_speeds"] for n in n_obs], dtype=np.float64),
                action=np.array([[act[n]["left"], act[n]["right"]] for n in n_act], dtype=np.float32),
                true_pose=np.array([tp[n]["pose"] for n in n_obs], dtype=np.float32) if has_tp else None,
                frame=np.stack([decode_frame(cam[n]) for n in n_obs]) if frames else None,
                norm=norm,
                source=f"{path.name}@{first}",
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: malformed message near tick {first} ({type(e).__name__}: {e})") from e
        if ep.ranges.shape[1:] != (8,) or ep.pose.shape[1:] != (3,) or ep.wheel_speeds.shape[1:] != (2,):
            raise DatasetError(f"{path}: /obs arrays have wrong lengths near tick {first} (need 8 ranges, 3 pose, 2 speeds)")
        return ep

    # Runs of consecutive observed ticks; inside a run, an episode ends at the last tick or
    # at a tick whose action is missing (its observation still closes the episode).
    episodes = []
    first = prev = None
    for n in sorted(t for t in obs if obs_ok(t)):
        if prev is None or n != prev + 1:
            first = n
        prev = n
        if n not in act or not obs_ok(n + 1):
            if n > first:
                episodes.append(make(first, n))
            first = n + 1
    return episodes


class WindowDataset:
    """Training windows of ``k`` steps from shards and/or MCAP flight logs, held in memory.

    Iterable and indexable (``len``, ``ds[i]``), plus ``batch(indices)`` for a stacked batch
    (one fancy-index per key, fast). See the module docstring for the window dict.

    Args:
        paths: shard files, flight logs (``.mcap``), or folders holding them.
        k: window length in steps (>= 1).
        frames: also load camera frames (``frame`` key). Every source must have them.
            Memory: 12 KiB per frame at 64x64.
        stride: step between window starts within an episode.
        on_error: ``"raise"`` (default): a bad source raises ``DatasetError`` naming it;
            ``"skip"``: it is logged as a warning, listed in ``skipped``, and left out.
        normalisation: constants for the 14-vector; default: from each source's metadata.
        verify: check shard length and sha256 against ``index.json`` when present, else the
            zip CRC of every member.
    """

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path,
        k: int,
        *,
        frames: bool = False,
        stride: int = 1,
        on_error: str = "raise",
        normalisation: SensorNormalisation | dict | None = None,
        verify: bool = True,
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1 step, got {k}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(normalisation, dict):
            normalisation = SensorNormalisation.from_dict(normalisation)
        self.k = k
        self.frames = frames
        self.skipped: list[tuple[str, str]] = []
        episodes: list[_Episode] = []
        for p in _collect_paths(paths):
            try:
                if p.suffix == FLIGHT_LOG_SUFFIX:
                    episodes.extend(_flight_log_episodes(p, frames, normalisation))
                else:
                    episodes.extend(_shard_episodes(p, frames, verify, normalisation))
            except DatasetError as e:
                if on_error == "raise":
                    raise
                log.warning("skipping %s", e)
                self.skipped.append((str(p), str(e)))
        episodes = [ep for ep in episodes if len(ep.action) >= k]
        if not episodes:
            raise DatasetError(f"no episode with at least k={k} steps in {[str(p) for p in _collect_paths(paths)]}")
        self.has_true_pose = all(ep.true_pose is not None for ep in episodes)
        self.sources = [ep.source for ep in episodes]
        lengths = np.array([len(ep.action) + 1 for ep in episodes])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.sensor = np.concatenate(
            [sensor_vector(ep.ranges, ep.pose, ep.wheel_speeds, ep.norm) for ep in episodes]
        )
        self.pose = np.concatenate([ep.pose for ep in episodes]).astype(np.float32)
        self.action = np.concatenate(
            [np.concatenate([ep.action, np.zeros((1, 2), np.float32)]) for ep in episodes]
        ).astype(np.float32)
        self.true_pose = (
            np.concatenate([ep.true_pose for ep in episodes]).astype(np.float32) if self.has_true_pose else None
        )
        self.frame = np.concatenate([ep.frame for ep in episodes]) if frames else None
        starts = [off + np.arange(0, n - 1 - k + 1, stride) for off, n in zip(offsets, lengths)]
        self.starts = np.concatenate(starts).astype(np.int64)
        self.window_episode = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])
        self.num_episodes = len(episodes)
        self.num_transitions = int(lengths.sum() - len(lengths))

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, indices: np.ndarray | Sequence[int], obs_stride: int = 1) -> dict[str, np.ndarray]:
        """Stacked windows: every key gets a leading ``[B]`` dimension.

        ``obs_stride = r`` gathers the observations (``sensor``, ``pose``, ``true_pose``,
        ``frame``) only every ``r`` ticks (``[B, k/r + 1, ...]``, ``k`` a multiple of ``r``) while
        ``action`` keeps every tick (``[B, k, 2]``): the same as taking ``[:, ::r]`` of the full
        window, without first copying the frames in between (for camera windows with
        ``action_repeat = 5`` that copy is 5x the memory that training keeps).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window index out of range for {len(self)} windows")
        if obs_stride < 1 or self.k % obs_stride:
            raise ValueError(f"obs_stride must be >= 1 and divide the window length k={self.k}, got {obs_stride}")
        s = self.starts[idx]
        act_i = s[:, None] + np.arange(self.k)[None, :]
        obs_i = s[:, None] + np.arange(0, self.k + 1, obs_stride)[None, :]
        out = {
            "sensor": self.sensor[obs_i],
            "action": self.action[act_i],
            "pose": self.pose[obs_i],
        }
        if self.true_pose is not None:
            out["true_pose"] = self.true_pose[obs_i]
        if self.frame is not None:
            out["frame"] = self.frame[obs_i]
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {key: v[0] for key, v in self.batch([i]).items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]
