"""TensorRT paths that need no GPU (compat check, build planning, versions), plus GPU tests marked `gpu`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fakes import shared_tiny_bundle  # noqa: E402

from edge.backends.tensorrt import BuildPlan, parse_version, plan_build, use_strongly_typed  # noqa: E402
from edge.bundle import BundleError, load_bundle  # noqa: E402
from edge.trt_compat import TensorRTCompatError, assert_trt_compatible, check_trt_compat  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(shared_tiny_bundle(tmp_path_factory))


def test_exported_graphs_are_trt_compatible(bundle) -> None:
    """fp32, int8 (QDQ) and fp16 planners and the encoder pass the TensorRT 10.3 parser check."""
    for precision in ("fp32", "int8", "fp16"):
        assert check_trt_compat(bundle.planner_file(precision)) == []
    assert check_trt_compat(bundle.encoder_file("sensor", "fp32")) == []
    assert bundle.manifest["tensorrt_compat"]["planner_int8.onnx"] == []


def test_int8_planner_is_symmetric_per_channel_qdq(bundle) -> None:
    """Every Q/DQ zero point is 0 and weight scales are per output channel (TensorRT explicit quantisation)."""
    m = onnx.load(str(bundle.planner_file("int8")))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    zps = [inits[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2]]
    assert zps and all(np.all(z == 0) and z.dtype == np.int8 for z in zps)
    per_channel = [n for n in qdq if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].size > 1]
    assert per_channel, "weights should carry one scale per output channel"


def _graph(nodes, inits, opset=17, inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_nonzero_zero_point_is_flagged() -> None:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    m = _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q0"),
                helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0")], [scale, zp])
    issues = check_trt_compat(m)
    assert {i.node for i in issues} == {"q0", "dq0"}
    assert all("zero point must be 0" in i.problem for i in issues)
    with pytest.raises(TensorRTCompatError, match="zero point"):
        assert_trt_compatible(m)


def test_uint8_quantisation_is_flagged() -> None:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    m = _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q0"),
                helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0")], [scale, zp])
    assert any("INT8" in i.problem for i in check_trt_compat(m))


def test_dynamic_quantisation_and_custom_ops_are_flagged() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    m = _graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
                helper.make_node("MatMulInteger", ["xq", "w"], ["yi"], name="mmi"),
                helper.make_node("Cast", ["yi"], ["y"], to=TensorProto.FLOAT, name="c"),
                helper.make_node("FusedGemm", ["x", "x"], ["unused"], domain="com.microsoft", name="fg")], [w])
    problems = {i.node: i.problem for i in check_trt_compat(m)}
    assert "QDQ" in problems["mmi"] and "dq" in problems and "plugin" in problems["fg"]
    assert "c" not in problems


def test_opset_range_and_constant_axes() -> None:
    assert any(i.op_type == "opset" for i in check_trt_compat(_graph([helper.make_node("Relu", ["x"], ["y"])], [], opset=21)))
    axes_in = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    m = _graph([helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="u")], [],
               inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4]), axes_in])
    assert any(i.node == "u" and "constant" in i.problem for i in check_trt_compat(m))
    d = numpy_helper.from_array(np.ones(2, np.float64), "d")
    assert any("DOUBLE" in i.problem for i in check_trt_compat(_graph([helper.make_node("Relu", ["x"], ["y"])], [d])))


def test_version_parsing_and_typing_mode() -> None:
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("10.12.0.post1") == (10, 12, 0)
    assert not use_strongly_typed("10.3.0") and use_strongly_typed("10.12.0") and use_strongly_typed("11.0")


def test_build_plan_per_version_and_precision() -> None:
    """10.3 (JetPack 6): weakly typed + FP16/INT8 flags; >= 10.12: strongly typed, precision from the file."""
    full = {"fp32": "p32.onnx", "fp16": {"file": "p16.onnx"}, "int8": "p8.onnx"}
    assert plan_build(full, "fp16", "10.3.0") == BuildPlan("p16.onnx", False, ("FP16",))
    assert plan_build(full, "int8", "10.3.0") == BuildPlan("p8.onnx", False, ("INT8", "FP16"))
    assert plan_build(full, "fp16", "10.12.0") == BuildPlan("p16.onnx", True, ())
    assert plan_build(full, "int8", "10.13.1") == BuildPlan("p8.onnx", True, ())
    assert plan_build(full, "fp32", "10.3.0") == BuildPlan("p32.onnx", False, ())
    only32 = {"fp32": "p32.onnx"}
    assert plan_build(only32, "fp16", "10.3.0") == BuildPlan("p32.onnx", False, ("FP16",))
    with pytest.raises(BundleError, match="fp16"):
        plan_build(only32, "fp16", "10.12.0")
    with pytest.raises(BundleError, match="int8"):
        plan_build(only32, "int8", "10.3.0")


def test_edge_build_refuses_trt_incompatible_bundle(tmp_path: Path, bundle) -> None:
    """edge-build --device jetson checks compatibility before touching TensorRT (exit 4, names the node)."""
    import shutil

    from edge.compile import main
    from training.bundle import write_bundle

    src = tmp_path / "src"
    src.mkdir()
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    bad = _graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")], [w])
    onnx.save(bad, str(src / "planner_fp32.onnx"))
    shutil.copy(bundle.encoder_file("sensor", "fp32"), src / "sensor_encoder_fp32.onnx")
    parts = {"encoders": dict(bundle.manifest["encoders"]),
             "planner": {**bundle.manifest["planner"], "variants": {"fp32": {"file": "planner_fp32.onnx"}}}}
    out = write_bundle(tmp_path / "bad", {"planner_fp32.onnx": src / "planner_fp32.onnx",
                                          "sensor_encoder_fp32.onnx": src / "sensor_encoder_fp32.onnx"},
                       parts, {}, {}, measure=False)
    assert main(["--device", "jetson", "--bundle", str(out), "--cache-dir", str(tmp_path / "eng")]) == 4


needs_gpu = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                               reason="no TensorRT here (GPU test: runs on a Jetson / CUDA machine)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_backend_matches_onnx_runtime(bundle, tmp_path: Path, precision: str) -> None:
    """TensorRT engine (built + cached + CUDA graph) gives the ORT fp32 plan within precision tolerance;
    the second backend loads the cached engine."""
    from edge.backends import make_backend
    from edge.engine_cache import EngineCache

    p = bundle.planner
    rng = np.random.default_rng(0)
    sensors = np.concatenate([rng.uniform(0.1, 1, (2, 8)), rng.uniform(-0.9, 0.9, (2, 6))], 1).astype(np.float32)
    cache = EngineCache(tmp_path)
    with make_backend(bundle, "cpu", "fp32", cache=cache) as ref:
        z0, zg = ref.encode(sensors[0]), ref.encode(sensors[1])
        mean, std = np.zeros((p.H, 2), np.float32), np.full((p.H, 2), 0.5, np.float32)
        noise = rng.standard_normal((p.J, p.N, p.H, 2)).astype(np.float32)
        want = ref.plan(z0, zg, mean, std, noise)
    with make_backend(bundle, "jetson", precision, cache=cache) as trt_be:
        np.testing.assert_allclose(trt_be.encode(sensors[0]), z0, atol=1e-2 if precision != "fp32" else 1e-4)
        got = trt_be.plan(z0, zg, mean, std, noise)
        assert {r.status for r in trt_be.cache_results.values()} == {"built"}
    assert got.mean_cost == pytest.approx(want.mean_cost, rel=1e-3 if precision == "fp32" else 5e-2)
    with make_backend(bundle, "jetson", precision, cache=cache) as again:
        assert {r.status for r in again.cache_results.values()} == {"hit"}
        np.testing.assert_allclose(again.plan(z0, zg, mean, std, noise).mean_out, got.mean_out, atol=1e-5)
