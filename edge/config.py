"""The one typed configuration of ``edge-run``: frozen dataclasses, a YAML file, CLI overrides.

Defaults live here and nowhere else. A run's configuration is built in three layers:

1. the defaults of :class:`RunConfig`,
2. a YAML file (``edge-run --config configs/edge-run.yaml``), whose keys mirror the dataclasses
   (unknown keys are refused, naming the key),
3. command-line overrides (``--rate 30``, ``--set limits.max_speed=0.5``).

Every dataclass validates itself in ``__post_init__``; errors are :class:`ConfigError` naming
the field and the accepted values. ``edge-run --print-config`` prints the merged result as YAML.

Units: SI (metres, seconds, radians). Actions are normalised wheel commands in ``[-1, 1]``
(see docs/ARCHITECTURE.md); speed and acceleration limits are in those normalised units.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEVICES: tuple[str, ...] = ("cpu", "pi", "jetson")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
HOLD_ACTIONS: tuple[str, ...] = ("stop", "turn_left", "turn_right")
STATUS_MODES: tuple[str, ...] = ("live", "plain", "off")
PLAN_HEAD_MODES: tuple[str, ...] = ("auto", "off", "warm_start", "deadline_fallback", "both")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _require(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config field '{name}': {msg}")


def _finite_pos(value: float, name: str) -> None:
    _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name,
             f"must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class LinkConfig:
    """Serial link to the ESP32 motor controller."""

    port: str | None = None         # serial device, e.g. /dev/edge-esp32 (udev rule); None with --sim
    baud: int = 921600              # must match the firmware's UART setting
    lost_after_s: float = 0.3       # no telemetry for this long -> link lost: stop, reconnect
    reconnect_period_s: float = 0.5  # how often to try reopening a lost port

    def __post_init__(self) -> None:
        _require(isinstance(self.baud, int) and self.baud > 0, "link.baud",
                 f"must be a positive integer (e.g. 115200 or 921600), got {self.baud!r}")
        _finite_pos(self.lost_after_s, "link.lost_after_s")
        _finite_pos(self.reconnect_period_s, "link.reconnect_period_s")


@dataclass(frozen=True)
class CameraConfig:
    """Forward camera. ``source``: ``none``, ``sim`` (rendered by the simulator), a V4L2 index
    such as ``0``, or a device path / stream URL understood by OpenCV."""

    source: str = "none"            # which camera feeds the camera model (sensor model ignores it)
    width: int = 64                 # frame size handed to the encoder (frames are resized)
    height: int = 64

    def __post_init__(self) -> None:
        _require(isinstance(self.source, str) and self.source != "", "camera.source",
                 "must be 'none', 'sim', a device index like '0', or a path/URL")
        _require(self.width > 0 and self.height > 0, "camera.width/height", "must be > 0 pixels")


@dataclass(frozen=True)
class RobotConfig:
    """Robot geometry for odometry (ignored with --sim: the simulator's robot is used)."""

    wheel_radius_m: float = 0.033    # wheel radius
    wheel_base_m: float = 0.16       # distance between the wheel contact points
    ticks_per_rev: float = 1320.0    # encoder counts per wheel revolution (after quadrature)
    initial_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)  # odometry origin (x m, y m, theta rad)

    def __post_init__(self) -> None:
        _finite_pos(self.wheel_radius_m, "robot.wheel_radius_m")
        _finite_pos(self.wheel_base_m, "robot.wheel_base_m")
        _finite_pos(self.ticks_per_rev, "robot.ticks_per_rev")
        _require(len(self.initial_pose) == 3 and all(math.isfinite(v) for v in self.initial_pose),
                 "robot.initial_pose", f"must be three finite numbers x,y,theta, got {self.initial_pose!r}")


@dataclass(frozen=True)
class LimitsConfig:
    """Safety limits applied to every command (planner, fallback, hold) by edge/safety.py."""

    max_speed: float = 1.0           # |wheel command| cap, normalised (1.0 = max_wheel_speed)
    max_accel: float = 6.0           # max change of a wheel command per second, normalised/s
    range_guard_m: float = 0.12      # no forward (backward) motion when a front (rear) range is closer
    max_bad_sensor_ticks: int = 0    # consecutive ticks of NaN / out-of-range sensors tolerated before stopping

    def __post_init__(self) -> None:
        _require(0.0 < self.max_speed <= 1.0, "limits.max_speed",
                 f"must be in (0, 1] (fraction of max wheel speed), got {self.max_speed!r}")
        _finite_pos(self.max_accel, "limits.max_accel")
        _require(math.isfinite(self.range_guard_m) and self.range_guard_m >= 0.0,
                 "limits.range_guard_m", f"must be >= 0 metres, got {self.range_guard_m!r}")
        _require(isinstance(self.max_bad_sensor_ticks, int) and self.max_bad_sensor_ticks >= 0,
                 "limits.max_bad_sensor_ticks", "must be an integer >= 0")


