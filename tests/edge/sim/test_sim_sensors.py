"""Range raycasts, the observation vector and the camera."""

import numpy as np
import pytest

from edge.sim.camera import Camera, CameraConfig, render_topdown
from edge.sim.geometry import raycast
from edge.sim.obs import SensorNormalisation, sensor_vector
from edge.sim.sensors import RangeConfig, read_ranges
from edge.sim.world import SEGMENT_COLOURS, WorldConfig, sample_layouts, segments

FIXED = WorldConfig(layout="fixed", fixed_wall_x=0.0, fixed_door_y=0.0, fixed_door_width=0.4)


def fixed_seg():
    lay = sample_layouts(FIXED, 1, np.random.default_rng(0))
    return lay, segments(FIXED, lay)


def test_raycast_hand_computed():
    """Rays against a unit square from (0.25, 0.5): +x hits at 0.75, -x at 0.25, 45 deg at
    sqrt(2)*0.5 on the top wall, and the hit segment indices are the right walls."""
    seg = np.array([[[0, 0, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 0, 0]]], dtype=float)
    dirs = np.array([[[1, 0], [-1, 0], [np.sqrt(0.5), np.sqrt(0.5)], [0, -1]]])
    dist, idx, along = raycast(np.array([[0.25, 0.5]]), dirs, seg)
    assert dist[0] == pytest.approx([0.75, 0.25, np.sqrt(2) * 0.5, 0.5])
    assert idx[0].tolist() == [1, 3, 2, 0]
    assert along[0, 0] == pytest.approx(0.5)  # half way up the right wall
    far, fidx, _ = raycast(np.array([[0.25, 0.5]]), dirs, seg[:, :1], max_dist=0.3)
    assert far[0, 0] == 0.3 and fidx[0, 0] == -1


def test_range_sensors_at_known_pose():
    """At (-0.75, 0.5) facing +x in the 3 x 2 arena with the wall at x=0 (door at |y|<0.2):
    forward sees the dividing wall 0.75 m away, left the top wall 0.5 m away, back the left wall
    0.75 m away, right the bottom wall 1.5 m away; readings are from the body surface."""
    lay, seg = fixed_seg()
    r = read_ranges(RangeConfig(max_range=2.0), np.array([[-0.75, 0.5, 0.0]]), 0.08, seg)[0]
    assert r[0] == pytest.approx(0.75 - 0.08)
    assert r[2] == pytest.approx(0.5 - 0.08)
    assert r[4] == pytest.approx(0.75 - 0.08)
    assert r[6] == pytest.approx(1.5 - 0.08)
    assert r[1] == pytest.approx(np.sqrt(2) * 0.5 - 0.08)  # 45 deg: top wall at dy=0.5 before x=0


def test_range_max_and_dropouts():
    """Readings clip at max_range; with dropout_prob the dropped readings are NaN at about that rate."""
    lay, seg = fixed_seg()
    pose = np.array([[-1.3, 0.0, 0.0]] * 500)
    r = read_ranges(RangeConfig(max_range=0.5), pose, 0.08, seg)
    assert r[:, 0].max() == 0.5
    rd = read_ranges(RangeConfig(dropout_prob=0.2), pose, 0.08, seg, np.random.default_rng(0))
    assert 0.15 < np.isnan(rd).mean() < 0.25


def test_sensor_vector_layout_and_nan():
    """The 14-vector: ranges/max (NaN -> 1), x/hw, y/hh, sin, cos, wheels/max."""
    norm = SensorNormalisation(max_range_m=2.0, half_width_m=1.5, half_height_m=1.0, max_wheel_speed_rad_s=10.0)
    ranges = np.array([1.0, np.nan, 2.0, 0.5, 0, 0, 0, 4.0])
    v = sensor_vector(ranges, np.array([0.75, -0.5, np.pi / 2]), np.array([5.0, -10.0]), norm.as_dict())
    assert v.dtype == np.float32 and v.shape == (14,)
    assert v.tolist() == pytest.approx([0.5, 1.0, 1.0, 0.25, 0, 0, 0, 1.0, 0.5, -0.5, 1.0, 0.0, 0.5, -1.0], abs=1e-6)
    assert sensor_vector(np.zeros((4, 5, 8)), np.zeros((4, 5, 3)), np.zeros((4, 5, 2)), norm).shape == (4, 5, 14)
    with pytest.raises(ValueError, match="unknown normalisation keys"):
        sensor_vector(ranges, np.zeros(3), np.zeros(2), {"max_range": 2.0})


def test_camera_shape_dtype_and_wall_colour():
    """Frames are uint8 [B, 64, 64, 3]; facing the right outer wall, the centre column shows its green."""
    lay, seg = fixed_seg()
    cam = Camera(CameraConfig(), FIXED)
    img = cam.render(np.array([[1.0, 0.5, 0.0], [1.0, 0.5, np.pi / 2]]), np.repeat(seg, 2, 0), np.repeat(lay.wall_x, 2))
    assert img.shape == (2, 64, 64, 3) and img.dtype == np.uint8
    px = img[0, 32, 30].astype(int)  # horizon row, centre: the right (green) wall, close
    green = SEGMENT_COLOURS[1].astype(int)
    assert np.argmax(px) == np.argmax(green) == 1
    top = img[1, 32, 30].astype(int)  # facing +y: the top (blue) wall
    assert np.argmax(top) == 2


def test_turning_left_shifts_image_right():
    """Turning left (CCW) by one column's angle shifts the image content one column right."""
    lay, seg = fixed_seg()
    cfg = CameraConfig()
    cam = Camera(cfg, FIXED)
    col = np.deg2rad(cfg.fov_deg) / cfg.width
    p0 = np.array([[-0.8, -0.3, 0.4]])
    a = cam.render(p0, seg, lay.wall_x)[0].astype(int)
    b = cam.render(p0 + [0, 0, 4 * col], seg, lay.wall_x)[0].astype(int)
    shifted = np.abs(b[:, 4:] - a[:, :-4]).mean()
    unshifted = np.abs(b - a).mean()
    wrong_way = np.abs(b[:, :-4] - a[:, 4:]).mean()
    assert shifted < 0.2 * unshifted
    assert shifted < 0.2 * wrong_way


def test_camera_closer_wall_is_taller():
    """Moving towards a wall makes it occupy more rows."""
    lay, seg = fixed_seg()
    cam = Camera(CameraConfig(), FIXED)
    img = cam.render(np.array([[0.5, 0.5, 0.0], [1.2, 0.5, 0.0]]), np.repeat(seg, 2, 0), np.repeat(lay.wall_x, 2))
    green = SEGMENT_COLOURS[1].astype(int)

    def rows(im):
        c = im[:, 32].astype(int)
        return int(np.sum((c[:, 1] > c[:, 0] + 20) & (c[:, 1] > c[:, 2] + 20)))

    assert rows(img[1]) > rows(img[0]) > 0


def test_camera_mount_above_wall_rejected():
    """A camera mounted above the wall top is a config error naming both fields."""
    with pytest.raises(ValueError, match="mount_height"):
        Camera(CameraConfig(mount_height=0.5), FIXED)


def test_topdown_render_shape():
    """The top-down render is RGB uint8 sized from the arena and px_per_m."""
    lay, _ = fixed_seg()
    img = render_topdown(FIXED, lay, np.array([0.5, 0.2, 1.0]), goal=np.array([-1.0, 0.0]), px_per_m=50)
    assert img.shape == (2 * 50 + 20, 3 * 50 + 20, 3) and img.dtype == np.uint8
