"""Typed training configuration: the one place where defaults live.

A config is a frozen :class:`Config` made of sections (``model``, ``objective``, ``data``,
``train``, ``planner``, ``eval``). YAML files hold only the values that differ from these
defaults; command lines override single fields with dotted keys::

    edge-train configs/sensor_default.yaml train.epochs=5 objective.target_mode=vjepa2

Every field is validated in ``__post_init__`` and errors name the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

MODEL_KINDS = ("sensor", "camera")
TARGET_MODES = ("default", "vjepa2", "none")
PLANNER_METHODS = ("mppi", "cem")
PRESETS = ("tiny", "small", "medium")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and the fix."""


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


@dataclass(frozen=True)
class ModelConfig:
    """World-model architecture."""

    kind: str = "sensor"  # which encoder: sensor (14-dim vector) or camera (64x64 RGB + odometry pose)
    embed_dim: int = 32  # E: small keeps the planner fast on a Pi
    enc_hidden: int = 128  # width of the sensor MLP / camera fusion MLP
    enc_depth: int = 2  # hidden layers of the sensor MLP
    wheel_speed_input: bool = False  # feed wheel speeds to the sensor encoder (off: the embedding stops encoding velocity, so a goal seen at rest is not "far" from moving states)
    cam_channels: tuple[int, ...] = (16, 32, 32)  # Impala stacks (each halves the resolution)
    pred_hidden: int = 96  # GRU hidden size Hd
    pred_layers: int = 1  # GRU layers (1 or 2)
    conf_hidden: int = 32  # confidence head width
    idm_hidden: int = 64  # inverse-dynamics head width (training only)

    def __post_init__(self) -> None:
        _check(self.kind in MODEL_KINDS, "model.kind", f"must be one of {MODEL_KINDS}, got {self.kind!r}")
        for name in ("embed_dim", "enc_hidden", "enc_depth", "pred_hidden", "conf_hidden", "idm_hidden"):
            _check(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.pred_layers in (1, 2), "model.pred_layers", f"must be 1 or 2, got {self.pred_layers}")
        _check(len(self.cam_channels) >= 1 and all(c >= 1 for c in self.cam_channels), "model.cam_channels",
               f"must be a non-empty list of positive ints, got {self.cam_channels}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """JEPA objective: target-encoder mode and loss weights (0 switches a term off)."""

    target_mode: str = "default"  # default: online->predictor, EMA targets; vjepa2: EMA feeds both; none: one encoder, no EMA
    horizon: int = 8  # steps of the autoregressive prediction loss
    ema_momentum: float = 0.99  # target <- m * target + (1 - m) * online
    pred: float = 1.0  # multi-step prediction MSE
    variance: float = 1.0  # VICReg variance hinge (std >= 1 per dimension)
    covariance: float = 0.04  # VICReg off-diagonal covariance
    barlow: float = 0.0  # Barlow Twins between consecutive embeddings
    barlow_lambda: float = 0.005  # Barlow off-diagonal weight
    centering: float = 0.0  # DINO-style centred/sharpened cross-entropy between prediction and target
    center_momentum: float = 0.9  # DINO centre EMA
    idm: float = 1.0  # inverse dynamics (action from consecutive embeddings)
    temporal: float = 1.0  # temporal similarity ||z_t - z_t+1||^2 (makes embedding distance track time-to-reach)
    confidence: float = 1.0  # confidence head regression onto the realised (detached) error
    distance: float = 0.0  # temporal-distance objective: same-episode pairs pushed apart under a one-step bound (embedding distance ~ time to reach, around walls)
    distance_step: float = 0.25  # max embedding distance one predictor step may move
    distance_cap: float = 8.0  # pair distance where the push saturates (> longest trip in steps * distance_step)
    distance_local: float = 10.0  # weight of the one-step constraint relative to the push
    geodesic: float = 0.0  # embedding distance / geodesic_scale regressed onto the shortest-path distance around the walls, on simulated pairs of observations (privileged simulator geometry; training only)
    geodesic_scale: float = 2.0  # embedding units per metre for the geodesic term (2.0: one predictor step at full speed, 0.125 m, = distance_step)
    geodesic_pairs: int = 65536  # simulated observation pairs drawn once per run for the geodesic term
    ranges: float = 0.0  # range reconstruction: a linear head reads the 8 normalised ranges back from the online embedding (keeps obstacle distances in z, which the predictor needs to stop at a wall)

    def __post_init__(self) -> None:
        _check(self.target_mode in TARGET_MODES, "objective.target_mode", f"must be one of {TARGET_MODES}, got {self.target_mode!r}")
        _check(self.horizon >= 1, "objective.horizon", f"must be >= 1, got {self.horizon}")
        _check(0.0 <= self.ema_momentum < 1.0, "objective.ema_momentum", f"must be in [0, 1), got {self.ema_momentum}")
        _check(0.0 <= self.center_momentum < 1.0, "objective.center_momentum", f"must be in [0, 1), got {self.center_momentum}")
        for name in ("pred", "variance", "covariance", "barlow", "barlow_lambda", "centering", "idm", "temporal", "confidence",
                     "distance", "distance_local", "ranges", "geodesic"):
            _check(getattr(self, name) >= 0.0, f"objective.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.geodesic_pairs >= 1, "objective.geodesic_pairs", f"must be >= 1, got {self.geodesic_pairs}")
        for name in ("distance_step", "distance_cap", "geodesic_scale"):
            _check(getattr(self, name) > 0.0, f"objective.{name}", f"must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where windows come from (shards written by ``edge-collect``)."""

    path: str = "data/sensor"  # folder of shards (or a flight-log .mcap)
    val_fraction: float = 0.1  # episodes held out for validation and calibration
    with_frames: bool = False  # load camera frames (camera models)
    max_windows: int = 0  # cap on training windows per epoch (0 = all)
    action_repeat: int = 1  # r: one predictor step = r control ticks (mean action over them); the planner holds an action r ticks
    contact_oversample: int = 1  # training windows in which a wall stops the robot (odometry stalls under a drive command) are used this many times per epoch

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(self.max_windows >= 0, "data.max_windows", f"must be >= 0, got {self.max_windows}")
        _check(self.action_repeat >= 1, "data.action_repeat", f"must be >= 1 (1 = one predictor step per control tick), got {self.action_repeat}")
        _check(self.contact_oversample >= 1, "data.contact_oversample", f"must be >= 1 (1 = every window once), got {self.contact_oversample}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    seed: int = 0  # torch / numpy / data order
    out_dir: str = "runs/sensor"  # checkpoints, metrics.csv, curves.png
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 2  # torch intra-op threads on CPU
    num_workers: int = 0  # DataLoader workers
    checkpoint_every: int = 1  # epochs between checkpoints
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "threads", "checkpoint_every"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0 and self.grad_clip >= 0, "train.weight_decay/grad_clip", "must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.device == "cpu" or self.device.startswith("cuda"), "train.device", f"must be cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class PlannerConfig:
    """Sampling planner over the predictor (same parameters as the fused planner graph)."""

    method: str = "mppi"  # mppi (softmax-weighted) or cem (elite refit)
    samples: int = 128  # N
    horizon: int = 16  # H
    iterations: int = 2  # J
    temperature: float = 0.3  # MPPI softmax temperature, in units of the per-iteration cost std
    smoothness: float = 0.05  # weight of sum ||a_t - a_t-1||^2
    std_init: float = 0.6  # initial / reset sampling std
    std_min: float = 0.05  # lower bound on std after an update
    elites: int = 32  # CEM elite count
    # Kinematic-path terms (training/path_cost.py; docs/TRAINING.md item 13), off by default and
    # not in the fused planner graph (edge-eval and the torch planner only, for now). Cost per
    # metre that a sample's driven path enters what the range beams see as free space now (the
    # predictor's phantom crossings through walls); 20 measured best with visit (40: the same):
    clearance: float = 0.0
    clearance_margin: float = 0.03  # m kept from the range readings
    # cost per planner step near a place the odometry passed in the last visit_memory x
    # visit_every ticks (Gaussian of width visit_sigma): keeps the robot from settling in front of
    # the wall. Measured with clearance 20 (200 episodes): visit 2 with 5 places (1.25 s) 192/200,
    # 1 with 5 188, 1 with 20 178, 1 with 60 (the whole episode) 170
    visit: float = 0.0
    visit_sigma: float = 0.15  # m
    visit_every: int = 5  # control ticks between remembered places
    visit_memory: int = 5  # places remembered (5 x 5 ticks = 1.25 s at 20 Hz)

    def __post_init__(self) -> None:
        for name in ("clearance", "clearance_margin", "visit"):
            _check(getattr(self, name) >= 0, f"planner.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.visit_sigma > 0, "planner.visit_sigma", f"must be > 0 m, got {self.visit_sigma}")
        for name in ("visit_every", "visit_memory"):
            _check(getattr(self, name) >= 1, f"planner.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.method in PLANNER_METHODS, "planner.method", f"must be one of {PLANNER_METHODS}, got {self.method!r}")
        for name in ("samples", "horizon", "iterations", "elites"):
            _check(getattr(self, name) >= 1, f"planner.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.elites <= self.samples, "planner.elites", f"must be <= planner.samples ({self.samples})")
        _check(self.temperature > 0, "planner.temperature", f"must be > 0, got {self.temperature}")
        _check(self.smoothness >= 0, "planner.smoothness", f"must be >= 0, got {self.smoothness}")
        _check(0 < self.std_min <= self.std_init, "planner.std_min", f"must satisfy 0 < std_min <= std_init, got {self.std_min}, {self.std_init}")


@dataclass(frozen=True)
class EvalConfig:
    """Closed-loop planning evaluation."""

    episodes: int = 100
    max_steps: int = 300  # control steps per episode
    seed: int = 1000  # episode layouts and starts/goals
    gifs: int = 3  # episodes rendered to GIF
    # the runtime's unsticking reflex (edge.config.RecoveryConfig defaults; edge-run has it on):
    # off measures the world model and planner alone, as every figure before 2026-12-04 did
    recovery: bool = False

    def __post_init__(self) -> None:
        for name in ("episodes", "max_steps"):
            _check(getattr(self, name) >= 1, f"eval.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.gifs >= 0, "eval.gifs", f"must be >= 0, got {self.gifs}")
        _check(isinstance(self.recovery, bool), "eval.recovery", f"must be true or false, got {self.recovery!r}")


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check(not (self.model.kind == "camera" and not self.data.with_frames), "data.with_frames",
               "must be true for model.kind=camera (the camera encoder needs frames)")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {"model.embed_dim": 16, "model.enc_hidden": 64, "model.pred_hidden": 48, "model.cam_channels": (8, 16, 16)},
    "small": {"model.embed_dim": 32, "model.enc_hidden": 128, "model.pred_hidden": 96, "model.cam_channels": (16, 32, 32)},
    "medium": {"model.embed_dim": 64, "model.enc_hidden": 256, "model.pred_hidden": 192, "model.pred_layers": 2,
               "model.cam_channels": (16, 32, 64)},
}
"""Size presets (``preset: tiny`` in YAML); explicit fields override them."""


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise naming the field."""
    origin = getattr(typ, "__origin__", None)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if typ is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            elem = typ.__args__[0] if getattr(typ, "__args__", None) else int  # tuple[int, ...], tuple[float, float]
            return tuple(elem(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: cannot use {value!r} as {getattr(typ, '__name__', typ)}") from e
    return value


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Nested dict -> frozen dataclass ``cls``, coercing types; unknown keys and invalid values
    raise ConfigError naming the field (also used by ``training.pretrain``'s configs)."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(prefix + k for k in unknown)}; valid keys in {prefix.rstrip('.') or 'config'}: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if is_dataclass(hints[f.name]):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping, got {v!r}")
            kwargs[f.name] = build_dataclass(hints[f.name], v, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, hints[f.name], prefix + f.name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a __post_init__ check that raises a plain ValueError
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", ...]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a nested dict (an optional ``preset`` key first)."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: must be one of {PRESETS}, got {preset!r}")
        tree: dict[str, Any] = {}
        for k, v in PRESET_OVERRIDES[preset].items():
            _set_dotted(tree, k, v)
        values = _merge(tree, values)
    return build_dataclass(Config, values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (``None``: defaults only) and apply dotted overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass a YAML file such as configs/sensor_default.yaml")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        values = loaded
    return config_from_dict(_merge(values, parse_overrides(overrides or [])))
