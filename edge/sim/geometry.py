"""Vectorised 2-D geometry against wall segments: ray casts and swept-disc time of impact.

Segments are ``[..., S, 4]`` rows ``(x0, y0, x1, y1)``. Everything broadcasts over leading
batch dimensions; no Python loops over episodes, rays or segments.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def cross2(ax, ay, bx, by):
    return ax * by - ay * bx


def raycast(
    origin: np.ndarray, direction: np.ndarray, seg: np.ndarray, max_dist: float = np.inf
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays against segments.

    Args:
        origin: ``[B, 2]`` ray origins (m).
        direction: ``[B, R, 2]`` unit ray directions.
        seg: ``[B, S, 4]`` wall segments.
        max_dist: distance reported when nothing is hit (m).
    Returns:
        ``dist [B, R]`` (m, ``max_dist`` when no hit closer), ``index [B, R]`` int (hit
        segment, -1 if none) and ``u [B, R]`` (hit position along the segment, m from its start).
    """
    ox = origin[:, None, None, 0]
    oy = origin[:, None, None, 1]
    dx = direction[:, :, None, 0]
    dy = direction[:, :, None, 1]
    x0 = seg[:, None, :, 0]
    y0 = seg[:, None, :, 1]
    ex = seg[:, None, :, 2] - x0
    ey = seg[:, None, :, 3] - y0
    denom = cross2(dx, dy, ex, ey)  # [B, R, S]
    wx = x0 - ox
    wy = y0 - oy
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / denom
        t = cross2(wx, wy, ex, ey) * inv
        u = cross2(wx, wy, dx, dy) * inv
    ok = (np.abs(denom) > _EPS) & (t >= 0.0) & (u >= 0.0) & (u <= 1.0)
    t = np.where(ok, t, np.inf)
    idx = np.argmin(t, axis=-1)
    dist = np.take_along_axis(t, idx[..., None], axis=-1)[..., 0]
    uu = np.take_along_axis(u, idx[..., None], axis=-1)[..., 0]
    seg_len = np.hypot(ex, ey)[..., 0, :]  # [B, S]
    hit = dist < max_dist
    along = uu * np.take_along_axis(seg_len, idx, axis=-1)
    return (
        np.where(hit, dist, max_dist),
        np.where(hit, idx, -1),
        np.where(hit, along, 0.0),
    )


def point_segment_distance(p: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance ``[B, S]`` from points ``p [B, 2]`` to segments ``seg [B, S, 4]``."""
    px = p[:, None, 0]
    py = p[:, None, 1]
    x0, y0 = seg[..., 0], seg[..., 1]
    ex, ey = seg[..., 2] - x0, seg[..., 3] - y0
    ll = ex * ex + ey * ey
    s = np.clip(((px - x0) * ex + (py - y0) * ey) / np.maximum(ll, _EPS), 0.0, 1.0)
    return np.hypot(px - (x0 + s * ex), py - (y0 + s * ey))


def swept_disc_toi(p: np.ndarray, d: np.ndarray, radius: float, seg: np.ndarray) -> np.ndarray:
    """Earliest fraction of a straight move at which a disc touches a wall.

    The disc of ``radius`` moves from ``p`` to ``p + d``; the result is the smallest
    ``t in [0, 1]`` with ``dist(p + t d, segment) == radius`` over all segments, or ``inf`` if
    the whole move is free. This is exact (ray against the capsule of each segment: two offset
    lines and two end circles), so no speed or step size can tunnel through a wall. A disc that
    already overlaps a segment may move away from it (``t = inf`` for that segment) but not
    further into it (``t = 0``).

    Args:
        p: ``[B, 2]`` start centres (m).
        d: ``[B, 2]`` displacements (m).
        radius: disc radius (m).
        seg: ``[B, S, 4]`` segments.
    Returns:
        ``float64 [B]`` time of impact as a fraction of the move (``inf``: none).
    """
    px = p[:, None, 0]
    py = p[:, None, 1]
    dx = d[:, None, 0]
    dy = d[:, None, 1]
    ax, ay = seg[..., 0], seg[..., 1]
    ex, ey = seg[..., 2] - ax, seg[..., 3] - ay
    seg_len = np.maximum(np.hypot(ex, ey), _EPS)
    ux, uy = ex / seg_len, ey / seg_len  # unit along
    nx, ny = -uy, ux  # unit normal
    rx, ry = px - ax, py - ay
    s0 = rx * nx + ry * ny  # signed normal distance at t=0
    dn = dx * nx + dy * ny
    with np.errstate(divide="ignore", invalid="ignore"):
        # Side faces: |s0 + t dn| reaches radius while approaching.
        t_face = (np.sign(s0) * radius - s0) / dn
        proj = (rx + t_face * dx) * ux + (ry + t_face * dy) * uy
    approaching = (s0 * dn) < 0
    face_ok = approaching & (np.abs(s0) >= radius) & (t_face >= 0) & (t_face <= 1) & (proj >= 0) & (proj <= seg_len)
    t_best = np.where(face_ok, t_face, np.inf)

    a = dx * dx + dy * dy
    for cx, cy in ((ax, ay), (ax + ex, ay + ey)):
        wx, wy = px - cx, py - cy
        b = 2.0 * (dx * wx + dy * wy)
        c = wx * wx + wy * wy - radius * radius
        disc = b * b - 4.0 * a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        ok = (c >= 0) & (disc >= 0) & (a > _EPS) & (tc >= 0) & (tc <= 1)
        t_best = np.minimum(t_best, np.where(ok, tc, np.inf))

    # Already overlapping: block motion towards the closest point, allow motion away.
    sc = np.clip((rx * ex + ry * ey) / np.maximum(seg_len * seg_len, _EPS), 0.0, 1.0)
    qx, qy = px - (ax + sc * ex), py - (ay + sc * ey)
    inside = (qx * qx + qy * qy) < radius * radius
    into = (dx * qx + dy * qy) < 0
    t_best = np.where(inside & into, 0.0, np.where(inside, np.inf, t_best))
    return t_best.min(axis=-1)
