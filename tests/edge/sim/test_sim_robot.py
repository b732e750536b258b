"""Differential-drive kinematics, collisions, encoders and odometry."""

import numpy as np
import pytest

from edge.sim.env import BatchSim, SimConfig
from edge.sim.geometry import point_segment_distance, swept_disc_toi
from edge.sim.robot import RobotBatch, RobotConfig, arc_step, wrap_angle
from edge.sim.world import WorldConfig, sample_layouts, segments

FAR = np.array([[[100.0, 100.0, 101.0, 100.0]]])  # one wall far away: free space


def free_seg(b):
    return np.repeat(FAR, b, axis=0)


def test_straight_line_matches_closed_form():
    """Equal wheel speeds w for time T move the robot w*r*T along its heading."""
    cfg = RobotConfig(max_wheel_accel=1e9)
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.7]])
    for _ in range(20):
        rb.step(np.array([[10.0, 10.0]]), 0.05, free_seg(1))
    d = 10.0 * cfg.wheel_radius * 1.0
    assert rb.pose[0] == pytest.approx([d * np.cos(0.7), d * np.sin(0.7), 0.7], abs=1e-9)


def test_arc_matches_closed_form_circle():
    """Constant unequal wheel speeds trace a circle of radius R = v / w about the ICC."""
    cfg = RobotConfig(max_wheel_accel=1e9, physics_substeps=3)
    wl, wr = 4.0, 9.0
    v = cfg.wheel_radius * (wl + wr) / 2
    w = cfg.wheel_radius * (wr - wl) / cfg.wheel_base
    rb = RobotBatch(cfg, [[0.5, -0.2, 0.3]])
    T = 1.7
    for _ in range(34):
        rb.step(np.array([[wl, wr]]), 0.05, free_seg(1))
    R = v / w
    icc = np.array([0.5 - R * np.sin(0.3), -0.2 + R * np.cos(0.3)])
    th = 0.3 + w * T
    expect = [icc[0] + R * np.sin(th), icc[1] - R * np.cos(th), float(wrap_angle(np.array(th)))]
    assert rb.pose[0] == pytest.approx(expect, abs=1e-9)
    assert np.hypot(*(rb.pose[0, :2] - icc)) == pytest.approx(R, abs=1e-9)


def test_rotation_in_place():
    """Opposite wheel speeds rotate in place at w = 2 r omega / L."""
    cfg = RobotConfig(max_wheel_accel=1e9)
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    rb.step(np.array([[-5.0, 5.0]]), 0.1, free_seg(1))
    assert rb.pose[0, :2] == pytest.approx([0, 0], abs=1e-12)
    assert rb.pose[0, 2] == pytest.approx(2 * cfg.wheel_radius * 5.0 / cfg.wheel_base * 0.1)


def test_acceleration_limit():
    """From rest, a wheel reaches at most accel * t after t seconds."""
    cfg = RobotConfig(max_wheel_accel=20.0, physics_substeps=5)
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    rb.step(np.array([[15.0, -15.0]]), 0.05, free_seg(1))
    assert rb.wheel[0] == pytest.approx([1.0, -1.0])


def test_speed_limit_clips_targets():
    """Targets above max_wheel_speed are clipped."""
    cfg = RobotConfig(max_wheel_accel=1e9)
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    rb.step(np.array([[100.0, -100.0]]), 0.05, free_seg(1))
    assert rb.wheel[0] == pytest.approx([cfg.max_wheel_speed, -cfg.max_wheel_speed])


def test_no_tunnelling_at_any_speed():
    """Robots driven at 60 m/s (100x the real top speed) at random headings never cross or
    penetrate a wall: every robot stays in its starting room and at >= radius from all walls."""
    world = WorldConfig()
    cfg = RobotConfig(max_wheel_speed=2000.0, max_wheel_accel=1e9, physics_substeps=1)
    rng = np.random.default_rng(0)
    b = 400
    lay = sample_layouts(world, b, rng)
    seg = segments(world, lay)
    # start close to the dividing wall, away from the door, heading at it or at random
    side = rng.choice([-1.0, 1.0], b)
    y = np.where(lay.door_y > 0, lay.door_y - lay.door_width / 2 - 0.3, lay.door_y + lay.door_width / 2 + 0.3)
    x = lay.wall_x + side * 0.15
    th = np.where(rng.uniform(size=b) < 0.5, np.where(side > 0, np.pi, 0.0), rng.uniform(-np.pi, np.pi, b))
    rb = RobotBatch(cfg, np.stack([x, y, th], -1))
    for _ in range(10):
        prev = rb.pose.copy()
        rb.step(np.full((b, 2), 2000.0) * rng.uniform(0.5, 1.0, (b, 2)), 0.05, seg, rng)
        d = point_segment_distance(rb.pose[:, :2], seg).min(axis=1)
        assert d.min() >= cfg.radius - 1e-6
        # any crossing of the dividing wall's line happened inside the door gap
        s0, s1 = prev[:, 0] - lay.wall_x, rb.pose[:, 0] - lay.wall_x
        crossed = np.sign(s0) != np.sign(s1)
        y_cross = prev[:, 1] + (rb.pose[:, 1] - prev[:, 1]) * s0 / np.where(crossed, s0 - s1, 1.0)
        through_door = np.abs(y_cross - lay.door_y) <= lay.door_width / 2 - cfg.radius + 1e-6
        assert not np.any(crossed & ~through_door)
    hw, hh = world.half_width, world.half_height
    assert np.all(np.abs(rb.pose[:, 0]) <= hw - cfg.radius + 1e-6)
    assert np.all(np.abs(rb.pose[:, 1]) <= hh - cfg.radius + 1e-6)


