"""The runtime refuses a camera bundle pretrained on frames other than it feeds (size, resize, channel order)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.camera import CameraError, check_camera_preprocessing

PRE = {"image_size": 64, "resize": "area", "channel_order": "RGB", "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}


def test_matching_or_unrecorded_preprocessing_is_accepted() -> None:
    """The runtime's own preprocessing (64x64, area, RGB), frames taken at model size ('none'), or no record pass."""
    check_camera_preprocessing(PRE, 64, 64)
    check_camera_preprocessing({**PRE, "resize": "none"}, 64, 64)
    check_camera_preprocessing(None, 64, 64)


@pytest.mark.parametrize("change, size, needles", [
    ({}, (32, 32), ["image_size", "64x64", "32x32", "camera.width=64"]),
    ({"image_size": 96}, (64, 64), ["image_size", "96x96", "camera.width=96"]),
    ({"resize": "bilinear"}, (64, 64), ["resize", "'bilinear'", "'area'"]),
    ({"channel_order": "BGR"}, (64, 64), ["channel_order", "BGR", "RGB"]),
    ({"channel_order": "BGR", "resize": "bilinear"}, (32, 32), ["image_size", "resize", "channel_order"]),
])
def test_each_differing_field_is_named_with_both_values(change, size, needles) -> None:
    """Every mismatching field appears in one error with the bundle's and the runtime's value and the fix."""
    with pytest.raises(CameraError) as e:
        check_camera_preprocessing({**PRE, **change}, *size)
    msg = str(e.value)
    assert all(n in msg for n in needles), msg
    assert "re-export" in msg


@pytest.fixture(scope="module")
def camera_bundle(tmp_path_factory) -> Path:
    """A tiny camera-model bundle whose manifest records 64x64 / area / BGR preprocessing (as a BGR pretraining would)."""
    import torch

    from training.export import ExportConfig, PlannerParams, export_bundle
    from training.models import CameraEncoder, Predictor
    from training.pretrain import annotate_bundle

    torch.manual_seed(0)
    out = export_bundle(CameraEncoder(embed_dim=8, channels=(4, 4, 4), hidden=16).eval(),
                        Predictor(embed_dim=8, hidden=16, layers=1, conf_hidden=4), PlannerParams(N=8, H=3, J=1),
                        tmp_path_factory.mktemp("cam") / "cam", ExportConfig(precisions=("fp32",)), progress=False)
    annotate_bundle(out, {("encoders", "camera", "preprocessing"): {**PRE, "channel_order": "BGR"}})
    return out


def test_edge_run_refuses_the_bundle_before_driving(camera_bundle, tmp_path, capsys) -> None:
    """edge-run --sim with a BGR-pretrained camera bundle exits 2 naming channel_order; nothing is run."""
    from edge.run import main

    rc = main(["--sim", "--device", "cpu", "--bundle", str(camera_bundle), "--episodes", "1", "--out", str(tmp_path),
               "--status", "off", "--llm", "none", "--no-record"])
    err = capsys.readouterr().err
    assert rc == 2 and "channel_order" in err and "BGR" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_open_backend_accepts_the_matching_bundle(camera_bundle, tmp_path, monkeypatch) -> None:
    """With the runtime's preprocessing recorded, open_backend builds the camera backend."""
    import json
    import shutil

    from edge.config import load_config
    from edge.engine_cache import ENV_ROOT
    from edge.run import open_backend
    from training.pretrain import annotate_bundle

    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "engines"))
    ok = tmp_path / "ok"
    shutil.copytree(camera_bundle, ok)
    annotate_bundle(ok, {("encoders", "camera", "preprocessing"): PRE})
    cfg = load_config(None, [{"bundle": str(ok), "device": "cpu"}])
    be = open_backend(cfg)
    try:
        assert be.encoder_name == "camera"
    finally:
        getattr(be, "close", lambda: None)()
    assert json.loads((ok / "manifest.json").read_text())["encoders"]["camera"]["preprocessing"] == PRE
