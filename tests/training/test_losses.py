"""Loss terms against hand-computed values, and collapse monitors."""

import math

import torch

from training.losses import (
    BarlowTwinsLoss,
    CenteringLoss,
    ConfidenceLoss,
    PredictionLoss,
    TemporalSimilarityLoss,
    VICRegLoss,
    collapse_stats,
)


def test_vicreg_hand_computed():
    """z = [[0,0],[2,0],[0,2],[2,2]]: per-dim var 4/3 -> std 1.1547 > 1 (no hinge); cov 0 -> loss 0;
    z = [[0,0],[1,1]]: var 0.5 -> hinge 1 - sqrt(0.5); cov_01 = 0.5 -> 2 * 0.25 / 2."""
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    loss, parts = VICRegLoss(w_var=1.0, w_cov=1.0, eps=0.0)(z)
    assert abs(float(loss)) < 1e-6
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss, parts = VICRegLoss(w_var=1.0, w_cov=1.0, eps=0.0)(z)
    assert math.isclose(float(parts["variance"]), 1 - math.sqrt(0.5), rel_tol=1e-5)
    assert math.isclose(float(parts["covariance"]), 0.25, rel_tol=1e-5)
    assert math.isclose(float(loss), 1 - math.sqrt(0.5) + 0.25, rel_tol=1e-5)


def test_barlow_hand_computed():
    """Identical views with uncorrelated dims give C = I -> loss 0; z2 = -z1 gives C = -I -> on-diag sum (1-(-1))^2 * E = 8."""
    z1 = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    bt = BarlowTwinsLoss(lambd=0.5, eps=0.0)
    loss, _ = bt(z1, z1.clone())
    assert abs(float(loss)) < 1e-6
    loss, parts = bt(z1, -z1)
    assert math.isclose(float(parts["barlow_on"]), 8.0, rel_tol=1e-5)
    assert abs(float(parts["barlow_off"])) < 1e-6
    # fully correlated dims: z = [[1,1],[-1,-1]] vs itself: C = [[1,1],[1,1]] -> off-diagonal sum 2, loss = 0.5 * 2
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    loss, _ = bt(z, z)
    assert math.isclose(float(loss), 1.0, rel_tol=1e-5)


def test_centering_hand_computed_and_center_update():
    """Teacher [0, ln 3 * t_t] (centre 0) -> p_t = [1/4, 3/4]; student 0 -> log q = log 1/2: loss = ln 2.
    Centre then becomes 0.5 * mean(teacher)."""
    tt = 0.5
    c = CenteringLoss(2, t_student=1.0, t_teacher=tt, momentum=0.5)
    teacher = torch.tensor([[0.0, math.log(3.0) * tt]])
    student = torch.zeros(1, 2)
    loss, _ = c(student, teacher)
    assert math.isclose(float(loss), math.log(2.0), rel_tol=1e-5)
    torch.testing.assert_close(c.center, 0.5 * teacher[0])
    # student matching the teacher's sharpened distribution has lower loss than a uniform one
    c2 = CenteringLoss(2, t_student=1.0, t_teacher=tt, momentum=0.5).eval()
    good, _ = c2(torch.tensor([[0.0, math.log(3.0)]]), teacher)
    assert float(good) < math.log(2.0)
    torch.testing.assert_close(c2.center, torch.zeros(2))  # eval mode: centre frozen


def test_prediction_temporal_confidence_values():
    """Prediction = mean squared error; temporal = mean squared step; confidence regresses onto the detached error."""
    zp = torch.zeros(1, 2, 2)
    zt = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    loss, parts = PredictionLoss()(zp, zt)
    assert math.isclose(float(loss), (1 + 1 + 4 + 0) / 4)
    assert math.isclose(float(parts["pred_step1"]), 1.0) and math.isclose(float(parts["pred_stepT"]), 2.0)
    seq = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]])
    loss, _ = TemporalSimilarityLoss()(seq)
    assert math.isclose(float(loss), (1 + 0 + 0 + 4) / 4)
    zp = torch.zeros(1, 2, 2, requires_grad=True)
    conf = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss, _ = ConfidenceLoss()(conf, zp, zt)  # errors per step: 1, 2 -> loss 0
    assert abs(float(loss.detach())) < 1e-7
    loss.backward()
    assert zp.grad is None  # the realised error is a detached target


def test_collapse_stats():
    """A point has std 0 and rank 0; isotropic Gaussian in 8-D has rank near 8; a line has rank ~1."""
    assert collapse_stats(torch.ones(100, 8)) == {"emb_std": 0.0, "eff_rank": 0.0}
    torch.manual_seed(0)
    iso = collapse_stats(torch.randn(2000, 8))
    assert iso["eff_rank"] > 7.5 and abs(iso["emb_std"] - 1) < 0.1
    line = torch.randn(500, 1) * torch.ones(1, 8)
    assert collapse_stats(line)["eff_rank"] < 1.01
