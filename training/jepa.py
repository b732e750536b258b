"""The action-conditioned JEPA, composed from parts so the math reads from the code.

Target-encoder modes (which encoder feeds the predictor, which one produces targets):

=========  =========================  ==========================  ============================
mode       predictor input (context)  prediction targets          deployed encoder
=========  =========================  ==========================  ============================
default    online encoder (grad)      EMA target encoder, no grad target (EMA) encoder
vjepa2     EMA target encoder, no grad EMA target encoder, no grad target (EMA) encoder
none       online encoder (grad)      online encoder (grad)       online encoder
=========  =========================  ==========================  ============================

In every mode the regularisers (VICReg, Barlow Twins, temporal similarity) and the
inverse-dynamics head act on the online encoder's embeddings; the target encoder never
receives a gradient and follows the online one by EMA (:meth:`JEPA.update_target`). In
``vjepa2`` the online encoder therefore learns only from the regularisers and inverse
dynamics while the predictor learns to predict the slowly moving EMA space (as V-JEPA 2-AC
trains its predictor on a fixed encoder).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.config import Config
from training.losses import (
    BarlowTwinsLoss,
    CenteringLoss,
    ConfidenceLoss,
    GeodesicMetricLoss,
    InverseDynamicsLoss,
    PredictionLoss,
    RangeReconstructionLoss,
    TemporalDistanceLoss,
    TemporalSimilarityLoss,
    VICRegLoss,
)
from training.models import CameraEncoder, InverseDynamicsHead, Predictor, SensorEncoder

def pose4_from_sensor(sensor: torch.Tensor) -> torch.Tensor:
    """Odometry pose4 ``(x/half_width, y/half_height, sin, cos)`` = sensor vector ``[..., 8:12]``."""
    return sensor[..., 8:12]


def build_encoder(cfg: Config) -> nn.Module:
    """The encoder the config asks for (sensor MLP or camera CNN)."""
    m = cfg.model
    if m.kind == "sensor":
        mask = None if m.wheel_speed_input else torch.tensor([1.0] * 12 + [0.0, 0.0])
        return SensorEncoder(embed_dim=m.embed_dim, hidden=m.enc_hidden, depth=m.enc_depth, input_mask=mask)
    return CameraEncoder(embed_dim=m.embed_dim, channels=tuple(m.cam_channels), hidden=m.enc_hidden)


def build_predictor(cfg: Config) -> Predictor:
    m = cfg.model
    return Predictor(embed_dim=m.embed_dim, hidden=m.pred_hidden, layers=m.pred_layers, conf_hidden=m.conf_hidden)


class JEPA(nn.Module):
    """Encoder + EMA target encoder + predictor + training heads, with :meth:`forward` = loss.

    Batches are dicts of tensors: ``sensor [B, k+1, 14]``, ``action [B, k, 2]`` and, for the
    camera model, ``frame [B, k+1, 3, 64, 64]`` float in [0, 1].
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        o = cfg.objective
        self.mode = o.target_mode
        self.encoder = build_encoder(cfg)
        self.target_encoder: nn.Module | None = None
        if self.mode != "none":
            self.target_encoder = copy.deepcopy(self.encoder)
            for p in self.target_encoder.parameters():
                p.requires_grad_(False)
        self.predictor = build_predictor(cfg)
        self.pred_loss = PredictionLoss()
        self.conf_loss = ConfidenceLoss()
        self.temporal_loss = TemporalSimilarityLoss()
        self.vicreg = VICRegLoss(w_var=o.variance, w_cov=o.covariance)
        self.barlow = BarlowTwinsLoss(lambd=o.barlow_lambda) if o.barlow > 0 else None
        self.centering = CenteringLoss(cfg.model.embed_dim, momentum=o.center_momentum) if o.centering > 0 else None
        self.distance_loss = (TemporalDistanceLoss(o.distance_step, o.distance_cap, o.distance_local)
                              if o.distance > 0 else None)
        self.ranges_loss = RangeReconstructionLoss(cfg.model.embed_dim) if o.ranges > 0 else None
        if o.geodesic > 0 and cfg.model.kind != "sensor":
            raise ValueError("objective.geodesic is implemented for sensor models (the simulated pairs are not rendered); "
                             "set objective.geodesic=0 for a camera model")
        self.geodesic_loss = GeodesicMetricLoss(o.geodesic_scale) if o.geodesic > 0 else None
        self.idm = InverseDynamicsLoss(InverseDynamicsHead(cfg.model.embed_dim, cfg.model.idm_hidden)) if o.idm > 0 else None

    # -- encoders -------------------------------------------------------------------------
    def _encode_with(self, enc: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sensor = batch["sensor"]
        lead = sensor.shape[:-1]
        if self.cfg.model.kind == "sensor":
            z = enc(sensor.reshape(-1, sensor.shape[-1]))
        else:
            frame = batch["frame"]
            z = enc(frame.reshape(-1, *frame.shape[-3:]), pose4_from_sensor(sensor).reshape(-1, 4))
        return z.reshape(*lead, -1)

    def encode_online(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Online embeddings ``[B, k+1, E]`` (with gradient)."""
        return self._encode_with(self.encoder, batch)

    @torch.no_grad()
    def encode_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target embeddings ``[B, k+1, E]`` (no gradient); the online encoder in mode ``none``."""
        return self._encode_with(self.deploy_encoder, batch)

    @property
    def deploy_encoder(self) -> nn.Module:
        """The encoder whose space the predictor predicts in (used by planning and export)."""
        return self.target_encoder if self.target_encoder is not None else self.encoder

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA rule: ``target <- m * target + (1 - m) * online`` (no-op in mode ``none``)."""
        if self.target_encoder is None:
            return
        m = self.cfg.objective.ema_momentum
        for pt, po in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            pt.mul_(m).add_(po.detach(), alpha=1.0 - m)
        for bt, bo in zip(self.target_encoder.buffers(), self.encoder.buffers()):
            bt.copy_(bo)

    # -- objective --------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts for one batch of windows."""
        o = self.cfg.objective
        action = batch["action"]
        horizon = min(o.horizon, action.shape[1])
        z_on = self.encode_online(batch)  # [B, k+1, E]
        if self.mode == "none":
            z_tgt = z_on
            context = z_on[:, 0]
        else:
            with torch.no_grad():
                z_tgt = self._encode_with(self.target_encoder, batch)
            context = z_tgt[:, 0] if self.mode == "vjepa2" else z_on[:, 0]
        z_pred, conf = self.predictor.unroll(context, action[:, :horizon])
        target = z_tgt[:, 1 : horizon + 1]

        parts: dict[str, torch.Tensor] = {}
        l_pred, p = self.pred_loss(z_pred, target)
        parts.update(p)
        total = o.pred * l_pred
        l_conf, p = self.conf_loss(conf, z_pred, target)
        parts.update(p)
        total = total + o.confidence * l_conf
        flat = z_on.reshape(-1, z_on.shape[-1])
        if o.variance > 0 or o.covariance > 0:
            l_vic, p = self.vicreg(flat)
            parts.update(p)
            total = total + l_vic
        if o.temporal > 0:
            l_tmp, p = self.temporal_loss(z_on)
            parts.update(p)
            total = total + o.temporal * l_tmp
        e = z_on.shape[-1]
        if self.barlow is not None:
            l_bt, p = self.barlow(z_on[:, :-1].reshape(-1, e), z_on[:, 1:].reshape(-1, e))
            parts.update(p)
            total = total + o.barlow * l_bt
        if self.centering is not None:
            l_c, p = self.centering(z_pred.reshape(-1, e), target.reshape(-1, e))
            parts.update(p)
            total = total + o.centering * l_c
        if self.distance_loss is not None:
            if "partner_sensor" not in batch:
                raise ValueError("objective.distance > 0 needs same-episode partners in the batch "
                                 "(WindowTensors.iter_batches(..., partners=True))")
            partner = {"sensor": batch["partner_sensor"]}
            if "partner_frame" in batch:
                partner["frame"] = batch["partner_frame"]
            z_partner = self.encode_online(partner)  # [B, E]
            l_dist, p = self.distance_loss(z_on, z_on[:, 0], z_partner)
            parts.update(p)
            total = total + o.distance * l_dist
        if self.ranges_loss is not None:
            l_rng, p = self.ranges_loss(z_on, batch["sensor"])
            parts.update(p)
            total = total + o.ranges * l_rng
        if self.geodesic_loss is not None:
            if "geo_sensor_a" not in batch:
                raise ValueError("objective.geodesic > 0 needs simulated pairs in the batch (geo_sensor_a, geo_sensor_b, "
                                 "geo_d: training.walls.geodesic_pairs); edge-train adds them")
            z_a = self.encode_online({"sensor": batch["geo_sensor_a"]})
            z_b = self.encode_online({"sensor": batch["geo_sensor_b"]})
            l_geo, p = self.geodesic_loss(z_a, z_b, batch["geo_d"])
            parts.update(p)
            total = total + o.geodesic * l_geo
        if self.idm is not None:
            l_idm, p = self.idm(z_on[:, :-1].reshape(-1, e), z_on[:, 1:].reshape(-1, e), action.reshape(-1, action.shape[-1]))
            parts.update(p)
            total = total + o.idm * l_idm
        parts["loss"] = total.detach()
        return total, parts
