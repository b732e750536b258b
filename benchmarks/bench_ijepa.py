"""I-JEPA-pretrained vs from-scratch camera world models at equal action data (100 % and 10 %).

Needs a camera dataset and an I-JEPA checkpoint::

    python -m edge.sim.collect --episodes 128 --steps 200 --out data/cam --camera --seed 0
    nice -n 10 python -m training.pretrain ijepa configs/ijepa_cpu.yaml max_frames=6400 epochs=1 batch_size=32
    nice -n 10 python benchmarks/bench_ijepa.py --steps 120 --episodes 16

For every setting (pretrained frozen / scratch, at ``--fractions``) trains a world model with
``training.pretrain.train_world`` for the same number of gradient steps (``--steps`` x batch
``--batch``), then runs ``--episodes`` closed-loop planning episodes (``training.evaluate``,
goal in the other room) and records success, final goal distance (failed episodes), held-out
losses and, on held-out episodes, a ridge linear probe of the true (x, y) from the embedding
(R^2, ``training.evaluate.diagnostics``). Stages
are resumable (a finished run folder is reused). Also encoder latency (ONNX Runtime, 1
thread) for the ViT and the default CNN. Prints a table and writes
``benchmarks/results/ijepa.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def encoder_latency_ms(enc, path: Path, runs: int = 30) -> float:
    import onnxruntime as ort

    from training.export import export_encoder_onnx

    export_encoder_onnx(enc.eval(), path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {"frame": np.random.rand(1, 3, 64, 64).astype(np.float32), "pose4": np.zeros((1, 4), np.float32)}
    for _ in range(3):
        sess.run(None, feeds)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/ijepa_world.yaml"))
    ap.add_argument("--checkpoint", default="runs/ijepa_cpu")
    ap.add_argument("--runs", default="runs/bench_ijepa")
    ap.add_argument("--fractions", default="1.0,0.1")
    ap.add_argument("--settings", default="pretrained_frozen,scratch", help="comma list of pretrained_frozen, "
                    "pretrained_finetune, scratch")
    ap.add_argument("--steps", type=int, default=120, help="gradient steps per world model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--probe-windows", type=int, default=600, help="held-out windows for the linear probe of (x, y)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ijepa.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from edge.sim.dataset import WindowDataset
    from training.evaluate import run_episodes
    from training.ijepa import Preprocessing, ViTCameraEncoder
    from training.models import CameraEncoder, count_parameters
    from training.pretrain import load_pretrained, load_vit_world_model, load_world_config, train_world

    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": {}}
    pt = load_pretrained(args.checkpoint)
    vit_enc = ViTCameraEncoder(pt.vit, pt.preprocessing)
    results["encoders"] = {
        "vit": {"parameters": count_parameters(vit_enc), "ort_ms_1thread": encoder_latency_ms(vit_enc, Path("/tmp/b_vit.onnx")),
                "config": dataclasses.asdict(pt.vit)},
        "cnn_default": {"parameters": count_parameters(CameraEncoder()),
                        "ort_ms_1thread": encoder_latency_ms(CameraEncoder(), Path("/tmp/b_cnn.onnx"))},
    }
    results["ijepa_checkpoint"] = json.loads((Path(args.checkpoint) / "ijepa.json").read_text())["metrics"]
    cfg0, opts0 = load_world_config(args.config, [f"ijepa.checkpoint={args.checkpoint}"])
    ds = WindowDataset(cfg0.data.path, k=cfg0.objective.horizon, frames=True, stride=opts0.stride)
    for frac in [float(f) for f in args.fractions.split(",")]:
        for setting in args.settings.split(","):
            name = f"{setting}_{int(round(frac * 100))}pct"
            run = Path(args.runs) / name
            from training.pretrain import split_episodes

            n_train = len(split_episodes(ds, cfg0.data.val_fraction, frac, cfg0.train.seed)[0])
            per_epoch = max(1, min(n_train, args.steps * args.batch) // args.batch)
            epochs = max(1, -(-args.steps // per_epoch))
            per_epoch = -(-args.steps // epochs)  # same number of gradient steps at every data fraction
            ov = [f"train.out_dir={run}", f"ijepa.action_fraction={frac}", f"train.batch_size={args.batch}",
                  f"data.max_windows={per_epoch * args.batch}", f"train.epochs={epochs}", "train.progress=false",
                  f"ijepa.checkpoint={'' if setting == 'scratch' else args.checkpoint}",
                  f"ijepa.freeze_encoder={'true' if setting == 'pretrained_frozen' else 'false'}"]
            cfg, opts = load_world_config(args.config, ov)
            if not (run / "vit.json").is_file():
                t0 = time.time()
                meta = train_world(cfg, opts, ds=ds, progress=False)
                meta["train_wall_s"] = time.time() - t0
                (run / "bench_train.json").write_text(json.dumps(meta))
            meta = json.loads((run / "vit.json").read_text())
            entry = results["runs"].get(name, {})
            entry.update({"setting": setting, "action_fraction": frac, "split": meta["split"],
                          "val_loss": meta["history"][-1]["val_loss"], "val_pred": meta["history"][-1].get("val_pred"),
                          "grad_steps": per_epoch * epochs, "epochs": epochs, "batch": args.batch})
            if "planning" not in entry:
                wm = load_vit_world_model(run)
                t0 = time.time()
                entry["planning"] = run_episodes(wm, wm.config, args.episodes, args.max_steps, 1000, 0, None, progress=False)
                entry["eval_wall_s"] = time.time() - t0
            if "diagnostics" not in entry:
                from training.data import WindowTensors
                from training.evaluate import diagnostics
                from training.pretrain import split_episodes

                _, va_idx, _ = split_episodes(ds, cfg.data.val_fraction, 1.0, cfg.train.seed)
                sel = np.random.default_rng(0).choice(va_idx, min(len(va_idx), args.probe_windows), replace=False)
                val = WindowTensors({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ds.batch(sel).items()})
                d = diagnostics(load_vit_world_model(run), val, None, max_windows=args.probe_windows)
                entry["diagnostics"] = {k: d[k] for k in ("probe_r2_x", "probe_r2_y", "probe_rmse_m",
                                                          "pred_error_vs_horizon_relative", "confidence_spearman")}
            results["runs"][name] = entry
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2))
            p = entry["planning"]
            print(f"{name:28s} train eps {meta['split']['train_episodes']:3d}  val loss {entry['val_loss']:.4f}  "
                  f"success {p['successes']}/{p['episodes']}  final dist {p['final_goal_distance_m_mean']:.2f} m "
                  f"(start {p['start_goal_distance_m_mean']:.2f})  probe R2 x/y {entry['diagnostics']['probe_r2_x']:.2f}/"
                  f"{entry['diagnostics']['probe_r2_y']:.2f}", flush=True)
    e = results["encoders"]
    print(f"encoders: ViT {e['vit']['parameters']} params {e['vit']['ort_ms_1thread']:.2f} ms; "
          f"CNN {e['cnn_default']['parameters']} params {e['cnn_default']['ort_ms_1thread']:.2f} ms (ORT, 1 thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
