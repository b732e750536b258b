"""Fused planner export: unrolled graph without forbidden ops, numerics vs the torch reference, refusals, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge.bundle import load_bundle
from training import export as ex
from training.config import PlannerConfig
from training.models import CameraEncoder, Predictor, SensorEncoder
from training.planner import plan

PARAMS = ex.PlannerParams(N=12, H=3, J=2)


def _pred(seed: int = 0, layers: int = 1) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(embed_dim=6, hidden=10, layers=layers, conf_hidden=4).eval()


@pytest.mark.parametrize("layers", [1, 2])
def test_fused_module_equals_reference_planner(layers: int) -> None:
    """FusedPlanner (unrolled, N at once) computes what training.planner.plan computes."""
    pred = _pred(1, layers)
    rng = np.random.default_rng(0)
    for _ in range(3):
        inputs = ex.random_planner_inputs(rng, PARAMS, 6)
        got = ex.torch_planner_outputs(pred, PARAMS, inputs)
        want = ex.reference_planner_outputs(pred, PARAMS, inputs)
        errs = ex.compare_planner_outputs(got, want)
        assert max(errs.values()) < 1e-4, errs


def test_planner_graph_is_unrolled_and_matches_reference(tmp_path: Path) -> None:
    """No Loop/Scan/GRU/Random ops; ONNX Runtime output equals the torch reference on fresh inputs."""
    pred = _pred(2)
    path = ex.export_planner_onnx(pred, PARAMS, tmp_path / "p.onnx")
    ops = ex.onnx_ops(path)
    assert not ops & ex.FORBIDDEN_OPS
    assert {"Gemm", "Sigmoid", "Tanh", "Softmax"} <= ops
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == list(ex.PLANNER_INPUTS)
    assert [o.name for o in m.graph.output] == list(ex.PLANNER_OUTPUTS)
    report = ex.check_planner(path, pred, PARAMS, trials=3)
    assert report.worst < 5e-4, report.max_abs


def test_check_detects_a_graph_that_differs(tmp_path: Path) -> None:
    """The numerical check is not vacuous: a graph exported from other weights is far off."""
    path = ex.export_planner_onnx(_pred(3), PARAMS, tmp_path / "p.onnx")
    report = ex.check_planner(path, _pred(4), PARAMS, trials=2)
    assert report.worst > 1e-2


def test_export_is_refused_when_graph_and_reference_disagree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the exported math drifts from the reference (here: a wrong temperature baked in), no bundle is written."""
    real = ex.mppi_update
    monkeypatch.setattr(ex, "mppi_update", lambda a, c, t, s: real(a, c, t * 20, s))
    torch.manual_seed(0)
    enc = SensorEncoder(embed_dim=6, hidden=8, depth=1)
    with pytest.raises(ex.ExportError, match="refused"):
        ex.export_bundle(enc, _pred(5), PARAMS, tmp_path / "b", ex.ExportConfig(precisions=("fp32",)), progress=False)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["sensor", "camera"])
