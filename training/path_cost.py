"""Planner cost terms on the robot's own driven path: range clearance and a visit memory.

The world model's cost (embedding distance to the goal, :func:`training.planner.rollout_cost`)
says where to go; these terms say what the robot's own sensors already know about the way:

- **Clearance** (``planner.clearance``, a DWA-style obstacle cost). Each candidate action sequence
  is also driven through the differential-drive kinematics from the robot's pose now (wheel
  radius, wheel base and top wheel speed; ``ticks_per_step`` control ticks of ``dt`` per planner
  step). Its cost grows by ``clearance`` per metre that the path has gone past the range reading
  along its bearing, less ``clearance_margin`` (the deepest such intrusion so far, so a sequence
  that hits a wall early pays for it at every later step). Between two beams the nearer reading
  counts; a beam that returned nothing (NaN, or ``max_range``) sets no bound. The predictor is
  trained on data where walls rarely stop the robot and predicts many paths through walls
  ("phantom crossings", docs/TRAINING.md item 6); this term rules those plans out from what the
  range sensors see now.
- **Visit memory** (``planner.visit``, a tabu term). The robot's odometry position is remembered
  every ``visit_every`` control ticks (the last ``visit_memory`` places); a predicted path point
  pays ``visit * exp(-d^2 / (2 visit_sigma^2))`` for each remembered place at distance ``d``.
  A memoryless encoder cannot tell a stretch of wall it has already searched from one it has not;
  without memory the planner settles in front of the dividing wall, where the expected
  shortest path is lowest, and stays.

Both use only what the robot has on board (range readings, odometry, its kinematic constants), so
the runtime can compute them as ``edge-eval`` does. Shapes: ``B`` planned episodes, ``N`` samples
each, ``n`` range beams (beam ``i`` at ``360 * i / n`` degrees counter-clockwise from the heading),
``K`` remembered places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Kinematics:
    """Differential drive and timing of the planned robot (``edge.sim.robot.RobotConfig`` names)."""

    wheel_radius: float  # m
    wheel_base: float  # m between the wheels
    max_wheel_speed: float  # rad/s that a normalised wheel command of 1.0 asks for
    dt: float  # s per control tick
    ticks_per_step: int  # control ticks per planner step (the model's data.action_repeat)

    def __post_init__(self) -> None:
        for name in ("wheel_radius", "wheel_base", "max_wheel_speed", "dt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Kinematics.{name} must be > 0, got {getattr(self, name)}")
        if self.ticks_per_step < 1:
            raise ValueError(f"Kinematics.ticks_per_step must be >= 1, got {self.ticks_per_step}")


class VisitMemory:
    """The last ``size`` odometry positions of ``B`` robots, one every ``every`` ticks."""

    def __init__(self, batch: int, size: int, every: int):
        if size < 1 or every < 1:
            raise ValueError(f"VisitMemory: size and every must be >= 1, got {size}, {every}")
        self.every = every
        self.places = torch.full((batch, size, 2), float("nan"))
        self.tick = 0

    def add(self, pose: torch.Tensor) -> None:
        """Record ``pose [B, >=2]`` (x, y in m, odometry frame) on every ``every``-th call."""
        if self.tick % self.every == 0:
            self.places = torch.roll(self.places, 1, dims=1)
            self.places[:, 0] = pose[:, :2].to(self.places.dtype)
        self.tick += 1

    def relative(self, pose: torch.Tensor) -> torch.Tensor:
        """``[B, K, 2]`` the remembered places in each robot's frame (x ahead, y left); NaN = empty."""
        heading = pose[:, 2:3].to(self.places.dtype)
        c, s = torch.cos(heading), torch.sin(heading)
        d = self.places - pose[:, None, :2].to(self.places.dtype)
        return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], dim=-1)


