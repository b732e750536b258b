"""TensorRTBackend end to end on this machine, with fake `tensorrt` and CUDA runtime modules.

The fakes implement the slice of the TensorRT 10 Python API and the cuda-python runtime API
the backend uses, with real memory: device buffers are host allocations, async copies are
memmoves queued on a stream, stream capture records the queue and a graph launch replays it,
and the "engine" runs the ONNX file with ONNX Runtime on the bound device addresses. This
checks the backend's own logic without a GPU: build -> engine cache -> deserialise, tensor
binding, pinned-buffer copies, CUDA-graph capture and replay with new inputs, builder flags.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fakes import shared_tiny_bundle  # noqa: E402

import edge.backends.tensorrt as trt_backend  # noqa: E402
from edge.backends import make_backend  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.engine_cache import EngineCache  # noqa: E402


class FakeCudart:
    """cuda-python runtime subset over host memory; every call returns (err, ...) like the real one."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self) -> None:
        self.buffers: dict[int, ctypes.Array] = {}
        self.capturing: dict[int, list] = {}
        self.launches = 0
        self.captures = 0

    def _alloc(self, n: int):
        buf = (ctypes.c_byte * n)()
        self.buffers[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMalloc(self, n):
        return self._alloc(n)

    def cudaMallocHost(self, n):
        return self._alloc(n)

    def cudaFree(self, p):
        self.buffers.pop(p, None)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, s):
        return (0,)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def enqueue(self, stream: int, fn) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(fn)
        else:
            fn()

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, n))
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing[stream] = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.captures += 1
        return 0, self.capturing.pop(stream)

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph, stream):
        self.launches += 1
        for fn in graph:
            fn()
        return (0,)

    def cudaGetDeviceProperties(self, dev):
        return 0, SimpleNamespace(name=b"Fake Orin", major=8, minor=7)


def make_fake_trt(cudart: FakeCudart, version: str = "10.3.0"):
    """tensorrt subset: builder records flags; the 'plan' is the ONNX bytes; execution runs ORT."""
    built: list[dict] = []

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    class Config:
        def __init__(self):
            self.flags, self.profiles = [], []

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            self.flags.append(flag)

        def create_timing_cache(self, data):
            return SimpleNamespace(data=data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return SimpleNamespace(serialize=lambda: b"timing:" + bytes(self.cache.data[:16]))

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Network:
        def __init__(self, flags):
            self.flags, self.onnx = flags, None

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return SimpleNamespace(shapes={}, set_shape=lambda n, a, b, c: None)

        def build_serialized_network(self, network, config):
            built.append({"flags": list(config.flags), "strongly_typed": bool(network.flags), "profiles": len(config.profiles)})
            return network.onnx

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            self.network.onnx = bytes(data)
            return True

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            feeds = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
            return self.engine.sess.run([name], feeds)[0].shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def _run(self):
            feeds = {}
            for n, s in self.shapes.items():
                size = int(np.prod(s))
                feeds[n] = np.ctypeslib.as_array((ctypes.c_float * size).from_address(self.addr[n])).reshape(s).copy()
            outs = self.engine.sess.run(self.engine.outputs, feeds)
            for n, v in zip(self.engine.outputs, outs):
                v = np.ascontiguousarray(v, np.float32)
                ctypes.memmove(self.addr[n], v.ctypes.data, v.nbytes)

        def execute_async_v3(self, stream):
            assert isinstance(stream, int)
            cudart.enqueue(stream, self._run)
            return True

    class Engine:
        def __init__(self, data):
            self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.sess.get_inputs()]
            self.outputs = [o.name for o in self.sess.get_outputs()]
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.outputs + self.inputs)[i]  # outputs first: the backend must not depend on order

        def get_tensor_mode(self, name):
            return "in" if name in self.inputs else "out"

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data)

    fake = SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=SimpleNamespace(WORKSPACE=0), BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8"),
        TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"), nptype=lambda d: np.float32)
    return fake, built


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(shared_tiny_bundle(tmp_path_factory))


def _install(monkeypatch, version: str):
    cudart = FakeCudart()
    fake, built = make_fake_trt(cudart, version)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    return cudart, built