@dataclass(frozen=True)
class RecoveryConfig:
    """Unsticking reflex (edge/safety.py :class:`~edge.safety.StuckRecovery`): when the planner
    asks to drive but the odometry shows the robot is not moving (pressed against a wall, or held
    by the range guard), back off with a turn for a moment; then, with ``follow_wall``, follow the
    wall (range sensors) until the embedding distance to the goal is below what it was where the
    robot got stuck and the planner's plan runs clear of the walls in view (or ``follow_max_s``
    passes), and hand control back to the planner.
    Planner commands only; every reflex command still passes the safety guard."""

    enabled: bool = True             # false: the planner keeps pushing (the confidence stall check still stops it)
    stuck_s: float = 0.15            # drive requested this long while the odometry moves slower than min_speed_mps
    min_speed_mps: float = 0.04      # odometry speed below which the robot counts as not moving (m/s)
    drive_threshold: float = 0.2     # |mean of the two wheel commands| above this counts as a drive request
    backoff_s: float = 0.3           # how long the reflex drives (opposite to the request, turning)
    backoff_speed: float = 0.6       # reflex drive speed, normalised
    backoff_turn: float = 0.3        # reflex turn (wheel difference / 2), normalised; direction drawn at random
    follow_wall: bool = True         # after the back-off, follow the wall (Bug-style) until the goal is closer
    follow_distance_m: float = 0.12  # side range (m) the wall follower keeps
    follow_speed: float = 0.8        # wall-following top forward speed, normalised (slower in sharp turns)
    follow_max_s: float = 6.0        # give up following after this long (the next one goes the other way)

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "recovery.enabled", f"must be true or false, got {self.enabled!r}")
        _require(isinstance(self.follow_wall, bool), "recovery.follow_wall",
                 f"must be true or false, got {self.follow_wall!r}")
        _finite_pos(self.follow_distance_m, "recovery.follow_distance_m")
        _finite_pos(self.follow_max_s, "recovery.follow_max_s")
        _require(0.0 < self.follow_speed <= 1.0, "recovery.follow_speed",
                 f"must be in (0, 1] (a normalised wheel command), got {self.follow_speed!r}")
        _finite_pos(self.stuck_s, "recovery.stuck_s")
        _finite_pos(self.min_speed_mps, "recovery.min_speed_mps")
        _finite_pos(self.backoff_s, "recovery.backoff_s")
        _require(0.0 <= self.drive_threshold < 1.0, "recovery.drive_threshold",
                 f"must be in [0, 1), got {self.drive_threshold!r}")
        _require(0.0 < self.backoff_speed <= 1.0, "recovery.backoff_speed",
                 f"must be in (0, 1], got {self.backoff_speed!r}")
        _require(0.0 <= self.backoff_turn <= 1.0 - self.backoff_speed + 1e-12, "recovery.backoff_turn",
                 f"must be in [0, 1 - backoff_speed] so no wheel command exceeds 1, got {self.backoff_turn!r}")


@dataclass(frozen=True)
class ConfidenceConfig:
    """When the planner counts as not confident (edge/loop.py: ``confidence``)."""

    threshold: float = 0.2           # confidence in [0, 1] below this is "low"
    low_ticks: int = 20              # consecutive low ticks before the fallback (or a stop) kicks in
    error_scale: float | None = None  # predicted error giving confidence 1/e; None -> from the bundle (2x val error)
    stall_ticks: int = 60            # best plan cost not improving this many ticks while not moving = low (0: off)
    stall_improvement: float = 0.02  # relative best-cost improvement that counts as progress

    def __post_init__(self) -> None:
        _require(0.0 <= self.threshold <= 1.0, "confidence.threshold",
                 f"must be in [0, 1], got {self.threshold!r}")
        _require(isinstance(self.low_ticks, int) and self.low_ticks >= 1, "confidence.low_ticks",
                 f"must be an integer >= 1, got {self.low_ticks!r}")
        if self.error_scale is not None:
            _finite_pos(self.error_scale, "confidence.error_scale")
        _require(isinstance(self.stall_ticks, int) and self.stall_ticks >= 0, "confidence.stall_ticks",
                 f"must be an integer >= 0 (0 disables), got {self.stall_ticks!r}")
        _require(0.0 <= self.stall_improvement < 1.0, "confidence.stall_improvement", "must be in [0, 1)")


