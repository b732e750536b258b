"""ViT camera encoder export: ONNX Runtime parity, TensorRT-compatible ops, bundle records the preprocessing."""

import json

import numpy as np
import pytest
import torch

from training.ijepa import Preprocessing, PreprocessingMismatch, ViTCameraEncoder, ViTConfig, export_camera_encoder

TINY = ViTConfig(patch_size=8, width=16, depth=1, heads=2, mlp_ratio=2.0, pred_width=8, pred_depth=1, pred_heads=2)
PRE = Preprocessing(mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))


def test_vit_encoder_onnx_parity_and_tensorrt_ops(tmp_path):
    """ORT vs torch within 1e-4 on fresh random frames (batch 1/7/32); only TensorRT 10.3 ops; normalisation baked in."""
    import onnxruntime as ort

    from edge.trt_compat import SUPPORTED_OPS

    torch.manual_seed(0)
    enc = ViTCameraEncoder(TINY, PRE, embed_dim=8, hidden=16)
    rep = export_camera_encoder(enc, tmp_path / "vit.onnx", tolerance=1e-4)
    assert rep.max_abs <= 1e-4 and rep.trt_issues == []
    assert set(rep.ops) <= SUPPORTED_OPS
    assert {"Loop", "Scan", "If"}.isdisjoint(rep.ops)
    # the graph normalises with the recorded mean/std: same frame, other preprocessing -> other z
    sess = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    frame = np.random.default_rng(1).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    pose = np.zeros((2, 4), np.float32)
    z = sess.run(["z"], {"frame": frame, "pose4": pose})[0]
    other = ViTCameraEncoder(TINY, Preprocessing(), embed_dim=8, hidden=16)
    other.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("normalize.")}, strict=False)
    with torch.no_grad():
        z_other = other(torch.from_numpy(frame), torch.from_numpy(pose)).numpy()
    assert np.abs(z - z_other).max() > 1e-3


def test_bundle_records_preprocessing_and_refuses_a_mismatch(tmp_path):
    """export_bundle + annotate_bundle: manifest encoders.camera.preprocessing; a runtime with other values is refused."""
    from edge.bundle import load_bundle
    from training.export import ExportConfig, PlannerParams, export_bundle
    from training.models import Predictor
    from training.pretrain import annotate_bundle, check_bundle_preprocessing

    torch.manual_seed(0)
    enc = ViTCameraEncoder(TINY, PRE, embed_dim=8, hidden=16)
    out = export_bundle(enc, Predictor(embed_dim=8, hidden=16), PlannerParams(N=4, H=3, J=1), tmp_path / "b",
                        ExportConfig(precisions=("fp32",)), progress=False)
    annotate_bundle(out, {("encoders", "camera", "preprocessing"): PRE.as_dict()})
    b = load_bundle(out)
    assert b.manifest["encoders"]["camera"]["preprocessing"]["mean"] == [0.3, 0.4, 0.5]
    assert b.planner.encoder == "camera"
    check_bundle_preprocessing(dict(b.manifest), PRE)
    with pytest.raises(PreprocessingMismatch, match=r"std: the bundle manifest has \[0.2, 0.25, 0.3\], the runtime camera has"):
        check_bundle_preprocessing(dict(b.manifest), Preprocessing(mean=PRE.mean))
    m = json.loads((out / "manifest.json").read_text())
    del m["encoders"]["camera"]["preprocessing"]
    with pytest.raises(PreprocessingMismatch, match="records no"):
        check_bundle_preprocessing(m, PRE)
