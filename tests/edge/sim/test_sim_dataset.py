"""Shards, the window reader (shards and MCAP flight logs), edge-collect and edge-sim-view."""

import json
import logging
import time

import numpy as np
import pytest

from edge.sim.collect import main as collect_main
from edge.sim.dataset import DatasetError, WindowDataset, read_shard
from edge.sim.flight_log import CHANNELS, encode_frame, schema_name
from edge.sim.obs import SensorNormalisation, sensor_vector
from edge.sim.view import main as view_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    rc = collect_main(["--episodes", "6", "--steps", "30", "--out", str(out), "--camera",
                       "--shard-episodes", "3", "--seed", "1", "--preview"])
    assert rc == 0
    return out


def test_collect_writes_index_and_shards(dataset):
    """edge-collect writes the shards and an index with lengths, sha256 and the normalisation."""
    index = json.loads((dataset / "index.json").read_text())
    assert index["schema_version"] == 1 and index["episodes"] == 6 and index["transitions"] == 180
    assert [s["file"] for s in index["shards"]] == ["shard-00000.npz", "shard-00001.npz"]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in index["shards"])
    assert index["normalisation"] == SensorNormalisation().as_dict()


def test_collect_preview_and_config_round_trip(dataset):
    """--preview writes an animated GIF, and the SimConfig stored in a shard rebuilds exactly."""
    from dataclasses import asdict, replace

    from PIL import Image

    from edge.sim.env import SimConfig
    from edge.sim.view import _config_from_meta

    assert Image.open(dataset / "preview.gif").n_frames > 1
    meta = read_shard(dataset / "shard-00000.npz")["meta"]
    cfg = _config_from_meta(meta)
    assert cfg.ranges.noise_std == 0.01 and cfg.robot.slip_std == 0.02
    odd = replace(SimConfig(), max_steps=77)
    assert _config_from_meta(json.loads(json.dumps({"config": asdict(odd)}))) == odd


def test_collect_is_deterministic_and_worker_independent(dataset, tmp_path):
    """The same seed gives the same data whatever the shard order of work (workers=2)."""
    rc = collect_main(["--episodes", "6", "--steps", "30", "--out", str(tmp_path), "--camera",
                       "--shard-episodes", "3", "--seed", "1", "--workers", "2"])
    assert rc == 0
    for name in ("shard-00000.npz", "shard-00001.npz"):
        a, b = read_shard(dataset / name, frames=True), read_shard(tmp_path / name, frames=True)
        for key in ("ranges", "action", "true_pose", "frame"):
            assert np.array_equal(a[key], b[key], equal_nan=key == "ranges")


def test_windows_match_the_shard(dataset):
    """Window i holds k+1 consecutive observations of one episode and the k actions between them,
    and the sensor vectors are sensor_vector of the raw readings."""
    k = 5
    ds = WindowDataset(dataset, k, frames=True)
    assert len(ds) == 6 * (30 - k + 1)
    sh = read_shard(dataset / "shard-00001.npz", frames=True)
    i = (30 - k + 1) * 4 + 7  # episode 4 = shard 1 episode 1, start 7
    w = ds[i]
    assert w["sensor"].shape == (k + 1, 14) and w["frame"].shape == (k + 1, 64, 64, 3)
    assert np.array_equal(w["action"], sh["action"][1, 7:12])
    assert np.array_equal(w["true_pose"], sh["true_pose"][1, 7:13])
    assert np.array_equal(w["frame"], sh["frame"][1, 7:13])
    expect = sensor_vector(sh["ranges"][1, 7:13], sh["pose"][1, 7:13], sh["wheel_speeds"][1, 7:13], SensorNormalisation())
    assert np.array_equal(w["sensor"], expect)
    b = ds.batch([0, i, len(ds) - 1])
    assert b["sensor"].shape == (3, k + 1, 14) and np.array_equal(b["action"][1], w["action"])
    assert sum(1 for _ in ds) == len(ds)
    with pytest.raises(IndexError):
        ds.batch([len(ds)])


def test_strided_batch_equals_subsampling_the_full_window(dataset):
    """obs_stride=r gives the full window's observations [:, ::r] (frames included) and every
    tick's action; a stride that does not divide k is refused."""
    ds = WindowDataset(dataset, 6, frames=True)
    idx = [0, 5, 40, len(ds) - 1]
    full, strided = ds.batch(idx), ds.batch(idx, obs_stride=3)
    assert strided["frame"].shape == (4, 3, 64, 64, 3) and strided["action"].shape == (4, 6, 2)
    for key in ("sensor", "pose", "true_pose", "frame"):
        assert np.array_equal(strided[key], full[key][:, ::3]), key
    assert np.array_equal(strided["action"], full["action"])
    with pytest.raises(ValueError, match="obs_stride"):
        ds.batch(idx, obs_stride=4)


