"""Typed configs: YAML + dotted overrides, presets, validation errors naming the field."""

import pytest

from training.config import Config, ConfigError, load_config


def test_yaml_and_overrides(tmp_path):
    """YAML values and dotted CLI overrides land in the typed fields; CLI wins over YAML."""
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\ntrain:\n  epochs: 3\nobjective:\n  target_mode: vjepa2\n")
    cfg = load_config(p, ["train.epochs=5", "model.cam_channels=[4,8]", "train.progress=false"])
    assert cfg.train.epochs == 5 and cfg.objective.target_mode == "vjepa2"
    assert cfg.model.embed_dim == 16  # from the tiny preset
    assert cfg.model.cam_channels == (4, 8) and cfg.train.progress is False
    assert load_config(None) == Config()


@pytest.mark.parametrize("override,field", [
    ("train.epochs=0", "train.epochs"),
    ("objective.target_mode=bogus", "objective.target_mode"),
    ("model.pred_layers=3", "model.pred_layers"),
    ("train.bogus=1", "train.bogus"),
    ("train.epochs=abc", "train.epochs"),
    ("planner.std_min=2", "planner.std_min"),
])
def test_bad_values_name_the_field(override, field):
    """Invalid values and unknown keys raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_camera_needs_frames():
    """A camera model without frames is refused at construction."""
    with pytest.raises(ConfigError, match="with_frames"):
        load_config(None, ["model.kind=camera"])


def test_shipped_configs_load():
    """Every YAML under configs/ loads and validates."""
    from pathlib import Path

    files = [f for f in sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml")) if f.name.startswith(("sensor_", "camera_"))]
    assert files
    for f in files:
        load_config(f)