@dataclass(frozen=True)
class FallbackConfig:
    """LLM fallback on low confidence: ``mode`` is ``none``, ``embedded`` or an http(s) URL of an
    OpenAI-compatible server."""

    mode: str = "none"               # none: stop safely on low confidence
    hold_action: str = "stop"        # what to do while a request is in flight
    hold_speed: float = 0.2          # speed of a turning hold action, normalised
    macro_speed: float = 0.4         # speed of accepted macro-actions, normalised
    model: str | None = None         # model name sent to a URL server (None: server default)
    api_key_env: str | None = None   # NAME of the environment variable holding the API key of a URL
                                     # server (e.g. OPENAI_API_KEY); the key itself never enters the config

    def __post_init__(self) -> None:
        if self.api_key_env is not None:
            _require(isinstance(self.api_key_env, str) and self.api_key_env.strip() != ""
                     and not any(c.isspace() or c in "=$" for c in self.api_key_env),
                     "fallback.api_key_env",
                     f"must be an environment variable NAME like OPENAI_API_KEY (not the key), got "
                     f"{'an empty name' if not str(self.api_key_env).strip() else 'a value with spaces, = or $'}")
        _require(self.mode in ("none", "embedded") or self.mode.startswith(("http://", "https://")),
                 "fallback.mode", f"must be 'none', 'embedded' or an http(s):// URL, got {self.mode!r}")
        _require(self.hold_action in HOLD_ACTIONS, "fallback.hold_action",
                 f"must be one of {HOLD_ACTIONS}, got {self.hold_action!r}")
        _require(0.0 <= self.hold_speed <= 1.0, "fallback.hold_speed", "must be in [0, 1]")
        _require(0.0 < self.macro_speed <= 1.0, "fallback.macro_speed", "must be in (0, 1]")


@dataclass(frozen=True)
class RecorderConfig:
    """MCAP flight recorder (docs/FLIGHT_LOG.md)."""

    enabled: bool = True
    dir: str = "runs"                # one sub-folder per run: flight.mcap, summary.json, run.gif
    flush_period_s: float = 0.5      # chunk closed, flushed and fsynced this often (kill -9 loses less)
    chunk_size: int = 256 * 1024     # bytes; a chunk is also closed when it grows past this
    record_frames: bool = True       # include camera frames (PNG) on /camera/frame

    def __post_init__(self) -> None:
        _finite_pos(self.flush_period_s, "recorder.flush_period_s")
        _require(self.flush_period_s <= 1.0, "recorder.flush_period_s",
                 "must be <= 1 s so that a crash loses at most about a second")
        _require(self.chunk_size >= 1024, "recorder.chunk_size", "must be >= 1024 bytes")


FAULT_KINDS: tuple[str, ...] = ("link_loss", "nan_ranges")


@dataclass(frozen=True)
class FaultConfig:
    """A fault the simulated robot injects, on simulated time (for testing the safety paths)."""

    kind: str                        # link_loss: no bytes either way; nan_ranges: every range reads NaN
    at_s: float                      # start, simulated seconds since the simulated ESP32 booted
    duration_s: float                # how long it lasts

    def __post_init__(self) -> None:
        _require(self.kind in FAULT_KINDS, "sim.faults.kind", f"must be one of {FAULT_KINDS}, got {self.kind!r}")
        _require(math.isfinite(self.at_s) and self.at_s >= 0, "sim.faults.at_s", "must be >= 0 seconds")
        _finite_pos(self.duration_s, "sim.faults.duration_s")


@dataclass(frozen=True)
class SimConfig:
    """``--sim``: the simulated ESP32 (real firmware core) over a pseudo-terminal."""

    enabled: bool = False
    seed: int | None = None          # episode layouts and noise; None -> random
    fixed_layout: bool = False       # same wall/door every episode
    episodes: int = 1                # goal-reaching episodes to run one after the other
    goal_room: str = "other"         # other: goal behind the dividing wall (find the door); same: in the start room
    max_steps: int = 300             # control ticks per episode before it counts as failed (the sim's budget)
    time_scale: float = 1.0          # >1 runs the simulated robot faster than real time
    gif: bool = True                 # write run.gif (top-down view with the planned path)
    faults: tuple[FaultConfig, ...] = ()  # injected faults, e.g. [{kind: link_loss, at_s: 3, duration_s: 1}]

    def __post_init__(self) -> None:
        _require(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "sim.seed",
                 "must be an integer >= 0 or null")
        _require(isinstance(self.episodes, int) and self.episodes >= 1, "sim.episodes", "must be >= 1")
        _require(self.goal_room in ("other", "same"), "sim.goal_room", f"must be 'other' or 'same', got {self.goal_room!r}")
        _require(isinstance(self.max_steps, int) and self.max_steps >= 1, "sim.max_steps", "must be >= 1")
        _finite_pos(self.time_scale, "sim.time_scale")