def test_windows_without_frames_have_no_frame_key(dataset):
    """frames=False (default) leaves out the frame key and loads no frames."""
    ds = WindowDataset(dataset / "shard-00000.npz", 3)
    assert set(ds[0]) == {"sensor", "action", "pose", "true_pose"} and ds.frame is None


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_is_named_and_refused_or_skipped(dataset, tmp_path, damage, caplog):
    """A truncated or bit-flipped shard raises DatasetError naming it; on_error='skip' drops it
    with a warning and keeps the good shard."""
    import shutil

    for f in dataset.iterdir():
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "shard-00001.npz"
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="shard-00001.npz"):
        WindowDataset(tmp_path, 4)
    with caplog.at_level(logging.WARNING):
        ds = WindowDataset(tmp_path, 4, on_error="skip")
    assert ds.num_episodes == 3 and ds.skipped and "shard-00001.npz" in ds.skipped[0][0]
    assert "shard-00001.npz" in caplog.text
    # without the index the zip CRC still catches the damage
    (tmp_path / "index.json").unlink()
    with pytest.raises(DatasetError, match="shard-00001.npz"):
        WindowDataset(tmp_path / "shard-00001.npz", 4)


def test_shard_is_never_unpickled(dataset):
    """Shards load with allow_pickle=False: no object arrays inside."""
    with np.load(dataset / "shard-00000.npz", allow_pickle=False) as z:
        for name in z.files:
            assert z[name].dtype != object


def _write_mcap(path, ticks, *, camera=True, null_range_tick=None, norm=None, skip_action=()):
    from mcap.writer import CompressionType, Writer

    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD)
        w.start(profile="", library="test")
        ch = {}
        for topic in ("/obs", "/action", "/camera", "/timings"):
            sid = w.register_schema(schema_name(topic), "jsonschema", json.dumps(CHANNELS[topic]).encode())
            ch[topic] = w.register_channel(topic, "json", sid)
        w.add_metadata("edge_jepa", {"flight_log_version": "1", "created_by": "test"})
        if norm:
            w.add_metadata("normalisation", {k: json.dumps(v) for k, v in norm.items()})
        rng = np.random.default_rng(0)
        frames = {}
        for n in ticks:
            t_ns = time.time_ns()
            ranges = [float(x) for x in rng.uniform(0.1, 1.5, 8)]
            if n == null_range_tick:
                ranges[3] = None
            obs = {"tick": n, "t": n * 0.05, "ranges_m": ranges, "pose": [0.01 * n, -0.02 * n, 0.1],
                   "wheel_speeds": [1.0, 2.0]}
            w.add_message(ch["/obs"], log_time=t_ns, publish_time=t_ns, data=json.dumps(obs).encode())
            if n not in skip_action:
                act = {"tick": n, "t": n * 0.05, "left": 0.01 * n, "right": -0.01 * n, "source": "planner"}
                w.add_message(ch["/action"], log_time=t_ns, publish_time=t_ns, data=json.dumps(act).encode())
            if camera:
                fr = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                frames[n] = fr
                msg = {"tick": n, "t": n * 0.05, **encode_frame(fr, "png")}
                w.add_message(ch["/camera"], log_time=t_ns, publish_time=t_ns, data=json.dumps(msg).encode())
            w.add_message(ch["/timings"], log_time=t_ns, publish_time=t_ns,
                          data=json.dumps({"tick": n, "t": 0.0, "total_ms": 3.0}).encode())
        w.finish()
    return frames


def test_flight_log_windows(tmp_path):
    """An MCAP flight log written per docs/FLIGHT_LOG.md gives windows of consecutive ticks only:
    a gap in /obs splits the run, a missing /action ends an episode at that tick, null ranges
    become 1.0, and the log's normalisation metadata is used."""
    norm = {"max_range_m": 4.0, "half_width_m": 2.0, "half_height_m": 1.0, "max_wheel_speed_rad_s": 10.0}
    ticks = list(range(0, 12)) + list(range(20, 26))  # runs of 12 and 6 ticks
    frames = _write_mcap(tmp_path / "run.mcap", ticks, null_range_tick=3, norm=norm, skip_action={8})
    ds = WindowDataset(tmp_path / "run.mcap", 3, frames=True)
    # episodes: ticks 0..8 (8 actions: 0..7), 9..11 (2 actions), 20..25 (5 actions)
    assert ds.num_episodes == 2  # the 2-action episode is shorter than k=3
    assert len(ds) == (8 - 3 + 1) + (5 - 3 + 1)
    assert "true_pose" not in ds[0]
    w0 = ds[0]
    assert np.allclose(w0["action"][:, 0], [0.0, 0.01, 0.02])
    assert w0["sensor"][3, 3] == 1.0  # null range at tick 3
    assert w0["sensor"][1, 8] == pytest.approx(0.01 / 2.0)  # x / half_width from metadata
    assert w0["sensor"][0, 12] == pytest.approx(0.1)  # wheel speed / 10
    assert np.array_equal(w0["frame"][2], frames[2])
    last = ds[len(ds) - 1]
    assert np.allclose(last["pose"][:, 0], [0.22, 0.23, 0.24, 0.25])


