"""InferenceBackend over ONNX Runtime: numerics vs torch, input checks, engine cache, make_backend errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fakes import E, H, J, N, shared_tiny_bundle, tiny_models  # noqa: E402

from edge.backends import PLANNER_OUTPUTS, PlanResult, make_backend  # noqa: E402
from edge.bundle import BundleError, load_bundle  # noqa: E402
from edge.engine_cache import EngineCache  # noqa: E402


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(E).astype(np.float32), rng.standard_normal(E).astype(np.float32),
            rng.uniform(-0.5, 0.5, (H, 2)).astype(np.float32), np.full((H, 2), 0.5, np.float32),
            rng.standard_normal((J, N, H, 2)).astype(np.float32))


def test_plan_matches_torch_reference_planner(bundle_path: Path, tmp_path: Path) -> None:
    """The ORT backend's plan() equals training.planner.plan on the same weights and inputs."""
    import torch

    from training.config import PlannerConfig
    from training.planner import plan

    _, pred = tiny_models()
    b = load_bundle(bundle_path)
    cfg = PlannerConfig(samples=N, horizon=H, iterations=J, temperature=b.planner.temperature,
                        smoothness=b.planner.smoothness, std_init=b.planner.std_init, std_min=b.planner.std_min,
                        elites=4)
    with make_backend(b, "cpu", "fp32", cache=EngineCache(tmp_path)) as be:
        for seed in (1, 2):
            z0, zg, mean, std, noise = _inputs(seed)
            got = be.plan(z0, zg, mean, std, noise)
            ref = plan(pred, *(torch.from_numpy(x) for x in (z0, zg, mean, std, noise)), cfg)
            assert isinstance(got, PlanResult)
            np.testing.assert_allclose(got.mean_out, ref.mean.numpy(), atol=1e-3)
            np.testing.assert_allclose(got.std_out, ref.std.numpy(), atol=1e-3)
            np.testing.assert_allclose(got.conf, ref.conf.numpy(), rtol=1e-4, atol=1e-5)
            assert got.best_cost == pytest.approx(float(ref.best_cost), rel=1e-4)
            assert got.mean_cost == pytest.approx(float(ref.mean_cost), rel=1e-4)
            np.testing.assert_array_equal(got.first_action, got.mean_out[0])
            assert np.all(got.std_out >= b.planner.std_min - 1e-7)
            assert np.all(np.abs(got.best_actions) <= 1.0)


def test_encode_matches_torch_encoder(bundle_path: Path, tmp_path: Path) -> None:
    """encode() of one sensor vector and encode_batch() equal the torch SensorEncoder."""
    import torch

    enc, _ = tiny_models()
    rng = np.random.default_rng(3)
    obs = rng.uniform(-1, 1, (5, 14)).astype(np.float32)
    with make_backend(bundle_path, "pi", "fp32", cache=EngineCache(tmp_path)) as be:
        want = enc(torch.from_numpy(obs)).detach().numpy()
        np.testing.assert_allclose(be.encode_batch(obs), want, atol=1e-5)
        z = be.encode(obs[2])
        assert z.shape == (E,)
        np.testing.assert_allclose(z, want[2], atol=1e-5)


def test_results_are_not_aliased_between_calls(bundle_path: Path, tmp_path: Path) -> None:
    """I/O binding reuses output buffers; the PlanResult handed out must not change on the next call."""
    with make_backend(bundle_path, "cpu", "fp32", cache=EngineCache(tmp_path)) as be:
        first = be.plan(*_inputs(4))
        kept = first.mean_out.copy()
        second = be.plan(*_inputs(5))
        np.testing.assert_array_equal(first.mean_out, kept)
        assert not np.array_equal(first.mean_out, second.mean_out)


def test_io_binding_and_plain_run_agree(bundle_path: Path, tmp_path: Path) -> None:
    args = _inputs(6)
    with make_backend(bundle_path, "cpu", "fp32", cache=EngineCache(tmp_path), io_binding=True) as a, \
            make_backend(bundle_path, "cpu", "fp32", cache=EngineCache(tmp_path), io_binding=False) as b:
        ra, rb = a.plan(*args), b.plan(*args)
        for name in PLANNER_OUTPUTS:
            np.testing.assert_allclose(np.asarray(getattr(ra, name)), np.asarray(getattr(rb, name)), atol=1e-6)


def test_bad_plan_inputs_name_the_tensor(bundle_path: Path, tmp_path: Path) -> None:
    z0, zg, mean, std, noise = _inputs(7)
    with make_backend(bundle_path, "cpu", "fp32", cache=EngineCache(tmp_path)) as be:
        with pytest.raises(ValueError, match=r"noise must be float32 \[2, 16, 4, 2\]"):
            be.plan(z0, zg, mean, std, noise[:, :8])
        with pytest.raises(ValueError, match="z0 must be float32"):
            be.plan(z0.astype(np.float64), zg, mean, std, noise)
        with pytest.raises(ValueError, match="sensor must have shape"):
            be.encode(np.zeros(13, np.float32))


