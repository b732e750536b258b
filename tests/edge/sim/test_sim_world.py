"""World geometry and configuration validation."""


import numpy as np
import pytest

from edge.sim.env import SimConfig
from edge.sim.geometry import point_segment_distance
from edge.sim.robot import RobotConfig
from edge.sim.world import WorldConfig, room_of, sample_in_room, sample_layouts, segments


def test_door_wider_than_wall_is_rejected_naming_the_field():
    """A door range that cannot fit in the wall fails at construction, naming door_width_range."""
    with pytest.raises(ValueError, match="door_width_range"):
        WorldConfig(height=1.0, door_width_range=(0.3, 0.9))


def test_robot_larger_than_door_is_rejected_naming_the_field():
    """A robot whose diameter does not fit the narrowest door fails, naming robot.radius."""
    with pytest.raises(ValueError, match="robot.radius"):
        SimConfig(robot=RobotConfig(radius=0.2))


@pytest.mark.parametrize("field", ["max_wheel_speed", "max_wheel_accel", "wheel_base", "wheel_radius"])
def test_negative_limits_are_rejected_naming_the_field(field):
    """Negative robot limits fail with the field named."""
    with pytest.raises(ValueError, match=field):
        RobotConfig(**{field: -1.0})


def test_bad_layout_mode_rejected():
    """An unknown layout mode names the field and the choices."""
    with pytest.raises(ValueError, match="layout"):
        WorldConfig(layout="three_rooms")


def test_random_layouts_respect_ranges_and_margins():
    """Sampled walls and doors stay in their ranges, and doors keep door_margin from the outer walls."""
    cfg = WorldConfig()
    lay = sample_layouts(cfg, 2000, np.random.default_rng(0))
    assert np.all((lay.wall_x >= cfg.wall_x_range[0]) & (lay.wall_x <= cfg.wall_x_range[1]))
    assert np.all((lay.door_width >= cfg.door_width_range[0]) & (lay.door_width <= cfg.door_width_range[1]))
    assert np.all(lay.door_y + lay.door_width / 2 <= cfg.half_height - cfg.door_margin + 1e-12)
    assert np.all(lay.door_y - lay.door_width / 2 >= -cfg.half_height + cfg.door_margin - 1e-12)
    assert lay.wall_x.std() > 0.1 and lay.door_y.std() > 0.1  # actually randomised


def test_fixed_layout_mode_is_fixed():
    """layout='fixed' gives the configured wall and door every episode."""
    cfg = WorldConfig(layout="fixed", fixed_wall_x=0.2, fixed_door_y=-0.3, fixed_door_width=0.5)
    lay = sample_layouts(cfg, 5, np.random.default_rng(1))
    assert np.all(lay.wall_x == 0.2) and np.all(lay.door_y == -0.3) and np.all(lay.door_width == 0.5)


def test_segments_leave_exactly_the_door_open():
    """The dividing wall segments cover the wall except the door gap [door_y +- width/2]."""
    cfg = WorldConfig(layout="fixed", fixed_wall_x=0.1, fixed_door_y=0.2, fixed_door_width=0.4)
    lay = sample_layouts(cfg, 1, np.random.default_rng(0))
    seg = segments(cfg, lay)[0]
    inner = seg[4:]
    assert np.allclose(inner[:, [0, 2]], 0.1)
    ys = sorted(inner[:, [1, 3]].ravel())
    # covered: [-1, 0.0] and [0.4, 1]: the gap is 0.0..0.4
    covered = [(min(s[1], s[3]), max(s[1], s[3])) for s in inner]
    gap_lo = max(hi for lo, hi in covered if hi <= 0.2 + 1e-9)
    gap_hi = min(lo for lo, hi in covered if lo >= 0.2 - 1e-9)
    assert gap_lo == pytest.approx(0.0) and gap_hi == pytest.approx(0.4)
    assert ys[0] == pytest.approx(-1.0) and ys[-1] == pytest.approx(1.0)


def test_sample_in_room_keeps_clearance_and_room():
    """Points sampled in a room are in that room and at least `clearance` from every wall."""
    cfg = WorldConfig()
    rng = np.random.default_rng(3)
    lay = sample_layouts(cfg, 500, rng)
    room = rng.integers(0, 2, 500)
    xy = sample_in_room(cfg, lay, room, 0.13, rng)
    assert np.array_equal(room_of(lay, xy), room)
    assert point_segment_distance(xy, segments(cfg, lay)).min() >= 0.13 - 1e-9


def test_evaluation_goal_is_in_other_room():
    """In evaluate mode the goal is in the other room than the start, for every episode; in
    same_room mode always in the start's room; explore mixes both."""
    from edge.sim.env import BatchSim

    sim = BatchSim(SimConfig(), 200, seed=4)
    sim.reset(mode="evaluate")
    assert np.all(room_of(sim.layout, sim.robot.pose[:, :2]) != room_of(sim.layout, sim.goal))
    sim.reset(mode="explore")
    same = room_of(sim.layout, sim.robot.pose[:, :2]) == room_of(sim.layout, sim.goal)
    assert 0.2 < same.mean() < 0.8
    sim.reset(mode="same_room")
    assert np.all(room_of(sim.layout, sim.robot.pose[:, :2]) == room_of(sim.layout, sim.goal))
