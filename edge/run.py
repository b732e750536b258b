"""``edge-run``: drive a robot (or the simulated one) toward a goal with the learned world model.

Examples::

    edge-run --device cpu --sim                       # simulated ESP32, models/default, random two-rooms episode
    edge-run --device cpu --sim --episodes 50 --status plain --time-scale 4
    edge-run --device jetson --port /dev/edge-esp32 --goal goals/kitchen.npz
    edge-run --device pi --save-goal kitchen          # save what the robot senses now as goals/kitchen.npz
    edge-run --device pi --self-test                  # bundle, engine, one planner call, serial port: PASS/FAIL
    edge-run --config configs/edge-run.yaml --set limits.max_speed=0.5 --print-config

Every way out of a run (goal reached, --duration over, Ctrl-C, SIGTERM, an error) commands the
motors to zero before the process exits; the firmware's watchdog stops them if even that fails.
Outputs go to ``runs/<time>-<device>[-sim]/``: ``flight.mcap`` (docs/FLIGHT_LOG.md),
``summary.json``, and with --sim ``run.gif`` / ``run.png`` (top-down view with the planned path).
Exit status: 0 goal reached (or, for --episodes N, every episode run; see the summary), 1 goal
not reached / self-test failed, 2 bad input, 3 runtime error (link, bundle, backend).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.config import DEVICES, PRECISIONS, STATUS_MODES, ConfigError, RunConfig, load_config, parse_override, to_yaml

log = logging.getLogger("edge.run")

REPO_ROOT = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_NOT_REACHED, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


class UserError(Exception):
    """Bad input the user can fix; printed as one line, exit status 2."""


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the learned world-model planner on a robot (or the simulated robot).",
        epilog="example:\n  edge-run --device cpu --sim\n  edge-run --device jetson --port /dev/edge-esp32 "
               "--goal goals/kitchen.npz\n  edge-run --device pi --self-test\n\n"
               "Between the planner and the motors: the range guard and speed/acceleration limits (limits.*),\n"
               "a stop on bad sensors, and the unsticking reflex (recovery.*, on by default: a drive command\n"
               "that leaves the robot still for 0.15 s is followed by 0.3 s of backing off with a turn, then\n"
               "by following the wall with the range sensors until the embedding distance to the goal is\n"
               "3% below where it got stuck and the planner's plan runs clear of the walls in view, at most\n"
               "6 s each way; --set recovery.follow_wall=false keeps only the back-off,\n"
               "--set recovery.enabled=false turns both off). --print-config shows every setting.")
    p.add_argument("--device", choices=DEVICES, help="inference device: cpu|pi (ONNX Runtime), jetson (TensorRT)")
    p.add_argument("--sim", action="store_true", help="drive the simulated ESP32 (real firmware core) over a pty")
    p.add_argument("--config", metavar="FILE", help="YAML configuration (see configs/edge-run.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set limits.max_speed=0.5 (repeatable)")
    p.add_argument("--bundle", metavar="DIR", help="model bundle folder (default models/default)")
    p.add_argument("--precision", choices=PRECISIONS, help="planner variant")
    p.add_argument("--port", help="serial port of the ESP32, e.g. /dev/edge-esp32")
    p.add_argument("--baud", type=int, help="serial baud rate")
    p.add_argument("--camera", metavar="SOURCE", help="none | sim | V4L2 index | path/URL")
    p.add_argument("--rate", type=float, metavar="HZ", help="control rate (default 20)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds")
    p.add_argument("--episodes", type=int, metavar="N", help="--sim: goal-reaching episodes to run")
    p.add_argument("--goal-room", choices=("other", "same"),
                   help="--sim: other (default) puts each goal behind the dividing wall, so the robot must find "
                        "the door; same puts it in the start room")
    p.add_argument("--seed", type=int, help="--sim: seed of the episodes")
    p.add_argument("--time-scale", type=float, metavar="X", help="--sim: run the simulated robot X times faster")
    p.add_argument("--goal", metavar="FILE", help="goal file saved with --save-goal")
    p.add_argument("--goal-pose", metavar="X,Y,THETA", help="--sim: goal observation rendered at this pose")
    p.add_argument("--llm", metavar="none|embedded|URL", help="fallback when the planner is not confident")
    p.add_argument("--status", choices=STATUS_MODES, help="live terminal view, plain lines, or off")
    p.add_argument("--out", metavar="DIR", help="folder for run outputs (default runs/)")
    p.add_argument("--no-record", action="store_true", help="do not write the MCAP flight log")
    p.add_argument("--print-config", action="store_true", help="print the merged configuration as YAML and exit")
    p.add_argument("--self-test", action="store_true",
                   help="check bundle, engine, one planner call and the serial port; exit 0 when all pass")
    p.add_argument("--save-goal", metavar="NAME", help="save the current observation as goals/NAME.npz and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"edge-run {__version__}")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults <- --config FILE <- dedicated flags <- --set overrides."""
    flags: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        cur = flags
        parts = path.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value

    put("device", args.device)
    put("bundle", args.bundle)
    put("precision", args.precision)
    put("rate_hz", args.rate)
    put("duration_s", args.duration)
    put("status", args.status)
    put("link.port", args.port)
    put("link.baud", args.baud)
    put("camera.source", args.camera)
    put("fallback.mode", args.llm)
    put("recorder.dir", args.out)
    if args.no_record:
        put("recorder.enabled", False)
    if args.sim:
        put("sim.enabled", True)
    put("sim.episodes", args.episodes)
    put("sim.goal_room", args.goal_room)
    put("sim.seed", args.seed)
    put("sim.time_scale", args.time_scale)
    put("goal.file", args.goal)
    if args.goal_pose is not None:
        from edge.goals import parse_pose

        try:
            put("goal.pose", list(parse_pose(args.goal_pose)))
        except ValueError as e:
            raise ConfigError(f"--goal-pose: {e}") from e
    overrides = [flags] + [parse_override(o) for o in args.overrides]
    cfg = load_config(args.config, overrides)
    if cfg.sim.enabled and cfg.link.port is not None and args.port is not None:
        raise ConfigError("--port and --sim exclude each other (--sim serves its own pseudo-terminal)")
    return cfg