class PathCost:
    """Per-step cost of each sample's kinematic path (module docstring), for
    :func:`training.planner.rollout_cost`.

    Use: :meth:`set` the sensed state of the ``B`` episodes being planned, then the planner
    adds :meth:`step_costs` of its samples' actions, the whole horizon at once (every control
    tick of every sample's path in a few batched ops: per-step torch calls would cost more than
    the predictor for one robot).
    """

    def __init__(self, kin: Kinematics, clearance: float = 0.0, clearance_margin: float = 0.03,
                 visit: float = 0.0, visit_sigma: float = 0.15, max_range: float = math.inf):
        if clearance < 0 or visit < 0 or clearance_margin < 0:
            raise ValueError(f"PathCost: clearance, clearance_margin and visit must be >= 0, got "
                             f"{clearance}, {clearance_margin}, {visit}")
        if not visit_sigma > 0:
            raise ValueError(f"PathCost: visit_sigma must be > 0 m, got {visit_sigma}")
        self.kin, self.clearance, self.margin = kin, clearance, clearance_margin
        self.visit, self.visit_sigma, self.max_range = visit, visit_sigma, max_range
        self.ranges: torch.Tensor | None = None
        self.places: torch.Tensor | None = None

    def set(self, ranges_m: torch.Tensor, places: torch.Tensor | None = None) -> None:
        """``ranges_m [B, n]`` metres from the body surface now; ``places [B, K, 2]``
        (:meth:`VisitMemory.relative`) or None for no visit term."""
        r = torch.as_tensor(ranges_m, dtype=torch.float32).clone()
        if r.dim() != 2 or r.shape[1] < 3:
            raise ValueError(f"PathCost.set: ranges must be [B, n >= 3] metres, got {tuple(r.shape)}")
        r[torch.isnan(r) | (r >= self.max_range - 1e-6)] = math.inf
        self.ranges = r
        # empty memory slots (NaN) go far away, where the kernel is exactly 0 in float32
        self.places = None if places is None else torch.nan_to_num(torch.as_tensor(places, dtype=torch.float32), nan=1e3)

    def step_costs(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B*N, H]`` the cost of each planner step of ``actions [B*N, H, 2]`` (normalised wheel
        commands, left then right; ``N`` samples per episode, episode-major, as
        :func:`training.planner.rollout_cost` orders them), driven from the pose now."""
        if self.ranges is None:
            raise RuntimeError("PathCost used before set(): give it the range readings of the planned episodes")
        k = self.kin
        m, horizon = actions.shape[0], actions.shape[1]
        if m % self.ranges.shape[0]:
            raise ValueError(f"PathCost: {m} samples is not a multiple of the {self.ranges.shape[0]} episodes set")
        n = m // self.ranges.shape[0]
        rim = actions.clamp(-1.0, 1.0).float().repeat_interleave(k.ticks_per_step, dim=1) * (k.max_wheel_speed * k.wheel_radius)
        v, w = rim.mean(-1), (rim[..., 1] - rim[..., 0]) / k.wheel_base  # [M, T] m/s, rad/s
        th = torch.cumsum(w * k.dt, dim=1)  # heading updated before the move, as the simulator's substeps
        x = torch.cumsum(v * torch.cos(th) * k.dt, dim=1)
        y = torch.cumsum(v * torch.sin(th) * k.dt, dim=1)
        ends = torch.arange(1, horizon + 1) * k.ticks_per_step - 1  # the tick that ends each planner step
        cost = actions.new_zeros(m, horizon)
        if self.clearance > 0:
            r = self.ranges.repeat_interleave(n, dim=0)[:, None, :].expand(-1, x.shape[1], -1)  # [M, T, n]
            n_beams = r.shape[-1]
            beam = torch.remainder(torch.atan2(y, x), 2 * math.pi) / (2 * math.pi / n_beams)
            lo = beam.floor().long() % n_beams
            frac = beam - beam.floor()
            between = torch.minimum(r.gather(2, lo[..., None]), r.gather(2, ((lo + 1) % n_beams)[..., None]))[..., 0]
            nearest = r.gather(2, (torch.round(beam).long() % n_beams)[..., None])[..., 0]
            free = torch.where((frac > 0.25) & (frac < 0.75), between, nearest)
            depth = (torch.hypot(x, y) - (free - self.margin)).clamp_min(0.0)
            cost = cost + self.clearance * torch.cummax(depth, dim=1).values[:, ends]
        if self.places is not None and self.visit > 0:
            places = self.places.repeat_interleave(n, dim=0)  # [M, K, 2]
            px, py = x[:, ends], y[:, ends]  # [M, H]
            d2 = (px[..., None] - places[:, None, :, 0]).square_().add_((py[..., None] - places[:, None, :, 1]).square_())
            cost = cost + self.visit * d2.mul_(-0.5 / self.visit_sigma ** 2).exp_().sum(-1)
        return cost
