"""Operator view: a live terminal status, the end-of-run summary, and (in simulation) a GIF.

- :class:`StatusView` consumes every :class:`edge.loop.TickInfo`. ``live`` mode draws a rich
  panel a few times per second (achieved rate, per-stage latency p50/p99, confidence, link
  health, distance to goal, command source); ``plain`` prints one line per second; ``off``
  only collects.
- :class:`RunStats` accumulates what the summary reports; :func:`summarise` turns it into a
  JSON-ready dict; :func:`print_summary` prints it as a table.
- :class:`TrajectoryRecorder` keeps top-down images of a simulated run with the planned
  trajectory drawn on them and writes ``run.gif`` and ``run.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.loop import STAGES, TickInfo
from edge.safety import GUARD_REASON_KINDS, guard_reason_kind


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    """``q``-th percentile (0-100) or None for no values."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class RunStats:
    """Per-tick numbers of a run (all ticks kept: a 2-minute 50 Hz run is 6000 rows).

    ``rate_hz`` is in loop time; ``time_scale`` loop seconds pass per wall second (simulation
    faster than real time), so the wall-clock deadline of a tick is ``1000 / (rate_hz * time_scale)`` ms.
    """

    def __init__(self, rate_hz: float, time_scale: float = 1.0):
        self.rate_hz = rate_hz
        self.time_scale = time_scale
        self.t: list[float] = []
        self.total_ms: list[float] = []
        self.stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
        self.sources: Counter[str] = Counter()
        self.overruns = 0
        self.low_conf_ticks = 0
        self.link_lost_ticks = 0
        self.guard_interventions = 0
        self.recoveries = 0  # unsticking reflexes started
        self.wall_follows = 0  # wall followings started
        self.guard_reasons: Counter[str] = Counter()  # ticks per kind of guard change
        self.confidence: list[float] = []
        self.last: TickInfo | None = None

    def add(self, info: TickInfo) -> None:
        self.t.append(info.t)
        self.total_ms.append(info.total_ms)
        for s in STAGES:
            self.stage_ms[s].append(info.timings_ms.get(s, 0.0))
        self.sources[info.source] += 1
        self.overruns += int(info.overrun)
        self.low_conf_ticks += int(info.low_confidence)
        self.link_lost_ticks += int(not info.link_ok)
        self.guard_interventions += int(bool(info.guard_reasons))
        self.recoveries += int(info.recovery_started)
        self.wall_follows += int(info.follow_started)
        self.guard_reasons.update({guard_reason_kind(r) for r in info.guard_reasons})
        if info.confidence is not None:
            self.confidence.append(info.confidence)
        self.last = info

    def achieved_rate(self, window: int | None = None) -> float | None:
        """Ticks per loop second over the last ``window`` ticks (all by default); the time
        restarting (a new episode) is not counted as an interval."""
        t = np.asarray(self.t[-window:] if window else self.t)
        d = np.diff(t)
        d = d[d > 0]
        if len(d) == 0:
            return None
        return float(len(d) / d.sum())


def _kind_rank(kind: str) -> int:
    return GUARD_REASON_KINDS.index(kind) if kind in GUARD_REASON_KINDS else len(GUARD_REASON_KINDS)


def summarise(stats: RunStats, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready summary of a run (latencies in wall milliseconds)."""
    stages = {s: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "max_ms": max(v) if v else None}
              for s, v in stats.stage_ms.items()}
    out: dict[str, Any] = {
        "ticks": len(stats.t),
        "rate_hz": stats.rate_hz,
        "achieved_rate_hz": stats.achieved_rate(),
        "tick_ms": {"p50": percentile(stats.total_ms, 50), "p99": percentile(stats.total_ms, 99),
                    "max": max(stats.total_ms) if stats.total_ms else None,
                    "deadline": 1000.0 / (stats.rate_hz * stats.time_scale)},
        "overruns": stats.overruns,
        "stages": stages,
        "sources": dict(stats.sources),
        "low_confidence_ticks": stats.low_conf_ticks,
        "link_lost_ticks": stats.link_lost_ticks,
        "guard_interventions": stats.guard_interventions,
        "recoveries": stats.recoveries,
        "wall_follows": stats.wall_follows,
        "guard_reasons": dict(sorted(stats.guard_reasons.items(), key=lambda kv: (-kv[1], _kind_rank(kv[0])))),
        "confidence_mean": float(np.mean(stats.confidence)) if stats.confidence else None,
    }
    out.update(extra or {})
    return out


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the summary JSON (NaN -> null)."""
    from edge.recorder import to_jsonable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(summary), indent=2, allow_nan=False) + "\n")
    return path


