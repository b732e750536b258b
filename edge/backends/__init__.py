"""Inference backends: one interface (``encode``, ``plan``) over ONNX Runtime and TensorRT.

The control loop makes exactly two calls per tick: :meth:`InferenceBackend.encode` (the
bundle's encoder) and :meth:`InferenceBackend.plan` (the fused MPPI planner graph: all J
iterations x N samples x H steps in one call). Implementations:

- :class:`edge.backends.ort.OrtBackend` (``device="cpu"`` or ``"pi"``): ONNX Runtime, CPU.
- :class:`edge.backends.tensorrt.TensorRTBackend` (``device="jetson"``): TensorRT engines
  built on the device, imported lazily (``pip install 'edge-jepa[jetson]'``).

Both compile through :class:`edge.engine_cache.EngineCache`. Never imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle, BundleError, load_bundle

DEVICES = ("cpu", "pi", "jetson")
PRECISIONS = ("fp32", "fp16", "int8")
SENSOR_DIM = 14
"""Length of the sensor observation vector (docs/ARCHITECTURE.md)."""
POSE4_SLICE = slice(8, 12)
"""Where (x / half_width, y / half_height, sin theta, cos theta) sits in the sensor vector."""

PLANNER_INPUTS = ("z0", "z_goal", "mean", "std", "noise")
PLANNER_OUTPUTS = ("mean_out", "std_out", "best_cost", "mean_cost", "conf", "best_actions")


@dataclass(frozen=True)
class PlanResult:
    """Outputs of one fused planner call (names as the graph outputs).

    Attributes:
        mean_out: [H, A] updated MPPI mean (the plan); ``mean_out[0]`` is the action to send.
        std_out: [H, A] updated sampling std (>= std_min).
        best_cost: cost of the best sample of the last iteration.
        mean_cost: mean sample cost of the last iteration.
        conf: [H] the predictor's confidence head (predicted squared error, lower = more
            confident) along the rollout of ``mean_out``.
        best_actions: [H, A] the best sample's actions of the last iteration.
    """

    mean_out: np.ndarray
    std_out: np.ndarray
    best_cost: float
    mean_cost: float
    conf: np.ndarray
    best_actions: np.ndarray

    @property
    def first_action(self) -> np.ndarray:
        """[A] normalised (left, right) command of the plan's first step."""
        return self.mean_out[0]


