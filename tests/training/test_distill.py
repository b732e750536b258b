"""edge-distill: a camera encoder trained on a sensor teacher's embeddings, end to end on a tiny run."""

import csv
import json

import numpy as np
import pytest
import torch

from edge.sim.collect import main as collect_main
from edge.sim.dataset import WindowDataset
from training.checkpoint import load_world_model
from training.config import ConfigError, config_from_dict
from training.data import split_windows
from training.distill import DistillError, _split, camera_config, distill, main, normalised_mse, teacher_embeddings
from training.evaluate import evaluate
from training.jepa import JEPA, pose4_from_sensor
from training.models import CameraEncoder
from training.train import train
from tests.training.conftest import make_windows


def test_normalised_mse_hand_values():
    target = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    variance = torch.tensor([2.0, 0.0])
    # squared errors per row: 1 + 0 and 0 + 4 -> mean 2.5, / total variance 2
    pred = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    assert float(normalised_mse(pred, target, variance)) == pytest.approx(1.25)
    assert float(normalised_mse(target, target, variance)) == 0.0


def test_split_holds_out_whole_episodes_reproducibly():
    episode = np.repeat(np.arange(20), 7)
    tr, va = _split(episode, 0.1, seed=3)
    assert len(np.intersect1d(episode[tr], episode[va])) == 0
    assert len(np.unique(episode[va])) == 2 and len(tr) + len(va) == len(episode)
    assert np.array_equal(va, _split(episode, 0.1, seed=3)[1])
    assert not np.array_equal(va, _split(episode, 0.1, seed=4)[1])


def test_camera_config_keeps_the_teachers_embedding_and_planner():
    teacher = config_from_dict({"model": {"embed_dim": 8, "pred_hidden": 16}, "planner": {"samples": 16, "elites": 4}})
    cfg = camera_config(teacher, "data/camera", "runs/x", ["model.cam_channels=[8,8,8]"])
    assert cfg.model.kind == "camera" and cfg.model.embed_dim == 8 and cfg.model.pred_hidden == 16
    assert cfg.data.with_frames and cfg.data.path == "data/camera" and cfg.planner.samples == 16
    assert tuple(cfg.model.cam_channels) == (8, 8, 8)
    with pytest.raises(ConfigError, match="embed_dim come from the teacher"):
        camera_config(teacher, "d", "o", ["model.embed_dim=4"])


@pytest.fixture(scope="module")
def teacher_and_camera_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    cfg = config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 32, "pred_hidden": 16, "cam_channels": [4, 8, 8]},
                            "objective": {"horizon": 3},
                            "planner": {"samples": 16, "horizon": 4, "iterations": 1, "elites": 4},
                            "eval": {"episodes": 2, "max_steps": 5, "gifs": 0},
                            "train": {"epochs": 1, "batch_size": 64, "progress": False,
                                      "out_dir": str(root / "teacher")}})
    train(cfg, data=split_windows(make_windows(256, k=3), 0.25))
    data = root / "camera"
    assert collect_main(["--episodes", "6", "--steps", "30", "--camera", "--out", str(data), "--seed", "1"]) == 0
    return root / "teacher", data


def test_distill_writes_a_camera_run_that_matches_its_teacher_better_than_untrained(teacher_and_camera_data, tmp_path):
    teacher_dir, data = teacher_and_camera_data
    out = tmp_path / "cam"
    report = distill(teacher_dir, data, out, epochs=4, batch_size=32, lr=3e-3, val_fraction=0.34, seed=0,
                     threads=1, progress=False)
    student = load_world_model(out)
    teacher = load_world_model(teacher_dir)
    assert student.config.model.kind == "camera" and isinstance(student.encoder, CameraEncoder)
    # the predictor (and its confidence head) is the teacher's, unchanged
    for (k, a), (_, b) in zip(student.predictor.state_dict().items(), teacher.predictor.state_dict().items()):
        assert torch.equal(a, b), k
    # on held-out episodes the distilled encoder is closer to the teacher than its own initialisation
    ds = WindowDataset(data, 1, frames=True)
    sensor = torch.from_numpy(ds.sensor)
    frame = torch.from_numpy(ds.frame).permute(0, 3, 1, 2).float() / 255.0
    target = teacher_embeddings(teacher.encoder, ds.sensor)
    var = target.var(0)
    with torch.no_grad():
        fresh = JEPA(student.config).deploy_encoder
        trained_err = float(normalised_mse(student.encoder(frame, pose4_from_sensor(sensor)), target, var))
        fresh_err = float(normalised_mse(fresh(frame, pose4_from_sensor(sensor)), target, var))
    assert trained_err < 0.5 * fresh_err
    assert report["final"]["val_nmse"] == pytest.approx(json.loads((out / "distill.json").read_text())["final"]["val_nmse"])
    # the grey-frame figure is the held-out error with each frame flattened to its mean colour
    _, val_i = _split(ds.window_episode, 0.34, 0)
    ticks = ds.starts[val_i]
    train_ticks = np.setdiff1d(ds.starts, ticks)
    grey = frame[ticks].mean(dim=(1, 2, 3), keepdim=True).expand_as(frame[ticks])
    with torch.no_grad():
        z = student.encoder(grey, pose4_from_sensor(sensor[ticks]))
    expect = normalised_mse(z, target[ticks], target[train_ticks].var(0))
    assert report["val_nmse_grey_frames"] == pytest.approx(float(expect), rel=1e-4)
    assert report["ticks_val"] > 0 and report["ticks_train"] + report["ticks_val"] == 6 * 30
    assert (out / "curves.png").is_file() and len((out / "metrics.csv").read_text().splitlines()) == 5
    # metrics.json carries the teacher predictor's validation error (the runtime's confidence scale)
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_row = list(csv.DictReader((teacher_dir / "metrics.csv").open()))[-1]
    assert metrics["val_pred"] == pytest.approx(float(teacher_row["val_pred"]))
    assert metrics["distill_val_nmse"] == pytest.approx(report["final"]["val_nmse"])
    # edge-eval takes it like any camera run
    rep = evaluate(out, ["eval.seed=3"], tmp_path / "eval", diagnose=False, progress=False)
    assert rep["planning"]["episodes"] == 2


def test_distill_refuses_a_camera_teacher_and_data_without_frames(teacher_and_camera_data, tmp_path):
    teacher_dir, data = teacher_and_camera_data
    cam = tmp_path / "cam"
    distill(teacher_dir, data, cam, epochs=1, batch_size=64, val_fraction=0.34, threads=1, progress=False)
    with pytest.raises(DistillError, match="is a camera model"):
        distill(cam, data, tmp_path / "x", epochs=1, progress=False)
    plain = tmp_path / "plain"
    assert collect_main(["--episodes", "2", "--steps", "10", "--out", str(plain), "--seed", "1"]) == 0
    with pytest.raises(DistillError, match="--camera --out data/camera"):
        distill(teacher_dir, plain, tmp_path / "y", epochs=1, progress=False)


def test_cli_errors_name_the_fix(tmp_path, capsys, teacher_and_camera_data):
    teacher_dir, data = teacher_and_camera_data
    assert main([str(tmp_path / "none"), str(data), "--out", str(tmp_path / "o")]) == 2
    assert "training.train configs/sensor_default.yaml" in capsys.readouterr().err
    assert main([str(teacher_dir), str(data), "--epochs", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--epochs >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
