"""TensorRT compatibility check of an ONNX graph, runnable anywhere (no TensorRT needed).

Catches, at export time on the desktop, what would otherwise fail on the Jetson when
TensorRT's ONNX parser meets the graph: operators it does not implement, restricted
attributes, data types it cannot hold, and Q/DQ nodes it cannot fuse.

The supported set below is written down from the ONNX-TensorRT parser's operator matrix
(``onnx-tensorrt/docs/operators.md``) for TensorRT 10.x, restricted to the lowest version we
target: TensorRT 10.3 (JetPack 6), which parses opsets 9 to 20. Only operators that are
supported in 10.3 without plugins are listed; restrictions from that matrix are enforced
where they apply to graphs we can produce:

- ``QuantizeLinear`` / ``DequantizeLinear``: zero points must be 0 (symmetric; TensorRT
  has no asymmetric quantisation), INT8 quantised type, scales initializers.
- ``Slice`` / ``Squeeze`` / ``Unsqueeze`` axes, ``TopK`` K, ``CumSum`` axis: constants.
- ``Conv`` / ``ConvTranspose`` weights: initializers (or DequantizeLinear of one).
- ``Resize``: the transformation / interpolation modes TensorRT implements.
- ``Cast``: only to TensorRT types.
- Tensor element types: FLOAT, FLOAT16, BFLOAT16, INT8, UINT8 (I/O only), INT32, INT64,
  BOOL; DOUBLE only cast down (flagged), STRING / complex never.

Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

MIN_OPSET = 9
MAX_OPSET = 20
"""Default-domain opset range TensorRT 10.3's ONNX parser accepts."""

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If
ImageScaler InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
"""ONNX (default domain) operators TensorRT 10.3's ONNX parser implements natively."""

UNSUPPORTED_NOTES = {
    "MatMulInteger": "integer matmul (dynamic quantisation) is not parsed; use QDQ (QuantizeLinear/DequantizeLinear)",
    "ConvInteger": "use QDQ quantisation instead",
    "QLinearMatMul": "QOperator format is not parsed; quantise with QuantFormat.QDQ",
    "QLinearConv": "QOperator format is not parsed; quantise with QuantFormat.QDQ",
    "DynamicQuantizeLinear": "dynamic quantisation is not parsed; use static QDQ",
    "BitShift": "not implemented by TensorRT",
    "Multinomial": "not implemented by TensorRT",
    "Bernoulli": "not implemented by TensorRT",
}

ALLOWED_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8,
                 TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL}
CAST_TARGETS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8,
                TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL}
RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear", "cubic"}
CONSTANT_INPUTS = {"Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "CumSum": (1,)}
"""Operator -> input positions that must be constants (initializer or Constant node)."""


@dataclass(frozen=True)
class CompatIssue:
    """One problem: the node (or ``<graph>``), the operator and what is wrong."""

    node: str
    op_type: str
    problem: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.problem}"


class TensorRTCompatError(ValueError):
    """The graph would not parse or build in TensorRT; the message lists every issue."""


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t)


def check_trt_compat(model: onnx.ModelProto | str | Path) -> list[CompatIssue]:
    """List every TensorRT incompatibility of ``model`` (empty list = compatible).

    Args:
        model: an ONNX model or a path to one.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    issues: list[CompatIssue] = []
    graph = model.graph
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= MAX_OPSET:
            issues.append(CompatIssue("<graph>", "opset", f"default-domain opset {opset.version} is outside "
                                                          f"TensorRT 10.3's range {MIN_OPSET}..{MAX_OPSET}"))

    initializers = {t.name: t for t in graph.initializer}
    constants: dict[str, onnx.TensorProto] = dict(initializers)
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t

    def const_value(name: str) -> np.ndarray | None:
        t = constants.get(name)
        return None if t is None else numpy_helper.to_array(t)

    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        elem = vi.type.tensor_type.elem_type
        if vi.type.HasField("tensor_type") and elem and elem not in ALLOWED_TYPES:
            issues.append(CompatIssue(vi.name, "tensor", f"element type {_type_name(elem)} is not a TensorRT type"))
    for t in graph.initializer:
        if t.data_type not in ALLOWED_TYPES and t.data_type != TensorProto.DOUBLE:
            issues.append(CompatIssue(t.name, "initializer", f"element type {_type_name(t.data_type)} is not a TensorRT type"))
        elif t.data_type == TensorProto.DOUBLE:
            issues.append(CompatIssue(t.name, "initializer", "DOUBLE initializer (TensorRT casts it down to FLOAT); "
                                                             "export in float32"))

    for i, node in enumerate(graph.node):
        name = node.name or f"node#{i}"
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            issues.append(CompatIssue(name, op, f"custom domain '{node.domain}' needs a TensorRT plugin; export plain "
                                                f"ONNX ops (do not save an ORT-optimised model for TensorRT)"))
            continue
        if op not in SUPPORTED_OPS:
            issues.append(CompatIssue(name, op, UNSUPPORTED_NOTES.get(op, "not supported by TensorRT 10.3's ONNX parser")))
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) < 2 or const_value(node.input[1]) is None:
                issues.append(CompatIssue(name, op, "scale must be an initializer / constant"))
            if len(node.input) >= 3 and node.input[2]:
                zp = const_value(node.input[2])
                if zp is None:
                    issues.append(CompatIssue(name, op, "zero point must be a constant 0"))
                else:
                    if np.any(zp != 0):
                        issues.append(CompatIssue(name, op, f"zero point must be 0 (symmetric), found "
                                                            f"{np.unique(zp)[:4].tolist()}"))
                    if zp.dtype != np.int8:
                        issues.append(CompatIssue(name, op, f"quantised type must be INT8, found {zp.dtype}"))
        elif op == "Cast":
            to = attrs.get("to")
            if to not in CAST_TARGETS:
                issues.append(CompatIssue(name, op, f"cast to {_type_name(to) if to is not None else '?'} is not a "
                                                    f"TensorRT type"))
        elif op == "Resize":
            coord = attrs.get("coordinate_transformation_mode", b"half_pixel")
            mode = attrs.get("mode", b"nearest")
            coord = coord.decode() if isinstance(coord, bytes) else coord
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if coord not in RESIZE_COORD_MODES:
                issues.append(CompatIssue(name, op, f"coordinate_transformation_mode '{coord}' unsupported"))
            if mode not in RESIZE_MODES:
                issues.append(CompatIssue(name, op, f"mode '{mode}' unsupported"))
        elif op in ("Conv", "ConvTranspose"):
            w = node.input[1]
            prod = producers.get(w)
            ok = w in constants or (prod is not None and prod.op_type == "DequantizeLinear"
                                    and prod.input[0] in constants)
            if not ok:
                issues.append(CompatIssue(name, op, "weights must be an initializer (or DequantizeLinear of one)"))
        elif op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            issues.append(CompatIssue(name, op, "the Indices output is unsupported"))
        for pos in CONSTANT_INPUTS.get(op, ()):
            if pos < len(node.input) and node.input[pos] and node.input[pos] not in constants:
                issues.append(CompatIssue(name, op, f"input {pos} ('{node.input[pos]}') must be a constant"))
    return issues


def assert_trt_compatible(model: onnx.ModelProto | str | Path, what: str = "graph") -> None:
    """Raise :class:`TensorRTCompatError` listing every issue, or return silently."""
    issues = check_trt_compat(model)
    if issues:
        lines = "\n  ".join(str(i) for i in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        raise TensorRTCompatError(f"{what} would not build in TensorRT 10.3 ({len(issues)} issues):\n  {lines}{more}")
