"""Does the world model know that the dividing wall blocks the robot? (``edge-eval`` diagnostics)

Two measurements in the simulator, both on two-rooms layouts with random walls:

1. **Phantom crossings.** From evaluation starts, the same held actions are rolled out by the
   predictor (``horizon`` predictor steps) and executed in the simulator (``action_repeat``
   ticks per step). A linear probe ``z -> (x, y)`` (least squares on random observations) reads
   the predicted positions. A *phantom crossing* is a rollout whose predicted end lies across the
   dividing wall while the simulated robot stayed on its side: the model predicts driving
   through the wall. A planner trusting such rollouts presses against the wall on the straight
   line to a goal behind it instead of looking for the door.
2. **Geodesic ranking.** For a goal and points on a grid over the arena (same layout), the
   Spearman rank correlation of the embedding distance to the goal's embedding with (a) the
   shortest-path (geodesic) distance around the wall and (b) the straight-line distance. A
   metric a greedy planner can follow to a goal in the other room ranks like (a); one that
   ranks like (b) leads into the wall.

``geodesic_distance`` is exact for the two-rooms world: the rooms are convex, so a path between
rooms is straight through the door when the segment passes through the opening (shrunk by the
robot radius), else it bends once at the nearer end of the opening.
"""

from __future__ import annotations

import numpy as np
import torch

from training.checkpoint import WorldModel


def geodesic_distance(p: np.ndarray, g: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray, door_width: np.ndarray,
                      clearance: float = 0.0) -> np.ndarray:
    """Shortest-path length (m) from points ``p [N, 2]`` to goals ``g [N, 2]`` in the two-rooms world.

    ``wall_x, door_y, door_width [N]`` describe each point's layout; ``clearance`` shrinks the
    opening on both sides (the robot's radius for a disc robot). Same room: straight line.
    Different rooms: through ``q = (wall_x, clip(y*, lo, hi))``, where ``y*`` is where the
    straight segment meets the wall line and ``[lo, hi]`` is the usable opening
    (``|p - q| + |q - g|`` is convex in ``q_y``, so the clipped crossing is the minimiser).
    """
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    wall_x, door_y, door_width = (np.broadcast_to(np.asarray(a, np.float64), p.shape[:1]) for a in (wall_x, door_y, door_width))
    half = np.maximum(door_width / 2 - clearance, 0.0)
    lo, hi = door_y - half, door_y + half
    straight = np.linalg.norm(p - g, axis=-1)
    across = np.sign(p[:, 0] - wall_x) != np.sign(g[:, 0] - wall_x)
    dx = g[:, 0] - p[:, 0]
    t = np.divide(wall_x - p[:, 0], dx, out=np.zeros_like(dx), where=dx != 0)
    y_star = p[:, 1] + t * (g[:, 1] - p[:, 1])
    q = np.stack([wall_x, np.clip(y_star, lo, hi)], -1)
    bent = np.linalg.norm(p - q, axis=-1) + np.linalg.norm(q - g, axis=-1)
    return np.where(across, bent, straight)