def test_encoder_export_has_dynamic_batch(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    enc = (SensorEncoder(embed_dim=6, hidden=8, depth=1) if kind == "sensor"
           else CameraEncoder(embed_dim=6, channels=(4, 4, 4), hidden=8)).eval()
    path = ex.export_encoder_onnx(enc, tmp_path / "e.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        feeds = ex.random_encoder_inputs(rng, enc, batch)
        want = enc(*(torch.from_numpy(v) for v in feeds.values())).detach().numpy()
        np.testing.assert_allclose(sess.run(["z"], feeds)[0], want, atol=1e-5)


def test_planner_params_validation() -> None:
    with pytest.raises(ValueError, match="std_min"):
        ex.PlannerParams(std_min=0.0)
    with pytest.raises(ValueError, match="N"):
        ex.PlannerParams(N=1)
    with pytest.raises(ValueError, match="precisions"):
        ex.ExportConfig(precisions=("int8",))


def _run_dir(tmp_path: Path) -> Path:
    from training.checkpoint import save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    cfg = config_from_dict({"model": {"embed_dim": 6, "enc_hidden": 8, "enc_depth": 1, "pred_hidden": 10},
                            "planner": {"samples": 12, "horizon": 3, "iterations": 2, "elites": 4},
                            "data": {"path": str(tmp_path / "no_data")}})
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "run", JEPA(cfg), cfg)


def test_cli_writes_a_verified_bundle(tmp_path: Path) -> None:
    """edge-export on a run folder writes a bundle the runtime loader accepts, with the command,
    the last metrics.csv row and the edge-eval results recorded."""
    run = _run_dir(tmp_path)
    (run / "metrics.csv").write_text("epoch,val_pred\n1,0.5\n2,0.04\n")
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps({"planning": {"success_rate": 0.7, "episodes": 20}}))
    out = tmp_path / "models" / "t"
    (tmp_path / "notes.md").write_text("Trained with `edge-train cfg.yaml`.\n")
    argv = ["--checkpoint", str(run), "--out", str(out), "--precisions", "fp32,int8,fp16", "--N", "16", "--quiet",
            "--notes", str(tmp_path / "notes.md")]
    assert ex.main(argv) == 0
    b = load_bundle(out)
    assert (b.planner.N, b.planner.H, b.planner.J) == (16, 3, 2)
    assert set(b.planner.variants) == {"fp32", "int8", "fp16"}
    m = json.loads((out / "manifest.json").read_text())
    assert "--checkpoint" in m["created_by"]["command"]
    assert m["training"]["config"]["model"]["embed_dim"] == 6
    assert m["training"]["metrics"]["val_pred"] == 0.04
    assert m["planner"]["action_repeat"] == 1
    assert m["training"]["metrics"]["eval.planning.success_rate"] == 0.7
    assert m["planner"]["variants"]["int8"]["calibration"] == "synthetic"
    assert b.planner_file("int8").name == "planner_int8.onnx"  # QDQ, for TensorRT
    assert b.planner_file("int8", cpu=True).name == "planner_int8_dynamic.onnx"  # faster in ONNX Runtime
    assert "MatMulInteger" in ex.onnx_ops(b.planner_file("int8", cpu=True))
    assert m["tensorrt_compat"]["planner_int8.onnx"] == []
    assert m["planner"]["variants"]["fp16"]["error_vs_fp32"]["conf"] < 1e-2
    card = (out / "MODEL_CARD.md").read_text()
    assert "edge-export --checkpoint" in card and "Trained with `edge-train cfg.yaml`." in card
    assert ex.main(argv) == 2  # refuses to overwrite without --force


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ex.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-export: error:") and "edge-train" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        ex.main(["--help"])


def test_quantised_forms_stay_close_to_fp32(tmp_path: Path) -> None:
    """Static QDQ (calibrated) and dynamic int8 planners run and keep the mean cost within 10 % of fp32;
    the Gemm->MatMul rewrite used by the dynamic quantiser is exact."""
    from training.quantize import gemm_to_matmul, planner_calibration_feeds, quantize_int8, quantize_int8_dynamic

    pred = _pred(6)
    path = ex.export_planner_onnx(pred, PARAMS, tmp_path / "p.onnx")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((32, 6)).astype(np.float32) * 0.5
    feeds = planner_calibration_feeds(z, PARAMS, rng, n=6)
    quantize_int8(path, tmp_path / "q.onnx", feeds[:4])
    quantize_int8_dynamic(path, tmp_path / "d.onnx")
    onnx.save(gemm_to_matmul(onnx.load(str(path))), str(tmp_path / "m.onnx"))
    run = {k: ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"])
           for k in ("p", "q", "d", "m")}
    for f in feeds[4:]:
        out = {k: dict(zip(ex.PLANNER_OUTPUTS, s.run(list(ex.PLANNER_OUTPUTS), f))) for k, s in run.items()}
        np.testing.assert_allclose(out["m"]["mean_cost"], out["p"]["mean_cost"], rtol=1e-5)
        for k in ("q", "d"):
            assert float(out[k]["mean_cost"]) == pytest.approx(float(out["p"]["mean_cost"]), rel=0.1)
    assert "MatMulInteger" in ex.onnx_ops(tmp_path / "d.onnx")


def test_cli_says_the_path_cost_terms_are_not_exported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run whose config sets planner.clearance / planner.visit exports (the fused graph plans
    on the embedding cost alone) and edge-export says that those terms are left out."""
    from training.checkpoint import save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    cfg = config_from_dict({"model": {"embed_dim": 6, "enc_hidden": 8, "enc_depth": 1, "pred_hidden": 10},
                            "planner": {"samples": 12, "horizon": 3, "iterations": 2, "elites": 4,
                                        "clearance": 20.0, "visit": 1.0},
                            "data": {"path": str(tmp_path / "no_data")}})
    torch.manual_seed(0)
    run = save_checkpoint(tmp_path / "run", JEPA(cfg), cfg)
    assert ex.main(["--checkpoint", str(run), "--out", str(tmp_path / "b"), "--precisions", "fp32", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "planner.clearance=20.0" in err and "not part of the fused planner graph" in err
    assert load_bundle(tmp_path / "b").planner.N == 12
