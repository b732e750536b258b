"""Bundle writer (training/bundle.py) and loader (edge/bundle.py): hashes, schema, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.bundle import SCHEMA_VERSION, BundleError, load_bundle, sha256_file
from training.bundle import MODEL_CARD, write_bundle

E, H, N, J = 8, 3, 4, 2


def _parts() -> dict:
    io = {"obs": {"shape": ["batch", 14], "dtype": "float32"}}
    return {
        "encoders": {"sensor": {"file": "sensor_encoder_fp32.onnx", "variants": {"fp32": "sensor_encoder_fp32.onnx"},
                                "inputs": io, "outputs": {"z": {"shape": ["batch", E], "dtype": "float32"}}}},
        "planner": {"file": "planner_fp32.onnx", "N": N, "H": H, "J": J, "A": 2, "E": E, "temperature": 0.05,
                    "smoothness": 0.05, "std_init": 0.6, "std_min": 0.05, "action_low": -1.0, "action_high": 1.0,
                    "encoder": "sensor",
                    "variants": {"fp32": {"file": "planner_fp32.onnx"}, "int8": {"file": "planner_int8.onnx"}}},
    }


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name in ("sensor_encoder_fp32.onnx", "planner_fp32.onnx", "planner_int8.onnx"):
        (src / name).write_bytes(name.encode() * 50)
        files[name] = src / name
    return write_bundle(tmp_path / "models" / "tiny", files, _parts(), training_config={"model": {"kind": "sensor"}},
                        training_metrics={"val_loss": 0.25}, command="edge-export --checkpoint runs/x --out models/tiny",
                        measure=False)


def test_written_bundle_loads_and_records_hash_of_every_file(bundle_dir: Path) -> None:
    """The writer lists every file (model card included) with its sha256 and the loader accepts it."""
    b = load_bundle(bundle_dir)
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert set(m["files"]) == {"sensor_encoder_fp32.onnx", "planner_fp32.onnx", "planner_int8.onnx", MODEL_CARD}
    for rel, digest in m["files"].items():
        assert sha256_file(bundle_dir / rel) == digest
    assert b.planner.N == N and b.planner.H == H and b.planner.J == J and b.planner.encoder == "sensor"
    assert b.planner_file("int8").name == "planner_int8.onnx"
    assert b.encoder_file("sensor", "int8").name == "sensor_encoder_fp32.onnx"  # encoder falls back to fp32
    assert m["action_scaling"]["max_wheel_speed"] == m["normalisation"]["max_wheel_speed_rad_s"]
    assert len(m["sensor_layout"]) == 14
    assert m["training"]["metrics"] == {"val_loss": 0.25}
    card = (bundle_dir / MODEL_CARD).read_text()
    assert "edge-export --checkpoint runs/x --out models/tiny" in card and "val_loss" in card
    assert not any(p.name.startswith(".") for p in bundle_dir.parent.iterdir())  # no temp folders left


def test_tampered_file_is_refused_naming_it(bundle_dir: Path) -> None:
    """One changed byte in an ONNX file makes load_bundle fail and name that file."""
    f = bundle_dir / "planner_int8.onnx"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"planner_int8\.onnx.*modified"):
        load_bundle(bundle_dir)


def test_tampered_model_card_is_refused(bundle_dir: Path) -> None:
    """MODEL_CARD.md is hashed too."""
    (bundle_dir / MODEL_CARD).write_text("# fake card\n")
    with pytest.raises(BundleError, match="MODEL_CARD.md"):
        load_bundle(bundle_dir)


def test_missing_file_is_refused_as_incomplete(bundle_dir: Path) -> None:
    (bundle_dir / "planner_fp32.onnx").unlink()
    with pytest.raises(BundleError, match=r"planner_fp32\.onnx.*missing.*incomplete"):
        load_bundle(bundle_dir)


def test_missing_manifest_and_missing_folder(bundle_dir: Path, tmp_path: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def _edit_manifest(bundle_dir: Path, fn) -> None:
    p = bundle_dir / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_schema_version_mismatch_is_refused(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_dir)


def test_file_outside_the_bundle_is_refused(bundle_dir: Path) -> None:
    """A manifest may not point outside its folder (path traversal)."""
    def evil(m):
        m["files"]["../secret.onnx"] = "0" * 64
    _edit_manifest(bundle_dir, evil)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_dir)


def test_variant_not_covered_by_a_hash_is_refused(bundle_dir: Path) -> None:
    """Every file the runtime may load must be hashed."""
    def drop(m):
        del m["files"]["planner_int8.onnx"]
    _edit_manifest(bundle_dir, drop)
    with pytest.raises(BundleError, match=r"planner_int8\.onnx.*not listed"):
        load_bundle(bundle_dir)


def test_missing_planner_key_and_bad_values(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda m: m["planner"].pop("temperature"))
    with pytest.raises(BundleError, match="planner.temperature"):
        load_bundle(bundle_dir)
    _edit_manifest(bundle_dir, lambda m: m["planner"].update(temperature=0.1, N=0))
    with pytest.raises(BundleError, match="planner.N"):
        load_bundle(bundle_dir)


def test_cpu_file_must_be_hashed(bundle_dir: Path) -> None:
    """An int8 cpu_file (dynamic quantisation for ONNX Runtime) is a loadable file, so it needs a hash too."""
    _edit_manifest(bundle_dir, lambda m: m["planner"]["variants"]["int8"].update(cpu_file="planner_int8_dynamic.onnx"))
    with pytest.raises(BundleError, match=r"planner_int8_dynamic\.onnx.*cpu_file.*not listed"):
        load_bundle(bundle_dir)


def test_absent_precision_names_the_reexport(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="--precisions"):
        b.planner_file("fp16")


def test_rewriting_a_bundle_replaces_it(bundle_dir: Path, tmp_path: Path) -> None:
    """Writing to an existing bundle folder swaps in the new content (old files do not linger)."""
    src = tmp_path / "src2"
    src.mkdir()
    files = {}
    for name in ("sensor_encoder_fp32.onnx", "planner_fp32.onnx"):
        (src / name).write_bytes(b"new" + name.encode())
        files[name] = src / name
    parts = _parts()
    parts["planner"]["variants"] = {"fp32": {"file": "planner_fp32.onnx"}}
    write_bundle(bundle_dir, files, parts, {}, {}, measure=False)
    assert not (bundle_dir / "planner_int8.onnx").exists()
    assert set(load_bundle(bundle_dir).planner.variants) == {"fp32"}