def test_int8_variant_runs_and_stays_close(bundle_path: Path, tmp_path: Path) -> None:
    """The int8 planner runs through the same interface; on embeddings of in-range observations
    (what it was calibrated for) its mean cost stays within 25 % of fp32 and its confidence
    within 10 % (the tiny test model, E=8 / Hd=16, quantises coarsely, and the last iteration's
    cost depends on the earlier, ill-conditioned mean update)."""
    rng = np.random.default_rng(8)
    _, _, mean, std, noise = _inputs(8)
    with make_backend(bundle_path, "cpu", "fp32", cache=EngineCache(tmp_path)) as f, \
            make_backend(bundle_path, "cpu", "int8", cache=EngineCache(tmp_path)) as q:
        sensors = np.concatenate([rng.uniform(0.1, 1, (2, 8)), rng.uniform(-0.9, 0.9, (2, 6))], 1).astype(np.float32)
        z0, zg = f.encode(sensors[0]), f.encode(sensors[1])
        rf, rq = f.plan(z0, zg, mean, std, noise), q.plan(z0, zg, mean, std, noise)
    assert np.all(np.isfinite(rq.mean_out))
    assert rq.mean_cost == pytest.approx(rf.mean_cost, rel=0.25)
    np.testing.assert_allclose(rq.conf, rf.conf, rtol=0.1, atol=1e-3)


def test_make_backend_rejects_bad_requests(bundle_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        make_backend(bundle_path, "gpu", "fp32")
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        make_backend(bundle_path, "cpu", "fp16", cache=EngineCache(tmp_path))
    partial = tmp_path / "partial"
    shutil.copytree(bundle_path, partial)
    (partial / "planner_int8.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="planner_int8.onnx"):
        make_backend(partial, "cpu", "int8", cache=EngineCache(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_jetson_without_tensorrt_names_the_install_command(bundle_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"pip install 'edge-jepa\[jetson\]'"):
        make_backend(bundle_path, "jetson", "fp16", cache=EngineCache(tmp_path))


def test_backend_modules_do_not_import_torch() -> None:
    """edge/ never imports torch, not even indirectly (checked in a fresh interpreter)."""
    import subprocess

    code = ("import sys, edge.backends, edge.backends.ort, edge.backends.tensorrt, edge.bundle, edge.engine_cache, "
            "edge.trt_compat, edge.compile; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_edge_build_cli_builds_then_hits(bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """edge-build fills the cache (built), a second run finds it (hit), --force rebuilds; errors exit non-zero."""
    from edge.compile import main

    base = ["--device", "cpu", "--bundle", str(bundle_path), "--cache-dir", str(tmp_path), "--runs", "2"]
    assert main(base) == 0
    assert "built" in capsys.readouterr().out
    assert main(base + ["--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "hit" in out and "median" in out
    assert main(base + ["--force"]) == 0
    assert "built" in capsys.readouterr().out
    assert main(["--device", "cpu", "--bundle", str(tmp_path / "none")]) == 2
    assert main(base + ["--precision", "fp16"]) == 2
    assert "fp16 is for GPUs" in capsys.readouterr().err


def test_camera_bundle_encodes_frames_with_odometry_pose(tmp_path: Path) -> None:
    """A camera-model bundle: encode() needs the frame, feeds pose4 = sensor[8:12], matches torch."""
    import torch

    from training.export import ExportConfig, PlannerParams, export_bundle
    from training.models import CameraEncoder, Predictor

    torch.manual_seed(0)
    enc = CameraEncoder(embed_dim=E, channels=(4, 4, 4), hidden=16).eval()
    pred = Predictor(embed_dim=E, hidden=16, layers=1, conf_hidden=4)
    out = export_bundle(enc, pred, PlannerParams(N=8, H=3, J=1), tmp_path / "cam", ExportConfig(precisions=("fp32",)),
                        progress=False)
    rng = np.random.default_rng(0)
    sensor = rng.uniform(-1, 1, 14).astype(np.float32)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with make_backend(out, "cpu", "fp32", cache=EngineCache(tmp_path / "c")) as be:
        assert be.encoder_name == "camera"
        z = be.encode(sensor, frame)
        with pytest.raises(ValueError, match="pass frame"):
            be.encode(sensor)
    with torch.no_grad():
        want = enc(torch.from_numpy(frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0),
                   torch.from_numpy(sensor[8:12][None]))[0].numpy()
    np.testing.assert_allclose(z, want, atol=1e-5)