def _fmt(v: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{unit}"


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """Print the summary as a rich table (to stderr-free stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="edge-run summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("result", "episodes", "success_rate", "goal_reached", "elapsed_s", "final_goal_distance_m"):
        if key in summary:
            v = summary[key]
            table.add_row(key, _fmt(v, ".3g") if isinstance(v, float) else str(v))
    tick = summary["tick_ms"]
    table.add_row("ticks", f"{summary['ticks']} at {_fmt(summary['achieved_rate_hz'])} Hz "
                           f"(target {summary['rate_hz']:g} Hz)")
    table.add_row("tick latency", f"p50 {_fmt(tick['p50'], '.2f')} ms, p99 {_fmt(tick['p99'], '.2f')} ms, "
                                  f"max {_fmt(tick['max'], '.2f')} ms (deadline {tick['deadline']:.1f} ms)")
    table.add_row("missed deadlines", f"{summary['overruns']}"
                  + (f" ({summary['skipped_slots']} tick slots skipped)" if summary.get("skipped_slots") else ""))
    table.add_row("stages p50/p99 ms", ", ".join(
        f"{s} {_fmt(v['p50_ms'], '.2f')}/{_fmt(v['p99_ms'], '.2f')}" for s, v in summary["stages"].items()))
    table.add_row("command sources", ", ".join(f"{k} {v}" for k, v in sorted(summary["sources"].items())))
    reasons = summary.get("guard_reasons") or {}
    why = f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else ""
    table.add_row("safety", f"guard changed {summary['guard_interventions']} commands{why}, link lost "
                            f"{summary['link_lost_ticks']} ticks, low confidence {summary['low_confidence_ticks']} ticks, "
                            f"unsticking reflex {summary.get('recoveries', 0)} times, "
                            f"wall following {summary.get('wall_follows', 0)} times")
    for key in ("mcap", "gif", "summary_json"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    console.print(table)


class StatusView:
    """Live status of the loop.

    Args:
        mode: ``live`` (rich panel, needs a terminal; falls back to ``plain`` otherwise),
            ``plain`` (a line per second) or ``off``.
        stats: where ticks are accumulated.
        link_stats: returns the link's counters (for the link-health line), optional.
        refresh_hz: redraws per second of the live panel.
    """

    def __init__(self, mode: str, stats: RunStats, link_stats: Callable[[], Any] | None = None,
                 refresh_hz: float = 4.0, title: str = "edge-run"):
        if mode == "live" and not sys.stdout.isatty():
            mode = "plain"
        self.mode = mode
        self.stats = stats
        self.title = title
        self._link_stats = link_stats
        self._period = 1.0 / refresh_hz if mode == "live" else 1.0
        self._next = 0.0
        self._live: Any = None
        self._recent: deque[TickInfo] = deque(maxlen=100)
        self.episode_label = ""

    def __enter__(self) -> StatusView:
        if self.mode == "live":
            import logging

            from rich.live import Live

            self._live = Live(self._render(), auto_refresh=False, transient=False)
            self._live.__enter__()
            # log lines (overruns, link events) print above the panel instead of through it
            self._handlers = [(h, h.stream) for h in logging.getLogger().handlers
                              if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stderr__, sys.__stdout__)]
            for h, _ in self._handlers:
                h.setStream(sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(None, None, None)
            self._live = None
            for h, stream in getattr(self, "_handlers", []):
                h.setStream(stream)

    def on_tick(self, info: TickInfo) -> None:
        self.stats.add(info)
        self._recent.append(info)
        if self.mode == "off":
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._period
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        else:
            print(self._line(info), flush=True)

    def _line(self, info: TickInfo) -> str:
        rate = self.stats.achieved_rate(window=50)
        return (f"[{self.title}{self.episode_label}] t={info.t:6.1f}s tick={info.tick} rate={_fmt(rate)}Hz "
                f"tick={info.total_ms:.1f}ms plan={info.timings_ms.get('plan', 0):.1f}ms "
                f"conf={_fmt(info.confidence, '.2f')} src={info.source} link={'ok' if info.link_ok else 'LOST'} "
                f"goal={_fmt(info.goal_distance_m, '.2f', 'm')} overruns={self.stats.overruns}")

    def _render(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        info = self._recent[-1] if self._recent else None
        rate = self.stats.achieved_rate(window=50)
        table.add_row("rate", f"{_fmt(rate)} Hz (target {self.stats.rate_hz:g} Hz), "
                              f"missed deadlines {self.stats.overruns}")
        if self._recent:
            parts = []
            for s in STAGES:
                v = [i.timings_ms.get(s, 0.0) for i in self._recent]
                parts.append(f"{s} {percentile(v, 50):.2f}/{percentile(v, 99):.2f}")
            tot = [i.total_ms for i in self._recent]
            table.add_row("latency ms p50/p99", ", ".join(parts))
            table.add_row("tick ms p50/p99", f"{percentile(tot, 50):.2f} / {percentile(tot, 99):.2f} "
                                             f"(deadline {1000.0 / (self.stats.rate_hz * self.stats.time_scale):.1f})")
        if info is not None:
            conf_style = "red" if info.low_confidence else "green"
            table.add_row("confidence", f"[{conf_style}]{_fmt(info.confidence, '.2f')}[/] "
                                        f"(predicted error {_fmt(info.pred_error, '.3g')})")
            table.add_row("command", f"{info.source}: left {info.action[0]:+.2f} right {info.action[1]:+.2f}"
                          + (f"  [yellow]{'; '.join(info.guard_reasons)}[/]" if info.guard_reasons else ""))
            table.add_row("goal", f"{_fmt(info.goal_distance_m, '.2f', ' m')} "
                                  f"(embedding distance {_fmt(info.embedding_distance, '.3g')})")
            link = "[green]ok[/]" if info.link_ok else "[red]LOST (stopped, reconnecting)[/]"
            if self._link_stats is not None:
                try:
                    st = self._link_stats()
                    d = st.__dict__ if hasattr(st, "__dict__") else dict(st)
                    keys = ("frames_rx", "frames_tx", "crc_errors", "seq_gaps", "device_resets", "reopens")
                    link += "  " + " ".join(f"{k}={d[k]}" for k in keys if k in d)
                except Exception as e:  # the view must never take the loop down
                    link += f"  (stats unavailable: {type(e).__name__})"
            table.add_row("link", link)
        return Panel(table, title=f"{self.title}{self.episode_label}", border_style="blue")


class TrajectoryRecorder:
    """Top-down images of a simulated run with the trajectory the planner intends.

    Args:
        render: returns the simulator's top-down RGB image of the current state.
        world_to_px: maps world (x, y) metres to image pixel (col, row).
        kinematics: ``(wheel_radius_m, wheel_base_m, max_wheel_speed_rad_s, dt_s)`` used to
            roll the plan's normalised wheel commands out into a path.
        every: keep one image every ``every`` ticks.
        max_frames: cap on stored images (older ones are thinned out).
    """

    def __init__(self, render: Callable[[], np.ndarray], world_to_px: Callable[[float, float], tuple[int, int]],
                 kinematics: tuple[float, float, float, float], every: int = 2, max_frames: int = 400):
        self.render = render
        self.to_px = world_to_px
        self.kin = kinematics
        self.every = max(1, int(every))
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []

    def rollout(self, pose: tuple[float, float, float], plan: np.ndarray) -> np.ndarray:
        """``[H+1, 2]`` positions from ``pose`` following the normalised plan ``[H, 2]``."""
        r, base, wmax, dt = self.kin
        x, y, th = pose
        pts = [(x, y)]
        for left, right in np.asarray(plan, np.float64):
            vl, vr = left * wmax * r, right * wmax * r
            v, w = 0.5 * (vl + vr), (vr - vl) / base
            th_mid = th + 0.5 * w * dt
            x += v * dt * math.cos(th_mid)
            y += v * dt * math.sin(th_mid)
            th += w * dt
            pts.append((x, y))
        return np.asarray(pts)

    def on_tick(self, info: TickInfo) -> None:
        if info.tick % self.every != 0:
            return
        import cv2

        img = np.ascontiguousarray(self.render())
        if info.plan_mean is not None and (info.true_pose or info.pose) is not None:
            path = self.rollout(info.true_pose or info.pose, info.plan_mean)
            pts = np.array([self.to_px(px, py) for px, py in path], np.int32)
            cv2.polylines(img, [pts], False, (255, 0, 255), 2, cv2.LINE_AA)  # planned path: magenta
        label = f"t={info.t:.1f}s {info.source} conf={_fmt(info.confidence, '.2f')}"
        cv2.putText(img, label, (12, img.shape[0] - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
        self.frames.append(img)
        if len(self.frames) > self.max_frames:
            self.frames = self.frames[::2]
            self.every *= 2

    def save(self, gif_path: str | Path, fps: float = 10.0) -> tuple[Path, Path] | None:
        """Write the GIF and a PNG of the last frame; None when no frame was kept."""
        if not self.frames:
            return None
        from PIL import Image

        gif_path = Path(gif_path)
        gif_path.parent.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(f) for f in self.frames]
        images[0].save(gif_path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        png = gif_path.with_suffix(".png")
        images[-1].save(png)
        return gif_path, png
