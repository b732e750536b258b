"""``edge-build``: compile a bundle for this robot computer and fill the engine cache.

Examples::

    edge-build --device pi --bundle models/default --precision int8
    edge-build --device jetson --bundle models/default --precision fp16
    python -m edge.compile --device cpu --bundle models/default --force

Verifies the bundle (hashes, schema), checks TensorRT compatibility of the graphs (jetson),
builds the ONNX Runtime optimised models or TensorRT engines into the engine cache
(``build/engines/<bundle sha>/...``; a stale or corrupt entry is rebuilt), then runs the
encoder and the fused planner once on random inputs and prints the latency, so a successful
``edge-build`` means ``edge-run`` will start without compiling.

Exit codes: 0 ok, 2 bad bundle or arguments, 3 runtime not installed, 4 compile failed.
Never imports torch.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

import numpy as np

from edge.bundle import BundleError, load_bundle
from edge.engine_cache import EngineCache


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge-build", description="Compile a model bundle for this device and fill the engine cache.",
        epilog="example: edge-build --device pi --bundle models/default --precision int8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", required=True, choices=["cpu", "pi", "jetson"], help="target robot computer")
    ap.add_argument("--bundle", required=True, help="bundle folder, e.g. models/default")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="planner variant (fp16 only on jetson)")
    ap.add_argument("--cache-dir", default=None, help="engine cache root (default: $EDGE_JEPA_ENGINE_DIR or build/engines)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (cpu/pi)")
    ap.add_argument("--force", action="store_true", help="delete this bundle's cached engines and rebuild")
    ap.add_argument("--runs", type=int, default=10, help="timed planner calls after building (0 = none)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 0 or (args.threads is not None and args.threads < 1):
        print("edge-build: error: --runs must be >= 0 and --threads >= 1", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as e:
        print(f"edge-build: error: {e}", file=sys.stderr)
        return 2
    cache = EngineCache(args.cache_dir)
    if args.force:
        shutil.rmtree(cache.root / bundle.sha256, ignore_errors=True)
    if args.device == "jetson":
        from edge.trt_compat import check_trt_compat

        files = {bundle.planner_file(args.precision) if args.precision in bundle.planner.variants
                 else bundle.planner_file("fp32")}
        files |= {bundle.file(f) for spec in bundle.encoders.values() for f in spec.variants.values()}
        problems = {f.name: check_trt_compat(f) for f in sorted(files)}
        bad = {k: v for k, v in problems.items() if v}
        if bad:
            for name, issues in bad.items():
                print(f"edge-build: {name}: " + "; ".join(map(str, issues[:5])), file=sys.stderr)
            print("edge-build: error: the bundle's graphs are not TensorRT-compatible; re-export with edge-export",
                  file=sys.stderr)
            return 4
    from edge.backends import make_backend

    options = {"cache": cache}
    if args.threads is not None and args.device != "jetson":
        options["intra_op_threads"] = args.threads
    t0 = time.perf_counter()
    try:
        backend = make_backend(bundle, args.device, args.precision, **options)
    except BundleError as e:
        print(f"edge-build: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"edge-build: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"edge-build: error: {e}", file=sys.stderr)
        return 3
    except RuntimeError as e:
        print(f"edge-build: error: compiling failed: {e}", file=sys.stderr)
        return 4
    build_s = time.perf_counter() - t0
    with backend:
        print(f"bundle {bundle.path} (sha256 {bundle.sha256[:12]}), device {args.device}, precision {args.precision}")
        for graph, result in backend.cache_results.items():
            print(f"  {graph:8s} {result.status:16s} {result.path}" + (f"  ({result.reason})" if result.status.startswith("rebuilt") else ""))
        print(f"  compile/load time {build_s:.1f} s")
        p = bundle.planner
        rng = np.random.default_rng(0)
        sensor = rng.uniform(-1, 1, 14).astype(np.float32)
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) if backend.encoder_name == "camera" else None
        z0 = backend.encode(sensor, frame)
        z_goal = backend.encode(rng.uniform(-1, 1, 14).astype(np.float32), frame)
        mean = np.zeros((p.H, p.A), np.float32)
        std = np.full((p.H, p.A), p.std_init, np.float32)
        times = []
        for _ in range(args.runs):
            noise = rng.standard_normal((p.J, p.N, p.H, p.A)).astype(np.float32)
            t = time.perf_counter()
            result = backend.plan(z0, z_goal, mean, std, noise)
            times.append((time.perf_counter() - t) * 1e3)
        if times:
            if not np.all(np.isfinite(result.mean_out)):
                print("edge-build: error: the planner returned non-finite actions", file=sys.stderr)
                return 4
            print(f"  planner N={p.N} H={p.H} J={p.J}: median {statistics.median(times):.2f} ms over {len(times)} calls "
                  f"(first action {np.round(result.first_action, 3).tolist()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