def resolve_bundle_path(text: str) -> Path:
    """A bundle folder: absolute, else relative to the working directory, else to the repository."""
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(f"model bundle {text!r} not found (looked for manifest.json in: {looked}); pass --bundle DIR "
                    "with a folder written by `edge-export`, or run from the repository that holds models/default")


# --------------------------------------------------------------------------- building blocks


def open_backend(cfg: RunConfig):
    """Verify the bundle and build (or load from the engine cache) its backend."""
    from edge.backends import make_backend
    from edge.bundle import load_bundle

    bundle = load_bundle(resolve_bundle_path(cfg.bundle))
    if bundle.planner.encoder == "camera":
        from edge.camera import CameraError, check_camera_preprocessing

        try:
            check_camera_preprocessing(bundle.manifest["encoders"]["camera"].get("preprocessing"),
                                       cfg.camera.width, cfg.camera.height)
        except CameraError as e:
            raise UserError(f"bundle {bundle.path}: {e}") from e
    return make_backend(bundle, cfg.device, cfg.precision)


def make_run_dir(cfg: RunConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{cfg.device}" + ("-sim" if cfg.sim.enabled else "")
    out = Path(cfg.recorder.dir) / name
    i = 1
    while out.exists():
        i += 1
        out = Path(cfg.recorder.dir) / f"{name}-{i}"
    out.mkdir(parents=True)
    return out


def make_recorder(cfg: RunConfig, path: Path, backend: Any):
    from edge.recorder import FlightRecorder

    b = backend.bundle
    return FlightRecorder(path, metadata={"rate_hz": cfg.rate_hz, "device": cfg.device, "bundle": str(b.path),
                                          "bundle_sha256": b.sha256, "precision": cfg.precision,
                                          "sim": cfg.sim.enabled},
                          normalisation=dict(b.normalisation), flush_period_s=cfg.recorder.flush_period_s,
                          chunk_size=cfg.recorder.chunk_size)


def make_plan_head(cfg: RunConfig, bundle: Any) -> dict[str, Any]:
    """ControlLoop keyword arguments for the bundle's amortized planning head (manifest key
    ``plan_head``): the callable ``(z [E], z_goal [E], pose4 [4]) -> actions [H, A]`` (ONNX
    Runtime on the CPU: a small MLP) and which uses are on. Empty when off or absent."""
    entry = bundle.manifest.get("plan_head")
    if cfg.plan_head == "off" or not entry:
        if cfg.plan_head not in ("off", "auto"):
            raise UserError(f"plan_head={cfg.plan_head} but bundle {bundle.path} has no plan head "
                            "(add one with `python -m training.plan_head export`)")
        return {}
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle.file(entry["file"])), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if sorted(names) != ["pose4", "z", "z_goal"]:
        raise UserError(f"bundle {bundle.path}: plan head inputs are {names}, expected z, z_goal, pose4")

    def head(z: np.ndarray, z_goal: np.ndarray, pose4: np.ndarray) -> np.ndarray:
        feeds = {"z": np.asarray(z, np.float32)[None], "z_goal": np.asarray(z_goal, np.float32)[None],
                 "pose4": np.asarray(pose4, np.float32)[None]}
        return sess.run(None, feeds)[0][0]

    use = entry.get("use") or {}
    mode = cfg.plan_head
    warm = mode in ("warm_start", "both") or (mode == "auto" and bool(use.get("warm_start")))
    fallback = mode in ("deadline_fallback", "both") or (mode == "auto" and bool(use.get("deadline_fallback")))
    return {"plan_head": head, "head_warm_start": warm, "head_fallback": fallback}


