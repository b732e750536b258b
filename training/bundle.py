"""Bundle writer: ONNX files + ``manifest.json`` (sha256 of every file) + ``MODEL_CARD.md``.

The reader and the schema are in :mod:`edge.bundle` (docs/ARCHITECTURE.md "Bundle"). The
writer assembles the bundle in a temporary sibling folder, measures ONNX Runtime latency of
every graph on this machine, writes the model card, hashes every file, writes the manifest
last, verifies the result with :func:`edge.bundle.load_bundle` and only then moves it into
place (replacing an older bundle of the same name), so a half-written bundle never appears
under ``models/``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from edge import __version__
from edge.bundle import MANIFEST_NAME, SCHEMA_VERSION, load_bundle, sha256_file
from edge.sim.obs import RANGE_BEARINGS_DEG, SensorNormalisation

MODEL_CARD = "MODEL_CARD.md"
SENSOR_LAYOUT = (
    [f"range[{i}] / max_range_m (bearing {b} deg, NaN -> 1.0)" for i, b in enumerate(RANGE_BEARINGS_DEG)]
    + ["x / half_width_m (odometry)", "y / half_height_m (odometry)", "sin(theta)", "cos(theta)",
       "left wheel speed / max_wheel_speed_rad_s", "right wheel speed / max_wheel_speed_rad_s"]
)
"""Human-readable meaning of each of the 14 sensor-vector entries (manifest ``sensor_layout``)."""


def _dummy_feeds(sess: ort.InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.float16 if i.type == "tensor(float16)" else np.float32
        feeds[i.name] = rng.standard_normal(shape).astype(dtype) * 0.5
    return feeds


def measure_latency_ms(path: str | Path, threads: int = 1, runs: int = 20, warmup: int = 3) -> float:
    """Median ONNX Runtime CPU latency (ms) of one call with batch 1 / the graph's fixed shapes."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = _dummy_feeds(sess, np.random.default_rng(0))
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _fmt_params(n: int) -> str:
    return f"{n:,} ({n * 4 / 1024:.0f} KiB fp32)"


def render_model_card(manifest: Mapping[str, Any], latency: Mapping[str, float], sizes: Mapping[str, int]) -> str:
    """MODEL_CARD.md text from the manifest parts (what, how made, how good, how fast)."""
    p = manifest["planner"]
    lines = [f"# Model card: {manifest['name']}", "",
             f"Written by edge-jepa {manifest['created_by']['version']} on {manifest['created_by']['created_utc']}.", "",
             "## How it was made", "", "```", manifest["created_by"]["command"], "```", ""]
    lines += ["## What is inside", "", "| file | bytes | ONNX Runtime CPU latency (ms, 1 thread, median) |",
              "|---|---|---|"]
    for f in sorted(sizes):
        lat = latency.get(f)
        lines.append(f"| `{f}` | {sizes[f]:,} | {'' if lat is None else f'{lat:.2f}'} |")
    lines += ["", f"Latency measured on: {manifest['created_by']['machine']} (onnxruntime "
                  f"{manifest['created_by']['onnxruntime']}); measure on the robot with `edge-profile`.", ""]
    lines += ["## Models", ""]
    for name, spec in manifest["encoders"].items():
        lines.append(f"- **{name} encoder**: {_fmt_params(int(spec.get('parameters', 0)))} parameters; inputs "
                     f"{ {k: v['shape'] for k, v in spec['inputs'].items()} } -> z {spec['outputs']['z']['shape']}.")
    lines.append(f"- **predictor** (GRU, {p.get('gru_layers')} layer(s), hidden {p.get('gru_hidden')}): "
                 f"{_fmt_params(int(p.get('predictor_parameters', 0)))} parameters.")
    lines += ["", "## Fused planner", "",
              f"MPPI with N={p['N']} samples, horizon H={p['H']}, J={p['J']} iterations in one graph call; "
              f"temperature {p['temperature']}, smoothness {p['smoothness']}, std_init {p['std_init']}, "
              f"std_min {p['std_min']}, actions in [{p['action_low']}, {p['action_high']}]. "
              f"Plans on the {p['encoder']} embedding (E={p['E']}).", "",
              f"Cost: `{p.get('cost', '')}`.", "",
              "| variant | file | max error vs reference |", "|---|---|---|"]
    for prec, v in p["variants"].items():
        err = v.get("error_vs_fp32") or (v.get("check") or {}).get("max_abs", {})
        ref = "fp32 ONNX" if "error_vs_fp32" in v else "torch reference"
        worst = max(err.values()) if err else float("nan")
        detail = ", ".join(f"{k} {e:.2e}" for k, e in err.items())
        lines.append(f"| {prec} | `{v['file']}` | {worst:.2e} vs {ref} ({detail}) |")
        if v.get("cpu_file"):
            cerr = v.get("cpu_error_vs_fp32") or {}
            cdetail = ", ".join(f"{k} {e:.2e}" for k, e in cerr.items())
            cworst = max(cerr.values()) if cerr else float("nan")
            lines.append(f"| {prec} (CPU: ONNX Runtime uses this) | `{v['cpu_file']}` | {cworst:.2e} vs fp32 ONNX "
                         f"({cdetail}) |")
    lines += ["", "How to read this: costs and `conf` are well-conditioned, so their errors measure the numerics. "
              "`mean_out` / `best_actions` are MPPI's argmin-like choice among N samples (temperature on "
              "std-normalised costs): a cost change smaller than the gap between the two best samples can "
              "pick another sample, so large action errors of a quantised variant mean 'chose a different, "
              "nearly as cheap plan', not a broken graph. Closed-loop success decides (`edge-eval`)."]
    compat = manifest.get("tensorrt_compat", {})
    if compat:
        bad = {f: i for f, i in compat.items() if i}
        lines += ["", "TensorRT 10.3 compatibility check: " + (
            "all graphs pass." if not bad else "issues: " + "; ".join(f"{f}: {len(i)}" for f, i in bad.items()))]
    lines += ["", "## Training", ""]
    metrics = manifest["training"].get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No training metrics were recorded for this run.")
    cfg = manifest["training"].get("config") or {}
    if cfg:
        lines += ["", "<details><summary>training config</summary>", "", "```json",
                  json.dumps(cfg, indent=1), "```", "", "</details>"]
    notes = manifest["created_by"].get("notes")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    lines += ["", "## Use", "", "```", f"edge-build --device cpu --bundle models/{manifest['name']}",
              f"edge-run --device cpu --bundle models/{manifest['name']} --sim", "```", ""]
    return "\n".join(lines)


