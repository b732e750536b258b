"""Model bundle loader: schema check and sha256 verification of every file.

A bundle is a folder (``models/<name>/``) written by ``edge-export`` (``training/bundle.py``):

- ``manifest.json`` (schema version :data:`SCHEMA_VERSION`): ``files`` {relative path: sha256},
  ``encoders`` {``sensor``: {file, variants, inputs, outputs}, optional ``camera``},
  ``planner`` {file, N, H, J, A, E, temperature, smoothness, std_init, std_min, action_low,
  action_high, encoder, variants {fp32, int8, fp16: {file, [cpu_file,] ...}}, inputs, outputs},
  ``normalisation``, ``sensor_layout``, ``action_scaling`` {max_wheel_speed},
  ``training`` {config, metrics}, ``created_by`` {command, version}.
- the ONNX files it names, and ``MODEL_CARD.md``.

:func:`load_bundle` verifies the schema version, that every file named anywhere in the
manifest is listed in ``files``, exists inside the folder and has the recorded sha256. Any
failure raises :class:`BundleError` naming the file and what to do. The bundle's identity
(:attr:`Bundle.sha256`, used by the engine cache) is the sha256 of ``manifest.json``, which
pins every other file through its hashes.

Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

SCHEMA_VERSION = 1
"""Manifest schema this runtime reads. Bumped on any incompatible manifest change."""
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
"""Graph variants a bundle may carry (fp32 is mandatory)."""

_PLANNER_INT_KEYS = ("N", "H", "J", "A", "E")
_PLANNER_FLOAT_KEYS = ("temperature", "smoothness", "std_init", "std_min", "action_low", "action_high")
_TOP_LEVEL_KEYS = ("schema_version", "files", "encoders", "planner", "normalisation", "sensor_layout",
                   "action_scaling", "training", "created_by")
_REEXPORT_HINT = "re-export the bundle with `edge-export --checkpoint <run dir> --out <bundle dir>`"


class BundleError(Exception):
    """A bundle is missing, incomplete, tampered with or of an unsupported schema."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph (an encoder) and its precision variants.

    Attributes:
        name: ``sensor`` or ``camera``.
        variants: precision -> bundle-relative file (``fp32`` always present).
        inputs / outputs: tensor name -> {"shape": [...], "dtype": "float32"}; symbolic
            dimensions are strings (``"batch"``).
    """

    name: str
    variants: Mapping[str, str]
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]


@dataclass(frozen=True)
class PlannerSpec:
    """The fused MPPI planner graph and the parameters fixed into it at export.

    ``N`` samples, ``H`` horizon steps, ``J`` MPPI iterations, ``A`` action size, ``E``
    embedding size. ``encoder`` names the encoder whose embedding the planner consumes.
    ``variants``: precision -> {"file": ..., plus export-time error figures}.
    """

    N: int
    H: int
    J: int
    A: int
    E: int
    temperature: float
    smoothness: float
    std_init: float
    std_min: float
    action_low: float
    action_high: float
    encoder: str
    variants: Mapping[str, Mapping[str, Any]]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Construct with :func:`load_bundle`.

    Attributes:
        path: the bundle folder.
        sha256: sha256 of ``manifest.json`` (the bundle's identity for the engine cache).
        manifest: the parsed manifest (read-only by convention).
        encoders: encoder name -> :class:`GraphSpec`.
        planner: :class:`PlannerSpec`.
    """

    path: Path
    sha256: str
    manifest: Mapping[str, Any]
    encoders: Mapping[str, GraphSpec]
    planner: PlannerSpec

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def normalisation(self) -> Mapping[str, Any]:
        return self.manifest["normalisation"]

    @property
    def max_wheel_speed(self) -> float:
        """rad/s that a normalised action of 1.0 maps to."""
        return float(self.manifest["action_scaling"]["max_wheel_speed"])

    def file(self, relative: str) -> Path:
        """Absolute path of a bundle file (already verified by :func:`load_bundle`)."""
        return self.path / relative

    def planner_file(self, precision: str, cpu: bool = False) -> Path:
        """Planner ONNX file for ``precision``; BundleError when the bundle lacks it.

        ``cpu=True`` returns the variant's ``cpu_file`` when it has one: for int8 that is the
        dynamically quantised graph, which ONNX Runtime runs faster on CPUs than the QDQ file
        (the QDQ ``file`` is what TensorRT consumes).
        """
        variant = self.planner.variants.get(precision)
        if variant is None:
            raise BundleError(
                f"bundle {self.path} has no {precision} planner (has: {sorted(self.planner.variants)}); "
                f"{_REEXPORT_HINT} --precisions {','.join(sorted(set(self.planner.variants) | {precision}))}")
        return self.file(variant.get("cpu_file", variant["file"]) if cpu else variant["file"])

    def encoder_file(self, name: str, precision: str) -> Path:
        """Encoder ONNX file for ``precision``, falling back to fp32 when no such variant exists.

        Encoders are small and run once per tick, so a bundle may carry only their fp32 form.
        """
        if name not in self.encoders:
            raise BundleError(f"bundle {self.path} has no '{name}' encoder (has: {sorted(self.encoders)})")
        variants = self.encoders[name].variants
        return self.file(variants.get(precision, variants["fp32"]))