def geodesic_pairs(n: int, seed: int, sim_cfg=None, clearance: float = 0.02) -> dict[str, torch.Tensor]:
    """``n`` pairs of simulated sensor observations in one layout each, with their shortest-path distance.

    Layouts from the simulator's prior; both ends uniform over the free space of the arena (the
    doorway included; about half the pairs lie in different rooms), headings uniform, the
    robot at rest with odometry equal to the true pose. Returns ``sensor_a, sensor_b [n, 14]``
    float32 (the simulator's normalisation) and ``d [n]`` metres
    (:func:`geodesic_distance`, the opening shrunk by the robot radius).
    """
    from edge.sim.env import BatchSim, SimConfig
    from edge.sim.world import sample_layouts

    cfg = sim_cfg or SimConfig()
    rng = np.random.default_rng(seed)
    world, r = cfg.world, cfg.robot.radius + clearance
    layout = sample_layouts(world, n, rng)
    hw, hh = world.half_width - r, world.half_height - r

    def points() -> np.ndarray:
        xy = np.empty((n, 2))
        todo = np.arange(n)
        while len(todo):
            cand = np.stack([rng.uniform(-hw, hw, len(todo)), rng.uniform(-hh, hh, len(todo))], -1)
            in_wall = np.abs(cand[:, 0] - layout.wall_x[todo]) < r
            in_door = np.abs(cand[:, 1] - layout.door_y[todo]) < layout.door_width[todo] / 2 - r
            ok = ~in_wall | in_door
            xy[todo[ok]] = cand[ok]
            todo = todo[~ok]
        return np.concatenate([xy, rng.uniform(-np.pi, np.pi, (n, 1))], -1)

    a, b = points(), points()
    out = {}
    for name, pose in (("sensor_a", a), ("sensor_b", b)):
        chunks = []
        for i in range(0, n, 8192):
            sl = slice(i, min(i + 8192, n))
            sim = BatchSim(cfg, sl.stop - sl.start, seed=seed + i)
            chunks.append(sim.reset(layout=layout.take(sl), start=pose[sl], goal=pose[sl, :2])["sensor"])
        out[name] = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
    d = geodesic_distance(a[:, :2], b[:, :2], layout.wall_x, layout.door_y, layout.door_width, cfg.robot.radius)
    out["d"] = torch.from_numpy(d.astype(np.float32))
    return out