def test_collision_stops_robot_and_wheels_then_can_back_off():
    """Driving into a wall stops the robot at contact with wheels stalled; reversing moves it away."""
    cfg = RobotConfig(max_wheel_accel=1e9)
    seg = np.array([[[0.5, -1.0, 0.5, 1.0]]])
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    hit = False
    for _ in range(20):
        hit |= rb.step(np.array([[15.0, 15.0]]), 0.05, seg)[0]
    assert hit
    assert rb.pose[0, 0] == pytest.approx(0.5 - cfg.radius, abs=1e-5)
    assert rb.wheel[0] == pytest.approx([0.0, 0.0])
    x_before = rb.pose[0, 0]
    collided = rb.step(np.array([[-10.0, -10.0]]), 0.05, seg)
    assert not collided[0] and rb.pose[0, 0] < x_before - 0.01


def test_a_robot_touching_a_wall_can_still_turn_on_the_spot():
    """Pressed against a wall (a hair inside it), with motors that turn at slightly different
    speeds: the drive into the wall stalls, the turn goes on, so the robot can turn away (it
    used to stay pinned with both wheels stopped)."""
    cfg = RobotConfig(max_wheel_accel=1e9)
    seg = np.array([[[0.5, -1.0, 0.5, 1.0]]])
    rb = RobotBatch(cfg, [[0.5 - cfg.radius + 1e-4, 0.0, 0.0]])   # overlapping by 0.1 mm, facing it
    hit = False
    for _ in range(10):
        hit |= rb.step(np.array([[-7.4, 7.5]]), 0.05, seg)[0]      # a turn with a small push forward
    assert hit                                                      # the push stalls ...
    assert rb.pose[0, 0] == pytest.approx(0.5 - cfg.radius + 1e-4, abs=1e-9)
    # ... the turn does not: 10 x 0.05 s at w = r * 7.45 / (L / 2)
    assert rb.pose[0, 2] == pytest.approx(cfg.wheel_radius * 14.9 / cfg.wheel_base * 0.5, rel=0.05)
    assert rb.wheel[0] == pytest.approx([-7.45, 7.45])             # the driving part stopped
    # an arc into the wall: the common part stalls at contact, the turn goes on the whole step
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    for _ in range(20):
        rb.step(np.array([[15.0, 15.0]]), 0.05, seg)
    th0 = rb.pose[0, 2]
    rb.step(np.array([[10.0, 14.0]]), 0.05, seg)
    assert rb.pose[0, 0] <= 0.5 - cfg.radius + 1e-6 and rb.pose[0, 2] - th0 == pytest.approx(
        cfg.wheel_radius * 4.0 / cfg.wheel_base * 0.05, rel=1e-6)


def test_swept_toi_hand_computed():
    """A disc of radius 0.1 moving +x from x=0 towards a wall at x=1 touches it at x=0.9."""
    seg = np.array([[[1.0, -1.0, 1.0, 1.0]]])
    t = swept_disc_toi(np.array([[0.0, 0.0]]), np.array([[2.0, 0.0]]), 0.1, seg)
    assert t[0] == pytest.approx(0.45)
    # passing beside the segment's end: end circle hit at y offset
    seg2 = np.array([[[1.0, 0.0, 1.0, 1.0]]])
    t2 = swept_disc_toi(np.array([[0.0, -0.06]]), np.array([[2.0, 0.0]]), 0.1, seg2)
    assert t2[0] == pytest.approx((1.0 - np.sqrt(0.1**2 - 0.06**2)) / 2.0)
    t3 = swept_disc_toi(np.array([[0.0, -0.2]]), np.array([[2.0, 0.0]]), 0.1, seg2)
    assert np.isinf(t3[0])


