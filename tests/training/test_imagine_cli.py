"""edge-eval --imagine: the real-vs-imagined GIF through the CLI, and refusal of missing or mismatched decoders."""

import json

import numpy as np
import pytest
import torch

from training.decoder import DecoderConfig, StateDecoder, run_fingerprint, save_decoder
from training.evaluate import main

H = 4  # planner horizon of the tiny runs
E = 16  # embed_dim of the "tiny" preset


def _tiny_run(path, action_repeat=1, seed=0):
    from training.checkpoint import save_checkpoint
    from training.config import config_from_dict
    from training.jepa import JEPA

    cfg = config_from_dict({"preset": "tiny", "data": {"action_repeat": action_repeat},
                            "planner": {"samples": 8, "horizon": H, "iterations": 1, "elites": 4},
                            "eval": {"episodes": 1, "max_steps": 3, "gifs": 0},
                            "train": {"out_dir": str(path)}})
    torch.manual_seed(seed)
    save_checkpoint(path, JEPA(cfg), cfg)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny sensor runs with different weights, one with action_repeat=2, and a decoder fit for the first."""
    root = tmp_path_factory.mktemp("imagine")
    run = _tiny_run(root / "run")
    other = _tiny_run(root / "other", seed=1)
    repeat2 = _tiny_run(root / "repeat2", action_repeat=2)
    torch.manual_seed(0)
    save_decoder(root / "dec", StateDecoder(DecoderConfig(embed_dim=E)),
                 {"run": str(run), "encoder": "target", "run_weights_sha256": run_fingerprint(run)})
    return {"root": root, "run": run, "other": other, "repeat2": repeat2, "dec": root / "dec"}


def _shown_ms(gif):
    """Total display time of a GIF in ms (identical consecutive frames are stored once with summed durations)."""
    from PIL import Image

    img = Image.open(gif)
    total = 0
    for i in range(img.n_frames):
        img.seek(i)
        total += img.info["duration"]
    return total


def _frame_rgb(gif, i):
    from PIL import Image

    img = Image.open(gif)
    img.seek(i)
    return np.asarray(img.convert("RGB")).astype(int)


def test_cli_imagine_writes_side_by_side_gif_and_skips_episodes(runs, tmp_path, capsys):
    """--imagine writes OUT/imagine.gif: one frame per plan step, 3x-scaled [real scan | 2 px gap | decoded scan].

    The real scan is drawn in black, the decoded one in blue: each colour must be in its own half.
    Planning episodes are skipped (no eval.json) and imagine.json records the per-step errors.
    """
    assert main([str(runs["run"]), "--imagine", str(runs["dec"]), "--imagine-plans", "2", "--out", str(tmp_path)]) == 0
    gif = tmp_path / "imagine.gif"
    out = capsys.readouterr().out
    assert str(gif) in out
    from PIL import Image

    img = Image.open(gif)
    assert img.size == ((64 * 2 + 2) * 3, 64 * 3)
    assert _shown_ms(gif) == 2 * H * 120  # one 120 ms frame per plan step (PIL merges identical neighbours)
    rgb = _frame_rgb(gif, 0)
    left, gap, right = rgb[:, : 64 * 3], rgb[:, 64 * 3: 66 * 3], rgb[:, 66 * 3:]
    assert (gap == 255).all()
    blue = np.array([40, 160, 255])

    def count(part, colour):
        return int((np.abs(part - colour).sum(-1) <= 30).sum())

    assert count(right, blue) > 20 and count(left, blue) == 0  # decoded scan only on the right
    black_left = int((left.sum(-1) <= 30).sum())
    assert black_left > count(right, np.zeros(3)) + 20  # real scan polygon (black) only on the left; both have the robot dot
    rep = json.loads((tmp_path / "imagine.json").read_text())
    assert rep["frames"] == 2 * H and rep["control_ticks"] == 2 * H and rep["error_kind"] == "range_mae_m"
    assert len(rep["error_by_plan_step"]) == H and rep["encoder"] == "target"
    assert not (tmp_path / "eval.json").exists()


def test_cli_imagine_out_and_episodes_when_asked(runs, tmp_path):
    """--imagine-out places the GIF (not OUT/imagine.gif); with --episodes the planning episodes run as well."""
    gif = tmp_path / "sub" / "x.gif"
    assert main([str(runs["run"]), "--imagine", str(runs["dec"]), "--imagine-plans", "1", "--imagine-out", str(gif),
                 "--episodes", "1", "--no-diagnostics", "--out", str(tmp_path)]) == 0
    assert _shown_ms(gif) == H * 120
    assert json.loads((tmp_path / "eval.json").read_text())["planning"]["episodes"] == 1
    assert not (tmp_path / "imagine.gif").exists()


def test_imagine_holds_each_plan_step_for_action_repeat_ticks(runs, tmp_path):
    """With data.action_repeat = 2 each predicted step is compared after 2 control ticks: ticks = 2 x frames."""
    save_decoder(tmp_path / "d2", StateDecoder(DecoderConfig(embed_dim=E)), {"encoder": "target"})
    assert main([str(runs["repeat2"]), "--imagine", str(tmp_path / "d2"), "--imagine-plans", "1",
                 "--imagine-out", str(tmp_path / "r.gif")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["action_repeat"] == 2 and rep["frames"] == H and rep["control_ticks"] == 2 * H


@pytest.mark.parametrize("case, message", [
    ("missing", "no such decoder folder"),
    ("not_a_decoder", "decoder.safetensors not found"),
    ("corrupt", "not a readable state-decoder checkpoint"),
    ("other_embed_dim", "E=5"),
    ("other_run", "another model's embeddings"),
    ("other_encoder", "online encoder's embeddings"),
    ("frames_on_sensor_model", "decodes camera frames"),
])
def test_cli_imagine_refuses_bad_decoder_dir_with_exit_2(runs, tmp_path, capsys, case, message):
    """A missing, unreadable or mismatched decoder exits 2 with a one-line error naming the problem and writes no GIF."""
    d = tmp_path / "d"
    args = [str(runs["run"]), "--imagine", str(d), "--out", str(tmp_path)]
    if case == "not_a_decoder":
        d.mkdir()
    elif case == "corrupt":
        d.mkdir()
        (d / "decoder.safetensors").write_bytes(b"\x00" * 40)
    elif case == "other_embed_dim":
        save_decoder(d, StateDecoder(DecoderConfig(embed_dim=5)), {})
    elif case == "other_run":
        save_decoder(d, StateDecoder(DecoderConfig(embed_dim=E)), {"run_weights_sha256": run_fingerprint(runs["other"])})
    elif case == "other_encoder":
        save_decoder(d, StateDecoder(DecoderConfig(embed_dim=E)), {"encoder": "online"})
        args += ["--imagine-encoder", "target"]
    elif case == "frames_on_sensor_model":
        save_decoder(d, StateDecoder(DecoderConfig(embed_dim=E, frames=True, channels=8)), {})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-eval: error:") and message in err and err.count("\n") == 1
    assert "train" in err  # names the fix
    assert not (tmp_path / "imagine.gif").exists()


def test_decoder_train_cli_records_the_run_fingerprint_that_imagine_checks(runs, tmp_path, capsys):
    """`decoder train` stores the encoder and the sha256 of the run's weights; edge-eval --imagine accepts that decoder
    for its run and refuses it for another run of the same embedding size."""
    from edge.sim.collect import main as collect
    from training.decoder import main as decoder_main

    data = tmp_path / "data"
    assert collect(["--episodes", "2", "--steps", "20", "--out", str(data), "--shard-episodes", "2"]) == 0
    dec = tmp_path / "dec"
    assert decoder_main(["train", str(runs["run"]), "--out", str(dec), "--data", str(data), "--epochs", "1"]) == 0
    meta = json.loads((dec / "decoder.json").read_text())
    assert meta["encoder"] == "target" and meta["run_weights_sha256"] == run_fingerprint(runs["run"])
    assert main([str(runs["run"]), "--imagine", str(dec), "--imagine-plans", "1", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([str(runs["other"]), "--imagine", str(dec), "--imagine-plans", "1", "--out", str(tmp_path / "b")]) == 2
    assert "another model's embeddings" in capsys.readouterr().err
