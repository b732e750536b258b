"""Quantisation of exported graphs: INT8 (static QDQ, TensorRT-consumable) and FP16.

INT8 (:func:`quantize_int8`): ``onnxruntime.quantization.quantize_static`` with
``QuantFormat.QDQ``, signed int8 activations and weights, symmetric activations
(``ActivationSymmetric``) and per-channel symmetric weights, so every zero point is 0 and
TensorRT's explicit-quantisation mode consumes the same file. Only the weight-carrying ops
(MatMul, Gemm, Conv) are quantised, biases stay float (TensorRT fuses
int8 weights with float biases; int32 bias DQ is not an INT8 type); element-wise gate math stays float, which keeps the
GRU's sigmoid/tanh accurate. Calibration (MinMax) runs through a
:class:`ListCalibrationReader` over:

- encoders: sensor vectors (and frames) of real dataset windows
  (``edge.sim.dataset.WindowDataset``), falling back to synthetic vectors in the valid
  ranges only when no dataset exists (recorded as ``calibration: synthetic``);
- the planner: embeddings of those windows as ``z0`` / ``z_goal`` plus random warm-start
  means, stds and standard-normal noise.

:func:`quantize_int8_dynamic` (MatMulInteger, CPU only; TensorRT cannot parse it) exists for
the CPU comparison in ``benchmarks/bench_planner.py``.

FP16 (:func:`fp16_variant`): ``onnxruntime.transformers.float16.convert_float_to_float16``
(ships with onnxruntime, so no extra dependency) with float32 inputs/outputs
(``keep_io_types``), so the runtime feeds the same arrays.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


class ListCalibrationReader(CalibrationDataReader):
    """Feeds a list of input dicts to the calibrator, one per ``get_next()``, then ``None``."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        if not self._feeds:
            raise ValueError("ListCalibrationReader: no calibration inputs")
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(src: str | Path, dst: str | Path, feeds: Iterable[dict[str, np.ndarray]]) -> Path:
    """Static INT8 QDQ quantisation (symmetric, per-channel weights) of ``src`` into ``dst``."""
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), ListCalibrationReader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=QUANTIZED_OPS, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False})
    return dst


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(x, W, b, transB=1)`` with a constant W as ``MatMul(x, W^T) + b``.

    ONNX Runtime's dynamic quantiser mis-handles ``Gemm`` with ``transB`` (shape inference
    fails on the MatMul it emits), while it quantises plain MatMul fine. Same math; shared
    weights get one transposed initializer.
    """
    inits = {t.name: t for t in model.graph.initializer}
    transposed: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = node.input[1]
        if attrs.get("transB", 0):
            if w not in transposed:
                arr = onnx.numpy_helper.to_array(inits[w]).T.copy()
                transposed[w] = w + "_T"
                model.graph.initializer.append(onnx.numpy_helper.from_array(arr, transposed[w]))
            w = transposed[w]
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w], [mm_out], name=node.name + "_mm"))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def quantize_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic INT8 (weights int8, activations quantised per call; MatMulInteger). CPU only."""
    with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        onnx.save(gemm_to_matmul(onnx.load(str(src))), str(pre))
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=False)
    return Path(dst)


def fp16_variant(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute with float32 graph inputs/outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(dst))
    return Path(dst)


def _synthetic_sensors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sensor vectors spread over their valid ranges (only when no dataset exists)."""
    ranges = rng.uniform(0.05, 1.0, (n, 8))
    xy = rng.uniform(-0.95, 0.95, (n, 2))
    theta = rng.uniform(-np.pi, np.pi, n)
    wheels = rng.uniform(-1, 1, (n, 2))
    return np.concatenate([ranges, xy, np.sin(theta)[:, None], np.cos(theta)[:, None], wheels], 1).astype(np.float32)


def encoder_calibration_feeds(encoder: nn.Module, data_path: str | None, n_windows: int,
                              rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], str]:
    """Encoder feeds from ``n_windows`` random dataset windows (all steps of each window).

    Returns (feeds, source) where source is ``dataset:<path> (<n> windows)`` or ``synthetic``.
    """
    camera = hasattr(encoder, "image_size")
    sensors: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    source = "synthetic"
    if data_path and Path(data_path).exists():
        from edge.sim.dataset import WindowDataset

        ds = WindowDataset(data_path, k=4, frames=camera, stride=4)
        if len(ds):
            idx = rng.choice(len(ds), size=min(n_windows, len(ds)), replace=False)
            for i in idx:
                w = ds[int(i)]
                sensors.append(np.asarray(w["sensor"], dtype=np.float32))
                if camera:
                    frames.append(np.asarray(w["frame"]))
            source = f"dataset:{data_path} ({len(idx)} windows)"
    if not sensors:
        sensors = [_synthetic_sensors(rng, 5) for _ in range(n_windows)]
        if camera:
            s = encoder.image_size
            frames = [rng.integers(0, 256, (5, s, s, 3), dtype=np.uint8) for _ in range(n_windows)]
    feeds = []
    for i, s in enumerate(sensors):
        if camera:
            f = np.ascontiguousarray(frames[i].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
            feeds.append({"frame": f, "pose4": np.ascontiguousarray(s[:, 8:12])})
        else:
            feeds.append({"obs": s})
    return feeds, source


def planner_calibration_feeds(z: np.ndarray, params: Any, rng: np.random.Generator, n: int = 8
                              ) -> list[dict[str, np.ndarray]]:
    """Planner feeds: ``z0``/``z_goal`` drawn from encoded windows ``z [M, E]``, random plans and noise."""
    H, A = params.H, 2
    feeds = []
    for _ in range(n):
        i, j = rng.choice(len(z), size=2, replace=len(z) < 2)
        feeds.append({
            "z0": z[i].astype(np.float32), "z_goal": z[j].astype(np.float32),
            "mean": rng.uniform(-0.8, 0.8, (H, A)).astype(np.float32),
            "std": np.full((H, A), params.std_init, np.float32),
            "noise": rng.standard_normal((params.J, params.N, H, A)).astype(np.float32),
        })
    return feeds
