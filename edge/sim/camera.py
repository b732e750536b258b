"""Egocentric forward camera and top-down overview renders.

The camera is a pinhole at ``height`` metres above the floor at the robot centre, looking
along the robot heading, with a horizontal field of view ``fov_deg``. Each image column casts
one ray against the walls (vectorised over columns and episodes); the wall occupies the rows
between its projected top and bottom, coloured by segment (``world.SEGMENT_COLOURS``), with
vertical stripes every ``stripe_m`` along the wall and shaded by distance. Below the horizon
the floor is cast per pixel: a checkerboard of ``tile_m`` tiles, tinted per room, shaded by
distance; above it a plain ceiling. Column 0 is the left edge of the image, so turning left
(counter-clockwise) moves the scene to the right in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.sim.geometry import raycast
from edge.sim.world import SEGMENT_COLOURS, Layout, WorldConfig, segments


@dataclass(frozen=True)
class CameraConfig:
    """Forward camera model."""

    width: int = 64  # pixels
    height: int = 64  # pixels
    fov_deg: float = 80.0  # horizontal field of view (degrees)
    mount_height: float = 0.12  # camera height above the floor (m); must be below the wall top
    shade_per_m: float = 0.35  # brightness = 1 / (1 + shade_per_m * distance)
    stripe_m: float = 0.2  # wall stripe period (m), gives texture for motion cues
    tile_m: float = 0.25  # floor checkerboard tile size (m)
    floor_rgb: tuple[tuple[int, int, int], tuple[int, int, int]] = ((170, 150, 120), (130, 160, 150))  # room 0, room 1
    ceiling_rgb: tuple[int, int, int] = (40, 40, 55)

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError(f"CameraConfig.width/height must be >= 2 pixels, got {self.width}x{self.height}")
        if not (0 < self.fov_deg < 180):
            raise ValueError(f"CameraConfig.fov_deg must be in (0, 180), got {self.fov_deg}")
        if not (self.mount_height > 0):
            raise ValueError(f"CameraConfig.mount_height must be > 0 m, got {self.mount_height}")
        if self.shade_per_m < 0 or not (self.stripe_m > 0) or not (self.tile_m > 0):
            raise ValueError("CameraConfig.shade_per_m must be >= 0 and stripe_m, tile_m > 0")


class Camera:
    """Batched renderer; precomputes the per-column and per-row geometry once."""

    def __init__(self, cfg: CameraConfig, world: WorldConfig):
        if cfg.mount_height >= world.wall_height:
            raise ValueError(
                f"CameraConfig.mount_height ({cfg.mount_height} m) must be below WorldConfig.wall_height "
                f"({world.wall_height} m)"
            )
        self.cfg = cfg
        self.world = world
        fov = np.deg2rad(cfg.fov_deg)
        w, h = cfg.width, cfg.height
        self.focal = (w / 2) / np.tan(fov / 2)  # pixels
        self.alpha = fov / 2 - (np.arange(w) + 0.5) * fov / w  # [W] column bearings, + = left
        self.cos_alpha = np.cos(self.alpha)
        self.rows = np.arange(h) + 0.5
        self.horizon = h / 2
        below = self.rows > self.horizon
        self.floor_rows = np.nonzero(below)[0]
        self.ceil_rows = np.nonzero(~below)[0]
        # Floor: perpendicular distance of each floor row; distance along each column's ray.
        self.floor_perp = self.focal * cfg.mount_height / (self.rows[below] - self.horizon)  # [Hf]
        self.floor_ray = self.floor_perp[:, None] / self.cos_alpha[None, :]  # [Hf, W]
        self.floor_shade = 1.0 / (1.0 + cfg.shade_per_m * self.floor_perp)  # [Hf]
        ceil = np.asarray(cfg.ceiling_rgb, dtype=np.float32)
        up = (self.horizon - self.rows[~below]) / self.horizon  # 0 at horizon .. 1 at top
        self.ceiling = np.clip(ceil[None, :] * (0.6 + 0.4 * up[:, None]) + 0.5, 0, 255).astype(np.uint8)  # [Hc, 3]
        # Floor colour lookup: [room * 2 + tile, floor row, 3] (shade depends on the row only).
        floor_rgb = np.asarray(cfg.floor_rgb, dtype=np.float32)  # [2, 3]
        lut = np.empty((4, len(self.floor_perp), 3), dtype=np.float32)
        for room in (0, 1):
            for tile in (0, 1):
                lut[room * 2 + tile] = floor_rgb[room][None, :] * (self.floor_shade * (1.0 - 0.12 * tile))[:, None]
        # Pixels are handled packed as uint32 (R | G << 8 | B << 16) so one gather moves a pixel.
        self.floor_lut = _pack(np.clip(lut + 0.5, 0, 255).astype(np.uint8)).reshape(-1)  # [4 * Hf]
        self.ceiling = _pack(self.ceiling)  # [Hc]
        self.floor_ray32 = self.floor_ray.astype(np.float32)
        self.row_index = np.arange(len(self.floor_perp), dtype=np.int32)[None, :, None]  # [1, Hf, 1]
        self.n_floor_rows = len(self.floor_perp)
        self.rows32 = self.rows.astype(np.float32)[None, :, None]  # [1, H, 1]
        self.seg_rgb = SEGMENT_COLOURS.astype(np.float32)

    def render(self, pose: np.ndarray, seg: np.ndarray, wall_x: np.ndarray) -> np.ndarray:
        """Frames ``uint8 [B, H, W, 3]`` RGB for poses ``[B, 3]``, walls ``[B, S, 4]`` and the
        dividing wall positions ``[B]`` (for the per-room floor tint)."""
        cfg = self.cfg
        b = len(pose)
        h, w = cfg.height, cfg.width
        ang = pose[:, 2:3] + self.alpha[None, :]  # [B, W]
        ca, sa = np.cos(ang), np.sin(ang)
        dirs = np.stack([ca, sa], axis=-1)
        dist, idx, along = raycast(pose[:, :2], dirs, seg, max_dist=1e6)
        perp = np.maximum(dist * self.cos_alpha[None, :], 1e-3)  # [B, W]
        top = self.horizon - self.focal * (self.world.wall_height - cfg.mount_height) / perp
        bot = self.horizon + self.focal * cfg.mount_height / perp
        stripe = np.where((np.floor(along / cfg.stripe_m) % 2) == 1, 0.82, 1.0)
        shade = (stripe / (1.0 + cfg.shade_per_m * perp)).astype(np.float32)
        wall_rgb = self.seg_rgb[np.clip(idx, 0, len(self.seg_rgb) - 1)] * shade[..., None]  # [B, W, 3]

        wall_px = _pack(np.clip(wall_rgb + 0.5, 0, 255).astype(np.uint8))  # [B, W] packed

        img = np.empty((b, h, w), dtype=np.uint32)
        img[:, self.ceil_rows] = self.ceiling[None, :, None]
        # Floor: world position of every floor pixel -> room and checker tile -> colour lookup.
        x = pose[:, 0:1, None].astype(np.float32)
        y = pose[:, 1:2, None].astype(np.float32)
        fx = x + self.floor_ray32[None] * ca[:, None, :].astype(np.float32)  # [B, Hf, W]
        fy = y + self.floor_ray32[None] * sa[:, None, :].astype(np.float32)
        inv = np.float32(1.0 / cfg.tile_m)
        # +1024 tiles keeps the values positive so truncation equals floor
        tile = ((fx * inv + 1024).astype(np.int32) + (fy * inv + 1024).astype(np.int32)) & 1
        room = fx > wall_x[:, None, None].astype(np.float32)
        code = (room * 2 + tile) * self.n_floor_rows + self.row_index
        img[:, self.floor_rows] = np.take(self.floor_lut, code)
        wall = (self.rows32 >= top[:, None, :]) & (self.rows32 < bot[:, None, :])  # [B, H, W]
        np.copyto(img, np.broadcast_to(wall_px[:, None, :], img.shape), where=wall)
        return np.ascontiguousarray(img.view(np.uint8).reshape(b, h, w, 4)[..., :3])


def _pack(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` RGB -> ``uint32 [...]`` (R | G << 8 | B << 16)."""
    rgb = rgb.astype(np.uint32)
    packed = rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)
    if np.little_endian:
        return packed
    return packed.byteswap()