class InferenceBackend(ABC):
    """Runs a verified bundle's encoder and fused planner.

    Subclasses implement :meth:`_encode_batch` and :meth:`_plan`; this base class does the
    input checks and pre-processing once, so the hot path of each implementation is just the
    runtime call.

    Attributes:
        bundle: the verified :class:`edge.bundle.Bundle`.
        device: ``cpu``, ``pi`` or ``jetson``.
        precision: ``fp32``, ``fp16`` or ``int8`` (planner variant; encoders fall back to fp32).
    """

    def __init__(self, bundle: Bundle, device: str, precision: str):
        self.bundle = bundle
        self.device = device
        self.precision = precision
        p = bundle.planner
        self.encoder_name = p.encoder
        self._plan_shapes = {"z0": (p.E,), "z_goal": (p.E,), "mean": (p.H, p.A), "std": (p.H, p.A),
                             "noise": (p.J, p.N, p.H, p.A)}

    # -- public API -----------------------------------------------------------------------
    def encode(self, sensor: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        """Embed one observation.

        Args:
            sensor: [14] float32 sensor observation vector (docs/ARCHITECTURE.md).
            frame: [64, 64, 3] uint8 RGB camera frame; required when the bundle's planner
                consumes the camera encoder's embedding, ignored otherwise.
        Returns:
            z [E] float32.
        Raises:
            ValueError: wrong shapes, or a camera bundle called without a frame.
        """
        sensor = np.asarray(sensor, dtype=np.float32)
        if sensor.shape != (SENSOR_DIM,):
            raise ValueError(f"encode: sensor must have shape [{SENSOR_DIM}], got {list(sensor.shape)}")
        if self.encoder_name == "camera":
            if frame is None:
                raise ValueError("encode: this bundle plans on camera embeddings; pass frame=[64, 64, 3] uint8")
            return self.encode_batch(sensor[None], np.asarray(frame)[None])[0]
        return self.encode_batch(sensor[None])[0]

    def encode_batch(self, sensors: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """Embed a batch: ``sensors [B, 14]`` (+ ``frames [B, 64, 64, 3] uint8``) -> ``z [B, E]``."""
        sensors = np.ascontiguousarray(sensors, dtype=np.float32)
        if sensors.ndim != 2 or sensors.shape[1] != SENSOR_DIM:
            raise ValueError(f"encode_batch: sensors must be [B, {SENSOR_DIM}], got {list(sensors.shape)}")
        if self.encoder_name == "camera":
            if frames is None or frames.ndim != 4 or frames.shape[0] != sensors.shape[0] or frames.shape[3] != 3:
                got = None if frames is None else list(frames.shape)
                raise ValueError(f"encode_batch: frames must be [B, S, S, 3] uint8 with B={sensors.shape[0]}, got {got}")
            if frames.dtype != np.uint8:
                raise ValueError(f"encode_batch: frames must be uint8 RGB, got {frames.dtype}")
            chw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(1.0 / 255.0)
            feeds = {"frame": chw, "pose4": np.ascontiguousarray(sensors[:, POSE4_SLICE])}
        else:
            feeds = {"obs": sensors}
        return self._encode_batch(self.encoder_name, feeds)

    def plan(self, z0: np.ndarray, z_goal: np.ndarray, mean: np.ndarray, std: np.ndarray,
             noise: np.ndarray) -> PlanResult:
        """One call of the fused planner.

        Args:
            z0: [E] current embedding. z_goal: [E] goal embedding.
            mean: [H, A] warm-start mean (normalised actions). std: [H, A] sampling std.
            noise: [J, N, H, A] standard-normal noise, pre-generated off the hot path.
        Returns:
            :class:`PlanResult` (arrays are fresh copies, safe to keep).
        Raises:
            ValueError: an input of the wrong shape (names it and the expected shape).
        """
        feeds = {"z0": z0, "z_goal": z_goal, "mean": mean, "std": std, "noise": noise}
        for name, expected in self._plan_shapes.items():
            value = feeds[name]
            if value.shape != expected or value.dtype != np.float32:
                raise ValueError(f"plan: {name} must be float32 {list(expected)}, got {value.dtype} "
                                 f"{list(value.shape)} (bundle N={self.bundle.planner.N}, H={self.bundle.planner.H}, "
                                 f"J={self.bundle.planner.J})")
        out = self._plan(feeds)
        return PlanResult(mean_out=out["mean_out"], std_out=out["std_out"],
                          best_cost=float(out["best_cost"]), mean_cost=float(out["mean_cost"]),
                          conf=out["conf"], best_actions=out["best_actions"])

    def close(self) -> None:
        """Release runtime resources (sessions, device memory)."""

    def __enter__(self) -> "InferenceBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- implementation hooks -------------------------------------------------------------------
    @abstractmethod
    def _encode_batch(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run encoder ``name`` on prepared feeds; return z [B, E] float32 (a fresh array)."""

    @abstractmethod
    def _plan(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the planner on checked float32 feeds; return fresh output arrays by name."""


def make_backend(bundle: Bundle | str | Path, device: str = "cpu", precision: str = "fp32",
                 **options: Any) -> InferenceBackend:
    """Create the backend for ``device``, compiling (or loading from the engine cache) as needed.

    Args:
        bundle: a verified :class:`Bundle` or a bundle folder (verified here).
        device: ``cpu`` / ``pi`` (ONNX Runtime) or ``jetson`` (TensorRT).
        precision: ``fp32``, ``fp16`` (GPU only) or ``int8``.
        **options: passed to the backend (``cache``: an EngineCache; ORT: ``intra_op_threads``,
            ``graph_optimization``; TensorRT: ``cuda_graph``, ``workspace_mb``).
    Raises:
        ValueError: unknown device or precision, or fp16 requested on a CPU device.
        BundleError: the bundle fails verification or lacks the precision's planner.
        ImportError: the runtime for ``device`` is not installed (names the install command).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if precision not in bundle.planner.variants:
        bundle.planner_file(precision)  # raises BundleError naming the re-export command
    if device in ("cpu", "pi"):
        if precision == "fp16":
            raise ValueError("precision fp16 is for GPUs (device jetson); on cpu/pi use fp32 or int8")
        from edge.backends.ort import OrtBackend

        return OrtBackend(bundle, device, precision, **options)
    from edge.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(bundle, device, precision, **options)


__all__ = ["InferenceBackend", "PlanResult", "make_backend", "Bundle", "BundleError", "DEVICES", "PRECISIONS",
           "PLANNER_INPUTS", "PLANNER_OUTPUTS"]
