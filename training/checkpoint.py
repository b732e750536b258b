"""Checkpoints: safetensors weights + the resolved config as JSON; nothing is unpickled.

A run folder holds::

    model.safetensors   every JEPA tensor (online/target encoders, predictor, heads, buffers)
    config.json         the resolved Config (``Config.to_dict()``)
    train_state.safetensors + train_state.json   optimizer moments and the epoch, for resume

:func:`load_world_model` returns what planning and export need (deployed encoder + predictor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.config import Config, config_from_dict
from training.models import Predictor

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing a file or does not match the config."""


def save_checkpoint(out_dir: str | Path, model: nn.Module, cfg: Config,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0,
                    extra: dict | None = None) -> Path:
    """Write weights, config and (optionally) the optimizer state; returns the folder.

    Files are written to temporary names and renamed, so an interrupted save never leaves a
    half-written checkpoint behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_save(tensors, out / MODEL_FILE, {"format": "edge-jepa", "epoch": str(epoch)})
    (out / (CONFIG_FILE + ".tmp")).write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / (CONFIG_FILE + ".tmp")).replace(out / CONFIG_FILE)
    if optimizer is not None:
        opt_tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, float]] = {}
        for idx, st in optimizer.state_dict()["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val) and val.dim() > 0:
                    opt_tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = float(val)
        _atomic_save(opt_tensors, out / STATE_FILE, {"format": "edge-jepa-optim"})
        meta = {"epoch": epoch, "scalars": scalars, "param_groups": optimizer.state_dict()["param_groups"],
                "extra": extra or {}}
        (out / (STATE_META + ".tmp")).write_text(json.dumps(meta))
        (out / (STATE_META + ".tmp")).replace(out / STATE_META)
    return out


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_config_json(run_dir: str | Path) -> Config:
    """The resolved config stored in a run folder."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise CheckpointError(f"{p} not found: is {run_dir} a run folder written by edge-train?")
    return config_from_dict(json.loads(p.read_text()))


def load_weights(run_dir: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every key must match)."""
    p = Path(run_dir) / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"{p} not found: is {run_dir} a run folder written by edge-train?")
    state = load_file(str(p))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{p} does not match the model of {Path(run_dir) / CONFIG_FILE}: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def load_train_state(run_dir: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer; returns the metadata (``epoch``, ``extra``)."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE_META).is_file() or not (run_dir / STATE_FILE).is_file():
        raise CheckpointError(f"{run_dir} has no {STATE_FILE}/{STATE_META}: cannot resume; start without --resume")
    meta = json.loads((run_dir / STATE_META).read_text())
    tensors = load_file(str(run_dir / STATE_FILE))
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    for idx, sc in meta["scalars"].items():
        for key, val in sc.items():
            state.setdefault(int(idx), {})[key] = torch.tensor(val)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


@dataclass
class WorldModel:
    """What planning and export need from a trained run.

    ``encoder``: the deployed encoder (SensorEncoder or CameraEncoder, eval mode);
    ``predictor``: the :class:`Predictor`; ``config``: the resolved :class:`Config`.
    """

    config: Config
    encoder: nn.Module
    predictor: Predictor


def load_world_model(run_dir: str | Path) -> WorldModel:
    """Rebuild the JEPA from ``config.json`` + ``model.safetensors`` and return its deployed parts."""
    from training.jepa import JEPA

    cfg = load_config_json(run_dir)
    jepa = JEPA(cfg)
    load_weights(run_dir, jepa)
    jepa.eval()
    return WorldModel(config=cfg, encoder=jepa.deploy_encoder, predictor=jepa.predictor)