def _fail(path: Path, what: str) -> BundleError:
    return BundleError(f"bundle {path}: {what}")


def _check_relative(bundle: Path, rel: Any, where: str) -> str:
    """Reject absolute paths and parent references: a manifest may only name files inside it."""
    if not isinstance(rel, str) or not rel:
        raise _fail(bundle, f"{where} must be a non-empty relative path, got {rel!r}; {_REEXPORT_HINT}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise _fail(bundle, f"{where} names '{rel}', which is outside the bundle folder; refusing to load it")
    return rel


def _require(mapping: Any, key: str, bundle: Path, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise _fail(bundle, f"manifest.json lacks '{where}{key}'; {_REEXPORT_HINT}")
    return mapping[key]


def _parse_variants(bundle: Path, raw: Any, where: str, files: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping) or "fp32" not in raw:
        raise _fail(bundle, f"manifest.json '{where}' must map precisions to files and include fp32; {_REEXPORT_HINT}")
    out: dict[str, dict[str, Any]] = {}
    for precision, spec in raw.items():
        if precision not in PRECISIONS:
            raise _fail(bundle, f"manifest.json '{where}' has unknown precision '{precision}' (known: {PRECISIONS})")
        entry = dict(spec) if isinstance(spec, Mapping) else {"file": spec}
        rel = _check_relative(bundle, entry.get("file"), f"{where}.{precision}.file")
        if rel not in files:
            raise _fail(bundle, f"'{rel}' ({where}.{precision}) is not listed in manifest 'files', so its hash "
                                f"cannot be checked; {_REEXPORT_HINT}")
        entry["file"] = rel
        if "cpu_file" in entry:
            cpu_rel = _check_relative(bundle, entry["cpu_file"], f"{where}.{precision}.cpu_file")
            if cpu_rel not in files:
                raise _fail(bundle, f"'{cpu_rel}' ({where}.{precision}.cpu_file) is not listed in manifest 'files', "
                                    f"so its hash cannot be checked; {_REEXPORT_HINT}")
        out[precision] = entry
    return out


def parse_manifest(bundle: Path, manifest: Any) -> tuple[dict[str, GraphSpec], PlannerSpec]:
    """Validate the manifest structure (no file access). Raises BundleError naming the key."""
    if not isinstance(manifest, Mapping):
        raise _fail(bundle, "manifest.json must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(bundle, f"manifest.json has schema_version {version!r}, this runtime reads {SCHEMA_VERSION}; "
                            f"{_REEXPORT_HINT} with the edge-jepa version installed here, or install the runtime "
                            f"version that wrote it")
    for key in _TOP_LEVEL_KEYS:
        _require(manifest, key, bundle, "")
    files = manifest["files"]
    if not isinstance(files, Mapping) or not files:
        raise _fail(bundle, f"manifest.json 'files' must be a non-empty object; {_REEXPORT_HINT}")
    for rel, digest in files.items():
        _check_relative(bundle, rel, "files")
        if rel == MANIFEST_NAME:
            raise _fail(bundle, "manifest.json cannot list itself in 'files'")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise _fail(bundle, f"manifest.json 'files' entry for '{rel}' is not a lowercase hex sha256")

    encoders_raw = manifest["encoders"]
    if not isinstance(encoders_raw, Mapping) or "sensor" not in encoders_raw and "camera" not in encoders_raw:
        raise _fail(bundle, f"manifest.json 'encoders' must contain 'sensor' and/or 'camera'; {_REEXPORT_HINT}")
    encoders: dict[str, GraphSpec] = {}
    for name, spec in encoders_raw.items():
        if name not in ("sensor", "camera"):
            raise _fail(bundle, f"manifest.json 'encoders' has unknown encoder '{name}' (known: sensor, camera)")
        variants_raw = spec.get("variants") if isinstance(spec, Mapping) else None
        if variants_raw is None:
            variants_raw = {"fp32": _require(spec, "file", bundle, f"encoders.{name}.")}
        variants = _parse_variants(bundle, variants_raw, f"encoders.{name}.variants", files)
        encoders[name] = GraphSpec(name=name, variants={p: v["file"] for p, v in variants.items()},
                                   inputs=_require(spec, "inputs", bundle, f"encoders.{name}."),
                                   outputs=_require(spec, "outputs", bundle, f"encoders.{name}."))

    p = manifest["planner"]
    values: dict[str, Any] = {}
    for key in _PLANNER_INT_KEYS:
        v = _require(p, key, bundle, "planner.")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(bundle, f"manifest.json 'planner.{key}' must be a positive integer, got {v!r}")
        values[key] = v
    for key in _PLANNER_FLOAT_KEYS:
        v = _require(p, key, bundle, "planner.")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _fail(bundle, f"manifest.json 'planner.{key}' must be a number, got {v!r}")
        values[key] = float(v)
    if not values["action_low"] < values["action_high"]:
        raise _fail(bundle, "manifest.json 'planner.action_low' must be below 'planner.action_high'")
    encoder = p.get("encoder", "sensor")
    if encoder not in encoders:
        raise _fail(bundle, f"manifest.json 'planner.encoder' is '{encoder}' but the bundle has encoders "
                            f"{sorted(encoders)}; {_REEXPORT_HINT}")
    variants_raw = p.get("variants") or {"fp32": _require(p, "file", bundle, "planner.")}
    planner = PlannerSpec(**values, encoder=encoder,
                          variants=_parse_variants(bundle, variants_raw, "planner.variants", files),
                          inputs=p.get("inputs", {}), outputs=p.get("outputs", {}))
    return encoders, planner


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle folder.

    Checks, in order: the folder and ``manifest.json`` exist and parse, the schema version,
    the manifest structure, then for every file in ``files``: present, a regular file inside
    the folder, sha256 equal to the recorded one.

    Raises:
        BundleError: naming the offending file or manifest key and what to do.
    """
    bundle = Path(path)
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist; pass --bundle models/<name> "
                          f"(a folder written by edge-export)")
    manifest_path = bundle / MANIFEST_NAME
    if not manifest_path.is_file():
        raise _fail(bundle, f"{MANIFEST_NAME} is missing, so nothing in it can be verified; {_REEXPORT_HINT}")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(bundle, f"{MANIFEST_NAME} is not valid JSON ({e}); {_REEXPORT_HINT}") from e
    encoders, planner = parse_manifest(bundle, manifest)
    root = bundle.resolve()
    for rel, expected in manifest["files"].items():
        f = bundle / rel
        if not f.is_file():
            raise _fail(bundle, f"file '{rel}' listed in {MANIFEST_NAME} is missing; the bundle is incomplete: "
                                f"copy the whole folder again or {_REEXPORT_HINT}")
        if root not in f.resolve().parents:
            raise _fail(bundle, f"file '{rel}' resolves outside the bundle folder (a symlink?); refusing to load it")
        actual = sha256_file(f)
        if actual != expected:
            raise _fail(bundle, f"file '{rel}' has sha256 {actual[:12]}..., the manifest records {expected[:12]}...: "
                                f"it was modified or corrupted after export; copy the bundle again or "
                                f"{_REEXPORT_HINT}")
    return Bundle(path=bundle, sha256=hashlib.sha256(raw).hexdigest(), manifest=manifest,
                  encoders=encoders, planner=planner)
