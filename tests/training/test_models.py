"""Shapes, dtypes and numerics of the world-model modules (training/models.py)."""

import pytest
import torch

from training.models import (
    CameraEncoder,
    ExplicitGRUCell,
    InverseDynamicsHead,
    Predictor,
    SensorEncoder,
    count_parameters,
)


def test_sensor_encoder_shape_dtype():
    """SensorEncoder maps [B, 14] float32 to [B, E] float32."""
    enc = SensorEncoder(embed_dim=16, hidden=32, depth=2)
    z = enc(torch.randn(5, 14))
    assert z.shape == (5, 16) and z.dtype == torch.float32


def test_sensor_encoder_rejects_wrong_width():
    """A wrong observation width is refused with a message naming the expected shape."""
    with pytest.raises(ValueError, match="14"):
        SensorEncoder()(torch.randn(3, 12))


def test_camera_encoder_shape_dtype():
    """CameraEncoder maps frames [B, 3, 64, 64] + pose4 [B, 4] to [B, E], and uses both inputs."""
    torch.manual_seed(0)
    enc = CameraEncoder(embed_dim=8, channels=(4, 8, 8), hidden=16)
    frame = torch.rand(2, 3, 64, 64)
    pose = torch.randn(2, 4)
    z = enc(frame, pose)
    assert z.shape == (2, 8) and z.dtype == torch.float32
    assert not torch.allclose(z, enc(frame, pose + 1.0))
    assert not torch.allclose(z, enc(torch.rand(2, 3, 64, 64), pose))
    with pytest.raises(ValueError, match="64"):
        enc(torch.rand(2, 3, 32, 32), pose)


@pytest.mark.parametrize("batch", [1, 7])
def test_explicit_gru_cell_equals_torch_grucell(batch):
    """ExplicitGRUCell with GRUCell's weights gives GRUCell's output (linear_before_reset=1)."""
    torch.manual_seed(1)
    ref = torch.nn.GRUCell(10, 6)
    cell = ExplicitGRUCell(10, 6)
    cell.load_state_dict(ref.state_dict())
    h = torch.randn(batch, 6)
    for _ in range(3):
        x = torch.randn(batch, 10)
        h_ref = ref(x, h)
        h_new = cell(x, h)
        torch.testing.assert_close(h_new, h_ref, atol=1e-6, rtol=1e-5)
        h = h_ref


@pytest.mark.parametrize("layers", [1, 2])
def test_predictor_step_and_unroll_shapes(layers):
    """step: z [B,E], h [L,B,Hd], a [B,2] -> z' [B,E], h' [L,B,Hd], conf [B] >= 0; unroll matches steps."""
    torch.manual_seed(2)
    pred = Predictor(embed_dim=12, hidden=20, layers=layers)
    z = torch.randn(4, 12)
    h = pred.init_hidden(z)
    assert h.shape == (layers, 4, 20)
    a = torch.rand(4, 3, 2) * 2 - 1
    z1, h1, c1 = pred.step(z, h, a[:, 0])
    assert z1.shape == (4, 12) and h1.shape == (layers, 4, 20) and c1.shape == (4,)
    assert (c1 >= 0).all() and z1.dtype == torch.float32
    zs, cs = pred.unroll(z, a)
    assert zs.shape == (4, 3, 12) and cs.shape == (4, 3)
    torch.testing.assert_close(zs[:, 0], z1)
    z2, _, c2 = pred.step(z1, h1, a[:, 1])
    torch.testing.assert_close(zs[:, 1], z2)
    torch.testing.assert_close(cs[:, 1], c2)


def test_predictor_action_changes_prediction():
    """The predicted embedding depends on the action (the action enters the GRU)."""
    torch.manual_seed(3)
    pred = Predictor(embed_dim=8, hidden=16)
    z = torch.randn(2, 8)
    h = pred.init_hidden(z)
    za, _, _ = pred.step(z, h, torch.ones(2, 2))
    zb, _, _ = pred.step(z, h, -torch.ones(2, 2))
    assert not torch.allclose(za, zb)


def test_confidence_head_gradient_does_not_reach_gru():
    """A loss on the confidence output trains only the confidence head, not the GRU."""
    pred = Predictor(embed_dim=8, hidden=16)
    z = torch.randn(3, 8)
    _, _, conf = pred.step(z, pred.init_hidden(z), torch.zeros(3, 2))
    conf.sum().backward()
    assert pred.cells[0].weight_ih.grad is None
    assert pred.conf_head[0].weight.grad is not None


def test_inverse_dynamics_head_bounds():
    """InverseDynamicsHead outputs [B, 2] inside [-1, 1]."""
    head = InverseDynamicsHead(embed_dim=8, hidden=16)
    a = head(torch.randn(6, 8) * 10, torch.randn(6, 8) * 10)
    assert a.shape == (6, 2) and a.abs().max() <= 1.0


def test_predictor_rejects_three_layers():
    """Only 1 or 2 GRU layers are supported; others fail with the field named."""
    with pytest.raises(ValueError, match="layers"):
        Predictor(layers=3)


def test_count_parameters():
    """count_parameters counts trainable elements (a Linear(3, 2) has 8)."""
    assert count_parameters(torch.nn.Linear(3, 2)) == 8


def test_sensor_encoder_input_mask_ignores_masked_dims():
    """With the wheel speeds masked (default sensor model), changing them leaves z unchanged; other dims still matter."""
    mask = torch.tensor([1.0] * 12 + [0.0, 0.0])
    enc = SensorEncoder(embed_dim=8, hidden=16, input_mask=mask)
    obs = torch.randn(4, 14)
    moved = obs.clone()
    moved[:, 12:] += 1.0
    torch.testing.assert_close(enc(obs), enc(moved))
    moved[:, 8] += 1.0
    assert not torch.allclose(enc(obs), enc(moved))
    with pytest.raises(ValueError, match="input_mask"):
        SensorEncoder(input_mask=torch.ones(3))
