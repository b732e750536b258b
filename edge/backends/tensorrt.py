"""TensorRT backend for ``device="jetson"``: engines built on the device, cached, run with CUDA graphs.

Build (:func:`build_engine`): the bundle's ONNX is parsed with ``trt.OnnxParser`` and built
with ``Builder.build_serialized_network``:

- TensorRT >= 10.12: the network is created *strongly typed*
  (``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED``): precision comes from the ONNX
  file itself (the fp16 variant for fp16, the QDQ file for int8), no precision flags.
- Older TensorRT (10.3 on JetPack 6): weakly typed with ``BuilderFlag.FP16`` for fp16
  (applied to the fp16 file when the bundle has one, else to the fp32 file) and
  ``BuilderFlag.INT8`` (+ FP16 for the un-quantised layers) for the QDQ file.
- A timing cache per GPU + TensorRT version (``IBuilderConfig.create_timing_cache`` /
  ``set_timing_cache``, serialised after each build) makes rebuilds fast.
- Encoders get an optimisation profile over the dynamic batch axis (1..``max_batch``).

Engines live in :class:`edge.engine_cache.EngineCache` keyed by bundle sha256, TensorRT
version, GPU name and compute capability, precision and device; a stale or corrupt plan is
rebuilt, never deserialised.

Run: device buffers are allocated once per tensor; ``set_tensor_address`` binds them and
``execute_async_v3`` enqueues on one CUDA stream. The planner call (H2D copies, the
engine, D2H copies) is captured once into a CUDA graph and replayed each tick
(``cuda_graph=True``, the default): the unrolled planner is hundreds of small kernels, so a
graph launch removes most of the per-kernel launch overhead, which dominates at these
sizes. Inputs go through page-locked host buffers, so the captured copies read whatever
the caller wrote there.

CUDA binding: **cuda-python** (``cuda.bindings.runtime`` / ``cuda.cudart``), not pycuda:
NVIDIA publishes cuda-python wheels for aarch64 (nothing to compile on the Jetson, where
pycuda needs nvcc and a source build), TensorRT's own Python samples use it, and it mirrors
the CUDA runtime API one to one, including stream capture and graph instantiation, which
pycuda only partly exposes. Install: ``pip install 'edge-jepa[jetson]'`` in a venv created
with ``--system-site-packages`` so JetPack's ``tensorrt`` module is visible.

Never imports torch; imports tensorrt / cuda-python lazily (only when this backend is made).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends import PLANNER_INPUTS, PLANNER_OUTPUTS, InferenceBackend
from edge.bundle import Bundle, BundleError
from edge.engine_cache import CacheResult, EngineCache, EngineKey, options_key, unique_tmp

INSTALL_HINT = ("TensorRT and cuda-python are needed for device 'jetson': on JetPack 6 run "
                "`sudo apt-get install python3-libnvinfer` (TensorRT ships with JetPack), then in a venv created "
                "with --system-site-packages: pip install 'edge-jepa[jetson]'")
STRONGLY_TYPED_FROM = (10, 12)
"""First TensorRT version whose strongly typed networks we rely on (precision from the ONNX types)."""


def import_tensorrt() -> Any:
    """``import tensorrt`` or ImportError naming the install command."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f"cannot import tensorrt ({e}). {INSTALL_HINT}") from e
    return trt