def make_fallback(cfg: RunConfig):
    """The configured LLM fallback, or None."""
    if cfg.fallback.mode == "none":
        return None
    from edge.fallback.factory import FallbackConfig, make_fallback as build

    kwargs: dict[str, Any] = {"llm": cfg.fallback.mode}
    if cfg.fallback.model is not None:
        kwargs["model"] = cfg.fallback.model
    if cfg.fallback.api_key_env is not None:
        kwargs["api_key_env"] = cfg.fallback.api_key_env  # the name; ChatClient reads the key itself
    return build(FallbackConfig(**kwargs))


def connect_robot(cfg: RunConfig, port: str, max_wheel_speed: float, ticks_per_rev: int):
    """Open and configure the motor controller (``firmware_bridge.device.MotorController``)."""
    from firmware_bridge.device import MotorController, MotorControllerConfig
    from firmware_bridge.link import LinkConfig

    mc = MotorController(MotorControllerConfig(port=port, link=LinkConfig(baudrate=cfg.link.baud),
                                               max_wheel_speed=float(max_wheel_speed),
                                               ticks_per_rev=int(ticks_per_rev)))
    mc.connect()
    return mc


def make_camera(cfg: RunConfig, sim: Any = None, needed: bool = False):
    """The configured camera; with --sim the simulator's camera when configured (``sim``) or
    when the bundle plans on camera embeddings (``needed``)."""
    from edge.camera import OpenCVCamera, SimCamera

    src = cfg.camera.source
    if sim is not None and (src == "sim" or needed):
        return SimCamera(sim.render_camera)
    if src == "none":
        if needed:
            raise UserError("this bundle plans on camera embeddings: set --camera 0 (or a device path/URL)")
        return None
    if src == "sim":
        raise UserError("camera.source 'sim' needs --sim")
    return OpenCVCamera(src, cfg.camera.width, cfg.camera.height).start()


# --------------------------------------------------------------------------- runs


#: Interpreter lock hand-over interval during a run. The link's reader thread decodes telemetry
#: in Python; with the default 5 ms, the loop thread can wait up to 5 ms to get the lock back
#: after every runtime call or serial write that released it (measured: 8 ms per SET_VEL write
#: on a loaded 2-core machine). 0.5 ms bounds that wait.
SWITCH_INTERVAL_S = 0.0005


