"""On-device engine cache: compiled graphs keyed by everything that makes them non-portable.

TensorRT plans only run on the GPU model and TensorRT version that built them, and an ONNX
Runtime model saved after graph optimisation (``SessionOptions.optimized_model_filepath``) may
contain hardware-specific fused kernels of that runtime version. Both are therefore built on
the robot itself (first run, or ``edge-build``) and stored at::

    <root>/<bundle sha256>/<device>-<runtime><runtime version>-<precision>-<graph>.<ext>
    e.g. build/engines/3f2a.../jetson-trt10.3.0-fp16-planner.plan
         build/engines/3f2a.../pi-ort1.31.1-int8-planner.onnx

with a JSON sidecar ``<file>.json`` holding the full :class:`EngineKey` and the sha256 of the
engine bytes. On lookup the sidecar's key must equal the expected key (bundle sha256, runtime
and TensorRT versions, hardware name, compute capability, precision, device, build options)
and the file's sha256 must match; otherwise the entry is *stale* or *corrupt*, deleted and
rebuilt, never loaded. Writes are atomic (temporary file + rename), so an interrupted build
never leaves a half-written engine that looks valid.

The default root is ``build/engines`` under the current directory; set ``EDGE_JEPA_ENGINE_DIR``
or pass ``root`` to override.

Never imports torch.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from edge.bundle import sha256_file

ENV_ROOT = "EDGE_JEPA_ENGINE_DIR"
DEFAULT_ROOT = Path("build") / "engines"
DEVICES = ("cpu", "pi", "jetson")
SIDE_SUFFIX = ".json"


def cpu_name() -> str:
    """CPU model string (``/proc/cpuinfo`` 'model name', else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def unique_tmp(path: Path) -> Path:
    """A temporary name next to ``path``, unique per process and call, for write-then-rename:
    two ``edge-run`` processes starting together on a new bundle build the same cache entry at
    once, and a shared temporary name let one rename the other's file away (FileNotFoundError)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on. Two keys equal <=> the engine is reusable.

    Attributes:
        bundle_sha256: :attr:`edge.bundle.Bundle.sha256` (pins the source ONNX bytes).
        graph: ``planner``, ``sensor`` or ``camera``.
        device: ``cpu``, ``pi`` or ``jetson``.
        runtime: ``ort`` or ``trt``.
        runtime_version: onnxruntime or TensorRT version string.
        precision: ``fp32``, ``fp16`` or ``int8``.
        hardware: GPU name (TensorRT) or CPU model (ONNX Runtime).
        compute_capability: e.g. ``"8.7"`` for Orin; empty on CPU.
        tensorrt_version: TensorRT version (empty for ONNX Runtime).
        options: build options that change the engine (sorted (name, value) pairs).
    """

    bundle_sha256: str
    graph: str
    device: str
    runtime: str
    runtime_version: str
    precision: str
    hardware: str = ""
    compute_capability: str = ""
    tensorrt_version: str = ""
    options: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.bundle_sha256) != 64:
            raise ValueError(f"EngineKey.bundle_sha256 must be a 64-char hex sha256, got {self.bundle_sha256!r}")
        if self.device not in DEVICES:
            raise ValueError(f"EngineKey.device must be one of {DEVICES}, got {self.device!r}")
        if self.runtime not in ("ort", "trt"):
            raise ValueError(f"EngineKey.runtime must be 'ort' or 'trt', got {self.runtime!r}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"EngineKey.precision must be fp32, fp16 or int8, got {self.precision!r}")
        for name in ("graph", "runtime_version"):
            value = getattr(self, name)
            if not value or any(c in value for c in "/\\ "):
                raise ValueError(f"EngineKey.{name} must be non-empty without '/', '\\' or spaces, got {value!r}")

    def filename(self, ext: str) -> str:
        return f"{self.device}-{self.runtime}{self.runtime_version}-{self.precision}-{self.graph}.{ext}"

    def as_json(self) -> dict:
        d = asdict(self)
        d["options"] = [list(kv) for kv in self.options]
        return d


@dataclass
class CacheResult:
    """Outcome of :meth:`EngineCache.get_or_build`.

    ``status``: ``hit`` (loaded from cache), ``built`` (nothing there), ``rebuilt-stale`` (key
    changed) or ``rebuilt-corrupt`` (bytes did not match the sidecar); ``reason`` in words.
    """

    path: Path
    status: str
    reason: str = ""


class EngineCache:
    """Engine files under ``root/<bundle sha256>/``; see the module docstring."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root if root is not None else os.environ.get(ENV_ROOT, DEFAULT_ROOT))

    def path_for(self, key: EngineKey, ext: str) -> Path:
        return self.root / key.bundle_sha256 / key.filename(ext)

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_name(path.name + SIDE_SUFFIX)

    def check(self, key: EngineKey, ext: str) -> tuple[str, str]:
        """Classify the entry for ``key``: (``hit``|``missing``|``stale``|``corrupt``, reason)."""
        path = self.path_for(key, ext)
        side = self.sidecar(path)
        if not path.exists() and not side.exists():
            return "missing", "no cached engine"
        if not path.is_file():
            return "corrupt", f"{path.name} is missing but its sidecar exists"
        if not side.is_file():
            return "corrupt", f"{side.name} (hash sidecar) is missing"
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            recorded_key, recorded_sha = meta["key"], meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return "corrupt", f"{side.name} is unreadable ({e})"
        expected = key.as_json()
        if recorded_key != expected:
            changed = sorted(k for k in set(expected) | set(recorded_key) if expected.get(k) != recorded_key.get(k))
            return "stale", "key changed: " + ", ".join(
                f"{k} {recorded_key.get(k)!r} -> {expected.get(k)!r}" for k in changed)
        actual = sha256_file(path)
        if actual != recorded_sha:
            return "corrupt", f"{path.name} sha256 {actual[:12]}... != recorded {str(recorded_sha)[:12]}..."
        return "hit", "cached engine verified"

    def invalidate(self, key: EngineKey, ext: str) -> None:
        """Delete the engine and its sidecar (missing files are fine)."""
        path = self.path_for(key, ext)
        for p in (path, self.sidecar(path)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _write_sidecar(self, key: EngineKey, path: Path) -> None:
        side = self.sidecar(path)
        tmp = unique_tmp(side)
        tmp.write_text(json.dumps({"key": key.as_json(), "sha256": sha256_file(path)}, indent=1), encoding="utf-8")
        os.replace(tmp, side)

    def get_or_build(self, key: EngineKey, ext: str, build: Callable[[Path], None]) -> CacheResult:
        """Return a verified engine path for ``key``, building it when absent, stale or corrupt.

        Args:
            key: the full cache key.
            ext: file extension (``plan``, ``onnx``).
            build: ``build(tmp_path)`` writes the engine to ``tmp_path`` (same folder); it is
                renamed into place and its sidecar written only after ``build`` returns.
        Raises:
            whatever ``build`` raises (nothing is left in the cache in that case).
        """
        status, reason = self.check(key, ext)
        path = self.path_for(key, ext)
        if status == "hit":
            return CacheResult(path, "hit", reason)
        self.invalidate(key, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unique_tmp(path)
        try:
            build(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"engine build for {path.name} produced no file")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._write_sidecar(key, path)
        return CacheResult(path, {"missing": "built"}.get(status, f"rebuilt-{status}"), reason)

    def rebuild(self, key: EngineKey, ext: str, build: Callable[[Path], None]) -> CacheResult:
        """Rebuild unconditionally (``edge-build --force``)."""
        self.invalidate(key, ext)
        return self.get_or_build(key, ext, build)

    def timing_cache_path(self, key: EngineKey) -> Path:
        """TensorRT timing cache shared by all builds on this GPU + TensorRT version."""
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in key.hardware or "gpu")
        return self.root / "timing" / f"{safe}-sm{key.compute_capability}-trt{key.tensorrt_version}.cache"


def options_key(options: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Canonical form of build options for :attr:`EngineKey.options`."""
    return tuple(sorted((str(k), str(v)) for k, v in options.items()))