def write_bundle(out_dir: str | Path, files: Mapping[str, Path], manifest_parts: Mapping[str, Any],
                 training_config: Mapping[str, Any], training_metrics: Mapping[str, Any],
                 command: str | None = None, name: str | None = None,
                 normalisation: SensorNormalisation | None = None, measure: bool = True,
                 verify: bool = True, notes: str | None = None) -> Path:
    """Write a bundle folder atomically and verify it.

    Args:
        out_dir: destination (replaced if it exists).
        files: bundle-relative name -> source file (ONNX graphs).
        manifest_parts: ``encoders``, ``planner`` (and optional extra keys) of the manifest.
        training_config / training_metrics: recorded under ``training``.
        command: the command line that made the bundle (model card + ``created_by``).
        name: bundle name (default: the folder name).
        normalisation: sensor normalisation constants (default: the simulator's).
        measure: measure ONNX Runtime latency of every graph for the model card.
        notes: markdown added to the model card (and ``created_by.notes``), e.g. how the data
            was collected and the model trained.
        verify: verify the written bundle with :func:`edge.bundle.load_bundle`.
    Returns:
        the bundle folder.
    """
    out_dir = Path(out_dir)
    name = name or out_dir.name
    norm = normalisation or SensorNormalisation()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for rel, src in files.items():
            shutil.copyfile(src, tmp / rel)
        latency = {rel: measure_latency_ms(tmp / rel) for rel in files if rel.endswith(".onnx")} if measure else {}
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "files": {},
            **manifest_parts,
            "normalisation": norm.as_dict(),
            "sensor_layout": SENSOR_LAYOUT,
            "action_scaling": {"max_wheel_speed": norm.max_wheel_speed_rad_s},
            "training": {"config": dict(training_config), "metrics": dict(training_metrics)},
            "latency_ms_1thread": latency,
            "created_by": {"command": command or "training.bundle.write_bundle (python API)", "version": __version__,
                           "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                           "onnxruntime": ort.__version__, **({"notes": notes} if notes else {})},
        }
        sizes = {rel: (tmp / rel).stat().st_size for rel in files}
        (tmp / MODEL_CARD).write_text(render_model_card(manifest, latency, sizes), encoding="utf-8")
        manifest["files"] = {rel: sha256_file(tmp / rel) for rel in sorted([*files, MODEL_CARD])}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        if verify:
            load_bundle(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