def run_robot(cfg: RunConfig) -> int:
    """A run on real hardware: goal from --goal, serial port from the config."""
    from edge.goals import load_goal
    from edge.loop import ControlLoop, GoalTarget, SystemClock
    from edge.odometry import Odometry
    from edge.safety import EStop
    from edge.status import RunStats, StatusView, print_summary, summarise, write_summary

    if cfg.link.port is None:
        raise UserError("no serial port: pass --port /dev/edge-esp32 (or set link.port), or use --sim")
    if cfg.goal.file is None:
        raise UserError("no goal: pass --goal goals/NAME.npz (save one with `edge-run --save-goal NAME`)")
    goal_obs = load_goal(cfg.goal.file)
    backend = open_backend(cfg)
    out = make_run_dir(cfg)
    fallback = make_fallback(cfg)  # before the link: loading an embedded LLM stalls the interpreter
    with EStop() as estop:
        try:
            mc = connect_robot(cfg, cfg.link.port, backend.bundle.max_wheel_speed, int(cfg.robot.ticks_per_rev))
        except BaseException:
            if fallback is not None:
                fallback.close()
            raise
        recorder = camera = None
        try:
            recorder = make_recorder(cfg, out / "flight.mcap", backend) if cfg.recorder.enabled else None
            camera = make_camera(cfg, needed=backend.bundle.planner.encoder == "camera")
            stats = RunStats(cfg.rate_hz)
            odo = Odometry(cfg.robot.wheel_radius_m, cfg.robot.wheel_base_m, cfg.robot.ticks_per_rev,
                           cfg.robot.initial_pose)
            with StatusView(cfg.status, stats, link_stats=mc.stats) as view:
                loop = ControlLoop(cfg, mc.link, backend, odo, clock=SystemClock(), camera=camera,
                                   recorder=recorder, fallback=fallback, estop=estop, on_tick=view.on_tick,
                                   **make_plan_head(cfg, backend.bundle))
                z = loop.encode_goal(goal_obs.sensor(backend.bundle.normalisation), goal_obs.frame)
                loop.set_goal(GoalTarget(z=z, pose=goal_obs.pose, source="cli"))
                result = loop.run(duration_s=cfg.duration_s)
        finally:
            mc.disconnect()  # zero wheel speed, then close the port
            for closer in (getattr(camera, "stop", None), getattr(recorder, "close", None),
                           getattr(fallback, "close", None)):
                if closer is not None:
                    closer()
    summary = summarise(stats, {"result": result.reason, "goal_reached": result.goal_reached,
                                "skipped_slots": result.skipped_slots,
                                "elapsed_s": result.elapsed_s, "message": result.message})
    if recorder is not None:
        summary["mcap"] = str(out / "flight.mcap")
    summary["summary_json"] = str(write_summary(out / "summary.json", summary))
    print_summary(summary)
    return EXIT_OK if result.goal_reached else EXIT_NOT_REACHED


def goal_embedding(loop: Any, sim: Any, goal: Any, headings: int, norm: Any) -> np.ndarray:
    """The goal's embedding; with ``headings`` K > 1 the mean of the embeddings of the goal
    observation at K evenly spaced headings (a heading-agnostic place, as ``edge-eval
    --goal-headings K``)."""
    if headings == 1:
        return loop.encode_goal(goal.sensor(norm), goal.frame)
    x, y, th = goal.pose
    zs = []
    for k in range(headings):
        obs = sim.observation_at((x, y, th + 2.0 * math.pi * k / headings))
        zs.append(loop.encode_goal(obs.sensor(norm), obs.frame))
    return np.mean(zs, axis=0).astype(np.float32)