def test_encoders_count_wheel_rotation_and_odometry_tracks_truth_without_noise():
    """Encoder counts equal wheel rotation * ticks/rev / 2 pi (floored), and noise-free
    odometry stays within 1 cm and 1 degree of the true pose over 5 s of curvy driving."""
    cfg = RobotConfig()
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    for i in range(100):
        a = np.array([[8.0 + 4 * np.sin(i / 10), 8.0 + 4 * np.cos(i / 7)]])
        rb.step(a, 0.05, free_seg(1), rng)
    expect = np.floor(rb.wheel_angle * cfg.ticks_per_rev / (2 * np.pi))
    assert np.array_equal(rb.enc, expect.astype(np.int64))
    assert np.hypot(*(rb.odom[0, :2] - rb.pose[0, :2])) < 0.01
    assert abs(wrap_angle(rb.odom[0, 2] - rb.pose[0, 2])) < np.deg2rad(1)


def test_slip_makes_odometry_drift():
    """With wheel slip the encoders over-count ground travel, so odometry drifts from truth."""
    cfg = RobotConfig(slip_std=0.1)
    rb = RobotBatch(cfg, [[0.0, 0.0, 0.0]] * 8)
    rng = np.random.default_rng(1)
    for _ in range(100):
        rb.step(np.full((8, 2), 10.0), 0.05, free_seg(8), rng)
    err = np.hypot(*(rb.odom[:, :2] - rb.pose[:, :2]).T)
    assert err.mean() > 0.1
    assert np.all(rb.odom[:, 0] > rb.pose[:, 0])  # odometry thinks it went further


def test_determinism_under_seed():
    """Two sims with the same seed and actions produce identical observations; another seed differs."""
    def run(seed):
        cfg = SimConfig()
        sim = BatchSim(cfg, 3, seed=seed)
        sim.reset()
        out = []
        for i in range(30):
            obs, _ = sim.step(np.array([[1.0, 0.5], [0.2, 0.9], [-0.5, 0.5]]))
            out.append(obs["sensor"])
        return np.stack(out)

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_arc_step_small_angle_continuity():
    """The straight-line branch and the arc branch agree as w -> 0."""
    p = np.array([[0.1, 0.2, 1.0]])
    a = arc_step(p, np.array([0.5]), np.array([1e-7]), 1.0)
    b = arc_step(p, np.array([0.5]), np.array([1e-5]), 1.0)
    assert a == pytest.approx(b, abs=1e-5)


def test_swept_toi_matches_dense_sampling():
    """For 300 random moves against random segments, the time of impact equals the first
    contact found by sampling the move at 20,000 points (to the sampling resolution), and
    moves that never come within the radius report none."""
    rng = np.random.default_rng(7)
    n, r = 300, 0.1
    p = rng.uniform(-1, 1, (n, 2))
    d = rng.uniform(-1.5, 1.5, (n, 2))
    seg = rng.uniform(-1, 1, (n, 1, 4))
    clear = point_segment_distance(p, seg)[:, 0] > r
    p, d, seg = p[clear], d[clear], seg[clear]
    toi = swept_disc_toi(p, d, r, seg)
    assert 20 < np.isfinite(toi).sum() < len(p) - 20  # both hits and misses are exercised
    ts = np.linspace(0, 1, 20001)
    for i in range(len(p)):
        pts = p[i] + ts[:, None] * d[i]
        dist = point_segment_distance(pts, np.repeat(seg[i:i + 1], len(ts), 0))[:, 0]
        inside = np.nonzero(dist <= r)[0]
        if len(inside) == 0:
            assert np.isinf(toi[i]) or abs(dist.min() - r) < 1e-3
        else:
            assert toi[i] == pytest.approx(ts[inside[0]], abs=1e-4)


def test_encoder_noise_perturbs_counts_not_motion():
    """Encoder noise changes the reported counts (and so odometry) but not the true motion."""
    clean, noisy = RobotBatch(RobotConfig(), [[0, 0, 0]]), RobotBatch(RobotConfig(encoder_noise_ticks=3.0), [[0, 0, 0]])
    rng = np.random.default_rng(0)
    for _ in range(50):
        clean.step(np.array([[6.0, 7.0]]), 0.05, free_seg(1), np.random.default_rng(1))
        noisy.step(np.array([[6.0, 7.0]]), 0.05, free_seg(1), rng)
    assert np.allclose(clean.pose, noisy.pose)
    assert not np.array_equal(clean.enc, noisy.enc)
    assert np.abs(clean.enc - noisy.enc).max() < 60
    assert not np.allclose(clean.odom, noisy.odom)