@pytest.mark.parametrize("version,precision,flags,strong", [
    ("10.3.0", "fp16", ["FP16"], False), ("10.3.0", "int8", ["INT8", "FP16"], False),
    ("10.12.0", "fp16", [], True), ("10.12.0", "fp32", [], True),
])
def test_backend_flow_with_fake_runtime(bundle, tmp_path: Path, monkeypatch, version, precision, flags, strong) -> None:
    """Builds through the engine cache with the right flags, replays a captured CUDA graph with new
    inputs each call, and returns what ONNX Runtime computes for the same ONNX variant."""
    cudart, built = _install(monkeypatch, version)
    cache = EngineCache(tmp_path)
    p = bundle.planner
    rng = np.random.default_rng(0)
    ref_sess = ort.InferenceSession(str(bundle.planner_file(precision)), providers=["CPUExecutionProvider"])
    with make_backend(bundle, "jetson", precision, cache=cache) as be:
        assert {r.status for r in be.cache_results.values()} == {"built"}
        assert built[0]["flags"] == flags and built[0]["strongly_typed"] == strong
        assert built[1]["profiles"] == 1  # the encoder gets a batch profile
        assert cache.path_for(be.key("planner", trt_backend.plan_build(dict(p.variants), precision, version)),
                              "plan").is_file()
        for _ in range(2):
            feeds = {"z0": rng.standard_normal(p.E).astype(np.float32), "z_goal": rng.standard_normal(p.E).astype(np.float32),
                     "mean": rng.uniform(-0.5, 0.5, (p.H, 2)).astype(np.float32),
                     "std": np.full((p.H, 2), 0.5, np.float32),
                     "noise": rng.standard_normal((p.J, p.N, p.H, 2)).astype(np.float32)}
            got = be.plan(**feeds)
            want = dict(zip(["mean_out", "std_out", "best_cost", "mean_cost", "conf", "best_actions"],
                            ref_sess.run(None, feeds)))
            np.testing.assert_allclose(got.mean_out, want["mean_out"], atol=1e-6)
            assert got.mean_cost == pytest.approx(float(want["mean_cost"]), rel=1e-6)
        sensor = rng.uniform(-1, 1, 14).astype(np.float32)
        enc_ref = ort.InferenceSession(str(bundle.encoder_file("sensor", "fp32")), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(be.encode(sensor), enc_ref.run(["z"], {"obs": sensor[None]})[0][0], atol=1e-6)
    assert cudart.captures == 1 and cudart.launches == 2  # planner captured once, replayed per call
    _install(monkeypatch, version)
    with make_backend(bundle, "jetson", precision, cache=cache) as again:
        assert {r.status for r in again.cache_results.values()} == {"hit"}
    assert cache.timing_cache_path(again.key("planner", trt_backend.plan_build(dict(p.variants), precision, version))).is_file()


def test_tensorrt_upgrade_rebuilds_engines(bundle, tmp_path: Path, monkeypatch) -> None:
    """An engine built by TensorRT 10.3 is not loaded by 10.12: stale -> rebuilt."""
    cache = EngineCache(tmp_path)
    _install(monkeypatch, "10.3.0")
    make_backend(bundle, "jetson", "fp32", cache=cache).close()
    _install(monkeypatch, "10.12.0")
    with make_backend(bundle, "jetson", "fp32", cache=cache) as be:
        assert {r.status for r in be.cache_results.values()} == {"built"}  # new file name carries the version
    cudart, built = _install(monkeypatch, "10.3.0")
    path = make_backend(bundle, "jetson", "fp32", cache=cache).cache_results["planner"].path
    path.write_bytes(b"truncated")
    _install(monkeypatch, "10.3.0")
    with make_backend(bundle, "jetson", "fp32", cache=cache) as be:
        assert be.cache_results["planner"].status == "rebuilt-corrupt"


def test_edge_build_jetson_with_fake_runtime(bundle, tmp_path: Path, monkeypatch, capsys) -> None:
    """edge-build --device jetson: compat check passes, engines are built, then found in the cache."""
    from edge.compile import main

    argv = ["--device", "jetson", "--bundle", str(bundle.path), "--precision", "fp16", "--cache-dir", str(tmp_path),
            "--runs", "2"]
    _install(monkeypatch, "10.3.0")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "planner  built" in out and "jetson-trt10.3.0-fp16-planner.plan" in out and "median" in out
    _install(monkeypatch, "10.3.0")
    assert main(argv) == 0
    assert "planner  hit" in capsys.readouterr().out
