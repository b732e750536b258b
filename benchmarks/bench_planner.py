"""Fused planner and encoder latency on this CPU (ONNX Runtime), against the torch reference.

    python benchmarks/bench_planner.py [--checkpoint runs/default_sensor] [--quick]

One run measures, for the default planner size (model sizes, H, J from ``configs/sensor_default.yaml``
or a checkpoint) and N in {64, 256, 1024} plus the config's default N:

- the fused ONNX Runtime planner (one graph call) vs the torch reference planner
  (``training.planner.plan``: Python loop over the horizon, batched over samples), same
  weights, N, H, J, both on 1 thread: goal >= 3x at the default N;
- achieved GFLOP/s of the fused planner (FLOPs counted analytically: GRU matmuls, output
  projection, cost) divided by the GFLOP/s of a large float32 matmul on 1 thread measured in the
  same run (ONNX Runtime MatMul and numpy; the faster is the ceiling): goal >= 0.6;
- INT8 vs FP32 planner latency for static QDQ (the TensorRT-consumable bundle format),
  QOperator static and dynamic quantisation: goal >= 1.3x faster;
- encoder latency per call (batch 1) for the sensor and the camera model;
- ONNX Runtime options at the default N: graph optimisation level, intra-op threads 1 vs 2,
  sequential vs parallel execution, I/O binding vs plain run.

Prints a table and writes ``benchmarks/results/planner.json``. Timings are medians; the
machine is shared, so compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training import export as ex  # noqa: E402
from training.config import PlannerConfig, load_config  # noqa: E402
from training.models import CameraEncoder, Predictor, SensorEncoder  # noqa: E402
from training.planner import plan  # noqa: E402
from training.quantize import ListCalibrationReader, planner_calibration_feeds, quantize_int8, quantize_int8_dynamic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "planner.json"


def timeit(fn, min_runs: int = 5, budget_s: float = 1.5, warmup: int = 2) -> float:
    """Median wall time (ms) of ``fn()`` over >= min_runs calls or ~budget_s."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def interleaved(fns: dict, min_rounds: int = 5, budget_s: float = 1.5, warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) per function, calling them in turn each round.

    The machine is shared: load drifts during a run, so alternatives are timed interleaved
    (round-robin) rather than one after the other, which keeps their ratios fair.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s * len(fns) and rounds < 200):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}


