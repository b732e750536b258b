"""World-model architectures: encoders, the action-conditioned GRU predictor, training heads.

The interface is the contract in ``docs/ARCHITECTURE.md`` ("World model interface"): the same
:meth:`Predictor.step` is used by training, the torch reference planner and the ONNX export,
so the exported graph is the training math.

Shapes: ``B`` batch, ``E`` embedding size, ``A`` action size (2), ``L`` GRU layers, ``Hd`` GRU
hidden size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SENSOR_DIM = 14
"""Length of the sensor observation vector (``edge/sim/obs.py: sensor_vector``)."""
ACTION_DIM = 2
"""Normalised (left, right) wheel command."""
POSE4_DIM = 4
"""Odometry pose as (x / half_width, y / half_height, sin theta, cos theta)."""


def _mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    """Linear+ReLU stack ``sizes[0] -> ... -> sizes[-1]`` (ReLU: quantises well)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SensorEncoder(nn.Module):
    """MLP over the 14-dim sensor vector: ``obs [B, 14] -> z [B, E]``.

    Args:
        embed_dim: E.
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        obs_dim: input size (14 for the standard sensor layout).
        input_mask: optional ``[obs_dim]`` 0/1 mask multiplied into the input (a constant
            buffer: the exported graph keeps the 14-wide input). The default sensor model
            masks the wheel speeds (indices 12, 13): otherwise the embedding is dominated by
            velocity and a goal observed at rest is "far" from any moving state.
    """

    def __init__(self, embed_dim: int = 32, hidden: int = 128, depth: int = 2, obs_dim: int = SENSOR_DIM,
                 input_mask: torch.Tensor | None = None):
        super().__init__()
        if embed_dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"SensorEncoder: embed_dim, hidden, depth must be >= 1, got {embed_dim}, {hidden}, {depth}")
        self.obs_dim = obs_dim
        self.embed_dim = embed_dim
        self.net = _mlp([obs_dim] + [hidden] * depth + [embed_dim])
        mask = torch.ones(obs_dim) if input_mask is None else torch.as_tensor(input_mask, dtype=torch.float32)
        if mask.shape != (obs_dim,):
            raise ValueError(f"SensorEncoder: input_mask must have shape [{obs_dim}], got {tuple(mask.shape)}")
        self.register_buffer("input_mask", mask)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs [B, obs_dim] float32 -> z [B, E]``."""
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"SensorEncoder expects obs [..., {self.obs_dim}], got {tuple(obs.shape)}")
        return self.net(obs * self.input_mask)


class _ResidualBlock(nn.Module):
    """Impala residual block: ``x + conv(relu(conv(relu(x))))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class _ImpalaStack(nn.Module):
    """conv3x3 -> maxpool(3, stride 2) -> 2 residual blocks; halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = _ResidualBlock(out_channels)
        self.res1 = _ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class CameraEncoder(nn.Module):
    """Impala-style residual CNN for 64x64 RGB frames fused with the odometry pose.

    ``frame [B, 3, 64, 64] float in [0, 1], pose4 [B, 4] -> z [B, E]``.

    Args:
        embed_dim: E.
        channels: channels of the three Impala stacks (64 -> 32 -> 16 -> 8 pixels).
        hidden: width of the fusion MLP.
        image_size: frame side in pixels (multiple of 8).
    """

    def __init__(self, embed_dim: int = 32, channels: tuple[int, ...] = (16, 32, 32), hidden: int = 128, image_size: int = 64):
        super().__init__()
        if image_size % (2 ** len(channels)) != 0:
            raise ValueError(f"CameraEncoder: image_size {image_size} must be divisible by 2**len(channels)")
        self.embed_dim = embed_dim
        self.image_size = image_size
        stacks = []
        c_in = 3
        for c in channels:
            stacks.append(_ImpalaStack(c_in, c))
            c_in = c
        self.cnn = nn.Sequential(*stacks)
        side = image_size // (2 ** len(channels))
        self.image_fc = nn.Linear(c_in * side * side, hidden)
        self.pose_fc = nn.Linear(POSE4_DIM, hidden)
        self.head = _mlp([2 * hidden, hidden, embed_dim])

    def forward(self, frame: torch.Tensor, pose4: torch.Tensor) -> torch.Tensor:
        """``frame [B, 3, S, S] in [0, 1], pose4 [B, 4] -> z [B, E]``."""
        if frame.dim() != 4 or frame.shape[1] != 3 or frame.shape[2] != self.image_size or frame.shape[3] != self.image_size:
            raise ValueError(f"CameraEncoder expects frame [B, 3, {self.image_size}, {self.image_size}], got {tuple(frame.shape)}")
        if pose4.shape[-1] != POSE4_DIM:
            raise ValueError(f"CameraEncoder expects pose4 [B, 4], got {tuple(pose4.shape)}")
        x = self.cnn(frame)
        x = F.relu(self.image_fc(F.relu(x).flatten(1)))
        p = F.relu(self.pose_fc(pose4))
        return self.head(torch.cat([x, p], dim=-1))


class ExplicitGRUCell(nn.Module):
    """GRU cell written out with explicit equations (``torch.nn.GRUCell`` semantics).

    Parameter names and layouts equal ``nn.GRUCell`` (``weight_ih [3Hd, I]``,
    ``weight_hh [3Hd, Hd]``, ``bias_ih [3Hd]``, ``bias_hh [3Hd]``, gate order r, z, n), so a
    GRUCell state dict loads as is. ``linear_before_reset=1``::

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        u  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - u) * n + u * h

    Only MatMul/Add/Mul/Sigmoid/Tanh/Slice: exports to plain ONNX ops (no GRU op, no Loop).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        bound = 1.0 / hidden_size**0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``x [B, I], h [B, Hd] -> h' [B, Hd]``."""
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        gh = F.linear(h, self.weight_hh, self.bias_hh)
        hd = self.hidden_size
        r = torch.sigmoid(gi[:, :hd] + gh[:, :hd])
        u = torch.sigmoid(gi[:, hd : 2 * hd] + gh[:, hd : 2 * hd])
        n = torch.tanh(gi[:, 2 * hd :] + r * gh[:, 2 * hd :])
        return (1.0 - u) * n + u * h