def test_flight_log_and_shards_mix(dataset, tmp_path):
    """Shards and a flight log in one dataset: windows from both, true_pose dropped because the
    log has none."""
    _write_mcap(tmp_path / "run.mcap", list(range(10)), camera=False)
    ds = WindowDataset([dataset / "shard-00000.npz", tmp_path / "run.mcap"], 4)
    assert ds.num_episodes == 4 and "true_pose" not in ds[0]


def test_flight_log_without_actions_is_refused(tmp_path, caplog):
    """A log with no /action channel is reported by name (training needs /obs and /action)."""
    _write_mcap(tmp_path / "noact.mcap", list(range(10)), camera=False, skip_action=set(range(10)))
    with pytest.raises(DatasetError, match="noact.mcap.*action"):
        WindowDataset(tmp_path / "noact.mcap", 2)


def test_collect_bad_input_exits_nonzero(tmp_path, capsys):
    """Bad CLI input gives a one-line error and a non-zero exit, not a traceback."""
    assert collect_main(["--episodes", "0", "--steps", "5", "--out", str(tmp_path)]) == 2
    assert "--episodes must be >= 1" in capsys.readouterr().err


def test_collect_refuses_to_overwrite(dataset, capsys):
    """A folder that already has shards is not silently overwritten."""
    assert collect_main(["--episodes", "1", "--steps", "5", "--out", str(dataset)]) == 2
    assert "already holds shards" in capsys.readouterr().err


def test_sim_view_writes_gif_and_png(dataset, tmp_path):
    """edge-sim-view renders a shard episode as a GIF and a fresh episode as a PNG."""
    from PIL import Image

    assert view_main(["--shard", str(dataset / "shard-00000.npz"), "--episode", "1", "--out", str(tmp_path / "a.gif")]) == 0
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 16  # 31 poses, every 2nd
    assert view_main(["--steps", "10", "--out", str(tmp_path / "b.png")]) == 0
    png = np.asarray(Image.open(tmp_path / "b.png"))
    assert png.shape[1] > png.shape[0] and png.std() > 10
    assert view_main(["--steps", "10", "--out", str(tmp_path / "b.jpg")]) == 1


def test_reads_the_runtime_recorders_logs_including_a_truncated_one(tmp_path, caplog):
    """A log written by edge.recorder.FlightRecorder (the real writer) gives windows whose
    sensor vectors match sensor_vector of what was recorded; the same log cut mid-file (a crash)
    still gives the windows before the cut, with a warning naming the file."""
    from edge.recorder import FlightRecorder

    norm = SensorNormalisation().as_dict()
    rng = np.random.default_rng(0)
    rows = []
    with FlightRecorder(tmp_path / "flight.mcap", normalisation=norm, flush_period_s=0.01, chunk_size=2048) as rec:
        for n in range(300):
            ranges = rng.uniform(0.1, 1.9, 8)
            pose = rng.uniform(-1, 1, 3)
            speeds = rng.uniform(-10, 10, 2)
            rows.append((ranges, pose, speeds))
            rec.write("/obs", n, n * 0.05, {"ranges_m": ranges.tolist(), "pose": pose.tolist(),
                                            "wheel_speeds": speeds.tolist()})
            rec.write("/action", n, n * 0.05, {"left": 0.5, "right": -0.25, "source": "planner"})
    ds = WindowDataset(tmp_path / "flight.mcap", 4)
    assert len(ds) == 299 - 4 + 1
    w = ds[10]
    r, p, s = (np.array([rows[i][j] for i in range(10, 15)]) for j in range(3))
    assert np.allclose(w["sensor"], sensor_vector(r, p, s, norm), atol=1e-6)
    assert np.allclose(w["action"], [[0.5, -0.25]] * 4)

    data = (tmp_path / "flight.mcap").read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])  # inside the data section
    with caplog.at_level(logging.WARNING):
        cut = WindowDataset(tmp_path / "cut.mcap", 4)
    assert "cut.mcap" in caplog.text and "truncated" in caplog.text
    assert 0 < len(cut) < len(ds)
    assert np.allclose(cut[0]["sensor"], ds[0]["sensor"])
