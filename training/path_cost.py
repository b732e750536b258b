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
    calls :meth:`start` (``N`` samples each, episode-major) and :meth:`step` once per planner
    step with the actions ``[B*N, 2]`` (normalised wheel commands, left then right).
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
        self.places = None if places is None else torch.as_tensor(places, dtype=torch.float32)

    def start(self, n: int) -> None:
        """Begin ``n`` samples per episode (episode-major, as :func:`rollout_cost` orders them)."""
        if self.ranges is None:
            raise RuntimeError("PathCost.start before set(): give it the range readings of the planned episodes")
        self._r = self.ranges.repeat_interleave(n, dim=0)
        self._places = None
        if self.places is not None and self.visit > 0:
            # empty slots (NaN) go far away, where the kernel is exactly 0 in float32
            far = torch.nan_to_num(self.places, nan=1e3)
            self._px, self._py = (far[..., i].repeat_interleave(n, dim=0) for i in (0, 1))
            self._places = far
        m = self._r.shape[0]
        self._pose = torch.zeros(m, 3)
        self._intrusion = torch.zeros(m)

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Drive ``actions [B*N, 2]`` for one planner step; returns this step's cost ``[B*N]``."""
        k = self.kin
        rim = actions.clamp(-1.0, 1.0).float() * (k.max_wheel_speed * k.wheel_radius)  # m/s per wheel
        v, w = rim.mean(-1), (rim[:, 1] - rim[:, 0]) / k.wheel_base
        x, y, th = self._pose.unbind(-1)
        n_beams = self._r.shape[1]
        rows = torch.arange(len(v))
        for _ in range(k.ticks_per_step):
            th = th + w * k.dt
            x = x + v * torch.cos(th) * k.dt
            y = y + v * torch.sin(th) * k.dt
            if self.clearance > 0:
                beam = torch.remainder(torch.atan2(y, x), 2 * math.pi) / (2 * math.pi / n_beams)
                lo = beam.floor().long() % n_beams
                frac = beam - beam.floor()
                between = torch.minimum(self._r[rows, lo], self._r[rows, (lo + 1) % n_beams])
                nearest = self._r[rows, torch.round(beam).long() % n_beams]
                free = torch.where((frac > 0.25) & (frac < 0.75), between, nearest)
                depth = (torch.hypot(x, y) - (free - self.margin)).clamp_min(0.0)
                self._intrusion = torch.maximum(self._intrusion, depth)
        self._pose = torch.stack([x, y, th], dim=-1)
        cost = self.clearance * self._intrusion
        if self._places is not None:
            d2 = (x[:, None] - self._px).square_().add_((y[:, None] - self._py).square_())
            cost = cost + self.visit * d2.mul_(-0.5 / self.visit_sigma ** 2).exp_().sum(-1)
        return cost