def run_sim(cfg: RunConfig) -> int:
    """``--sim``: episodes against the simulated ESP32, each with a goal in the other room."""
    from edge.loop import ControlLoop, GoalTarget, SystemClock
    from edge.odometry import Odometry
    from edge.safety import EStop
    from edge.simrobot import SimRobot
    from edge.status import RunStats, StatusView, TrajectoryRecorder, print_summary, summarise, write_summary

    backend = open_backend(cfg)
    out = make_run_dir(cfg)
    seed = cfg.sim.seed if cfg.sim.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
    all_stats = RunStats(cfg.rate_hz, cfg.sim.time_scale)
    episodes: list[dict[str, Any]] = []
    outputs: dict[str, str] = {}
    interrupted = False
    # The fallback starts first: loading an embedded LLM holds the interpreter for seconds, which
    # the link's reader would otherwise see as a stalled device.
    head = make_plan_head(cfg, backend.bundle)
    fallback = make_fallback(cfg)
    try:
        with EStop() as estop, SimRobot(cfg, seed=seed) as sim:
            mc = connect_robot(cfg, sim.port, backend.bundle.max_wheel_speed, sim.ticks_per_rev)
            try:
                camera = make_camera(cfg, sim, needed=backend.bundle.planner.encoder == "camera")
                for ep in range(cfg.sim.episodes):
                    if estop.triggered:
                        break
                    if ep > 0:
                        sim.new_episode(seed + ep)
                    mcap = out / ("flight.mcap" if cfg.sim.episodes == 1 else f"flight-ep{ep:03d}.mcap")
                    recorder = make_recorder(cfg, mcap, backend) if cfg.recorder.enabled else None
                    traj = None
                    if cfg.sim.gif and ep == 0:
                        traj = TrajectoryRecorder(sim.render_topdown, sim.world_to_px,
                                                  sim.kinematics(cfg.rate_hz, backend.bundle.max_wheel_speed))
                    stats = RunStats(cfg.rate_hz, cfg.sim.time_scale)
                    view = StatusView(cfg.status, stats, link_stats=mc.stats)
                    view.episode_label = f" episode {ep + 1}/{cfg.sim.episodes}" if cfg.sim.episodes > 1 else ""

                    def on_tick(info, view=view, traj=traj):
                        all_stats.add(info)
                        view.on_tick(info)
                        if traj is not None:
                            traj.on_tick(info)

                    odo = Odometry(sim.wheel_radius, sim.wheel_base, sim.ticks_per_rev, sim.start_pose)
                    try:
                        with view:
                            loop = ControlLoop(cfg, mc.link, backend, odo, clock=sim.clock(), camera=camera,
                                               recorder=recorder, fallback=fallback, estop=estop, truth=sim.true_pose,
                                               on_tick=on_tick, noise_seed=seed + ep, **head)
                            goal = sim.goal_observation()
                            z = goal_embedding(loop, sim, goal, cfg.goal.headings, backend.bundle.normalisation)
                            loop.set_goal(GoalTarget(z=z, pose=goal.pose, source="cli" if cfg.goal.pose else "config"))
                            result = loop.run(max_ticks=cfg.sim.max_steps, duration_s=cfg.duration_s)
                    finally:
                        if recorder is not None:
                            recorder.close()
                    final = math.hypot(sim.true_pose()[0] - goal.pose[0], sim.true_pose()[1] - goal.pose[1])
                    episodes.append({"episode": ep, "seed": seed + ep, "result": result.reason,
                                     "goal_reached": result.goal_reached, "ticks": result.ticks,
                                     "elapsed_s": result.elapsed_s, "final_goal_distance_m": final,
                                     "start": list(sim.start_pose), "goal": list(goal.pose),
                                     "layout": {"wall_x": float(sim.layout.wall_x[0]),
                                                "door_y": float(sim.layout.door_y[0]),
                                                "door_width": float(sim.layout.door_width[0])},
                                     "overruns": result.overruns, "skipped_slots": result.skipped_slots})
                    if traj is not None:
                        saved = traj.save(out / "run.gif")
                        if saved:
                            outputs["gif"], outputs["png"] = str(saved[0]), str(saved[1])
                    if result.reason == "estop":
                        interrupted = True
                        break
            finally:
                mc.disconnect()
    finally:
        if fallback is not None:
            fallback.close()  # after the motors are stopped and the link is closed
    successes = sum(e["goal_reached"] for e in episodes)
    summary = summarise(all_stats, {
        "skipped_slots": sum(e["skipped_slots"] for e in episodes),
        "result": "interrupted" if interrupted else ("goal_reached" if successes == len(episodes) else
                                                     f"{successes}/{len(episodes)} goals reached"),
        "episodes": len(episodes), "success_rate": successes / max(len(episodes), 1),
        "goal_reached": successes == len(episodes) and not interrupted, "seed": seed,
        "time_scale": cfg.sim.time_scale, "episode_results": episodes,
        "final_goal_distance_m": episodes[-1]["final_goal_distance_m"] if episodes else None,
    })
    if cfg.recorder.enabled:
        summary["mcap"] = str(out / ("flight.mcap" if cfg.sim.episodes == 1 else "flight-ep*.mcap"))
    summary.update(outputs)
    summary["summary_json"] = str(write_summary(out / "summary.json", summary))
    print_summary(summary)
    hint = sim_miss_hint(episodes, seed, cfg, backend.bundle.name)
    if hint and not interrupted:
        print(hint, file=sys.stderr)
    if interrupted:
        return EXIT_NOT_REACHED
    return EXIT_OK if successes == len(episodes) else EXIT_NOT_REACHED