class Predictor(nn.Module):
    """Action-conditioned predictor: GRU over ``[z, a]`` with a residual output projection.

    ``z_next = z + out(h_top)`` and a confidence head ``conf = softplus(mlp(h_top))`` that is
    trained to predict the squared prediction error of this step (mean over the E
    dimensions, in embedding units squared; lower is better). The confidence head reads a
    detached hidden state, so training it never changes the predictor.

    Args:
        embed_dim: E.
        hidden: GRU hidden size Hd.
        layers: GRU layers L (1 or 2).
        action_dim: A.
        conf_hidden: width of the confidence head's hidden layer.
    """

    def __init__(self, embed_dim: int = 32, hidden: int = 128, layers: int = 1, action_dim: int = ACTION_DIM, conf_hidden: int = 32):
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"Predictor: layers must be 1 or 2, got {layers}")
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.layers = layers
        self.action_dim = action_dim
        self.init_fc = nn.Linear(embed_dim, layers * hidden)
        self.cells = nn.ModuleList(
            [ExplicitGRUCell(embed_dim + action_dim if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.out = nn.Linear(hidden, embed_dim)
        self.conf_head = _mlp([hidden, conf_hidden, 1])

    def init_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, E] -> h [L, B, Hd]`` (learned from the current embedding)."""
        h = torch.tanh(self.init_fc(z))
        return h.reshape(z.shape[0], self.layers, self.hidden).transpose(0, 1)

    def step(self, z: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One predicted step.

        Args:
            z: [B, E] current embedding.
            h: [L, B, Hd] GRU state.
            a: [B, A] normalised action.
        Returns:
            z_next [B, E], h_next [L, B, Hd], conf [B] (predicted squared error, >= 0).
        """
        x = torch.cat([z, a], dim=-1)
        new_h = []
        for i, cell in enumerate(self.cells):
            x = cell(x, h[i])
            new_h.append(x)
        z_next = z + self.out(x)
        conf = F.softplus(self.conf_head(x.detach())).squeeze(-1)
        return z_next, torch.stack(new_h, dim=0), conf

    def unroll(self, z0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive rollout from one embedding.

        Args:
            z0: [B, E] starting embedding.
            actions: [B, T, A].
        Returns:
            z_pred [B, T, E] (predicted embeddings after each action), conf [B, T].
        """
        h = self.init_hidden(z0)
        z = z0
        zs, confs = [], []
        for t in range(actions.shape[1]):
            z, h, c = self.step(z, h, actions[:, t])
            zs.append(z)
            confs.append(c)
        return torch.stack(zs, dim=1), torch.stack(confs, dim=1)


class InverseDynamicsHead(nn.Module):
    """Predicts the action from consecutive embeddings (training only).

    ``z_t [B, E], z_next [B, E] -> a [B, A]`` in [-1, 1] (tanh).
    """

    def __init__(self, embed_dim: int = 32, hidden: int = 64, action_dim: int = ACTION_DIM):
        super().__init__()
        self.net = _mlp([2 * embed_dim, hidden, action_dim])

    def forward(self, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(torch.cat([z_t, z_next], dim=-1)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
