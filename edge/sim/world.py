"""The "two rooms" world: a rectangular arena split by a wall with a door.

Frame: world coordinates with the origin at the arena centre, x right, y up (metres), so the
arena spans ``x in [-width/2, width/2]``, ``y in [-height/2, height/2]``. The dividing wall is
vertical at ``x = wall_x``; the door is the gap ``|y - door_y| < door_width / 2`` in it.
Room 0 is left of the wall, room 1 right of it.

Walls are zero-thickness segments (``[S, 4]`` rows ``x0, y0, x1, y1``) with a fixed index
order, so the same segment index always has the same colour:

| index | segment | colour |
|---|---|---|
| 0..3 | outer walls: bottom, right, top, left | four distinct colours (a camera can tell them apart) |
| 4, 5 | dividing wall below / above the door | grey-blue |
| 6, 7 | door posts (the last ``door_post`` metres of the wall on each side of the door) | yellow |

All functions are vectorised over a leading batch of episodes ``[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_SEGMENTS = 8

# RGB uint8 colour of each segment index (see the module table); floor and ceiling are in
# CameraConfig. Distinct hues so the camera and the top-down view show where the robot is.
SEGMENT_COLOURS = np.array(
    [
        (200, 60, 60),  # bottom outer wall: red
        (60, 170, 70),  # right outer wall: green
        (70, 90, 210),  # top outer wall: blue
        (190, 80, 190),  # left outer wall: magenta
        (120, 140, 160),  # dividing wall below the door: grey-blue
        (120, 140, 160),  # dividing wall above the door: grey-blue
        (240, 200, 40),  # door post below the door: yellow
        (240, 200, 40),  # door post above the door: yellow
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of the two-rooms arena (metres). Defaults: a 3 m x 2 m arena, so a robot at
    0.5 m/s crosses from one room to the other in ~5 s = 100 steps at 20 Hz."""

    width: float = 3.0  # arena extent along x (m)
    height: float = 2.0  # arena extent along y (m)
    wall_height: float = 0.3  # wall height seen by the camera (m)
    layout: str = "random"  # "random": wall/door resampled each episode; "fixed": the fixed_* values
    wall_x_range: tuple[float, float] = (-0.3, 0.3)  # dividing wall x position range (m)
    door_width_range: tuple[float, float] = (0.35, 0.6)  # door width range (m)
    door_margin: float = 0.15  # min distance between a door edge and the outer wall (m)
    door_post: float = 0.08  # length of the coloured door post segments (m)
    fixed_wall_x: float = 0.0  # dividing wall x in "fixed" layout mode (m)
    fixed_door_y: float = 0.0  # door centre y in "fixed" layout mode (m)
    fixed_door_width: float = 0.45  # door width in "fixed" layout mode (m)

    def __post_init__(self) -> None:
        if not (self.width > 0):
            raise ValueError(f"WorldConfig.width must be > 0 m, got {self.width}")
        if not (self.height > 0):
            raise ValueError(f"WorldConfig.height must be > 0 m, got {self.height}")
        if not (self.wall_height > 0):
            raise ValueError(f"WorldConfig.wall_height must be > 0 m, got {self.wall_height}")
        if self.layout not in ("random", "fixed"):
            raise ValueError(f"WorldConfig.layout must be 'random' or 'fixed', got {self.layout!r}")
        lo, hi = self.wall_x_range
        if not (lo <= hi):
            raise ValueError(f"WorldConfig.wall_x_range must be (low, high) with low <= high, got {self.wall_x_range}")
        if not (-self.width / 2 < lo and hi < self.width / 2):
            raise ValueError(
                f"WorldConfig.wall_x_range {self.wall_x_range} must lie strictly inside the arena "
                f"(-{self.width / 2}, {self.width / 2})"
            )
        dlo, dhi = self.door_width_range
        if not (0 < dlo <= dhi):
            raise ValueError(
                f"WorldConfig.door_width_range must be (low, high) with 0 < low <= high, got {self.door_width_range}"
            )
        if self.door_post < 0:
            raise ValueError(f"WorldConfig.door_post must be >= 0 m, got {self.door_post}")
        if self.door_margin < self.door_post:
            raise ValueError(
                f"WorldConfig.door_margin ({self.door_margin} m) must be >= door_post ({self.door_post} m)"
            )
        usable = self.height - 2 * self.door_margin
        if dhi > usable:
            raise ValueError(
                f"WorldConfig.door_width_range: a door of {dhi} m is wider than the wall allows "
                f"(height {self.height} m - 2 * door_margin {self.door_margin} m = {usable:.3f} m); "
                "shrink the door or enlarge the arena"
            )
        if self.fixed_door_width <= 0 or self.fixed_door_width > usable:
            raise ValueError(
                f"WorldConfig.fixed_door_width must be in (0, {usable:.3f}] m (height - 2*door_margin), "
                f"got {self.fixed_door_width}"
            )
        half_free = (usable - self.fixed_door_width) / 2
        if abs(self.fixed_door_y) > half_free + 1e-12:
            raise ValueError(
                f"WorldConfig.fixed_door_y {self.fixed_door_y} m puts the door outside the wall; "
                f"|fixed_door_y| must be <= {half_free:.3f} m"
            )
        if not (-self.width / 2 < self.fixed_wall_x < self.width / 2):
            raise ValueError(f"WorldConfig.fixed_wall_x must be inside the arena, got {self.fixed_wall_x}")

    @property
    def half_width(self) -> float:
        return self.width / 2

    @property
    def half_height(self) -> float:
        return self.height / 2

    def min_room_width(self) -> float:
        """Narrowest room width any layout can produce (m)."""
        if self.layout == "fixed":
            return min(self.width / 2 + self.fixed_wall_x, self.width / 2 - self.fixed_wall_x)
        lo, hi = self.wall_x_range
        return min(self.width / 2 + lo, self.width / 2 - hi)

    def min_door_width(self) -> float:
        return self.fixed_door_width if self.layout == "fixed" else self.door_width_range[0]