#: Measured other-room goals reached by the shipped default bundle in ``edge-run --device cpu --sim
#: --episodes 50 --time-scale 2`` (reached, episodes): with the default recovery (seeds 1000, 2000,
#: 3000, 5000, 6000, 7000, 8000, 9000), with ``recovery.follow_wall=false`` and with
#: ``recovery.enabled=false`` (seed 1000); docs/TRAINING.md item 11. Re-measure them when the
#: model or the recovery changes.
DEFAULT_MODEL_OTHER_ROOM: dict[str, tuple[int, int]] = {
    "default": (392, 400), "no_follower": (21, 50), "no_reflex": (15, 50)}


def sim_miss_hint(episodes: list[dict[str, Any]], seed: int, cfg: RunConfig, bundle_name: str) -> str | None:
    """What to do after a ``--sim`` run whose goals were not all reached (None when all were):
    how to replay it, where to look, and -- for the shipped default bundle on the two-rooms task,
    which misses some cross-room goals for a known reason -- its measured rate
    (:data:`DEFAULT_MODEL_OTHER_ROOM`), so a miss reads as that limit, not a broken setup."""
    missed = [e for e in episodes if not e["goal_reached"]]
    if not missed:
        return None
    where = "the run.gif/run.png of the run folder" if cfg.sim.gif else "the flight log (sim.gif is off)"
    text = (f"edge-run: {len(missed)} of {len(episodes)} goal(s) not reached; replay with --seed {seed}"
            f"{f' --episodes {len(episodes)}' if len(episodes) > 1 else ''} and look at {where}.")
    if bundle_name == "default" and cfg.sim.goal_room == "other" and cfg.goal.pose is None and cfg.goal.file is None:
        (k, n), (k_nf, n_nf), (k_nr, n_nr) = (DEFAULT_MODEL_OTHER_ROOM[c] for c in
                                              ("default", "no_follower", "no_reflex"))
        if cfg.recovery.enabled and cfg.recovery.follow_wall:
            rate = (f"in about {100 * k / n:.0f}% of random layouts with the default recovery ({k} of {n} "
                    f"edge-run episodes with the wall follower; {k_nf} of {n_nf} with recovery.follow_wall=false)")
        elif cfg.recovery.enabled:
            rate = (f"in only about {100 * k_nf / n_nf:.0f}% of random layouts without the wall follower "
                    f"({k_nf} of {n_nf} edge-run episodes; {k} of {n} with recovery.follow_wall=true, the default)")
        else:
            rate = (f"in only about {100 * k_nr / n_nr:.0f}% of random layouts without the unsticking reflex "
                    f"({k_nr} of {n_nr} edge-run episodes; {k} of {n} with the default recovery)")
        text += (f"\nThe shipped default model reaches goals in the other room {rate}: its predictor often "
                 "imagines the robot driving through the dividing wall, and its embedding distance follows "
                 "the straight line to the goal, so it heads into the wall; the wall follower gets it round "
                 "only when it finds the door in time (docs/TRAINING.md items 8-11). Goals in the start room: "
                 "99-100%; try --goal-room same (models/default/MODEL_CARD.md).")
    return text


# --------------------------------------------------------------------------- self-test, save-goal