def session(path: Path | str, threads: int = 1, level: str = "all", parallel: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads if parallel else 1
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def planner_flops(pred: Predictor, params: ex.PlannerParams) -> float:
    """FLOPs of one fused planner call, counted analytically (multiply-add = 2 FLOPs).

    Per sample-step: GRU input and recurrent matmuls of every layer (6 Hd (I + Hd)), the
    output projection (2 Hd E) and the cost term (3 E). Plus the final mean rollout with the
    confidence head, and the MPPI update (weights, mean, std: ~8 H A per sample).
    """
    E, hd, A = pred.embed_dim, pred.hidden, 2
    gru = sum(6 * hd * ((E + A if i == 0 else hd) + hd) for i in range(pred.layers))
    per_step = gru + 2 * hd * E + 3 * E
    conf_head = 2 * hd * pred.conf_head[0].out_features + 2 * pred.conf_head[0].out_features
    sampled = params.J * params.N * (params.H * per_step + 8 * params.H * A)
    final = params.H * (per_step + conf_head)
    return float(sampled + final + 2 * E * pred.layers * hd)


def matmul_ceiling(n: int = 1024) -> dict[str, float]:
    """GFLOP/s of an n x n float32 matmul on 1 thread: ONNX Runtime MatMul and numpy."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.onnx"
        onnx.save(m, str(path))
        s = session(path)
        t_ort = timeit(lambda: s.run(None, {"a": a, "b": b}))
    t_np = timeit(lambda: a @ b)
    flops = 2.0 * n**3
    return {"ort_matmul_gflops": flops / t_ort / 1e6, "numpy_matmul_gflops": flops / t_np / 1e6}


def closed_loop_success(bundle_dir: str, precision: str, episodes: int, max_steps: int, seed: int) -> dict:
    """Closed-loop planning success of a bundle through the ORT backend (as ``edge-eval`` does with torch).

    Same episodes (evaluate mode: goal in the other room) for every precision: per tick each
    episode is encoded and planned with one fused-planner call, warm-started by shifting the
    previous plan; noise comes from a seeded generator.
    """
    from edge.backends import make_backend
    from edge.engine_cache import EngineCache
    from edge.sim.env import BatchSim, SimConfig

    cache = EngineCache(tempfile.mkdtemp(prefix="bench-success-"))
    be = make_backend(bundle_dir, "cpu", precision, cache=cache)
    p = be.bundle.planner
    sim = BatchSim(SimConfig(), episodes, seed=seed)
    obs = sim.reset(seed=seed, mode="evaluate")
    rng = np.random.default_rng(seed + 1)
    goal_pose = np.concatenate([sim.goal, rng.uniform(-np.pi, np.pi, size=(episodes, 1))], axis=-1)
    goal_sim = BatchSim(SimConfig(), episodes, seed=seed + 2)
    goal_obs = goal_sim.reset(layout=sim.layout, start=goal_pose, goal=sim.goal)
    z_goal = be.encode_batch(goal_obs["sensor"])
    mean = np.zeros((episodes, p.H, p.A), np.float32)
    std0 = np.full((p.H, p.A), p.std_init, np.float32)
    noise_rng = np.random.default_rng(seed + 3)
    repeat = int(be.bundle.manifest["planner"].get("action_repeat", 1))  # one predictor step = r ticks
    success = np.zeros(episodes, bool)
    actions = np.zeros((episodes, p.A), np.float32)
    for tick in range(max_steps):
        if tick % repeat:
            obs, info = sim.step(np.where(success[:, None], 0.0, actions))
            success |= info["success"]
            continue
        z = be.encode_batch(obs["sensor"])
        actions = np.zeros((episodes, p.A), np.float32)
        for i in np.flatnonzero(~success):
            noise = noise_rng.standard_normal((p.J, p.N, p.H, p.A)).astype(np.float32)
            r = be.plan(z[i], z_goal[i], mean[i], std0, noise)
            actions[i] = r.first_action
            mean[i] = np.concatenate([r.mean_out[1:], r.mean_out[-1:]])
        obs, info = sim.step(actions)
        success |= info["success"]
        if success.all():
            break
    be.close()
    return {"precision": precision, "episodes": episodes, "successes": int(success.sum()),
            "success_rate": float(success.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python benchmarks/bench_planner.py --checkpoint runs/default_sensor")
    ap.add_argument("--checkpoint", help="run folder (default: random weights of --config)")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "sensor_default.yaml"),
                    help="training config giving the model and planner sizes (default: the shipped default model's)")
    ap.add_argument("--quick", action="store_true", help="N=64 only, shorter timings")
    ap.add_argument("--out", default=str(RESULTS), help="JSON results path")
    ap.add_argument("--success-bundle", help="also compare closed-loop planning success fp32 vs int8 of this bundle")
    ap.add_argument("--episodes", type=int, default=20, help="episodes per precision for --success-bundle")
    ap.add_argument("--max-steps", type=int, default=200, help="control steps per episode for --success-bundle")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.checkpoint:
        from training.checkpoint import load_world_model

        wm = load_world_model(args.checkpoint)
        cfg, pred, sensor_enc = wm.config, wm.predictor.eval(), wm.encoder.eval()
        weights = f"checkpoint {args.checkpoint}"
    else:
        cfg = load_config(args.config)
        m = cfg.model
        pred = Predictor(m.embed_dim, m.pred_hidden, m.pred_layers, conf_hidden=m.conf_hidden).eval()
        sensor_enc = SensorEncoder(m.embed_dim, m.enc_hidden, m.enc_depth).eval()
        weights = f"random ({Path(args.config).name})"
    m = cfg.model
    cam_enc = CameraEncoder(m.embed_dim, tuple(m.cam_channels), m.enc_hidden).eval()
    pc: PlannerConfig = cfg.planner
    default_N = pc.samples
    Ns = [64] if args.quick else sorted({64, 256, 1024, default_N})
    budget = 0.5 if args.quick else 1.5
    rng = np.random.default_rng(0)
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "torch": torch.__version__},
                     "weights": weights,
                     "model": {"E": m.embed_dim, "gru_hidden": m.pred_hidden, "gru_layers": m.pred_layers},
                     "planner": {"H": pc.horizon, "J": pc.iterations, "default_N": default_N}}
    ceiling = matmul_ceiling()
    results["matmul_ceiling"] = ceiling
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-planner-"))
    sensors = np.concatenate([rng.uniform(0.05, 1, (64, 8)), rng.uniform(-0.95, 0.95, (64, 2)),
                              rng.uniform(-1, 1, (64, 4))], 1).astype(np.float32)
    with torch.no_grad():
        z_real = sensor_enc(torch.from_numpy(sensors)).numpy()
    paths = {}
    for N in Ns:
        params = ex.PlannerParams(N=N, H=pc.horizon, J=pc.iterations, temperature=pc.temperature,
                                  smoothness=pc.smoothness, std_init=pc.std_init, std_min=pc.std_min)
        path = ex.export_planner_onnx(pred, params, tmp / f"planner_{N}.onnx")
        paths[N] = (path, params)
        feeds = planner_calibration_feeds(z_real, params, rng, n=1)[0]
        s = session(path)
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        rcfg = PlannerConfig(samples=N, horizon=pc.horizon, iterations=pc.iterations, temperature=pc.temperature,
                             smoothness=pc.smoothness, std_init=pc.std_init, std_min=pc.std_min,
                             elites=min(pc.elites, N))
        t = interleaved({"ort": lambda: s.run(None, feeds),
                         "torch": lambda: plan(pred, tfeeds["z0"], tfeeds["z_goal"], tfeeds["mean"], tfeeds["std"],
                                               tfeeds["noise"], rcfg)}, budget_s=budget)
        t_ort, t_torch = t["ort"], t["torch"]
        # the ceiling measured right after, so the ratio compares like with like under drifting load
        ceiling_now = max(matmul_ceiling().values())
        gflops = planner_flops(pred, params) / t_ort / 1e6
        row = {"N": N, "fused_ort_ms": t_ort, "torch_reference_ms": t_torch, "speedup_vs_torch": t_torch / t_ort,
               "fused_gflops": gflops, "matmul_ceiling_gflops": ceiling_now,
               "fraction_of_matmul_ceiling": gflops / ceiling_now,
               "graph_nodes": len(onnx.load(str(path)).graph.node)}
        rows.append(row)
    results["fused_vs_torch"] = rows

    # INT8 variants at the default N (or the only N in --quick).
    n_q = default_N if default_N in paths else Ns[0]
    path, params = paths[n_q]
    calib = planner_calibration_feeds(z_real, params, rng, n=8)
    feeds = planner_calibration_feeds(z_real, params, rng, n=1)[0]
    fp32_ref = session(path)
    q = {"N": n_q, "variants": {}}
    sessions = {"fp32": fp32_ref}
    variants = {"int8_static_qdq": lambda dst: quantize_int8(path, dst, calib),
                "int8_static_qoperator": lambda dst: quantize_static(
                    str(path), str(dst), ListCalibrationReader(calib), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Gemm"]),
                "int8_dynamic": lambda dst: quantize_int8_dynamic(path, dst)}
    for name, make in variants.items():
        dst = tmp / f"{name}.onnx"
        try:
            make(dst)
            sessions[name] = session(dst)
        except Exception as e:  # a quantiser may not support a form; report it instead of failing the run
            q["variants"][name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    t = interleaved({k: (lambda sq=sq: sq.run(None, feeds)) for k, sq in sessions.items()}, budget_s=budget)
    t_fp32 = q["fp32_ms"] = t["fp32"]
    for name, sq in sessions.items():
        if name == "fp32":
            continue
        errs = [ex.compare_planner_outputs(dict(zip(ex.PLANNER_OUTPUTS, sq.run(list(ex.PLANNER_OUTPUTS), f))),
                                           dict(zip(ex.PLANNER_OUTPUTS, fp32_ref.run(list(ex.PLANNER_OUTPUTS), f))))
                for f in calib[:4]]
        q["variants"][name] = {"ms": t[name], "speedup_vs_fp32": t_fp32 / t[name],
                               "mean_cost_rel_err": max(e["mean_cost"] for e in errs),
                               "conf_abs_err": max(e["conf"] for e in errs),
                               "mean_out_abs_err": max(e["mean_out"] for e in errs)}
    results["int8_vs_fp32"] = q

    # Encoders, batch 1.
    enc = {}
    for kind, model in (("sensor", sensor_enc), ("camera", cam_enc)):
        p = ex.export_encoder_onnx(model, tmp / f"{kind}.onnx")
        s = session(p)
        f = ex.random_encoder_inputs(rng, model, 1)
        enc[kind] = {"ms_per_call": timeit(lambda: s.run(None, f), budget_s=budget / 2),
                     "parameters": sum(x.numel() for x in model.parameters())}
    results["encoders_batch1"] = enc

    # ORT options at the default N.
    configs: dict[str, tuple[dict, object]] = {}
    for level in ("basic", "extended", "all"):
        for threads in (1, 2):
            so = session(path, threads, level)
            configs[f"{level}/{threads}/seq"] = ({"graph_optimization": level, "intra_op_threads": threads,
                                                  "execution": "sequential"}, lambda so=so: so.run(None, feeds))
    sp = session(path, 2, "all", parallel=True)
    configs["all/2/par"] = ({"graph_optimization": "all", "intra_op_threads": 2, "execution": "parallel"},
                            lambda: sp.run(None, feeds))
    s = session(path)
    binding = s.io_binding()
    outs = {o.name: np.empty([d if isinstance(d, int) else 1 for d in o.shape], np.float32) for o in s.get_outputs()}
    for name, buf in outs.items():
        binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)

    def bound() -> None:
        for k, v in feeds.items():
            binding.bind_cpu_input(k, v)
        s.run_with_iobinding(binding)

    configs["all/1/seq+iob"] = ({"graph_optimization": "all", "intra_op_threads": 1,
                                 "execution": "sequential+io_binding"}, bound)
    t = interleaved({k: fn for k, (_, fn) in configs.items()}, budget_s=budget / 2)
    opts = [{**meta, "ms": t[k]} for k, (meta, _) in configs.items()]
    results["ort_options"] = {"N": n_q, "runs": opts}

    print(f"\nFused planner (H={pc.horizon}, J={pc.iterations}, E={m.embed_dim}, GRU {m.pred_layers}x{m.pred_hidden}; "
          f"{weights}); 1 thread")
    print(f"matmul ceiling: ORT {ceiling['ort_matmul_gflops']:.1f} GFLOP/s, numpy {ceiling['numpy_matmul_gflops']:.1f} GFLOP/s")
    print(f"{'N':>6} {'fused ORT ms':>13} {'torch ref ms':>13} {'speedup':>8} {'GFLOP/s':>8} {'ceiling':>8} "
          f"{'/ceiling':>9} {'nodes':>6}")
    for r in rows:
        print(f"{r['N']:>6} {r['fused_ort_ms']:>13.2f} {r['torch_reference_ms']:>13.2f} {r['speedup_vs_torch']:>7.2f}x "
              f"{r['fused_gflops']:>8.1f} {r['matmul_ceiling_gflops']:>8.1f} {r['fraction_of_matmul_ceiling']:>9.2f} "
              f"{r['graph_nodes']:>6}")
    print(f"\nINT8 vs FP32 at N={n_q} (fp32 {t_fp32:.2f} ms)")
    for name, v in q["variants"].items():
        if "error" in v:
            print(f"  {name:24s} failed: {v['error']}")
        else:
            print(f"  {name:24s} {v['ms']:8.2f} ms  speedup {v['speedup_vs_fp32']:.2f}x  mean_cost rel err "
                  f"{v['mean_cost_rel_err']:.1e}  conf abs err {v['conf_abs_err']:.1e}  mean_out abs err "
                  f"{v['mean_out_abs_err']:.2e}")
    print("\nEncoders (batch 1, 1 thread)")
    for kind, v in enc.items():
        print(f"  {kind:8s} {v['ms_per_call']:.3f} ms/call  ({v['parameters']:,} parameters)")
    print(f"\nONNX Runtime options at N={n_q}")
    for o in opts:
        print(f"  opt={o['graph_optimization']:9s} threads={o['intra_op_threads']} {o['execution']:22s} {o['ms']:8.2f} ms")
    if args.success_bundle:
        succ = [closed_loop_success(args.success_bundle, prec, args.episodes, args.max_steps, seed=2024)
                for prec in ("fp32", "int8")]
        results["closed_loop_success"] = {"bundle": args.success_bundle, "runs": succ,
                                          "int8_minus_fp32_points": 100 * (succ[1]["success_rate"] - succ[0]["success_rate"])}
        print(f"\nClosed-loop success ({args.episodes} episodes, <= {args.max_steps} steps, same episodes): "
              + ", ".join(f"{r['precision']} {r['successes']}/{r['episodes']}" for r in succ)
              + f"; int8 - fp32 = {results['closed_loop_success']['int8_minus_fp32_points']:+.0f} points")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