@dataclass
class Layout:
    """Per-episode layouts, each field ``float64 [B]`` (metres)."""

    wall_x: np.ndarray
    door_y: np.ndarray
    door_width: np.ndarray

    def __len__(self) -> int:
        return len(self.wall_x)

    def take(self, idx) -> "Layout":
        return Layout(self.wall_x[idx], self.door_y[idx], self.door_width[idx])

    def as_array(self) -> np.ndarray:
        """``float32 [B, 3]``: wall_x, door_y, door_width (the shard's ``layout`` field)."""
        return np.stack([self.wall_x, self.door_y, self.door_width], axis=-1).astype(np.float32)

    @staticmethod
    def from_array(arr: np.ndarray) -> "Layout":
        arr = np.asarray(arr, dtype=np.float64).reshape(-1, 3)
        return Layout(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())


def sample_layouts(cfg: WorldConfig, n: int, rng: np.random.Generator) -> Layout:
    """Draw ``n`` layouts (fixed mode: ``n`` copies of the fixed layout)."""
    if cfg.layout == "fixed":
        return Layout(
            np.full(n, cfg.fixed_wall_x), np.full(n, cfg.fixed_door_y), np.full(n, cfg.fixed_door_width)
        )
    wall_x = rng.uniform(*cfg.wall_x_range, size=n)
    door_w = rng.uniform(*cfg.door_width_range, size=n)
    half_free = (cfg.height - 2 * cfg.door_margin - door_w) / 2
    door_y = rng.uniform(-1.0, 1.0, size=n) * half_free
    return Layout(wall_x, door_y, door_w)


def segments(cfg: WorldConfig, layout: Layout) -> np.ndarray:
    """Wall segments ``float64 [B, 8, 4]`` (x0, y0, x1, y1) in the fixed index order."""
    b = len(layout)
    hw, hh = cfg.half_width, cfg.half_height
    seg = np.empty((b, NUM_SEGMENTS, 4))
    seg[:, 0] = (-hw, -hh, hw, -hh)
    seg[:, 1] = (hw, -hh, hw, hh)
    seg[:, 2] = (hw, hh, -hw, hh)
    seg[:, 3] = (-hw, hh, -hw, -hh)
    wx = layout.wall_x
    lo = layout.door_y - layout.door_width / 2
    hi = layout.door_y + layout.door_width / 2
    post = cfg.door_post
    seg[:, 4, 0] = wx
    seg[:, 4, 1] = -hh
    seg[:, 4, 2] = wx
    seg[:, 4, 3] = lo - post
    seg[:, 5, 0] = wx
    seg[:, 5, 1] = hi + post
    seg[:, 5, 2] = wx
    seg[:, 5, 3] = hh
    seg[:, 6, 0] = wx
    seg[:, 6, 1] = lo - post
    seg[:, 6, 2] = wx
    seg[:, 6, 3] = lo
    seg[:, 7, 0] = wx
    seg[:, 7, 1] = hi
    seg[:, 7, 2] = wx
    seg[:, 7, 3] = hi + post
    return seg


def room_of(layout: Layout, xy: np.ndarray) -> np.ndarray:
    """Room index ``int [B]`` (0 left of the dividing wall, 1 right) of points ``[B, 2]``."""
    return (xy[..., 0] > layout.wall_x).astype(np.int64)


def sample_in_room(
    cfg: WorldConfig, layout: Layout, room: np.ndarray, clearance: float, rng: np.random.Generator
) -> np.ndarray:
    """Uniform points ``[B, 2]`` in room ``room[b]`` at least ``clearance`` m from every wall."""
    b = len(layout)
    x_lo = np.where(room == 0, -cfg.half_width, layout.wall_x) + clearance
    x_hi = np.where(room == 0, layout.wall_x, cfg.half_width) - clearance
    x = x_lo + rng.uniform(size=b) * (x_hi - x_lo)
    y = rng.uniform(-cfg.half_height + clearance, cfg.half_height - clearance, size=b)
    return np.stack([x, y], axis=-1)


def door_waypoints(layout: Layout, from_room: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[B, 2]`` ``offset`` m before and after the door centre, seen from ``from_room``."""
    side = np.where(from_room == 0, -1.0, 1.0)
    before = np.stack([layout.wall_x + side * offset, layout.door_y], axis=-1)
    after = np.stack([layout.wall_x - side * offset, layout.door_y], axis=-1)
    return before, after