@dataclass(frozen=True)
class GoalConfig:
    """The goal is an observation: a saved snapshot (``file``) or, in sim, a pose to render."""

    file: str | None = None          # .npz written by `edge-run --save-goal NAME`
    pose: tuple[float, float, float] | None = None  # sim only: render the goal observation here
    reach_m: float = 0.15            # goal reached this close (sim: true pose, its success radius; robot: odometry)
    reach_embedding: float | None = None  # alternative: embedding distance below this counts as reached
    headings: int = 1                # sim: goal embedding = mean over this many headings at the goal (a "place")

    def __post_init__(self) -> None:
        if self.pose is not None:
            _require(len(self.pose) == 3 and all(math.isfinite(float(v)) for v in self.pose),
                     "goal.pose", f"must be x,y,theta (three finite numbers), got {self.pose!r}")
        _finite_pos(self.reach_m, "goal.reach_m")
        if self.reach_embedding is not None:
            _finite_pos(self.reach_embedding, "goal.reach_embedding")
        _require(isinstance(self.headings, int) and 1 <= self.headings <= 64, "goal.headings",
                 f"must be an integer in 1..64, got {self.headings!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``edge-run`` needs. Sections mirror the YAML file."""

    device: str = "cpu"              # cpu | pi (ONNX Runtime) | jetson (TensorRT)
    bundle: str = "models/default"   # model bundle folder (relative: cwd, then the repository)
    precision: str = "fp32"          # planner variant from the bundle
    rate_hz: float = 20.0            # control rate; each tick has a 1/rate_hz deadline
    duration_s: float | None = None  # stop after this long (None: until the goal or a signal)
    status: str = "live"             # live terminal view (rich), plain log lines, or off
    plan_head: str = "auto"          # bundle's amortized planning head: auto (as its manifest says) | off |
                                     # warm_start | deadline_fallback | both
    link: LinkConfig = field(default_factory=LinkConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    goal: GoalConfig = field(default_factory=GoalConfig)

    def __post_init__(self) -> None:
        _require(self.device in DEVICES, "device", f"must be one of {DEVICES}, got {self.device!r}")
        _require(self.precision in PRECISIONS, "precision",
                 f"must be one of {PRECISIONS}, got {self.precision!r}")
        _require(isinstance(self.rate_hz, (int, float)) and math.isfinite(self.rate_hz)
                 and 0.5 <= self.rate_hz <= 1000.0, "rate_hz",
                 f"must be between 0.5 and 1000 Hz, got {self.rate_hz!r}")
        if self.duration_s is not None:
            _finite_pos(self.duration_s, "duration_s")
        _require(self.status in STATUS_MODES, "status", f"must be one of {STATUS_MODES}")
        _require(self.plan_head in PLAN_HEAD_MODES, "plan_head", f"must be one of {PLAN_HEAD_MODES}")
        if self.goal.pose is not None and not self.sim.enabled:
            raise ConfigError("config field 'goal.pose': only valid with --sim (a real robot's goal "
                              "is an observation saved with `edge-run --save-goal NAME`)")


# --------------------------------------------------------------------------- building


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML / CLI value to the annotated field type ``tp`` (recursing into sections)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{name}' must be a mapping, got {value!r}")
        return _build(tp, value, name)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], name)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip() != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{name}' must be a list like [x, y, theta], got {value!r}")
        return tuple(_convert(v, args[0], name) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config field '{name}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config field '{name}' must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"config field '{name}' must be an integer, got {value!r}") from e
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config field '{name}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config field '{name}' must be a number, got {value!r}") from e
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config field '{name}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {unknown} in {where}; known keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: RunConfig) -> dict:
    """The configuration as plain data (tuples become lists), as written by ``--print-config``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: RunConfig) -> str:
    """YAML text of the configuration (loadable again with :func:`load_config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def parse_override(text: str) -> dict:
    """``"limits.max_speed=0.5"`` -> ``{"limits": {"max_speed": 0.5}}`` (value parsed as YAML).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value, e.g. limits.max_speed=0.5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    out: dict = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[dict] | None = None) -> RunConfig:
    """Defaults <- YAML file <- overrides (each a nested dict, later wins).

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown keys, invalid values.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found (see configs/edge-run.yaml for an example)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for over in overrides or []:
        data = _merge(data, over)
    try:
        return _build(RunConfig, data)
    except TypeError as e:  # wrong nesting, e.g. a scalar where a section is expected
        raise ConfigError(f"invalid configuration: {e}") from e
