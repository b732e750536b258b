"""Torch reference planners (MPPI and CEM) over the world model's :meth:`Predictor.step`.

This is the numerical reference for the exported fused planner graph (contract "Fused planner
graph" in docs/ARCHITECTURE.md): same inputs (``z0 [E]``, ``z_goal [E]``, ``mean [H, A]``,
``std [H, A]``, ``noise [J, N, H, A]``), same outputs (:class:`PlanResult`). Noise is an input,
so a plan is a deterministic function of its inputs.

One iteration ``j`` (``N`` samples, horizon ``H``)::

    actions = clamp(mean + std * noise[j], low, high)                         [N, H, A]
    z, h    = z0, init_hidden(z0);  for t < H: z, h, c = step(z, h, actions[:, t])
    cost    = sum_t ||z_t - z_goal||_2  +  smoothness * sum_{t>=1} ||a_t - a_{t-1}||^2   [N]
    MPPI:  s = (cost - min cost) / (std(cost) + 1e-6)    (scale-free; std unbiased=False)
           w = softmax(-s / temperature)
           mean = sum_n w a_n;  std = max(sqrt(sum_n w (a_n - mean)^2), std_min)
    CEM:   the ``elites`` cheapest samples; mean = their mean, std = max(their std (biased), std_min)

After ``J`` iterations: ``best_cost``/``mean_cost`` are the min/mean cost of the last
iteration's samples, ``best_actions`` the cheapest sample's actions, and ``conf [H]`` the
confidence head along the final mean plan. Between control ticks the plan is warm-started by
shifting it one step (:func:`shift_plan`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.config import PlannerConfig
from training.path_cost import PathCost, VisitMemory

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
InitFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PlanResult:
    """Outputs of one planning call (the fused graph's outputs, same names)."""

    mean: torch.Tensor  # [H, A] updated mean plan (mean_out)
    std: torch.Tensor  # [H, A] updated std (std_out)
    best_cost: torch.Tensor  # [] cheapest sample's cost in the last iteration
    mean_cost: torch.Tensor  # [] mean sample cost in the last iteration
    conf: torch.Tensor  # [H] confidence head (predicted squared error) along the final mean plan
    best_actions: torch.Tensor  # [H, A] the cheapest sample's actions

    @property
    def first_action(self) -> torch.Tensor:
        """``[A]`` the action to apply now (first step of the mean plan)."""
        return self.mean[0]


class FunctionalModel:
    """Wraps plain functions as a world model for the planner (tests use lambdas).

    ``step(z [N, E], h [..], a [N, A]) -> (z' [N, E], h', conf [N])``; ``init_hidden(z) -> h``.
    """

    def __init__(self, step: StepFn, init_hidden: InitFn | None = None):
        self.step = step
        self.init_hidden = init_hidden if init_hidden is not None else (lambda z: z.new_zeros(1, z.shape[0], 1))


def rollout_cost(model, z0: torch.Tensor, z_goal: torch.Tensor, actions: torch.Tensor, smoothness: float,
                 path: PathCost | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost of each action sequence, batched over episodes.

    Args:
        model: has ``init_hidden`` and ``step`` (a :class:`training.models.Predictor` or
            :class:`FunctionalModel`).
        z0: [B, E] start embeddings; z_goal: [B, E]; actions: [B, N, H, A].
        path: optional :class:`training.path_cost.PathCost` (already ``set`` for these B
            episodes); its per-step cost of each sample's kinematic path is added.
    Returns:
        cost [B, N] (see module docstring), conf [B, N, H].
    """
    b, n, horizon, a_dim = actions.shape
    z = z0[:, None, :].expand(b, n, -1).reshape(b * n, -1)
    goal = z_goal[:, None, :].expand(b, n, -1).reshape(b * n, -1)
    flat = actions.reshape(b * n, horizon, a_dim)
    h = model.init_hidden(z)
    cost = actions.new_zeros(b * n)
    confs = []
    for t in range(horizon):
        z, h, c = model.step(z, h, flat[:, t])
        cost = cost + torch.linalg.vector_norm(z - goal, dim=-1)
        confs.append(c)
    if path is not None:
        cost = cost + path.step_costs(flat).sum(1)
    cost = cost.reshape(b, n)
    if horizon > 1 and smoothness > 0:
        cost = cost + smoothness * (actions[:, :, 1:] - actions[:, :, :-1]).pow(2).sum(dim=(2, 3))
    return cost, torch.stack(confs, dim=1).reshape(b, n, horizon)


@torch.no_grad()
def plan_batch(model, z0: torch.Tensor, z_goal: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               noise: torch.Tensor, cfg: PlannerConfig, action_low: float = -1.0, action_high: float = 1.0,
               path: PathCost | None = None) -> PlanResult:
    """:func:`plan` for ``B`` independent problems at once (every output gains a leading ``[B]``).

    Args: z0, z_goal [B, E]; mean, std [B, H, A]; noise [J, B, N, H, A]; ``path``: optional
    extra cost of the samples' kinematic paths (:func:`rollout_cost`).
    """
    if noise.dim() != 5 or noise.shape[1] != mean.shape[0] or noise.shape[3:] != mean.shape[1:] or std.shape != mean.shape:
        raise ValueError(f"plan: noise must be [J, (B,) N, H, A] matching mean/std [(B,) H, A]; got noise "
                         f"{tuple(noise.shape)}, mean {tuple(mean.shape)}, std {tuple(std.shape)}")
    cost = actions = None
    for j in range(noise.shape[0]):
        actions = (mean[:, None] + std[:, None] * noise[j]).clamp(action_low, action_high)  # [B, N, H, A]
        cost, _ = rollout_cost(model, z0, z_goal, actions, cfg.smoothness, path)  # [B, N]
        if cfg.method == "mppi":
            spread = cost.std(dim=1, unbiased=False, keepdim=True) + 1e-6
            w = torch.softmax(-(cost - cost.min(dim=1, keepdim=True).values) / (spread * cfg.temperature), dim=1)
            w = w[:, :, None, None]
            mean = (w * actions).sum(1)
            std = (w * (actions - mean[:, None]).pow(2)).sum(1).sqrt().clamp_min(cfg.std_min)
        else:
            idx = torch.topk(cost, min(cfg.elites, cost.shape[1]), dim=1, largest=False).indices
            elite = torch.gather(actions, 1, idx[:, :, None, None].expand(-1, -1, *actions.shape[2:]))
            mean = elite.mean(1)
            std = elite.std(1, unbiased=False).clamp_min(cfg.std_min)
    best = torch.argmin(cost, dim=1)
    ar = torch.arange(cost.shape[0])
    _, conf = rollout_cost(model, z0, z_goal, mean[:, None], 0.0)
    return PlanResult(mean=mean, std=std, best_cost=cost[ar, best], mean_cost=cost.mean(1), conf=conf[:, 0],
                      best_actions=actions[ar, best])


@torch.no_grad()
def plan(model, z0: torch.Tensor, z_goal: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
         noise: torch.Tensor, cfg: PlannerConfig, action_low: float = -1.0, action_high: float = 1.0) -> PlanResult:
    """One planning call (J iterations of MPPI or CEM); see the module docstring for the math.

    Args:
        model: world model with ``init_hidden`` and ``step``.
        z0, z_goal: [E]. mean, std: [H, A] (warm start). noise: [J, N, H, A] standard normal.
        cfg: method, temperature, smoothness, std_min, elites (N, H, J come from ``noise``).
    """
    if noise.dim() != 4 or noise.shape[2:] != mean.shape or std.shape != mean.shape:
        raise ValueError(f"plan: noise must be [J, N, H, A] matching mean/std [H, A]; got noise {tuple(noise.shape)}, "
                         f"mean {tuple(mean.shape)}, std {tuple(std.shape)}")
    r = plan_batch(model, z0[None], z_goal[None], mean[None], std[None], noise[:, None], cfg, action_low, action_high)
    return PlanResult(mean=r.mean[0], std=r.std[0], best_cost=r.best_cost[0], mean_cost=r.mean_cost[0],
                      conf=r.conf[0], best_actions=r.best_actions[0])


def shift_plan(mean: torch.Tensor, std_init: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm start for the next tick: drop the executed step, repeat the last; reset std."""
    shifted = torch.cat([mean[1:], mean[-1:]], dim=0)
    return shifted, torch.full_like(shifted, std_init)


class MPCController:
    """Receding-horizon control with the reference planner for ``B`` episodes at once.

    Args:
        model: world model (``init_hidden``, ``step``).
        cfg: planner parameters.
        batch: number of episodes B planned together.
        action_dim: A.
        seed: noise generator seed (same seed -> same actions).
        action_repeat: r control ticks per predictor step (``data.action_repeat`` of the model).
            The planner still runs every tick and returns the first step of its plan, but the warm
            start is shifted by one predictor step only every ``r`` ticks (the first step covers
            the next ``r`` ticks).
        path_cost: the kinematic-path terms (:mod:`training.path_cost`) when ``cfg.clearance``
            or ``cfg.visit`` is on; :meth:`act` then needs the range readings and odometry pose.
            Build it with :func:`make_path_cost`.
    """

    def __init__(self, model, cfg: PlannerConfig, batch: int = 1, action_dim: int = 2, seed: int = 0,
                 action_repeat: int = 1, path_cost: PathCost | None = None):
        if action_repeat < 1:
            raise ValueError(f"MPCController: action_repeat must be >= 1, got {action_repeat}")
        if (cfg.clearance > 0 or cfg.visit > 0) and path_cost is None:
            raise ValueError("MPCController: planner.clearance / planner.visit are on but no path_cost was given; "
                             "build one with training.planner.make_path_cost(cfg, kinematics, max_range)")
        self.model = model
        self.cfg = cfg
        self.action_repeat = action_repeat
        self.batch = batch
        self.action_dim = action_dim
        self.path_cost = path_cost
        self.generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the previous plans (new episodes)."""
        c = self.cfg
        self.mean = torch.zeros(self.batch, c.horizon, self.action_dim)
        #: ``[B, H, A]`` the latest plan (before the warm-start shift); zeros before the first
        self.plan = torch.zeros(self.batch, c.horizon, self.action_dim)
        self.std = torch.full((self.batch, c.horizon, self.action_dim), c.std_init)
        self.last: PlanResult | None = None
        self.tick = 0
        self.memory = VisitMemory(self.batch, c.visit_memory, c.visit_every) if c.visit > 0 else None

    def act(self, z0: torch.Tensor, z_goal: torch.Tensor, active: torch.Tensor | None = None,
            ranges: torch.Tensor | None = None, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Plan from ``z0 [B, E]`` towards ``z_goal [B, E]``; returns the actions ``[B, A]`` to apply now.

        ``active [B] bool`` restricts planning to those episodes (finished ones get a zero action
        and keep their plan), which saves the compute of episodes that already reached the goal.
        With a ``path_cost``: ``ranges [B, n]`` (m from the body surface, NaN for no return) and
        ``pose [B, 3]`` (odometry x, y in m, heading in rad) of every episode, each tick.
        """
        c = self.cfg
        idx = torch.arange(self.batch) if active is None else torch.nonzero(active).flatten()
        if self.path_cost is not None:
            if ranges is None or pose is None:
                raise ValueError("MPCController.act: planner.clearance / planner.visit need ranges [B, n] and pose [B, 3] "
                                 "every tick")
            ranges, pose = torch.as_tensor(ranges, dtype=torch.float32), torch.as_tensor(pose, dtype=torch.float32)
            if self.memory is not None:
                self.memory.add(pose)
            places = self.memory.relative(pose)[idx] if self.memory is not None else None
            self.path_cost.set(ranges[idx], places)
        actions = torch.zeros(self.batch, self.action_dim)
        if len(idx) == 0:
            return actions
        noise = torch.randn(c.iterations, len(idx), c.samples, c.horizon, self.action_dim, generator=self.generator)
        result = plan_batch(self.model, z0[idx], z_goal[idx], self.mean[idx], self.std[idx], noise, c,
                            path=self.path_cost)
        self.last = result
        self.plan[idx] = result.mean
        self.tick += 1
        if self.tick % self.action_repeat == 0:
            self.mean[idx] = torch.cat([result.mean[:, 1:], result.mean[:, -1:]], dim=1)
        else:
            self.mean[idx] = result.mean
        self.std[idx] = c.std_init
        actions[idx] = result.mean[:, 0]
        return actions


def make_path_cost(cfg: PlannerConfig, kinematics, max_range: float) -> PathCost | None:
    """The :class:`training.path_cost.PathCost` that ``cfg`` asks for (None when
    ``planner.clearance`` and ``planner.visit`` are both 0). ``kinematics``: a
    :class:`training.path_cost.Kinematics`; ``max_range``: the range sensors' no-return reading (m)."""
    if cfg.clearance == 0 and cfg.visit == 0:
        return None
    return PathCost(kinematics, cfg.clearance, cfg.clearance_margin, cfg.visit, cfg.visit_sigma, max_range)