def self_test(cfg: RunConfig) -> int:
    """Bundle, engine, one planner call, camera and serial port: a PASS/FAIL line each."""
    results: list[tuple[str, bool, str]] = []

    def check(name: str, fn) -> Any:
        t0 = time.perf_counter()
        try:
            detail = fn()
            results.append((name, True, f"{detail} ({(time.perf_counter() - t0) * 1000:.0f} ms)"))
            print(f"PASS  {name}: {results[-1][2]}", flush=True)
            return True
        except Exception as e:
            results.append((name, False, f"{type(e).__name__}: {e}"))
            print(f"FAIL  {name}: {results[-1][2]}", flush=True)
            return False

    state: dict[str, Any] = {}

    def bundle() -> str:
        from edge.bundle import load_bundle

        state["bundle"] = load_bundle(resolve_bundle_path(cfg.bundle))
        b = state["bundle"]
        return f"{b.path} verified (sha256 {b.sha256[:12]}, planner N={b.planner.N} H={b.planner.H} J={b.planner.J})"

    def engine() -> str:
        from edge.backends import make_backend

        state["backend"] = make_backend(state["bundle"], cfg.device, cfg.precision)
        return f"{type(state['backend']).__name__} for {cfg.device}/{cfg.precision}"

    def planner() -> str:
        from edge.loop import NoiseRing
        from edge.sim.obs import SensorNormalisation, sensor_vector

        be = state["backend"]
        p = be.bundle.planner
        norm = SensorNormalisation.from_dict(be.bundle.normalisation)
        sensor = sensor_vector(np.full(8, norm.max_range_m / 2), np.zeros(3), np.zeros(2), norm)
        frame = np.full((64, 64, 3), 128, np.uint8)
        z = be.encode(sensor, frame)
        goal = sensor_vector(np.full(8, norm.max_range_m / 3), np.array([0.3, 0.2, 0.5]), np.zeros(2), norm)
        zg = be.encode(goal, frame)
        noise = NoiseRing((p.J, p.N, p.H, p.A), slots=1, seed=0).take()
        t0 = time.perf_counter()
        res = be.plan(z, zg, np.zeros((p.H, p.A), np.float32), np.full((p.H, p.A), p.std_init, np.float32), noise)
        dt = (time.perf_counter() - t0) * 1000
        arrays = (res.mean_out, res.std_out, res.conf)
        if not all(np.isfinite(a).all() for a in arrays) or not math.isfinite(res.best_cost):
            raise RuntimeError("the planner returned non-finite values")
        if np.abs(res.mean_out).max() > max(abs(p.action_low), abs(p.action_high)) + 1e-5:
            raise RuntimeError(f"plan outside the action bounds: max |a| = {np.abs(res.mean_out).max():.3f}")
        return f"one call {dt:.1f} ms, first action ({res.mean_out[0, 0]:+.2f}, {res.mean_out[0, 1]:+.2f})"

    def serial() -> str:
        be = state.get("backend")
        mws = be.bundle.max_wheel_speed if be is not None else 10.0
        mc = connect_robot(cfg, cfg.link.port, mws, int(cfg.robot.ticks_per_rev))
        try:
            rtt = [mc.ping() for _ in range(5)]
            tel = mc.get_observation()
            return (f"{cfg.link.port}: telemetry ok (ranges {['%.2f' % r for r in tel.ranges_m]}), "
                    f"ping median {sorted(rtt)[2] * 1000:.2f} ms")
        finally:
            mc.disconnect()

    def camera() -> str:
        cam = make_camera(cfg)
        try:
            frame = cam.latest()
            return f"{cfg.camera.source}: frame {frame.shape} {frame.dtype}"
        finally:
            cam.stop()

    def plan_head() -> str:
        be = state["backend"]
        kwargs = make_plan_head(cfg, be.bundle)
        p = be.bundle.planner
        actions = kwargs["plan_head"](np.zeros(p.E, np.float32), np.ones(p.E, np.float32), np.array([0, 0, 0, 1.0]))
        if actions.shape != (p.H, p.A) or not np.isfinite(actions).all() or np.abs(actions).max() > 1.0:
            raise RuntimeError(f"plan head returned {actions.shape} (expected finite [{p.H}, {p.A}] in [-1, 1])")
        uses = [u for u, on in (("warm start", kwargs["head_warm_start"]),
                                ("deadline fallback", kwargs["head_fallback"])) if on]
        return f"actions {list(actions.shape)}; used as {', '.join(uses) or 'nothing (plan_head setting)'}"

    if check("bundle", bundle):
        if check("engine", engine):
            check("planner", planner)
            if state["bundle"].manifest.get("plan_head") and cfg.plan_head != "off":
                check("plan_head", plan_head)
    if cfg.link.port is not None:
        check("serial", serial)
    else:
        print("SKIP  serial: no port configured (--port or link.port)", flush=True)
    if cfg.camera.source not in ("none", "sim"):
        check("camera", camera)
    ok = all(r[1] for r in results)
    print(f"self-test {'PASSED' if ok else 'FAILED'} ({sum(r[1] for r in results)}/{len(results)} checks)", flush=True)
    if "backend" in state:
        state["backend"].close()
    return EXIT_OK if ok else EXIT_NOT_REACHED


