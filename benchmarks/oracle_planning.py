"""Which part of the world model limits cross-room planning: the predictor or the metric?

The same MPPI (``training.planner.MPCController``: the run's planner config, N samples, H steps,
J iterations, warm start shifted every ``action_repeat`` ticks) plans ``edge-eval``'s two-rooms
episodes (``training.evaluate.evaluation_episodes``: goal in the other room, seed ``--seed``)
with the rollouts and the cost swapped:

| variant | rollouts | cost per step |
|---|---|---|
| ``learned`` | the trained predictor (what ``edge-eval`` measures) | embedding distance to the goal embedding |
| ``learned_geodesic`` | the trained predictor | shortest-path distance around the wall of the position a linear probe reads from each predicted embedding |
| ``sim_embedding`` | the simulator itself, every sample executed, then encoded | embedding distance to the goal embedding |
| ``sim_straight`` | the simulator | straight-line distance to the goal (m) |
| ``sim_geodesic`` | the simulator | shortest-path distance around the wall (``training.walls.geodesic_distance``) |
| ``sim_belief`` | the simulator | that distance averaged over the door positions consistent with the range beams at the rollout state and at the goal (``training.walls.DoorBelief``): the best a memoryless encoder of these observations could know |
| ``sim_belief_memory`` | the simulator | the same, also consistent with every observation the robot has made so far this episode (an encoder with memory) |

``learned`` -> ``sim_embedding`` is what a perfect predictor would gain with the same metric;
``learned`` -> ``learned_geodesic`` is what a shortest-path metric would gain with the same predictor;
``sim_embedding`` -> ``sim_geodesic`` is what a shortest-path metric would gain on top;
``sim_straight`` says how much of the embedding's behaviour is plain straight-line distance;
``sim_belief`` -> ``sim_geodesic`` is what the sensor cannot show from one pose (the door out of
sight), and ``sim_belief_memory`` how much of that memory of the episode recovers.
Rollouts in the simulator start from the true pose (an oracle), so this is a diagnostic, not a
planner for the robot. Expensive: every sample is simulated (N x H x action_repeat x J robot
steps per episode per tick); ``--episodes 100`` at N=128 H=16 J=2 took about 15 min per
simulated variant on a shared 2-core machine (the ``learned`` row, 2.5 min).

Example::

    python benchmarks/oracle_planning.py runs/sensor_default --episodes 50 \
        --variants learned,sim_embedding,sim_straight,sim_geodesic

With the override ``eval.recovery=true`` every variant runs the runtime's unsticking reflex
(``edge.safety.StuckRecovery``: back off a wall the robot is pushing against), as ``edge-run`` does.

Prints a table (success with a Wilson 95% interval per variant) and writes
``benchmarks/results/oracle_planning.json``.
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.sim.env import BatchSim, SimConfig  # noqa: E402
from edge.sim.world import Layout  # noqa: E402
from training.evaluate import (  # noqa: E402
    Encoder, evaluation_episodes, goal_heading, make_recovery, recovery_step, run_episodes, wilson_interval)
from training.planner import MPCController  # noqa: E402
from training.walls import DoorBelief, fit_position_probe, geodesic_distance  # noqa: E402

VARIANTS = ("learned", "learned_geodesic", "sim_embedding", "sim_straight", "sim_geodesic", "sim_belief",
            "sim_belief_memory")
BELIEF_HYPOTHESES = 48
"""Door hypotheses per episode for the ``sim_belief*`` costs (the true door among them)."""


class SimRolloutModel:
    """A planner "model" whose rollouts run in the simulator (the planner's ``init_hidden``/``step``).

    ``set_state`` fixes, for the B episodes being planned, the true poses, layouts and goals.
    ``init_hidden(z [B*N, .])`` starts ``B*N`` simulated robots (episode-major, as
    :func:`training.planner.rollout_cost` orders samples); each ``step`` applies one predictor
    step's action for ``action_repeat`` control ticks. With ``cost="embedding"`` the returned
    state is the encoder's embedding of the simulated observation (the planner's cost is then the
    embedding distance to the goal embedding); with ``"straight"``/``"geodesic"`` it is a
    one-element vector holding that distance to the goal in metres, planned against a goal of 0.
    ``"belief"`` averages the geodesic distance over the door hypotheses of ``belief`` that agree
    with ``known`` (set by ``set_state``: per planned episode, what the goal observation, and with
    memory the robot's own observations, have shown) and with the beams at the rollout state.
    """

    def __init__(self, sim_cfg: SimConfig, encode: Encoder, cost: str, action_repeat: int, seed: int,
                 belief: DoorBelief | None = None):
        self.sim_cfg = sim_cfg
        self.encode = encode
        self.cost = cost
        self.action_repeat = action_repeat
        self.seed = seed
        self.belief = belief
        self.calls = 0
        self.sim: BatchSim | None = None

    def set_state(self, pose: np.ndarray, layout: Layout, goal: np.ndarray, rows: np.ndarray | None = None,
                  known: np.ndarray | None = None) -> None:
        self.pose, self.layout, self.goal = pose, layout, goal
        self.rows, self.known = rows, known

    def init_hidden(self, z: torch.Tensor) -> torch.Tensor:
        b = len(self.pose)
        n = z.shape[0] // b
        rep = np.repeat(np.arange(b), n)
        if self.belief is not None:
            self.rep_rows, self.rep_known = self.rows[rep], self.known[rep]
        self.calls += 1
        self.sim = BatchSim(self.sim_cfg, b * n, seed=self.seed + self.calls)
        self.sim.reset(layout=self.layout.take(rep), start=self.pose[rep], goal=self.goal[rep])
        return z.new_zeros(1)

    def step(self, z: torch.Tensor, h: torch.Tensor, a: torch.Tensor):
        sim, cfg = self.sim, self.sim_cfg
        act = np.clip(a.numpy().astype(np.float64), -1.0, 1.0) * cfg.robot.max_wheel_speed
        for _ in range(self.action_repeat - 1):
            sim.robot.step(act, cfg.dt, sim.seg, sim.rng)
        if self.cost == "embedding":
            obs, _ = sim.step(a.numpy())
            z_next = self.encode(obs)
        else:
            sim.robot.step(act, cfg.dt, sim.seg, sim.rng)
            xy = sim.robot.pose[:, :2]
            if self.cost == "straight":
                d = np.linalg.norm(xy - sim.goal, axis=-1)
            elif self.cost == "belief":
                mask = self.rep_known & self.belief.consistent(sim.robot.pose, self.rep_rows)
                d = self.belief.expected_geodesic(xy, sim.goal, self.rep_rows, mask)
            else:
                lay = sim.layout
                d = geodesic_distance(xy, sim.goal, lay.wall_x, lay.door_y, lay.door_width, cfg.robot.radius)
            z_next = torch.from_numpy(d.astype(np.float32))[:, None]
        return z_next, h, z_next.new_zeros(z_next.shape[0])


class ProbedGeodesicModel:
    """The trained predictor's rollouts, costed by the geodesic distance of the probed position.

    The planner's state is the one-element distance to the goal (planned against a goal of 0);
    the predicted embedding and the GRU state travel in the hidden state. ``set_state`` fixes the
    layouts and goals of the ``B`` episodes; ``init_hidden`` receives the start embeddings
    ``[B*N, E]`` (episode-major).
    """

    def __init__(self, predictor, probe, clearance: float):
        self.predictor, self.probe, self.clearance = predictor, probe, clearance

    def set_state(self, layout: Layout, goal: np.ndarray) -> None:
        self.layout, self.goal = layout, goal

    def init_hidden(self, z: torch.Tensor):
        rep = np.repeat(np.arange(len(self.goal)), z.shape[0] // len(self.goal))
        self.rep_layout, self.rep_goal = self.layout.take(rep), self.goal[rep]
        return z, self.predictor.init_hidden(z)

    def step(self, z: torch.Tensor, h, a: torch.Tensor):
        z_pred, h_gru, conf = self.predictor.step(h[0], h[1], a)
        lay = self.rep_layout
        d = geodesic_distance(self.probe(z_pred), self.rep_goal, lay.wall_x, lay.door_y, lay.door_width, self.clearance)
        return torch.from_numpy(d.astype(np.float32))[:, None], (z_pred, h_gru), conf


def run_oracle(wm, cfg, cost: str, episodes: int, max_steps: int, seed: int) -> dict:
    """``edge-eval``'s episodes (:func:`training.evaluate.evaluation_episodes`) and receding-horizon
    control (:class:`training.planner.MPCController`) with an oracle rollout or cost."""
    sim, obs, encode, z_goal_all = evaluation_episodes(wm, episodes, seed)
    sim_cfg = sim.cfg
    if cost == "learned_geodesic":
        probe = fit_position_probe(encode, sim_cfg, seed=seed + 200)
        model = ProbedGeodesicModel(wm.predictor, probe, sim_cfg.robot.radius)
    elif cost.startswith("sim_belief"):
        belief = DoorBelief(sim_cfg.world, sim.layout, BELIEF_HYPOTHESES, np.random.default_rng(seed + 300),
                            sim_cfg.robot.radius, sim_cfg.ranges.max_range)
        goal_pose = np.concatenate([sim.goal, goal_heading(seed, episodes)[:, None]], axis=-1)
        known = belief.consistent(goal_pose, np.arange(episodes))
        model = SimRolloutModel(sim_cfg, encode, "belief", cfg.data.action_repeat, seed + 100, belief)
    else:
        model = SimRolloutModel(sim_cfg, encode, cost.removeprefix("sim_"), cfg.data.action_repeat, seed + 100)
    belief_h = []  # sim_belief*: consistent hypotheses per episode and tick, for the JSON summary
    embedding_cost = getattr(model, "cost", None) == "embedding"
    ctl = MPCController(model, cfg.planner, batch=episodes, seed=seed, action_repeat=cfg.data.action_repeat)
    recovery = make_recovery(cfg, sim, seed)
    distance_goal = torch.zeros(episodes, 1)  # straight / geodesic: the state is the distance itself
    success = np.zeros(episodes, bool)
    steps_to_goal = np.full(episodes, -1)
    t0 = time.perf_counter()
    for t in tqdm(range(max_steps), desc=cost, leave=False):
        idx = np.flatnonzero(~success)  # the controller plans these, in this order
        z = encode(obs)
        if cost == "learned_geodesic":
            model.set_state(sim.layout.take(idx), sim.goal[idx])
            z0, zg = z, distance_goal
        elif cost.startswith("sim_belief"):
            seen = model.belief.consistent(sim.robot.pose, np.arange(episodes))  # the robot's beams now
            if cost == "sim_belief_memory":  # keep what they have shown so far
                known &= seen
            belief_h.append((known & seen)[idx].sum(1))
            model.set_state(sim.robot.pose[idx].copy(), sim.layout.take(idx), sim.goal[idx], idx, known[idx])
            z0, zg = distance_goal, distance_goal
        else:
            model.set_state(sim.robot.pose[idx].copy(), sim.layout.take(idx), sim.goal[idx])
            z0, zg = (z, z_goal_all) if embedding_cost else (distance_goal, distance_goal)
        actions = ctl.act(z0, zg, torch.from_numpy(~success)).numpy()
        if recovery is not None:
            gd = torch.linalg.vector_norm(z - z_goal_all, dim=-1).numpy()
            actions = recovery_step(recovery, ctl, sim, obs, actions, ~success, gd)
        obs, info = sim.step(actions)
        new = info["success"] & ~success
        steps_to_goal[new] = t + 1
        success |= info["success"]
        if success.all():
            break
    k = int(success.sum())
    return {"episodes": episodes, "successes": k, "success_rate": k / episodes,
            "success_ci95": list(wilson_interval(k, episodes)),
            "steps_to_goal_median": float(np.median(steps_to_goal[success])) if k else None,
            "recoveries_mean": float(recovery.count.mean()) if recovery is not None else 0.0,
            "wall_follows_mean": float(recovery.follows.mean()) if recovery is not None else 0.0,
            "wall_s": time.perf_counter() - t0,
            **({"belief_hypotheses": BELIEF_HYPOTHESES,
                "belief_consistent_median": float(np.median(np.concatenate(belief_h)))} if belief_h else {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run folder written by edge-train")
    p.add_argument("--variants", default="learned,sim_embedding,sim_geodesic",
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: learned,sim_embedding,sim_geodesic)")
    p.add_argument("--episodes", type=int, default=50, help="other-room episodes (default 50)")
    p.add_argument("--max-steps", type=int, default=None, help="control ticks per episode (default: the run's eval.max_steps)")
    p.add_argument("--seed", type=int, default=1000, help="episode seed (default 1000, as edge-eval)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "oracle_planning.json",
                   help="JSON report (default benchmarks/results/oracle_planning.json)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. planner.samples=64 planner.horizon=24")
    args = p.parse_intermixed_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    from training.checkpoint import load_world_model
    from training.config import _merge, config_from_dict, parse_overrides

    try:
        wm = load_world_model(args.run_dir)
        cfg = config_from_dict(_merge(wm.config.to_dict(), parse_overrides(args.overrides)))
    except (OSError, ValueError, RuntimeError) as e:
        p.error(f"cannot load {args.run_dir} with overrides {args.overrides}: {e}")
    if cfg.model.kind != "sensor":
        p.error("oracle planning is implemented for sensor models (the simulated rollouts are not rendered)")
    wm = dataclasses.replace(wm, config=cfg)
    max_steps = args.max_steps or cfg.eval.max_steps
    torch.set_num_threads(1)
    rows = {}
    for v in variants:
        if v == "learned":
            t0 = time.perf_counter()
            r = run_episodes(wm, cfg, args.episodes, max_steps, args.seed, 0, None)
            r["wall_s"] = time.perf_counter() - t0
        else:
            r = run_oracle(wm, cfg, v, args.episodes, max_steps, args.seed)
        rows[v] = r
        lo, hi = r["success_ci95"]
        print(f"{v:14s} {r['successes']:3d}/{r['episodes']:<3d} ({lo:.0%}-{hi:.0%})  {r['wall_s']:.0f} s", flush=True)
    pc = cfg.planner
    print(f"\nrun {args.run_dir}; N={pc.samples} H={pc.horizon} J={pc.iterations}, action_repeat "
          f"{cfg.data.action_repeat}, {max_steps} ticks, seed {args.seed}, goal in the other room, unsticking reflex "
          f"{'on' if cfg.eval.recovery else 'off'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run_dir": str(args.run_dir), "samples": pc.samples, "horizon": pc.horizon,
                                    "iterations": pc.iterations, "max_steps": max_steps, "seed": args.seed,
                                    "recovery": cfg.eval.recovery, "variants": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