class DoorBelief:
    """Which door positions are consistent with what the range sensors have shown (an oracle aid).

    For each of ``B`` layouts, ``K`` door hypotheses ``(door_y, door_width)`` drawn from the
    layout prior (:func:`edge.sim.world.sample_layouts`; hypothesis 0 is the true door, so the
    set is never empty) on the true dividing wall ``wall_x`` (the beams that hit it show where it
    is). A beam that reaches the wall line at height ``y_c`` (noise-free geometry: within the
    sensor's reach, inside the arena) shows the wall closed or open there; a hypothesis is
    consistent when its opening ``(door_y -+ door_width / 2)`` agrees at every such crossing.
    Other walls never hide the dividing wall in the two-rooms world, so this is exact.

    ``expected_geodesic`` is the shortest-path distance averaged over the consistent hypotheses:
    the best distance estimate a model can form from those observations alone. With only the
    current and the goal observation (``memory=None``) it is what a memoryless encoder such as the
    sensor MLP could at best learn; ``memory`` adds what the robot saw earlier in the episode.
    """

    def __init__(self, world, layout, hypotheses: int, rng: np.random.Generator, robot_radius: float,
                 max_range: float):
        from edge.sim.world import sample_layouts

        b = len(layout)
        if hypotheses < 2:
            raise ValueError(f"DoorBelief: hypotheses must be >= 2, got {hypotheses}")
        prior = sample_layouts(world, b * (hypotheses - 1), rng)
        self.wall_x = np.asarray(layout.wall_x, np.float64)
        self.door_y = np.concatenate([layout.door_y[:, None], prior.door_y.reshape(b, -1)], axis=1)
        self.door_w = np.concatenate([layout.door_width[:, None], prior.door_width.reshape(b, -1)], axis=1)
        self.half_height = world.half_height
        self.reach = max_range + robot_radius
        self.radius = robot_radius

    def consistent(self, pose: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``bool [M, K]``: hypotheses of layouts ``rows [M]`` consistent with the 8 beams at ``pose [M, 3]``."""
        from edge.sim.sensors import BEARINGS_RAD

        pose = np.asarray(pose, np.float64)
        ang = pose[:, 2:3] + BEARINGS_RAD[None, :]
        dx, dy = np.cos(ang), np.sin(ang)
        wx = self.wall_x[rows][:, None]
        t = np.divide(wx - pose[:, :1], dx, out=np.full_like(dx, -1.0), where=np.abs(dx) > 1e-9)
        y_c = pose[:, 1:2] + t * dy
        seen = (t > 0) & (t < self.reach) & (np.abs(y_c) < self.half_height)  # [M, 8]
        lo = (self.door_y - self.door_w / 2)[rows]  # [M, K]
        hi = (self.door_y + self.door_w / 2)[rows]
        open_k = (lo[:, :, None] < y_c[:, None, :]) & (y_c[:, None, :] < hi[:, :, None])  # [M, K, 8]
        agree = open_k == open_k[:, :1, :]  # hypothesis 0 is the truth
        return np.all(agree | ~seen[:, None, :], axis=-1)

    def expected_geodesic(self, p: np.ndarray, g: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean shortest-path length ``[M]`` from ``p [M, 2]`` to ``g [M, 2]`` over the hypotheses in ``mask [M, K]``."""
        m, k = mask.shape
        d = geodesic_distance(np.repeat(p, k, 0), np.repeat(g, k, 0), np.repeat(self.wall_x[rows], k),
                              self.door_y[rows].reshape(-1), self.door_w[rows].reshape(-1), self.radius)
        w = mask.astype(np.float64)
        return (d.reshape(m, k) * w).sum(1) / w.sum(1)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    from training.evaluate import spearman

    return spearman(np.asarray(a, np.float64), np.asarray(b, np.float64))


@torch.no_grad()
def fit_position_probe(encode, sim_cfg, n: int = 256, *, camera: bool = False, seed: int = 0, batches: int = 3):
    """A least-squares linear probe ``z -> (x, y)`` (metres) fit on ``batches x n`` random observations.

    ``encode`` maps a simulator observation dict to ``z [n, E]`` (:class:`training.evaluate.Encoder`).
    Returns ``probe(z [M, E] tensor) -> float64 [M, 2]`` and sets ``probe.rmse_m`` (fit residual).
    """
    from edge.sim.env import BatchSim

    sim = BatchSim(sim_cfg, n, camera=camera, seed=seed)
    zs, ps = [], []
    for k in range(batches):
        obs = sim.reset(seed=seed + 10 + k, mode="explore")
        zs.append(encode(obs).double().numpy())
        ps.append(sim.robot.pose[:, :2].copy())
    z_fit, p_fit = np.concatenate(zs), np.concatenate(ps)
    x_fit = np.c_[z_fit, np.ones(len(z_fit))]
    coef = np.linalg.lstsq(x_fit, p_fit, rcond=None)[0]

    def probe(z: torch.Tensor) -> np.ndarray:
        zz = z.detach().double().numpy()
        return np.c_[zz, np.ones(len(zz))] @ coef

    probe.rmse_m = float(np.sqrt(np.mean(np.sum((x_fit @ coef - p_fit) ** 2, axis=1))))
    return probe


def wall_diagnostics(wm: WorldModel, *, rollouts: int = 256, layouts: int = 12, grid_step_m: float = 0.1,
                     horizon: int | None = None, action_repeat: int | None = None, seed: int = 0) -> dict:
    """Phantom-crossing rate of predicted rollouts and geodesic ranking of embedding distances.

    Returns a dict: ``phantom_crossing_rate`` (phantom crossings / rollouts the simulator kept on
    their side), ``true_crossings``, ``predicted_crossings``, ``rollouts``, ``final_error_m_free``
    and ``final_error_m_collided`` (probed position error at the last step, for rollouts that
    did / did not touch a wall), ``probe_rmse_m``, ``geodesic_spearman`` and
    ``straight_spearman`` (means over ``layouts`` goals), ``geodesic_spearman_other_room``
    (grid points across the wall only), ``horizon`` and ``action_repeat``.
    """
    from edge.sim.env import BatchSim, SimConfig
    from edge.sim.world import Layout
    from training.evaluate import Encoder

    cfg = wm.config
    horizon = int(horizon or cfg.planner.horizon)
    action_repeat = int(action_repeat or cfg.data.action_repeat)
    if rollouts < 2 or layouts < 1 or horizon < 1 or action_repeat < 1 or not grid_step_m > 0:
        raise ValueError("wall_diagnostics needs rollouts >= 2, layouts >= 1, horizon >= 1, action_repeat >= 1, grid_step_m > 0")
    camera = cfg.model.kind == "camera"
    sim_cfg = SimConfig()
    encode = Encoder(wm)
    rng = np.random.default_rng(seed)

    probe = fit_position_probe(encode, sim_cfg, rollouts, camera=camera, seed=seed)
    sim = BatchSim(sim_cfg, rollouts, camera=camera, seed=seed)

    # 1) held actions: predictor vs simulator
    obs = sim.reset(seed=seed + 20, mode="evaluate")
    wall = sim.layout.wall_x
    side0 = np.sign(sim.robot.pose[:, 0] - wall)
    actions = np.clip(rng.normal(0.0, 0.3, (rollouts, 2)) + 0.7, -1.0, 1.0).astype(np.float32)
    z = encode(obs)
    h = wm.predictor.init_hidden(z)
    touched = np.zeros(rollouts, bool)
    a = torch.from_numpy(actions)
    for _ in range(horizon):
        z, h, _ = wm.predictor.step(z, h, a)
        for _ in range(action_repeat):
            _, info = sim.step(actions)
            touched |= info["collided"]
    pred_end = probe(z)
    true_end = sim.robot.pose[:, :2]
    pred_cross = np.sign(pred_end[:, 0] - wall) != side0
    true_cross = np.sign(true_end[:, 0] - wall) != side0
    stayed = ~true_cross
    err = np.linalg.norm(pred_end - true_end, axis=-1)
    out = {
        "rollouts": rollouts,
        "horizon": horizon,
        "action_repeat": action_repeat,
        "probe_rmse_m": probe.rmse_m,
        "true_crossings": int(true_cross.sum()),
        "predicted_crossings": int(pred_cross.sum()),
        "phantom_crossings": int((pred_cross & stayed).sum()),
        "phantom_crossing_rate": float((pred_cross & stayed).sum() / max(stayed.sum(), 1)),
        "final_error_m_free": float(err[~touched].mean()) if (~touched).any() else None,
        "final_error_m_collided": float(err[touched].mean()) if touched.any() else None,
    }

    # 2) embedding distance to a goal vs geodesic / straight-line distance over a grid
    w2, h2 = sim_cfg.world.width / 2, sim_cfg.world.height / 2
    margin = sim_cfg.robot.radius + 0.05
    xs = np.arange(-w2 + margin, w2 - margin + 1e-9, grid_step_m)
    ys = np.arange(-h2 + margin, h2 - margin + 1e-9, grid_step_m)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], -1)
    geo_r, straight_r, other_r = [], [], []
    for i in range(min(layouts, rollouts)):
        lay = sim.layout.take(np.full(1, i))
        keep = np.abs(pts[:, 0] - lay.wall_x[0]) > margin
        p = pts[keep]
        n = len(p)
        goal = np.broadcast_to(sim.goal[i], (n, 2))
        many = Layout(np.repeat(lay.wall_x, n), np.repeat(lay.door_y, n), np.repeat(lay.door_width, n))
        grid_sim = BatchSim(sim_cfg, n, camera=camera, seed=seed + 30 + i)
        heading = rng.uniform(-np.pi, np.pi, (n, 1))
        z_pts = encode(grid_sim.reset(layout=many, start=np.c_[p, heading], goal=goal)).double().numpy()
        goal_sim = BatchSim(sim_cfg, 1, camera=camera, seed=seed + 60 + i)
        z_goal = encode(goal_sim.reset(layout=lay, start=np.r_[sim.goal[i], rng.uniform(-np.pi, np.pi)][None],
                                       goal=sim.goal[i][None])).double().numpy()
        d_emb = np.linalg.norm(z_pts - z_goal, axis=-1)
        d_geo = geodesic_distance(p, goal, many.wall_x, many.door_y, many.door_width, sim_cfg.robot.radius)
        d_straight = np.linalg.norm(p - goal, axis=-1)
        across = np.sign(p[:, 0] - lay.wall_x[0]) != np.sign(sim.goal[i, 0] - lay.wall_x[0])
        geo_r.append(_rank_corr(d_emb, d_geo))
        straight_r.append(_rank_corr(d_emb, d_straight))
        if across.sum() > 2:
            other_r.append(_rank_corr(d_emb[across], d_geo[across]))
    out["layouts"] = len(geo_r)
    out["geodesic_spearman"] = float(np.mean(geo_r))
    out["straight_spearman"] = float(np.mean(straight_r))
    out["geodesic_spearman_other_room"] = float(np.mean(other_r)) if other_r else None
    return out