def save_goal_cmd(cfg: RunConfig, name: str) -> int:
    """Save the current observation (robot, or the sim's start) as goals/NAME.npz."""
    from edge.goals import GoalObservation, save_goal

    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--save-goal NAME must be a plain name like kitchen, got {name!r}")
    path = Path("goals") / f"{name}.npz"
    if cfg.sim.enabled:
        from edge.simrobot import SimRobot

        with SimRobot(cfg, seed=cfg.sim.seed or 0) as sim:
            goal = sim.observation_at(sim.start_pose, name=name)
    else:
        from edge.odometry import Odometry

        if cfg.link.port is None:
            raise UserError("--save-goal needs the robot: pass --port /dev/edge-esp32 (or use --sim)")
        from edge.bundle import load_bundle

        max_wheel_speed = load_bundle(resolve_bundle_path(cfg.bundle)).max_wheel_speed  # CONFIG as in a run
        mc = connect_robot(cfg, cfg.link.port, max_wheel_speed, int(cfg.robot.ticks_per_rev))
        try:
            tel = mc.wait_for_observation(timeout=1.0)
            odo = Odometry(cfg.robot.wheel_radius_m, cfg.robot.wheel_base_m, cfg.robot.ticks_per_rev,
                           cfg.robot.initial_pose)
            odo.update(tel.enc_left, tel.enc_right)
            frame = None
            if cfg.camera.source not in ("none", "sim"):
                cam = make_camera(cfg)
                try:
                    frame = cam.latest()
                finally:
                    cam.stop()
            goal = GoalObservation(np.asarray(tel.ranges_m), odo.pose, (tel.speed_left, tel.speed_right), frame, name)
        finally:
            mc.disconnect()
    written = save_goal(path, goal, meta={"device": cfg.device, "sim": cfg.sim.enabled})
    print(f"saved goal {name!r} to {written} (pose {tuple(round(v, 3) for v in goal.pose)}, "
          f"camera frame: {'yes' if goal.frame is not None else 'no'})")
    return EXIT_OK


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return EXIT_OK
        if args.self_test:
            return self_test(cfg)
        if args.save_goal:
            return save_goal_cmd(cfg, args.save_goal)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return run_sim(cfg) if cfg.sim.enabled else run_robot(cfg)
    except (ConfigError, UserError) as e:
        print(f"edge-run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edge-run: interrupted; motors were commanded to zero", file=sys.stderr)
        return EXIT_NOT_REACHED
    except Exception as e:  # runtime failures: one line, no traceback unless -v
        from edge.bundle import BundleError

        kind = "bundle refused" if isinstance(e, BundleError) else type(e).__name__
        print(f"edge-run: {kind}: {e}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_RUNTIME


def cli() -> None:
    """The ``edge-run`` console script: :func:`main`, then exit with its status.

    If the run abandoned an embedded LLM server (a request it could not cancel was still being
    generated when the run ended), the process ends with ``os._exit`` after flushing, because
    finalising the interpreter under llama.cpp's running threads can crash it (see
    :func:`edge.fallback.embedded.exit_now_if_abandoned`).
    """
    rc = main()
    from edge.fallback.embedded import exit_now_if_abandoned

    exit_now_if_abandoned(rc)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