def import_cudart() -> Any:
    """The CUDA runtime module of cuda-python (new or old import path) or ImportError with the fix."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise ImportError(f"cannot import cuda-python ({e}). {INSTALL_HINT}") from e
    return cudart


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)`` (non-numeric suffixes dropped)."""
    out = []
    for part in version.split("."):
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def use_strongly_typed(trt_version: str) -> bool:
    return parse_version(trt_version)[:2] >= STRONGLY_TYPED_FROM


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX file to parse and which builder flags to set for a precision.

    Attributes:
        onnx_file: bundle-relative ONNX file.
        strongly_typed: create the network STRONGLY_TYPED.
        flags: names of ``trt.BuilderFlag`` members to set (weakly typed only).
    """

    onnx_file: str
    strongly_typed: bool
    flags: tuple[str, ...]


def plan_build(variants: dict[str, Any], precision: str, trt_version: str) -> BuildPlan:
    """Decide the ONNX variant and builder flags (pure function; unit-tested without a GPU).

    Args:
        variants: precision -> bundle-relative file (or {"file": ...}).
        precision: fp32, fp16 or int8.
        trt_version: ``tensorrt.__version__``.
    Raises:
        BundleError: the precision needs a variant the bundle lacks (names the re-export).
    """
    files = {p: (v["file"] if isinstance(v, dict) else v) for p, v in variants.items()}
    strong = use_strongly_typed(trt_version)
    if precision == "fp32":
        return BuildPlan(files["fp32"], strong, ())
    if precision == "fp16":
        if "fp16" in files:
            return BuildPlan(files["fp16"], strong, () if strong else ("FP16",))
        if strong:
            raise BundleError(f"TensorRT {trt_version} builds strongly typed networks, which take fp16 from the "
                              f"ONNX file, and this bundle has no fp16 variant; re-export with "
                              f"`edge-export ... --precisions fp32,int8,fp16`")
        return BuildPlan(files["fp32"], False, ("FP16",))
    if "int8" not in files:
        raise BundleError("this bundle has no int8 (QDQ) variant; re-export with `edge-export ... --precisions fp32,int8`")
    return BuildPlan(files["int8"], strong, () if strong else ("INT8", "FP16"))


def gpu_identity(cudart: Any) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0."""
    err, props = cudart.cudaGetDeviceProperties(0)
    _check(cudart, err, "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def _check(cudart: Any, err: Any, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"CUDA error in {what}: {err}")


def _call(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns (err, value...) tuples: check err, return the value(s)."""
    if isinstance(result, tuple):
        _check(cudart, result[0], what)
        return result[1] if len(result) == 2 else result[1:]
    _check(cudart, result, what)
    return None


def _handle(stream: Any) -> int:
    """Raw ``cudaStream_t`` value for TensorRT (cuda-python stream objects convert with int())."""
    return int(stream) if not isinstance(stream, int) else stream


def build_engine(trt: Any, onnx_path: Path, plan: BuildPlan, out_path: Path, timing_cache: Path,
                 dynamic_batch: dict[str, tuple[int, ...]] | None = None, max_batch: int = 64,
                 workspace_mb: int = 1024) -> None:
    """Parse ``onnx_path``, build a serialized engine into ``out_path``, update ``timing_cache``.

    Args:
        dynamic_batch: input name -> shape with -1 batch (encoders); an optimisation profile
            1 / 1 / max_batch is added for each.
    Raises:
        RuntimeError: the parser or builder failed (with the parser's messages).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    if dynamic_batch:
        profile = builder.create_optimization_profile()
        for name, shape in dynamic_batch.items():
            rest = tuple(shape[1:])
            profile.set_shape(name, (1, *rest), (1, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    out_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(timing_cache)
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(timing_cache)


class _PinnedArray:
    """Page-locked host memory viewed as a numpy array (target/source of async copies)."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype):
        self.cudart = cudart
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.ptr = _call(cudart, cudart.cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost")
        buf = (ctypes.c_byte * max(self.nbytes, 1)).from_address(int(self.ptr))
        self.array = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)

    def free(self) -> None:
        if self.ptr is not None:
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = None


class _Engine:
    """A deserialised engine with device buffers for fixed shapes and an optional CUDA graph."""

    def __init__(self, trt: Any, cudart: Any, plan_bytes: bytes, shapes: dict[str, tuple[int, ...]], stream: Any,
                 cuda_graph: bool):
        self.cudart = cudart
        self.stream = stream
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise the cached engine")
        self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.host: dict[str, _PinnedArray] = {}
        self.device: dict[str, Any] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:  # all input shapes first: output shapes depend on them
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, shapes[name])
                self.inputs.append(name)
            else:
                self.outputs.append(name)
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = shapes[name] if name in self.inputs else tuple(self.context.get_tensor_shape(name))
            self.host[name] = _PinnedArray(cudart, shape, dtype)
            self.device[name] = _call(cudart, cudart.cudaMalloc(max(self.host[name].nbytes, 1)), "cudaMalloc")
            self.context.set_tensor_address(name, int(self.device[name]))
        self.graph_exec = None
        self._enqueue()  # first run outside capture (lazy initialisation inside TensorRT)
        _call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if cuda_graph:
            self._capture()

    def _enqueue(self) -> None:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            _call(cudart, cudart.cudaMemcpyAsync(self.device[name], self.host[name].ptr, self.host[name].nbytes, h2d,
                                                 self.stream), "cudaMemcpyAsync H2D")
        if not self.context.execute_async_v3(_handle(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name in self.outputs:
            _call(cudart, cudart.cudaMemcpyAsync(self.host[name].ptr, self.device[name], self.host[name].nbytes, d2h,
                                                 self.stream), "cudaMemcpyAsync D2H")

    def _capture(self) -> None:
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _call(cudart, cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue()
        finally:
            graph = _call(cudart, cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        self.graph_exec = _call(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.inputs:
            np.copyto(self.host[name].array, feeds[name], casting="same_kind")
        if self.graph_exec is not None:
            _call(self.cudart, self.cudart.cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")
        else:
            self._enqueue()
        _call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return {name: self.host[name].array.copy() for name in self.outputs}

    def free(self) -> None:
        for p in self.host.values():
            p.free()
        for ptr in self.device.values():
            self.cudart.cudaFree(ptr)
        self.device.clear()


class TensorRTBackend(InferenceBackend):
    """TensorRT implementation of :class:`edge.backends.InferenceBackend` (device ``jetson``).

    Args:
        bundle, device, precision: as :func:`edge.backends.make_backend`.
        cache: engine cache (default root ``build/engines``).
        cuda_graph: capture the planner call into a CUDA graph (default True).
        workspace_mb: builder workspace limit.
    Raises:
        ImportError: tensorrt or cuda-python missing (names the install command).
    """

    def __init__(self, bundle: Bundle, device: str, precision: str, cache: EngineCache | None = None,
                 cuda_graph: bool = True, workspace_mb: int = 1024):
        super().__init__(bundle, device, precision)
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.cache = cache if cache is not None else EngineCache()
        self.gpu_name, self.compute_capability = gpu_identity(self.cudart)
        self.stream = _call(self.cudart, self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.cache_results: dict[str, CacheResult] = {}
        self.workspace_mb = workspace_mb
        p = bundle.planner
        planner_shapes = {"z0": (p.E,), "z_goal": (p.E,), "mean": (p.H, p.A), "std": (p.H, p.A),
                          "noise": (p.J, p.N, p.H, p.A)}
        self.engines: dict[str, _Engine] = {}
        self.engines["planner"] = self._load("planner", dict(p.variants), planner_shapes, cuda_graph, None)
        enc = bundle.encoders[self.encoder_name]
        enc_shapes = {name: tuple(1 if isinstance(d, str) else int(d) for d in spec["shape"])
                      for name, spec in enc.inputs.items()}
        dyn = {name: tuple(-1 if isinstance(d, str) else int(d) for d in spec["shape"]) for name, spec in enc.inputs.items()}
        self.engines[self.encoder_name] = self._load(self.encoder_name, dict(enc.variants), enc_shapes, False, dyn)

    def key(self, graph: str, plan: BuildPlan) -> EngineKey:
        v = self.trt.__version__
        return EngineKey(bundle_sha256=self.bundle.sha256, graph=graph, device=self.device, runtime="trt",
                         runtime_version=v, precision=self.precision, hardware=self.gpu_name,
                         compute_capability=self.compute_capability, tensorrt_version=v,
                         options=options_key({"onnx": plan.onnx_file, "strongly_typed": plan.strongly_typed,
                                              "flags": "+".join(plan.flags), "workspace_mb": self.workspace_mb}))

    def _load(self, graph: str, variants: dict, shapes: dict, cuda_graph: bool, dynamic: dict | None) -> _Engine:
        precision = self.precision
        if graph != "planner" and precision not in variants:
            # Encoders may ship fp32 only: weakly typed TensorRT can still run them in fp16.
            strong = use_strongly_typed(self.trt.__version__)
            precision = "fp16" if precision == "fp16" and not strong else "fp32"
        plan = plan_build(variants, precision, self.trt.__version__)
        key = self.key(graph, plan)
        onnx_path = self.bundle.file(plan.onnx_file)
        timing = self.cache.timing_cache_path(key)
        result = self.cache.get_or_build(
            key, "plan", lambda tmp: build_engine(self.trt, onnx_path, plan, tmp, timing, dynamic,
                                                  workspace_mb=self.workspace_mb))
        self.cache_results[graph] = result
        return _Engine(self.trt, self.cudart, result.path.read_bytes(), shapes, self.stream, cuda_graph)

    def _encode_batch(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        eng = self.engines[name]
        batch = next(iter(feeds.values())).shape[0]
        if batch != 1:
            raise ValueError(f"the TensorRT encoder engine is bound for batch 1, got {batch}; call encode() per observation")
        return eng.run(feeds)["z"]

    def _plan(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.engines["planner"].run(feeds)
        return {n: out[n] for n in PLANNER_OUTPUTS}

    def close(self) -> None:
        for eng in self.engines.values():
            eng.free()
        self.engines.clear()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


__all__ = ["TensorRTBackend", "BuildPlan", "plan_build", "build_engine", "import_tensorrt", "import_cudart",
           "parse_version", "use_strongly_typed", "INSTALL_HINT", "PLANNER_INPUTS"]
