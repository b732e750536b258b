"""Trainer: loss goes down, checkpoints round-trip, resume, determinism, DDP with 2 CPU processes, CLI errors."""

import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file

from training.checkpoint import CheckpointError, load_config_json, load_world_model
from training.config import config_from_dict
from training.data import split_windows
from training.train import main, train
from tests.training.conftest import make_windows


def _cfg(out, **train_kw):
    return config_from_dict({"model": {"embed_dim": 8, "enc_hidden": 32, "pred_hidden": 16},
                             "objective": {"horizon": 3},
                             "train": {"epochs": 3, "batch_size": 64, "progress": False, "out_dir": str(out), **train_kw}})


def test_short_training_lowers_loss_and_writes_outputs(tmp_path, tiny_data):
    """A few epochs lower the validation loss; metrics.csv, curves.png, weights and config are written."""
    cfg = _cfg(tmp_path / "run", epochs=4)
    train(cfg, data=tiny_data)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 4
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("curves.png", "model.safetensors", "config.json", "train_state.safetensors"):
        assert (tmp_path / "run" / name).is_file()


def test_checkpoint_round_trip_and_resume(tmp_path, tiny_data):
    """Reloaded weights give identical predictions; resuming 1+1 epochs equals 2 epochs straight; same seed -> same weights."""
    full = train(_cfg(tmp_path / "full", epochs=2), data=tiny_data).model
    again = train(_cfg(tmp_path / "again", epochs=2), data=tiny_data).model
    for a, b in zip(full.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    wm = load_world_model(tmp_path / "full")
    assert load_config_json(tmp_path / "full") == _cfg(tmp_path / "full", epochs=2)
    z = torch.randn(5, 14)
    torch.testing.assert_close(wm.encoder(z), full.deploy_encoder(z))
    zz = wm.encoder(z)
    out_a = wm.predictor.step(zz, wm.predictor.init_hidden(zz), torch.zeros(5, 2))
    out_b = full.predictor.step(zz, full.predictor.init_hidden(zz), torch.zeros(5, 2))
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b)
    train(_cfg(tmp_path / "res", epochs=2), data=tiny_data, stop_after=1)
    resumed = train(_cfg(tmp_path / "res", epochs=2), resume=True, data=tiny_data).model
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)
    rows = list(csv.DictReader(open(tmp_path / "res" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_mismatched_checkpoint_is_refused(tmp_path, tiny_data):
    """Weights that do not match the config raise CheckpointError naming the file."""
    train(_cfg(tmp_path / "r", epochs=1), data=tiny_data)
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "r" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_world_model(tmp_path / "r")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    data = split_windows(make_windows(256, k=3), 0.25)
    res = train(_cfg(out, epochs=2, threads=1), data=data)
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, os.path.join(result_dir, f"rank{rank}.safetensors"))


def test_ddp_two_cpu_processes(tmp_path):
    """torch DDP (gloo) with 2 processes: both finish, weights stay identical across ranks, rank 0 checkpoints."""
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], msg=k)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    init = load_world_model(tmp_path / "ddp")  # loads, so rank 0 wrote a complete checkpoint
    assert init.config.train.epochs == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    """Bad config paths, overrides and missing data exit non-zero with a one-line error."""
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    assert main([str(cfg), "train.epochs=-1"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main([str(cfg), f"data.path={tmp_path / 'nodata'}", f"train.out_dir={tmp_path / 'o'}"]) == 2
    assert "edge.sim.collect" in capsys.readouterr().err
