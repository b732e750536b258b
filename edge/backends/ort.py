"""ONNX Runtime backend for ``cpu`` and ``pi`` devices.

Compile step: each graph (encoder, planner) is loaded once with full graph optimisation and
the optimised model is written to the engine cache through
``SessionOptions.optimized_model_filepath``; later runs load that file with optimisation
disabled (it is already optimised), so start-up skips the optimiser. The cache key includes
the ONNX Runtime version and CPU model because the saved graph may contain fused,
hardware-specific kernels.

Hot path: the planner's outputs are bound once to preallocated buffers with I/O binding and
the inputs are bound as zero-copy CPU views, so a call allocates nothing but the copies
handed back in :class:`edge.backends.PlanResult`.

INT8: the planner's ``cpu_file`` (dynamic quantisation, MatMulInteger) is used when the bundle
has one; the static QDQ file (for TensorRT) runs ~3x slower than fp32 in ONNX Runtime on CPUs
(``benchmarks/results/planner.json``).

Threads: ``intra_op_threads`` defaults to :func:`default_threads` (1), sequential
execution mode (the graphs are chains; parallel mode only adds scheduling overhead), one
inter-op thread. ``benchmarks/bench_planner.py`` measures the alternatives.

Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.backends import PLANNER_INPUTS, PLANNER_OUTPUTS, InferenceBackend
from edge.bundle import Bundle
from edge.engine_cache import CacheResult, EngineCache, EngineKey, cpu_name, options_key

GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_threads(device: str) -> int:
    """Intra-op threads: 1 on every device.

    The fused planner is a long chain of small operators ([N, 96] x [96, 288] matmuls and
    element-wise gate math); ``benchmarks/bench_planner.py`` measured 2 intra-op threads
    slower than 1 at N in {64, 256} on a 2-core x86 (thread hand-off costs more than the split
    work saves). Measure on the robot (``edge-build --threads 2`` prints the latency) and pass
    ``intra_op_threads`` when more cores pay off, e.g. N=1024 on a 4-core Pi 5.
    """
    return 1


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime session settings.

    Attributes:
        intra_op_threads: threads inside one operator; None -> :func:`default_threads`.
        graph_optimization: ``disable|basic|extended|all`` for the compile step.
        io_binding: bind planner inputs/outputs to preallocated buffers (lean hot path).
        use_cache: save/load the optimised model in the engine cache.
    """

    intra_op_threads: int | None = None
    graph_optimization: str = "all"
    io_binding: bool = True
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"OrtOptions.intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.graph_optimization not in GRAPH_OPT_LEVELS:
            raise ValueError(f"OrtOptions.graph_optimization must be one of {sorted(GRAPH_OPT_LEVELS)}, "
                             f"got {self.graph_optimization!r}")


def session_options(threads: int, level: str, optimized_path: Path | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = GRAPH_OPT_LEVELS[level]
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


class OrtBackend(InferenceBackend):
    """ONNX Runtime implementation of :class:`edge.backends.InferenceBackend`.

    Args:
        bundle: verified bundle. device: ``cpu`` or ``pi``. precision: ``fp32`` or ``int8``.
        cache: engine cache (default: :class:`EngineCache` at its default root).
        options: :class:`OrtOptions`; or pass ``intra_op_threads=``, ``graph_optimization=``,
            ``io_binding=``, ``use_cache=`` directly.
    Attributes:
        cache_results: graph name -> :class:`CacheResult` of the compile step (for edge-build).
    """

    def __init__(self, bundle: Bundle, device: str, precision: str, cache: EngineCache | None = None,
                 options: OrtOptions | None = None, **overrides):
        super().__init__(bundle, device, precision)
        self.options = options if options is not None else OrtOptions(**overrides)
        self.threads = self.options.intra_op_threads or default_threads(device)
        self.cache = cache if cache is not None else EngineCache()
        self.cache_results: dict[str, CacheResult] = {}
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in bundle.encoders:
            self.sessions[name] = self._compile(name, bundle.encoder_file(name, precision))
        self.sessions["planner"] = self._compile("planner", bundle.planner_file(precision, cpu=True))
        self._planner = self.sessions["planner"]
        self._setup_binding()

    def key(self, graph: str) -> EngineKey:
        """Engine-cache key of ``graph`` for this bundle, device, precision and runtime."""
        return EngineKey(bundle_sha256=self.bundle.sha256, graph=graph, device=self.device, runtime="ort",
                         runtime_version=ort.__version__, precision=self.precision, hardware=cpu_name(),
                         options=options_key({"graph_optimization": self.options.graph_optimization}))

    def _compile(self, graph: str, source: Path) -> ort.InferenceSession:
        providers = ["CPUExecutionProvider"]
        level = self.options.graph_optimization
        if not self.options.use_cache:
            return ort.InferenceSession(str(source), session_options(self.threads, level), providers=providers)
        built: list[ort.InferenceSession] = []

        def build(tmp: Path) -> None:
            built.append(ort.InferenceSession(str(source), session_options(self.threads, level, tmp),
                                              providers=providers))

        result = self.cache.get_or_build(self.key(graph), "onnx", build)
        self.cache_results[graph] = result
        if built:
            return built[0]
        return ort.InferenceSession(str(result.path), session_options(self.threads, "disable"), providers=providers)

    def _setup_binding(self) -> None:
        p = self.bundle.planner
        shapes = {"mean_out": (p.H, p.A), "std_out": (p.H, p.A), "best_cost": (), "mean_cost": (),
                  "conf": (p.H,), "best_actions": (p.H, p.A)}
        names = [o.name for o in self._planner.get_outputs()]
        missing = [n for n in PLANNER_OUTPUTS if n not in names]
        inputs = [i.name for i in self._planner.get_inputs()]
        missing += [n for n in PLANNER_INPUTS if n not in inputs]
        if missing:
            raise ValueError(f"planner graph {self.bundle.planner_file(self.precision, cpu=True)} lacks tensors {missing}; "
                             f"re-export the bundle with edge-export")
        self._out_buffers = {n: np.empty(shapes[n], dtype=np.float32) for n in PLANNER_OUTPUTS}
        if self.options.io_binding:
            self._binding = self._planner.io_binding()
            for n, buf in self._out_buffers.items():
                self._binding.bind_output(n, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)

    def _encode_batch(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions[name].run(["z"], feeds)[0]

    def _plan(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.options.io_binding:
            outs = self._planner.run(PLANNER_OUTPUTS, feeds)
            return dict(zip(PLANNER_OUTPUTS, outs))
        binding = self._binding
        for name in PLANNER_INPUTS:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        self._planner.run_with_iobinding(binding)
        return {n: buf.copy() for n, buf in self._out_buffers.items()}

    def close(self) -> None:
        self.sessions.clear()
        self._binding = None
