"""Engine cache: key -> path layout, hit / stale / corrupt classification, rebuild-never-load, atomicity."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fakes import shared_tiny_bundle  # noqa: E402

from edge.backends import make_backend  # noqa: E402
from edge.engine_cache import EngineCache, EngineKey, options_key  # noqa: E402

SHA = "ab" * 32


def _key(**kw) -> EngineKey:
    base = dict(bundle_sha256=SHA, graph="planner", device="jetson", runtime="trt", runtime_version="10.3.0",
                precision="fp16", hardware="Orin", compute_capability="8.7", tensorrt_version="10.3.0")
    base.update(kw)
    return EngineKey(**base)


class Builder:
    """Counts builds and writes distinct bytes each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tmp: Path) -> None:
        self.calls += 1
        tmp.write_bytes(f"engine-{self.calls}".encode())


def test_path_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build/engines/<bundle sha>/<device>-<runtime><version>-<precision>-<graph>.<ext>."""
    c = EngineCache(tmp_path)
    assert c.path_for(_key(), "plan") == tmp_path / SHA / "jetson-trt10.3.0-fp16-planner.plan"
    monkeypatch.delenv("EDGE_JEPA_ENGINE_DIR", raising=False)
    assert EngineCache().root == Path("build/engines")


def test_env_var_sets_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_JEPA_ENGINE_DIR", str(tmp_path / "elsewhere"))
    assert EngineCache().root == tmp_path / "elsewhere"


def test_key_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="bundle_sha256"):
        _key(bundle_sha256="abc")
    with pytest.raises(ValueError, match="device"):
        _key(device="laptop")
    with pytest.raises(ValueError, match="precision"):
        _key(precision="int4")
    with pytest.raises(ValueError, match="graph"):
        _key(graph="a/b")


def test_build_once_then_hit(tmp_path: Path) -> None:
    c, b = EngineCache(tmp_path), Builder()
    r1 = c.get_or_build(_key(), "plan", b)
    r2 = c.get_or_build(_key(), "plan", b)
    assert (r1.status, r2.status, b.calls) == ("built", "hit", 1)
    assert r2.path.read_bytes() == b"engine-1"
    side = json.loads(c.sidecar(r2.path).read_text())
    assert side["key"]["compute_capability"] == "8.7" and len(side["sha256"]) == 64


@pytest.mark.parametrize("change", [
    {"tensorrt_version": "10.12.0"}, {"hardware": "Xavier"}, {"compute_capability": "7.2"},
    {"options": options_key({"workspace_mb": 512})},
])
def test_any_key_change_rebuilds(tmp_path: Path, change: dict) -> None:
    """GPU, TensorRT version or build options differ -> stale -> rebuilt (the old engine is never loaded)."""
    c, b = EngineCache(tmp_path), Builder()
    c.get_or_build(_key(), "plan", b)
    r = c.get_or_build(_key(**change), "plan", b)
    assert r.status == "rebuilt-stale" and b.calls == 2
    assert list(change)[0] in r.reason
    assert r.path.read_bytes() == b"engine-2"


def test_corrupt_engine_is_rebuilt(tmp_path: Path) -> None:
    """Bytes that no longer match the sidecar hash are rebuilt, not deserialised."""
    c, b = EngineCache(tmp_path), Builder()
    path = c.get_or_build(_key(), "plan", b).path
    path.write_bytes(b"bit rot")
    r = c.get_or_build(_key(), "plan", b)
    assert r.status == "rebuilt-corrupt" and "sha256" in r.reason
    assert path.read_bytes() == b"engine-2"


def test_missing_or_garbled_sidecar_is_corrupt(tmp_path: Path) -> None:
    c, b = EngineCache(tmp_path), Builder()
    path = c.get_or_build(_key(), "plan", b).path
    c.sidecar(path).unlink()
    assert c.check(_key(), "plan")[0] == "corrupt"
    c.get_or_build(_key(), "plan", b)
    c.sidecar(path).write_text("{not json")
    assert c.get_or_build(_key(), "plan", b).status == "rebuilt-corrupt"
    assert b.calls == 3


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    c = EngineCache(tmp_path)

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        c.get_or_build(_key(), "plan", boom)
    assert c.check(_key(), "plan")[0] == "missing"
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_empty_build_output_is_an_error(tmp_path: Path) -> None:
    c = EngineCache(tmp_path)
    with pytest.raises(RuntimeError, match="produced no file"):
        c.get_or_build(_key(), "plan", lambda tmp: None)


def test_timing_cache_path_is_per_gpu_and_version(tmp_path: Path) -> None:
    c = EngineCache(tmp_path)
    a = c.timing_cache_path(_key())
    assert a != c.timing_cache_path(_key(tensorrt_version="10.12.0"))
    assert a != c.timing_cache_path(_key(hardware="Xavier NX"))
    assert a.parent == tmp_path / "timing"


def test_ort_backend_uses_and_repairs_the_cache(tmp_path_factory, tmp_path: Path) -> None:
    """ORT: first run builds the optimised model, the second loads it (same numbers); a corrupted
    cached model is detected and rebuilt rather than loaded."""
    bundle = shared_tiny_bundle(tmp_path_factory)
    cache = EngineCache(tmp_path)
    rng = np.random.default_rng(0)
    b0 = make_backend(bundle, "cpu", "fp32", cache=cache)
    p = b0.bundle.planner
    args = (rng.standard_normal(p.E).astype(np.float32), rng.standard_normal(p.E).astype(np.float32),
            np.zeros((p.H, 2), np.float32), np.full((p.H, 2), 0.5, np.float32),
            rng.standard_normal((p.J, p.N, p.H, 2)).astype(np.float32))
    r0 = b0.plan(*args)
    assert {r.status for r in b0.cache_results.values()} == {"built"}
    b1 = make_backend(bundle, "cpu", "fp32", cache=cache)
    assert {r.status for r in b1.cache_results.values()} == {"hit"}
    np.testing.assert_allclose(b1.plan(*args).mean_out, r0.mean_out, atol=1e-6)
    planner_engine = b1.cache_results["planner"].path
    planner_engine.write_bytes(planner_engine.read_bytes()[:-10])
    b2 = make_backend(bundle, "cpu", "fp32", cache=cache)
    assert b2.cache_results["planner"].status == "rebuilt-corrupt"
    np.testing.assert_allclose(b2.plan(*args).mean_out, r0.mean_out, atol=1e-6)
    key_other_threads = replace(b2.key("planner"), options=options_key({"graph_optimization": "basic"}))
    assert cache.check(key_other_threads, "onnx")[0] == "stale"


def test_two_processes_building_the_same_entry_at_once_both_succeed(tmp_path: Path, monkeypatch) -> None:
    """Two edge-run processes started together on a new bundle build the same entry at once. The
    interleaving that broke it: B writes and renames its sidecar between A's write and A's
    rename. With a shared temporary name A's rename found nothing (FileNotFoundError); with
    per-call names both finish and the entry is a verified hit."""
    import os as _os

    import edge.engine_cache as ec

    real_replace = _os.replace
    c_a, c_b = EngineCache(tmp_path), EngineCache(tmp_path)
    b = lambda tmp: tmp.write_bytes(b"same engine")  # both build from the same bundle: same bytes  # noqa: E731
    state = {"interleaved": False}

    def replace(src, dst):
        if str(dst).endswith(".json") and not state["interleaved"]:
            state["interleaved"] = True
            c_b.invalidate(_key(), "plan")
            c_b.get_or_build(_key(), "plan", b)  # process B runs to completion in between
        return real_replace(src, dst)

    monkeypatch.setattr(ec.os, "replace", replace)
    r = c_a.get_or_build(_key(), "plan", b)
    assert state["interleaved"] and r.status == "built"
    monkeypatch.setattr(ec.os, "replace", real_replace)
    assert c_a.check(_key(), "plan")[0] == "hit"
    assert not list(tmp_path.rglob("*.tmp"))