def render_topdown(
    world: WorldConfig,
    layout: Layout,
    pose: np.ndarray,
    *,
    radius: float = 0.08,
    goal: np.ndarray | None = None,
    goal_radius: float | None = None,
    trail: np.ndarray | None = None,
    odom: np.ndarray | None = None,
    ranges: np.ndarray | None = None,
    px_per_m: float = 100.0,
    margin_px: int = 10,
) -> np.ndarray:
    """Top-down RGB image ``uint8 [H, W, 3]`` of one episode.

    Args:
        layout: a single-episode ``Layout`` (length 1).
        pose: true pose ``[3]``; drawn as a disc with a heading tick.
        goal: goal position ``[2]`` (drawn as a ring of ``goal_radius``), optional.
        trail: past true positions ``[T, 2]`` (polyline), optional.
        odom: odometry pose ``[3]`` (drawn as a small hollow marker), optional.
        ranges: ``[8]`` range readings (m) drawn as rays from the rim, optional.
    """
    hw, hh = world.half_width, world.half_height
    wpx = int(round(world.width * px_per_m)) + 2 * margin_px
    hpx = int(round(world.height * px_per_m)) + 2 * margin_px
    floor = CameraConfig().floor_rgb

    def to_px(x, y):
        return (int(round((x + hw) * px_per_m)) + margin_px, int(round((hh - y) * px_per_m)) + margin_px)

    img = np.full((hpx, wpx, 3), 30, dtype=np.uint8)
    wx = float(layout.wall_x[0])
    cv2.rectangle(img, to_px(-hw, hh), to_px(wx, -hh), floor[0], -1)
    cv2.rectangle(img, to_px(wx, hh), to_px(hw, -hh), floor[1], -1)
    seg = segments(world, layout)[0]
    for s, col in zip(seg, SEGMENT_COLOURS):
        cv2.line(img, to_px(s[0], s[1]), to_px(s[2], s[3]), tuple(int(c) for c in col), 3)
    if trail is not None and len(trail) > 1:
        pts = np.array([to_px(x, y) for x, y in np.asarray(trail)[:, :2]], dtype=np.int32)
        cv2.polylines(img, [pts], False, (255, 255, 255), 1, cv2.LINE_AA)
    if goal is not None:
        g = to_px(float(goal[0]), float(goal[1]))
        gr = max(2, int(round((goal_radius or 0.1) * px_per_m)))
        cv2.circle(img, g, gr, (0, 220, 0), 2, cv2.LINE_AA)
        cv2.drawMarker(img, g, (0, 220, 0), cv2.MARKER_CROSS, 8, 1)
    x, y, th = (float(v) for v in pose)
    if ranges is not None:
        for i, r in enumerate(np.asarray(ranges, dtype=np.float64)):
            a = th + np.deg2rad(45.0 * i)
            start = (x + radius * np.cos(a), y + radius * np.sin(a))
            rr = 0.0 if np.isnan(r) else r
            end = (start[0] + rr * np.cos(a), start[1] + rr * np.sin(a))
            cv2.line(img, to_px(*start), to_px(*end), (255, 120, 0) if not np.isnan(r) else (90, 90, 90), 1)
    c = to_px(x, y)
    rp = max(2, int(round(radius * px_per_m)))
    cv2.circle(img, c, rp, (250, 250, 250), -1, cv2.LINE_AA)
    cv2.line(img, c, to_px(x + radius * np.cos(th), y + radius * np.sin(th)), (20, 20, 20), 2, cv2.LINE_AA)
    if odom is not None:
        cv2.circle(img, to_px(float(odom[0]), float(odom[1])), max(2, rp // 2), (255, 60, 60), 1, cv2.LINE_AA)
    return img
