"""``edge-export``: trained run -> verified model bundle (fused MPPI planner + encoder, fp32/int8/fp16).

Example::

    edge-export --checkpoint runs/default_sensor --out models/default --precisions fp32,int8
    python -m training.export --checkpoint runs/default_sensor --out models/small --N 128 --H 12 --J 2

The fused planner (:class:`FusedPlanner`) is an ``nn.Module`` whose forward unrolls J MPPI
iterations x H predictor steps, calling :meth:`training.models.Predictor.step` on all N
samples at once. It is exported with the TorchScript-based ``torch.onnx.export``
(``dynamo=False``): tracing unrolls the Python loops into a flat graph of
MatMul/Add/Mul/Sigmoid/Tanh/Softmax nodes. The exported graph is then checked:

1. structurally: no ``Loop``/``Scan``/``If``/``GRU``/``LSTM``/``RNN``/``Random*`` ops
   (:data:`FORBIDDEN_OPS`) and TensorRT-parsable (:func:`edge.trt_compat.check_trt_compat`);
2. numerically: ONNX Runtime on fresh random inputs (new seed each export, recorded in the
   manifest) against the torch reference planner (``training.planner``, which loops over the
   horizon in Python) and the torch module itself; refused when the error exceeds
   :attr:`ExportConfig.tolerance` (costs, embeddings) / :attr:`ExportConfig.action_tolerance`
   (plan outputs).

Encoders are exported with a dynamic batch axis and checked the same way. Quantised
variants (``training.quantize``) are measured against fp32 and their errors recorded in the
manifest and model card.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edge.trt_compat import check_trt_compat
from training.config import PlannerConfig
from training.models import ACTION_DIM, POSE4_DIM, CameraEncoder, Predictor

FORBIDDEN_OPS = frozenset({"Loop", "Scan", "If", "GRU", "LSTM", "RNN", "RandomNormal", "RandomNormalLike",
                           "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})
"""Ops the fused planner must not contain (DESIGN.md: unrolled steps, noise as an input)."""
PLANNER_INPUTS = ("z0", "z_goal", "mean", "std", "noise")
PLANNER_OUTPUTS = ("mean_out", "std_out", "best_cost", "mean_cost", "conf", "best_actions")
OPSET = 17


class ExportError(RuntimeError):
    """The export was refused (numerical check failed, forbidden op, bad input)."""


@dataclass(frozen=True)
class PlannerParams:
    """Parameters fixed into the fused planner graph (recorded in the manifest under ``planner``).

    Defaults come from ``training.config.PlannerConfig`` (the one place they live).

    Attributes:
        N: samples per iteration. H: horizon steps. J: MPPI iterations.
        temperature: softmax temperature on per-iteration scale-free costs ``(c - min) / std``.
        smoothness: weight of ``sum_t ||a_t - a_{t-1}||^2``.
        std_init: sampling std the runtime starts from (and resets to).
        std_min: lower bound on the updated std.
        action_low / action_high: action bounds (normalised wheel commands).
    """

    N: int = PlannerConfig.samples
    H: int = PlannerConfig.horizon
    J: int = PlannerConfig.iterations
    temperature: float = PlannerConfig.temperature
    smoothness: float = PlannerConfig.smoothness
    std_init: float = PlannerConfig.std_init
    std_min: float = PlannerConfig.std_min
    action_low: float = -1.0
    action_high: float = 1.0

    def __post_init__(self) -> None:
        for name in ("N", "H", "J"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlannerParams.{name} must be >= 1, got {getattr(self, name)}")
        if self.N < 2:
            raise ValueError(f"PlannerParams.N must be >= 2 (MPPI needs several samples), got {self.N}")
        if self.temperature <= 0:
            raise ValueError(f"PlannerParams.temperature must be > 0, got {self.temperature}")
        if self.smoothness < 0:
            raise ValueError(f"PlannerParams.smoothness must be >= 0, got {self.smoothness}")
        if not 0 < self.std_min <= self.std_init:
            raise ValueError(f"PlannerParams.std_min must satisfy 0 < std_min <= std_init, got {self.std_min}, {self.std_init}")
        if not self.action_low < self.action_high:
            raise ValueError(f"PlannerParams.action_low must be < action_high, got {self.action_low}, {self.action_high}")


def mppi_costs(z_pred: torch.Tensor, z_goal: torch.Tensor, actions: torch.Tensor, smoothness: float) -> torch.Tensor:
    """Sample costs, as ``training.planner.rollout_cost``: goal distance summed over steps + smoothness.

    Args:
        z_pred: [N, H, E] predicted embeddings after each action.
        z_goal: [E] goal embedding.
        actions: [N, H, A].
    Returns:
        cost [N] = ``sum_t ||z_t - g||_2 + smoothness * sum_{t>=1} ||a_t - a_{t-1}||^2``.
    """
    cost = torch.sqrt(((z_pred - z_goal) ** 2).sum(dim=-1)).sum(dim=-1)
    if actions.shape[1] > 1 and smoothness > 0:
        cost = cost + smoothness * ((actions[:, 1:] - actions[:, :-1]) ** 2).sum(dim=(1, 2))
    return cost


def mppi_update(actions: torch.Tensor, cost: torch.Tensor, temperature: float, std_min: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """MPPI update on scale-free costs, as ``training.planner.plan_batch``.

    ``s = (cost - min) / (std(cost) + 1e-6)``, ``w = softmax(-s / temperature)``,
    ``mean = sum w a``, ``std = max(sqrt(sum w (a - mean)^2), std_min)``.

    Args:
        actions: [N, H, A]. cost: [N].
    Returns:
        mean [H, A], std [H, A].
    """
    centred = cost - cost.mean()
    spread = torch.sqrt((centred * centred).mean()) + 1e-6
    w = torch.softmax(-(cost - cost.min()) / (spread * temperature), dim=0)[:, None, None]
    mean = (w * actions).sum(dim=0)
    std = torch.sqrt((w * (actions - mean) ** 2).sum(dim=0)).clamp(min=std_min)
    return mean, std


class FusedPlanner(nn.Module):
    """The fused batched-rollout MPPI planner as one torch module (the exported graph).

    ``forward(z0 [E], z_goal [E], mean [H, A], std [H, A], noise [J, N, H, A])`` returns
    ``(mean_out [H, A], std_out [H, A], best_cost [], mean_cost [], conf [H], best_actions [H, A])``.

    Each iteration samples ``a = clip(mean + std * noise[j], low, high)``, rolls the predictor
    out H steps for all N samples at once (``Predictor.step`` on batch N), scores with
    :func:`mppi_costs` and updates with :func:`mppi_update`. ``conf`` is the confidence head
    along the rollout of the final mean; ``best_cost`` / ``mean_cost`` / ``best_actions`` are
    those of the last iteration. Loops are Python loops over static N, H, J, so tracing unrolls
    them (no Loop op).
    """

    def __init__(self, predictor: Predictor, params: PlannerParams):
        super().__init__()
        self.predictor = predictor
        self.params = params

    def _rollout(self, z0: torch.Tensor, h0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z0 [B, E], h0 [L, B, Hd], actions [B, H, A] -> z_pred [B, H, E], conf [B, H]``."""
        z, h = z0, h0
        zs, confs = [], []
        for t in range(self.params.H):
            z, h, c = self.predictor.step(z, h, actions[:, t])
            zs.append(z)
            confs.append(c)
        return torch.stack(zs, dim=1), torch.stack(confs, dim=1)

    def forward(self, z0: torch.Tensor, z_goal: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.params
        z1 = z0.reshape(1, -1)
        h1 = self.predictor.init_hidden(z1)  # [L, 1, Hd]
        zN = z1.expand(p.N, z1.shape[1])
        hN = h1.expand(h1.shape[0], p.N, h1.shape[2])
        cost = best_actions = None
        for j in range(p.J):
            actions = torch.clamp(mean + std * noise[j], p.action_low, p.action_high)
            z_pred, _ = self._rollout(zN, hN, actions)
            cost = mppi_costs(z_pred, z_goal, actions, p.smoothness)
            best_actions = actions[torch.argmin(cost)]
            mean, std = mppi_update(actions, cost, p.temperature, p.std_min)
        _, conf = self._rollout(z1, h1, mean.unsqueeze(0))
        return mean, std, cost.min(), cost.mean(), conf[0], best_actions


class _EncoderWrapper(nn.Module):
    """Gives the exported encoder fixed tensor names (``obs -> z`` or ``frame, pose4 -> z``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(*inputs)


def n_parameters(module: nn.Module) -> int:
    """All parameters (the deployed EMA encoder has requires_grad=False, so count every tensor)."""
    return sum(p.numel() for p in module.parameters())


def encoder_kind(encoder: nn.Module) -> str:
    """``camera`` for any frame encoder (CameraEncoder, the I-JEPA ViTCameraEncoder: they have
    ``image_size`` and take ``(frame, pose4)``), else ``sensor``."""
    return "camera" if isinstance(encoder, CameraEncoder) or hasattr(encoder, "image_size") else "sensor"


def encoder_io(encoder: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Manifest input/output specs of an encoder (``batch`` is the dynamic axis)."""
    E = encoder.embed_dim
    if encoder_kind(encoder) == "camera":
        s = encoder.image_size
        inputs = {"frame": {"shape": ["batch", 3, s, s], "dtype": "float32", "range": [0.0, 1.0]},
                  "pose4": {"shape": ["batch", POSE4_DIM], "dtype": "float32"}}
    else:
        inputs = {"obs": {"shape": ["batch", encoder.obs_dim], "dtype": "float32"}}
    return inputs, {"z": {"shape": ["batch", E], "dtype": "float32"}}


def planner_io(params: PlannerParams, E: int) -> tuple[dict[str, Any], dict[str, Any]]:
    H, N, J, A = params.H, params.N, params.J, ACTION_DIM
    f = "float32"
    inputs = {"z0": {"shape": [E], "dtype": f}, "z_goal": {"shape": [E], "dtype": f},
              "mean": {"shape": [H, A], "dtype": f}, "std": {"shape": [H, A], "dtype": f},
              "noise": {"shape": [J, N, H, A], "dtype": f}}
    outputs = {"mean_out": {"shape": [H, A], "dtype": f}, "std_out": {"shape": [H, A], "dtype": f},
               "best_cost": {"shape": [], "dtype": f}, "mean_cost": {"shape": [], "dtype": f},
               "conf": {"shape": [H], "dtype": f}, "best_actions": {"shape": [H, A], "dtype": f}}
    return inputs, outputs


def random_planner_inputs(rng: np.random.Generator, params: PlannerParams, E: int, z_scale: float = 1.0
                          ) -> dict[str, np.ndarray]:
    """Fresh random planner inputs (never zeros): embeddings, a warm-start mean, std, noise."""
    H, A = params.H, ACTION_DIM
    return {
        "z0": (rng.standard_normal(E) * z_scale).astype(np.float32),
        "z_goal": (rng.standard_normal(E) * z_scale).astype(np.float32),
        "mean": rng.uniform(-0.5, 0.5, (H, A)).astype(np.float32),
        "std": rng.uniform(params.std_min, params.std_init, (H, A)).astype(np.float32),
        "noise": rng.standard_normal((params.J, params.N, H, A)).astype(np.float32),
    }


def random_encoder_inputs(rng: np.random.Generator, encoder: nn.Module, batch: int) -> dict[str, np.ndarray]:
    if encoder_kind(encoder) == "camera":
        s = encoder.image_size
        return {"frame": rng.uniform(0, 1, (batch, 3, s, s)).astype(np.float32),
                "pose4": rng.uniform(-1, 1, (batch, POSE4_DIM)).astype(np.float32)}
    return {"obs": rng.uniform(-1, 1, (batch, encoder.obs_dim)).astype(np.float32)}


def onnx_ops(path: str | Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def export_planner_onnx(predictor: Predictor, params: PlannerParams, out: str | Path, opset: int = OPSET) -> Path:
    """Trace :class:`FusedPlanner` to ONNX at ``out``; raise ExportError on a forbidden op."""
    out = Path(out)
    module = FusedPlanner(predictor, params).eval()
    inputs = random_planner_inputs(np.random.default_rng(0), params, predictor.embed_dim)
    args = tuple(torch.from_numpy(inputs[k]) for k in PLANNER_INPUTS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deliberate (unrolled graph)
        torch.onnx.export(module, args, str(out), input_names=list(PLANNER_INPUTS), output_names=list(PLANNER_OUTPUTS),
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    bad = onnx_ops(out) & FORBIDDEN_OPS
    if bad:
        raise ExportError(f"fused planner export contains forbidden ops {sorted(bad)}; the graph must be unrolled")
    return out


def export_encoder_onnx(encoder: nn.Module, out: str | Path, opset: int = OPSET) -> Path:
    """Export an encoder with a dynamic ``batch`` axis on every input and on ``z``."""
    out = Path(out)
    inputs, _ = encoder_io(encoder)
    example = random_encoder_inputs(np.random.default_rng(0), encoder, 2)
    args = tuple(torch.from_numpy(example[k]) for k in inputs)
    dynamic = {k: {0: "batch"} for k in inputs} | {"z": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deliberate (unrolled graph)
        torch.onnx.export(_EncoderWrapper(encoder).eval(), args, str(out), input_names=list(inputs), output_names=["z"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    return out


def _session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class CheckReport:
    """Worst errors over the trials of one numerical check (absolute, in output units)."""

    seed: int
    trials: int
    max_abs: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs.values())

    def exceeding(self, cost_tol: float, action_tol: float) -> dict[str, float]:
        """Outputs whose error is above their tolerance (costs: ``cost_tol``, plan outputs: ``action_tol``)."""
        return {k: v for k, v in self.max_abs.items()
                if v > (cost_tol if k in ("best_cost", "mean_cost") else action_tol)}


def torch_planner_outputs(predictor: Predictor, params: PlannerParams, inputs: dict[str, np.ndarray]
                          ) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = FusedPlanner(predictor, params).eval()(*(torch.from_numpy(inputs[k]) for k in PLANNER_INPUTS))
    return {k: v.numpy() for k, v in zip(PLANNER_OUTPUTS, outs)}


def reference_planner_outputs(predictor: Predictor, params: PlannerParams, inputs: dict[str, np.ndarray]
                              ) -> dict[str, np.ndarray]:
    """Outputs of the torch reference planner (``training.planner.plan``, loops over the horizon)."""
    from training.planner import plan

    cfg = PlannerConfig(method="mppi", samples=params.N, horizon=params.H, iterations=params.J,
                        temperature=params.temperature, smoothness=params.smoothness, std_init=params.std_init,
                        std_min=params.std_min, elites=min(PlannerConfig.elites, params.N))
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    r = plan(predictor, t["z0"], t["z_goal"], t["mean"], t["std"], t["noise"], cfg, params.action_low, params.action_high)
    outs = (r.mean, r.std, r.best_cost, r.mean_cost, r.conf, r.best_actions)
    return {k: v.numpy() for k, v in zip(PLANNER_OUTPUTS, outs)}


def compare_planner_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error per output; costs relative to their magnitude.

    ``best_actions`` is compared only when the best sample is unambiguous (it is the argmin
    of costs, so a near-tie may legitimately pick another sample); otherwise its error is
    reported as 0 and the costs carry the check.
    """
    errs: dict[str, float] = {}
    for k in ("mean_out", "std_out", "conf"):
        errs[k] = float(np.max(np.abs(got[k].astype(np.float64) - want[k])))
    for k in ("best_cost", "mean_cost"):
        errs[k] = float(abs(float(got[k]) - float(want[k])) / max(1.0, abs(float(want[k]))))
    d = float(np.max(np.abs(got["best_actions"].astype(np.float64) - want["best_actions"])))
    errs["best_actions"] = d if errs["best_cost"] < 1e-3 or d < 1e-3 else 0.0
    return errs


def check_planner(onnx_path: str | Path, predictor: Predictor, params: PlannerParams, trials: int = 3,
                  seed: int | None = None, reference: Callable | None = None,
                  inputs: list[dict[str, np.ndarray]] | None = None) -> CheckReport:
    """Run the ONNX planner on fresh random inputs and compare with a reference.

    Args:
        reference: ``f(inputs) -> outputs`` to compare against (default: the torch reference
            planner, :func:`reference_planner_outputs`).
        inputs: explicit input sets (default: ``trials`` fresh sets from
            :func:`random_planner_inputs` with ``seed``, a new random seed when None).
    """
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = [random_planner_inputs(rng, params, predictor.embed_dim) for _ in range(trials)]
    sess = _session(onnx_path)
    worst: dict[str, float] = {}
    for feeds in inputs:
        got = dict(zip(PLANNER_OUTPUTS, sess.run(list(PLANNER_OUTPUTS), feeds)))
        if reference is not None:
            want = reference(feeds)
        else:
            want = reference_planner_outputs(predictor, params, feeds)
        for k, v in compare_planner_outputs(got, want).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return CheckReport(seed=seed, trials=len(inputs), max_abs=worst)


def check_encoder(onnx_path: str | Path, encoder: nn.Module, trials: int = 3, seed: int | None = None,
                  feeds_fn: Callable[[np.random.Generator, int], dict[str, np.ndarray]] | None = None) -> CheckReport:
    """ONNX encoder vs torch on fresh random batches of varying size (exercises the dynamic axis)."""
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    rng = np.random.default_rng(seed)
    sess = _session(onnx_path)
    worst = 0.0
    for i in range(trials):
        batch = (1, 7, 32)[i % 3]
        feeds = feeds_fn(rng, batch) if feeds_fn else random_encoder_inputs(rng, encoder, batch)
        got = sess.run(["z"], feeds)[0]
        with torch.no_grad():
            want = encoder(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        worst = max(worst, float(np.max(np.abs(got - want))))
    return CheckReport(seed=seed, trials=trials, max_abs={"z": worst})


@dataclass(frozen=True)
class ExportConfig:
    """How ``edge-export`` builds a bundle.

    Attributes:
        precisions: planner variants to write (fp32 always; int8 = static QDQ; fp16).
        tolerance: max error allowed between ONNX fp32 and the torch reference on the
            well-conditioned outputs: costs (relative to their size) and encoder embeddings
            (absolute). The export is refused above it.
        action_tolerance: max abs error on the plan outputs (``mean_out``, ``std_out``,
            ``best_actions``, ``conf``). These are ill-conditioned by design: the MPPI softmax
            amplifies float32 round-off of the costs by ``1 / (temperature * std(cost))``
            (~1e4 at temperature 0.05), which puts honest fp32 differences at up to ~2e-3 on the
            updated mean; a wrong graph is off by > 5e-2. 1e-2 is 0.5 % of the action range.
        trials: random input sets per numerical check.
        calib_windows: dataset windows used to calibrate int8.
        opset: ONNX opset (TensorRT 10.3 parses up to 20).
        int8_encoder: also quantise the encoder (default: planner only; the encoder runs once a tick).
    """

    precisions: tuple[str, ...] = ("fp32", "int8")
    tolerance: float = 1e-4
    action_tolerance: float = 1e-2
    trials: int = 3
    calib_windows: int = 64
    opset: int = OPSET
    int8_encoder: bool = False

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in ("fp32", "int8", "fp16")]
        if bad or "fp32" not in self.precisions:
            raise ValueError(f"ExportConfig.precisions must include fp32 and only fp32/int8/fp16, got {self.precisions}")
        for name in ("tolerance", "action_tolerance"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"ExportConfig.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.trials < 1 or self.calib_windows < 1:
            raise ValueError("ExportConfig.trials and calib_windows must be >= 1")
        if not 13 <= self.opset <= 20:
            raise ValueError(f"ExportConfig.opset must be in 13..20 (per-channel QDQ needs 13, TensorRT 10.3 parses <= 20), got {self.opset}")


def _calibration(encoder: nn.Module, data_path: str | None, n_windows: int, params: PlannerParams,
                 rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], np.ndarray, str]:
    """Calibration feeds for encoder and planner (from real dataset windows when available),
    and the embeddings of those windows ``[M, E]`` (realistic planner inputs for checks)."""
    from training.quantize import encoder_calibration_feeds, planner_calibration_feeds

    enc_feeds, source = encoder_calibration_feeds(encoder, data_path, n_windows, rng)
    with torch.no_grad():
        zs = [encoder(*(torch.from_numpy(v) for v in f.values())).numpy() for f in enc_feeds]
    z_all = np.concatenate(zs, axis=0)
    plan_feeds = planner_calibration_feeds(z_all, params, rng, n=min(16, max(4, n_windows // 4)))
    return enc_feeds, plan_feeds, z_all, source


def export_bundle(encoder: nn.Module, predictor: Predictor, params: PlannerParams, out_dir: str | Path,
                  cfg: ExportConfig = ExportConfig(), training_config: dict | None = None,
                  training_metrics: dict | None = None, data_path: str | None = None,
                  command: str | None = None, name: str | None = None, progress: bool = True,
                  normalisation: Any = None, notes: str | None = None) -> Path:
    """Export, check, quantise and write a bundle to ``out_dir``; returns the folder.

    Raises:
        ExportError: a numerical check failed or the graph has forbidden ops.
    """
    from tqdm import tqdm

    from training.bundle import write_bundle
    from training.quantize import fp16_variant, quantize_int8, quantize_int8_dynamic

    encoder = encoder.eval()
    predictor = predictor.eval()
    out_dir = Path(out_dir)
    kind = encoder_kind(encoder)
    E = predictor.embed_dim
    if getattr(encoder, "embed_dim", E) != E:
        raise ExportError(f"encoder embeds to {encoder.embed_dim} but the predictor expects {E}")
    steps = 2 + len(cfg.precisions)
    bar = tqdm(total=steps, desc="edge-export", disable=not progress, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="edge-export-") as tmp_s:
        tmp = Path(tmp_s)
        files: dict[str, Path] = {}
        enc_file = f"{kind}_encoder_fp32.onnx"
        export_encoder_onnx(encoder, tmp / enc_file, cfg.opset)
        enc_check = check_encoder(tmp / enc_file, encoder, cfg.trials)
        if enc_check.worst > cfg.tolerance:
            raise ExportError(f"{kind} encoder ONNX differs from torch by {enc_check.worst:.2e} > tolerance "
                              f"{cfg.tolerance:.0e} (seed {enc_check.seed}); export refused")
        files[enc_file] = tmp / enc_file
        bar.update()
        plan_file = "planner_fp32.onnx"
        export_planner_onnx(predictor, params, tmp / plan_file, cfg.opset)
        plan_check = check_planner(tmp / plan_file, predictor, params, cfg.trials)
        too_far = plan_check.exceeding(cfg.tolerance, cfg.action_tolerance)
        if too_far:
            raise ExportError(f"fused planner ONNX differs from the torch reference planner beyond tolerance "
                              f"({too_far}; costs rel. {cfg.tolerance:.0e}, actions abs. {cfg.action_tolerance:.0e}; "
                              f"seed {plan_check.seed}); export refused")
        files[plan_file] = tmp / plan_file
        bar.update()
        compat = {f: [str(i) for i in check_trt_compat(p)] for f, p in files.items()}
        variants: dict[str, dict[str, Any]] = {"fp32": {"file": plan_file, "check": asdict(plan_check)}}
        enc_variants: dict[str, str] = {"fp32": enc_file}
        rng = np.random.default_rng(0)  # calibration is reproducible; the checks below use a fresh draw
        quantised = [p for p in cfg.precisions if p != "fp32"]
        if quantised:
            # Realistic inputs: embeddings of (real) windows; checks use a held-out draw.
            enc_feeds, plan_feeds, z_all, calib_source = _calibration(encoder, data_path, cfg.calib_windows, params, rng)
            from training.quantize import planner_calibration_feeds

            held_out = planner_calibration_feeds(z_all, params, np.random.default_rng(plan_check.seed),
                                                 n=cfg.trials)
            ref = _ort_reference(tmp / plan_file)
        for precision in quantised:
            if precision == "int8":
                q_file = "planner_int8.onnx"
                quantize_int8(tmp / plan_file, tmp / q_file, plan_feeds)
                err = check_planner(tmp / q_file, predictor, params, reference=ref, inputs=held_out)
                d_file = "planner_int8_dynamic.onnx"
                quantize_int8_dynamic(tmp / plan_file, tmp / d_file)
                d_err = check_planner(tmp / d_file, predictor, params, reference=ref, inputs=held_out)
                variants["int8"] = {"file": q_file, "format": "qdq-s8s8-per-channel-float-bias",
                                    "calibration": calib_source, "error_vs_fp32": err.max_abs,
                                    "cpu_file": d_file, "cpu_format": "dynamic-s8-weights (MatMulInteger, CPU only)",
                                    "cpu_error_vs_fp32": d_err.max_abs}
                files[q_file] = tmp / q_file
                files[d_file] = tmp / d_file
                if cfg.int8_encoder:
                    qe = f"{kind}_encoder_int8.onnx"
                    quantize_int8(tmp / enc_file, tmp / qe, enc_feeds)
                    files[qe] = tmp / qe
                    enc_variants["int8"] = qe
            else:
                h_file = "planner_fp16.onnx"
                fp16_variant(tmp / plan_file, tmp / h_file)
                err = check_planner(tmp / h_file, predictor, params, reference=ref, inputs=held_out)
                variants["fp16"] = {"file": h_file, "format": "fp16-weights-fp32-io", "error_vs_fp32": err.max_abs}
                files[h_file] = tmp / h_file
            if not all(np.isfinite(v) for v in err.max_abs.values()):
                raise ExportError(f"{precision} planner produces non-finite outputs ({err.max_abs}); export refused")
            f = variants[precision]["file"]
            compat[f] = [str(i) for i in check_trt_compat(files[f])]
            bar.update()
        enc_in, enc_out = encoder_io(encoder)
        plan_in, plan_out = planner_io(params, E)
        manifest_parts = {
            "encoders": {kind: {"file": enc_file, "variants": enc_variants, "inputs": enc_in, "outputs": enc_out,
                                "parameters": n_parameters(encoder), "check": asdict(enc_check)}},
            "planner": {"file": plan_file, **asdict(params), "A": ACTION_DIM, "E": E, "encoder": kind,
                        "variants": variants, "inputs": plan_in, "outputs": plan_out,
                        "predictor_parameters": n_parameters(predictor),
                        "gru_hidden": predictor.hidden, "gru_layers": predictor.layers,
                        "action_repeat": int(((training_config or {}).get("data") or {}).get("action_repeat", 1)),
                        "cost": "sum_t ||z_t - z_goal||_2 + smoothness * sum_t ||a_t - a_{t-1}||^2; "
                                "weights softmax(-(c - min c) / ((std(c) + 1e-6) * temperature))",
                        "tolerance": {"costs_relative": cfg.tolerance, "actions_abs": cfg.action_tolerance}},
            "tensorrt_compat": compat,
        }
        written = write_bundle(out_dir, files, manifest_parts, training_config=training_config or {},
                               training_metrics=training_metrics or {}, command=command, name=name,
                               normalisation=normalisation, notes=notes,
                               verify=True)
        bar.update()
    bar.close()
    return written


def _ort_reference(fp32_path: Path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Reference for quantised variants: the verified fp32 ONNX graph."""
    sess = _session(fp32_path)

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(PLANNER_OUTPUTS, sess.run(list(PLANNER_OUTPUTS), inputs)))

    return run


def dataset_normalisation(data_path: str | None) -> tuple[Any, str]:
    """Sensor normalisation recorded in the dataset's first shard (what the model was trained on).

    Returns (SensorNormalisation, source) with source ``dataset:<file>`` or ``default`` when no
    shard with normalisation metadata is found.
    """
    from edge.sim.dataset import read_shard
    from edge.sim.obs import SensorNormalisation

    if data_path:
        p = Path(data_path)
        shards = sorted(p.glob("*.npz")) if p.is_dir() else ([p] if p.suffix == ".npz" else [])
        if shards:
            meta = read_shard(shards[0], verify=False)["meta"]
            if meta.get("normalisation"):
                return SensorNormalisation.from_dict(meta["normalisation"]), f"dataset:{shards[0]}"
    return SensorNormalisation(), "default"


def params_from_config(planner_cfg: Any, **overrides: Any) -> PlannerParams:
    """PlannerParams from ``training.config.PlannerConfig`` (+ CLI overrides)."""
    base = PlannerParams(N=planner_cfg.samples, H=planner_cfg.horizon, J=planner_cfg.iterations,
                         temperature=planner_cfg.temperature, smoothness=planner_cfg.smoothness,
                         std_init=planner_cfg.std_init, std_min=planner_cfg.std_min)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _flatten_scalars(d: dict, prefix: str, out: dict, limit: int = 40) -> None:
    for k, v in d.items():
        if len(out) >= limit:
            return
        if isinstance(v, dict):
            _flatten_scalars(v, f"{prefix}{k}.", out, limit)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v


def _read_metrics(run_dir: Path) -> dict:
    """Final metrics of a run: ``metrics.json`` if the trainer wrote one, else the last metrics.csv
    row; plus the scalar results of ``edge-eval`` (``eval/eval.json``) as ``eval.*`` when present."""
    import csv
    import json

    out: dict = {}
    evaluation = run_dir / "eval" / "eval.json"
    if evaluation.is_file():
        _flatten_scalars(json.loads(evaluation.read_text()), "eval.", out)
    if (run_dir / "metrics.json").is_file():
        return {**json.loads((run_dir / "metrics.json").read_text()), **out}
    if (run_dir / "metrics.csv").is_file():
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        if rows:
            for k, v in rows[-1].items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge-export", description=__doc__.split("\n\n")[0],
        epilog="example: edge-export --checkpoint runs/default_sensor --out models/default --precisions fp32,int8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run folder written by edge-train (config.json + model.safetensors)")
    ap.add_argument("--out", required=True, help="bundle folder to write, e.g. models/default")
    ap.add_argument("--precisions", default="fp32,int8", help="comma list of fp32,int8,fp16 (fp32 is always written)")
    ap.add_argument("--N", type=int, help="samples per MPPI iteration (default: the run's planner.samples)")
    ap.add_argument("--H", type=int, help="horizon steps (default: planner.horizon)")
    ap.add_argument("--J", type=int, help="MPPI iterations per call (default: planner.iterations)")
    ap.add_argument("--temperature", type=float, help="MPPI temperature (default: planner.temperature)")
    ap.add_argument("--smoothness", type=float, help="smoothness weight (default: planner.smoothness)")
    ap.add_argument("--data", help="dataset for int8 calibration (default: the run's data.path)")
    ap.add_argument("--calib-windows", type=int, default=ExportConfig.calib_windows, help="calibration windows")
    ap.add_argument("--tolerance", type=float, default=ExportConfig.tolerance,
                    help="max fp32 ONNX-vs-torch error on costs (relative) and embeddings")
    ap.add_argument("--action-tolerance", type=float, default=ExportConfig.action_tolerance,
                    help="max fp32 ONNX-vs-torch error on the plan (actions, std, conf)")
    ap.add_argument("--int8-encoder", action="store_true", help="also write an int8 encoder")
    ap.add_argument("--name", help="bundle name recorded in the manifest (default: the folder name)")
    ap.add_argument("--notes", help="markdown file added to MODEL_CARD.md (e.g. the data and training commands)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing bundle folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        precisions = tuple(dict.fromkeys(["fp32"] + [p.strip() for p in args.precisions.split(",") if p.strip()]))
        cfg = ExportConfig(precisions=precisions, tolerance=args.tolerance, action_tolerance=args.action_tolerance, calib_windows=args.calib_windows,
                           int8_encoder=args.int8_encoder)
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.force:
            raise ExportError(f"{out} exists and is not empty; pass --force to overwrite it")
        from training.checkpoint import CheckpointError, load_world_model

        run = Path(args.checkpoint)
        try:
            wm = load_world_model(run)
        except CheckpointError as e:
            raise ExportError(str(e)) from e
        params = params_from_config(wm.config.planner, N=args.N, H=args.H, J=args.J, temperature=args.temperature,
                                    smoothness=args.smoothness)
        pc = wm.config.planner
        if pc.clearance > 0 or pc.visit > 0:
            print(f"edge-export: note: the run's planner.clearance={pc.clearance} / planner.visit={pc.visit} "
                  "(training/path_cost.py) are not part of the fused planner graph; the bundle plans on the "
                  "embedding cost alone, as edge-eval does with both set to 0", file=sys.stderr)
        data_path = args.data or wm.config.data.path
        t0 = time.perf_counter()
        command = "edge-export " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        norm, _ = dataset_normalisation(data_path)
        notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else None
        path = export_bundle(wm.encoder, wm.predictor, params, out, cfg, training_config=wm.config.to_dict(),
                             training_metrics=_read_metrics(run), data_path=data_path, command=command,
                             name=args.name or out.name, progress=not args.quiet, normalisation=norm,
                             notes=notes)
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"edge-export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote bundle {path} in {time.perf_counter() - t0:.1f} s (check it with: edge-build --device cpu --bundle {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
