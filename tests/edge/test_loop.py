"""ControlLoop with fake link, backend, clock and fallback: schedule, warm start, decisions, safety."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopfakes import FakeBackend, FakeClock, FakeFallback, FakeLink, RealClock  # noqa: E402

from edge.config import RunConfig, load_config  # noqa: E402
from edge.fallback.base import FallbackEvent, MacroAction  # noqa: E402
from edge.loop import ControlLoop, GoalTarget, NoiseRing, shift_plan  # noqa: E402
from edge.odometry import Odometry  # noqa: E402
from edge.recorder import FlightRecorder, read_flight_log  # noqa: E402
from edge.status import RunStats, summarise  # noqa: E402


def make_loop(cfg: RunConfig | None = None, **kw):
    cfg = cfg or RunConfig()
    clock = kw.pop("clock", FakeClock())
    link = kw.pop("link", FakeLink(clock))
    backend = kw.pop("backend", FakeBackend(clock))
    infos = []
    loop = ControlLoop(cfg, link, backend, Odometry(0.033, 0.16, 2 * math.pi * 100.0), clock=clock,
                       on_tick=infos.append, noise_seed=0, **kw)
    loop.set_goal(GoalTarget(z=np.zeros(backend.bundle.planner.E, np.float32), pose=None))
    return loop, clock, link, backend, infos


def test_ticks_start_on_an_absolute_grid_without_drift() -> None:
    """Each tick starts at start + k/rate even though every tick spends time (no accumulated drift)."""
    loop, clock, link, backend, infos = make_loop()
    backend.plan_cost_s = {i: 0.013 for i in range(200)}  # 13 ms of a 50 ms period every tick
    result = loop.run(max_ticks=100)
    starts = np.array([i.t for i in infos])
    assert result.ticks == 100 and result.overruns == 0
    np.testing.assert_allclose(starts, np.arange(100) * 0.05, atol=1e-9)


def test_overrun_is_counted_logged_and_slots_skipped() -> None:
    """A tick taking 1.7 periods counts as an overrun, skips the missed slot, and the following
    ticks return to the original grid (no burst of catch-up ticks)."""
    loop, clock, link, backend, infos = make_loop()
    backend.plan_cost_s = {4: 0.085}  # call 0 is the warm-up before the first tick
    result = loop.run(max_ticks=8)
    assert result.overruns == 1 and result.skipped_slots == 1
    assert [i.overrun for i in infos] == [False, False, False, True, False, False, False, False]
    starts = [round(i.t / 0.05, 6) for i in infos]
    assert starts == [0, 1, 2, 3, 5, 6, 7, 8]
    assert any(kind == "deadline" for _, kind, _ in result.events)


def test_warm_start_shifts_previous_plan_and_std_resets() -> None:
    """Plan call k gets the mean returned by call k-1 shifted by one step, std = std_init."""
    loop, clock, link, backend, infos = make_loop()
    loop.run(max_ticks=3)
    first_out = np.tile(backend.action, (4, 1)) + np.c_[np.arange(4) * 0.01, np.zeros(4)]
    calls = backend.calls[1:]  # call 0 is the warm-up before the first tick
    np.testing.assert_allclose(calls[0]["mean"], 0.0)
    np.testing.assert_allclose(calls[1]["mean"], shift_plan(first_out.astype(np.float32)), atol=1e-7)
    np.testing.assert_allclose(calls[1]["std"], 0.5)


def test_noise_comes_from_the_ring_and_is_fresh_each_tick() -> None:
    """Every plan call gets a different N(0,1) tensor of shape [J, N, H, A], none drawn inline."""
    loop, clock, link, backend, infos = make_loop()
    loop.run(max_ticks=5)
    noises = [c["noise"] for c in backend.calls[1:]]
    assert all(n.shape == (2, 8, 4, 2) and n.dtype == np.float32 for n in noises)
    assert not np.array_equal(noises[0], noises[1])
    assert loop.noise.inline_draws == 0


def test_noise_ring_is_seeded_and_counts_inline_draws() -> None:
    """Same seed -> same sequence; taking more than is ready draws inline and counts it."""
    a, b = NoiseRing((1, 2, 3, 2), slots=2, seed=7), NoiseRing((1, 2, 3, 2), slots=2, seed=7)
    seq_a = [a.take() for _ in range(3)]
    seq_b = [b.take() for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(seq_a, seq_b))
    assert a.inline_draws == 1


def test_planner_action_is_sent_scaled_to_rad_per_s() -> None:
    """The plan's first action (normalised) reaches the link times max_wheel_speed (rad/s)."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}}])
    loop, clock, link, backend, infos = make_loop(cfg)
    loop.run(max_ticks=2)
    assert link.sent[0] == pytest.approx((5.0, 5.0))
    assert infos[0].source == "planner"


def test_low_confidence_without_fallback_stops_after_low_ticks() -> None:
    """Confidence below threshold for low_ticks consecutive ticks -> zero command (source safety)."""
    cfg = load_config(None, [{"confidence": {"threshold": 0.5, "low_ticks": 3}, "limits": {"max_accel": 1000.0}}])
    clock = FakeClock()
    backend = FakeBackend(clock, pred_error=1.0)  # confidence exp(-1/0.1) ~ 5e-5
    loop, clock, link, backend, infos = make_loop(cfg, clock=clock, backend=backend)
    loop.run(max_ticks=5)
    assert [i.source for i in infos] == ["planner", "planner", "safety", "safety", "safety"]
    assert all(i.low_confidence for i in infos)
    assert link.sent[-1] == (0.0, 0.0)


def test_fallback_hold_then_macro_then_planner() -> None:
    """Low confidence submits one request; while in flight the hold action (stop) is sent; an
    accepted macro runs for its duration through the guard; then the planner is back."""
    cfg = load_config(None, [{"confidence": {"threshold": 0.5, "low_ticks": 2}, "limits": {"max_accel": 1000.0},
                              "fallback": {"macro_speed": 0.4}}])
    clock = FakeClock()
    backend = FakeBackend(clock, pred_error=1.0)
    fb = FakeFallback()
    loop, clock, link, backend, infos = make_loop(cfg, clock=clock, backend=backend, fallback=fb)
    for _ in range(4):
        loop.tick(clock.now() + 1.0)
        loop.tick_index += 1
        clock.advance(0.05)
    assert len(fb.submitted) == 1 and fb.submitted[0].reason.startswith("predicted error")
    fb.finish(FallbackEvent(1, "prompt", '{"action":"turn_left"}', 0.3, MacroAction("turn_left", 0.1), None))
    sources = []
    for _ in range(4):
        sources.append(loop.tick(clock.now() + 1.0).source)
        loop.tick_index += 1
        clock.advance(0.05)
    assert link.sent[1] == (0.0, 0.0)  # hold while in flight
    assert sources[:2] == ["fallback", "fallback"]
    assert link.sent[4] == pytest.approx((-4.0, 4.0))  # turn_left at 0.4 * 10 rad/s
    assert sources[2] == "planner"


def test_rejected_fallback_keeps_robot_stopped() -> None:
    """A rejected reply executes nothing: the command stays zero."""
    cfg = load_config(None, [{"confidence": {"threshold": 0.5, "low_ticks": 1}}])
    clock = FakeClock()
    fb = FakeFallback()
    loop, clock, link, backend, infos = make_loop(cfg, clock=clock, backend=FakeBackend(clock, pred_error=1.0),
                                                  fallback=fb)
    loop.tick(clock.now() + 1)
    fb.finish(FallbackEvent(1, "p", "garbage", 0.2, None, "not JSON"))
    info = loop.tick(clock.now() + 1)
    assert info.action == (0.0, 0.0)
    assert any("rejected" in m for _, k, m in loop.events)


def test_link_loss_stops_and_resumes_after_reconnect() -> None:
    """Stale telemetry -> zero command and a link_lost event; fresh telemetry -> resumed
    planning with a link_restored event; no planning while lost."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}}])
    loop, clock, link, backend, infos = make_loop(cfg)
    for _ in range(3):
        loop.tick(clock.now() + 1)
        clock.advance(0.05)
    link.stale_since = clock.now() - 1.0  # last telemetry 1 s old: beyond lost_after_s
    link.down = True
    calls_before = len(backend.calls)
    for _ in range(10):
        info = loop.tick(clock.now() + 1)
        clock.advance(0.05)
    assert not info.link_ok and info.action == (0.0, 0.0) and info.source == "safety"
    assert len(backend.calls) == calls_before
    link.stale_since = None
    link.down = False
    info = loop.tick(clock.now() + 1)
    assert info.link_ok and info.source == "planner"
    kinds = [k for _, k, _ in loop.events]
    assert kinds.index("link_lost") < kinds.index("link_restored")


def test_nan_ranges_stop_the_robot() -> None:
    """A NaN range (sensor fault) makes the sent command zero."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}}])
    loop, clock, link, backend, infos = make_loop(cfg)
    loop.tick(clock.now() + 1)
    assert link.sent[-1] != (0.0, 0.0)
    link.ranges = [math.nan] * 8
    info = loop.tick(clock.now() + 1)
    assert link.sent[-1] == (0.0, 0.0) and info.source == "safety"


def test_exception_in_a_stage_stops_motors_and_propagates() -> None:
    """A crash mid-run still commands zero before the exception leaves run()."""
    loop, clock, link, backend, infos = make_loop()
    backend.raise_on = 5  # call 0 is the warm-up: ticks 0-3 plan, tick 4 raises
    with pytest.raises(RuntimeError, match="backend exploded"):
        loop.run(max_ticks=10)
    assert link.sent[-1] == (0.0, 0.0)
    assert link.sent[4] == (0.0, 0.0) and link.sent[3] != (0.0, 0.0)  # 4 planned ticks, then zeros


def test_estop_ends_the_run_with_motors_at_zero() -> None:
    """Triggering the e-stop ends run() at the next tick boundary with a zero command."""
    loop, clock, link, backend, infos = make_loop()
    loop.on_tick = lambda info: loop.estop.trigger("test") if info.tick == 5 else None
    result = loop.run(max_ticks=100)
    assert result.reason == "estop" and result.ticks == 6
    assert link.sent[-1] == (0.0, 0.0)


def test_goal_reached_by_pose_stops_and_reports() -> None:
    """With a goal pose and a truth source, reaching within reach_m ends the run as goal_reached."""
    pose = [0.0, 0.0, 0.0]
    cfg = load_config(None, [{"goal": {"reach_m": 0.25}}])
    loop, clock, link, backend, infos = make_loop(cfg, truth=lambda: tuple(pose))
    loop.set_goal(GoalTarget(z=np.zeros(6, np.float32), pose=(1.0, 0.0, 0.0)))
    loop.on_tick = lambda info: pose.__setitem__(0, pose[0] + 0.1)
    result = loop.run(max_ticks=100)
    assert result.goal_reached and result.reason == "goal_reached"
    assert result.ticks == 9  # tick k sees x = 0.1 k; 1 - 0.8 <= 0.25 at k = 8
    assert link.sent[-1] == (0.0, 0.0)


def test_recorded_channels_match_what_was_sent(tmp_path: Path) -> None:
    """The flight log holds /obs, /action, /plan, /confidence, /timings per tick, and /action
    equals the normalised command that went to the link."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}}])
    rec = FlightRecorder(tmp_path / "f.mcap")
    loop, clock, link, backend, infos = make_loop(cfg, recorder=rec)
    loop.run(max_ticks=6)
    rec.close()
    log = read_flight_log(tmp_path / "f.mcap")
    for topic in ("/obs", "/action", "/plan", "/confidence", "/timings", "/embedding"):
        assert [m["tick"] for m in log.messages[topic]] == list(range(6)), topic
    sent = [(l / 10.0, r / 10.0) for l, r in link.sent[:6]]
    got = [(m["left"], m["right"]) for m in log.messages["/action"]]
    assert np.allclose(got, sent)
    kinds = [m["kind"] for m in log.messages["/events"]]
    assert kinds[0] == "start" and kinds[-2:] == ["motors_stopped", "stop"]
    t = log.messages["/timings"][0]
    assert {"read_ms", "encode_ms", "plan_ms", "guard_ms", "send_ms", "total_ms", "deadline_ms"} <= set(t)


def test_confidence_scale_comes_from_config_manifest_or_training_metrics() -> None:
    """The error scale is the config value if set, else planner.conf_error_scale, else twice the
    larger validation prediction error; a bundle with none of them is refused with the fix."""
    clock = FakeClock()
    b = FakeBackend(clock)
    assert ControlLoop._error_scale(RunConfig(), b.bundle) == 0.1
    assert ControlLoop._error_scale(load_config(None, [{"confidence": {"error_scale": 0.7}}]), b.bundle) == 0.7
    b.bundle.manifest = {"planner": {}, "training": {"metrics": {"val_pred": 0.02, "val_pred_stepT": 0.05}}}
    assert ControlLoop._error_scale(RunConfig(), b.bundle) == pytest.approx(0.1)
    b.bundle.manifest = {"planner": {}, "training": {"metrics": {}}}
    with pytest.raises(ValueError, match="confidence.error_scale"):
        ControlLoop._error_scale(RunConfig(), b.bundle)


def test_device_estop_latch_is_reported_once_each_way() -> None:
    """The controller's latched e-stop bit produces one device_estop event and one cleared event."""
    loop, clock, link, backend, infos = make_loop()
    latest = link.latest
    state = {"latched": False}

    def with_estop():
        tel = latest()
        tel.estop_latched = state["latched"]
        return tel

    link.latest = with_estop
    loop.tick(clock.now() + 1)
    state["latched"] = True
    loop.tick(clock.now() + 1)
    loop.tick(clock.now() + 1)
    state["latched"] = False
    loop.tick(clock.now() + 1)
    kinds = [k for _, k, _ in loop.events]
    assert kinds.count("device_estop") == 1 and kinds.count("device_estop_cleared") == 1


def test_stuck_robot_with_flat_cost_counts_as_low_confidence() -> None:
    """Cost statistics: a best cost that does not improve for stall_ticks ticks while the wheels
    do not turn is low confidence (here: stop without a fallback); a moving robot is not stuck."""
    cfg = load_config(None, [{"confidence": {"threshold": 0.0, "low_ticks": 2, "stall_ticks": 5},
                              "limits": {"max_accel": 1000.0}, "recovery": {"enabled": False}}])
    loop, clock, link, backend, infos = make_loop(cfg)
    link.send_velocity = lambda l, r: link.sent.append((l, r))  # commands never turn the wheels
    sources = []
    for _ in range(8):
        sources.append(loop.tick(clock.now() + 1).source)
        clock.advance(0.05)
    assert sources[:4] == ["planner"] * 4 and sources[5:] == ["safety"] * 3
    assert loop.tick(clock.now() + 1).low_reason.startswith("no progress")
    moving, clock2, link2, _, _ = make_loop(cfg)
    out = []
    for _ in range(8):
        out.append(moving.tick(clock2.now() + 1).source)
        clock2.advance(0.05)
    assert out == ["planner"] * 8


def test_stuck_robot_backs_off_then_follows_the_wall_until_the_goal_is_closer(monkeypatch) -> None:
    """Default recovery: after the back-off the wall follower drives (source "recovery", an event
    saying which side), until the embedding distance to the goal is below where it got stuck and
    the planner's plan runs clear of the walls in view."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}}])
    loop, clock, link, backend, _ = make_loop(cfg)
    link.send_velocity = lambda l, r: link.sent.append((l, r))  # commands never turn the wheels
    link.ranges = [0.05, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5]    # a wall ahead (the fake encodes the ranges)
    infos = []
    for _ in range(10):
        infos.append(loop.tick(clock.now() + 1))
        clock.advance(0.05)
    assert [i.source for i in infos[3:]] == ["recovery"] * 7
    l, r = infos[9].action                                      # the follower: turn in place, away from the wall
    assert l == pytest.approx(-r) and abs(l) > 0.1
    texts = [text for _, kind, text in loop.events if kind == "recovery"]
    assert any("following the wall on the left" in t for t in texts)
    link.ranges = [0.3] * 8                                     # now closer to the (zero) goal embedding
    import edge.loop
    seen = []
    real_clear = edge.loop.plan_is_clear

    def blocked(plan, ranges, *args):                           # ... but the plan would hit a wall
        seen.append((np.array(plan), np.array(ranges)))
        return np.zeros(len(plan), dtype=bool)

    monkeypatch.setattr(edge.loop, "plan_is_clear", blocked)
    clock.advance(0.05)
    held = loop.tick(clock.now() + 1)
    assert held.source == "recovery" and loop.recovery.following[0]
    assert seen[0][0].shape == (1, backend.bundle.planner.H, 2) and seen[0][1].tolist() == [[0.3] * 8]
    monkeypatch.setattr(edge.loop, "plan_is_clear", real_clear)
    clock.advance(0.05)
    info = loop.tick(clock.now() + 1)
    assert info.source == "planner"
    stats = RunStats(20.0)
    for i in infos + [held, info]:
        stats.add(i)
    summary = summarise(stats)
    assert summary["recoveries"] == 1 and summary["wall_follows"] == 1  # one stall, one following
    assert "wall following ended: the goal is closer" in [t for _, k, t in loop.events if k == "recovery"][-1]


def test_stuck_robot_gets_the_unsticking_reflex_through_the_guard(tmp_path: Path) -> None:
    """With the reflex on (the default), a robot whose wheels do not turn although the planner
    drives forward backs off with a turn after recovery.stuck_s: source "recovery", an event in
    the flight log, the summary count; the reflex's reverse command still passes the rear guard."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}, "recovery": {"follow_wall": False}}])
    rec = FlightRecorder(tmp_path / "f.mcap")
    loop, clock, link, backend, _ = make_loop(cfg, recorder=rec)
    link.send_velocity = lambda l, r: link.sent.append((l, r))  # commands never turn the wheels
    infos = []
    for _ in range(12):
        infos.append(loop.tick(clock.now() + 1))
        clock.advance(0.05)
    sources = [i.source for i in infos]
    assert sources[:3] == ["planner"] * 3 and sources[3:9] == ["recovery"] * 6 and sources[9] == "planner"
    assert [i.recovery_started for i in infos].count(True) == 2  # again after 3 more stuck ticks
    left, right = link.sent[3]
    assert (left + right) / 2 == pytest.approx(-0.6 * 10.0) and abs(left - right) == pytest.approx(0.6 * 10.0)
    assert any(kind == "recovery" for _, kind, _ in loop.events)
    link.ranges = [1.5, 1.5, 1.5, 0.05, 0.05, 0.05, 1.5, 1.5]  # wall behind: the guard stops the reverse part
    guarded = 0
    for _ in range(6):
        info = loop.tick(clock.now() + 1)
        clock.advance(0.05)
        if info.source == "recovery":
            l, r = info.action
            assert (l + r) / 2 == pytest.approx(0.0) and abs(l - r) > 0 and info.guard_reasons
            guarded += 1
    assert guarded >= 3
    rec.close()
    log = read_flight_log(tmp_path / "f.mcap")
    assert "recovery" in [m["kind"] for m in log.messages["/events"]]
    assert "recovery" in [m["source"] for m in log.messages["/action"]]


HEAD_ACTIONS = np.tile(np.array([[0.3, -0.3]], np.float32), (4, 1))


def test_plan_head_as_warm_start() -> None:
    """With head_warm_start the planner's mean input is the head's action sequence (clipped to
    [-1, 1]), not the shifted previous plan."""
    clock = FakeClock()
    link, backend = FakeLink(clock), FakeBackend(clock)
    loop = ControlLoop(RunConfig(), link, backend, Odometry(0.033, 0.16, 628.0), clock=clock, noise_seed=0,
                       plan_head=lambda z, zg, pose4: HEAD_ACTIONS * 5, head_warm_start=True)
    loop.set_goal(GoalTarget(z=np.zeros(6, np.float32), pose=None))
    loop.run(max_ticks=3)
    for call in backend.calls[1:]:
        np.testing.assert_allclose(call["mean"], np.clip(HEAD_ACTIONS * 5, -1, 1))


def test_plan_head_acts_when_the_planner_misses_its_deadline(tmp_path: Path) -> None:
    """With head_fallback, a planner call that overruns the tick is not waited for: the head's
    first action is sent (flight log: via plan_head), no new call starts until the late one is
    done, and the planner is back in control afterwards."""
    cfg = load_config(None, [{"limits": {"max_accel": 1000.0}, "rate_hz": 20.0}])
    clock = RealClock()
    link, backend = FakeLink(clock), FakeBackend(clock)
    backend.plan_sleep_s = {3: 0.16}  # call 0 is the warm-up; tick 2's call takes ~3 periods
    rec = FlightRecorder(tmp_path / "h.mcap")
    infos = []
    loop = ControlLoop(cfg, link, backend, Odometry(0.033, 0.16, 628.0), clock=clock, noise_seed=0, recorder=rec,
                       on_tick=infos.append, plan_head=lambda z, zg, pose4: HEAD_ACTIONS, head_fallback=True)
    loop.set_goal(GoalTarget(z=np.zeros(6, np.float32), pose=None))
    loop.run(max_ticks=10)
    rec.close()
    heads = [i.tick for i in infos if i.via_head]
    assert heads and heads[0] == 2 and loop.head_actions == len(heads)
    assert all(infos[t].action == pytest.approx((0.3, -0.3)) for t in heads)
    assert infos[-1].source == "planner" and not infos[-1].via_head
    # warm-up + the late call + one call per tick the planner acted in: none started while late
    assert len(backend.calls) == 1 + 1 + (10 - len(heads))
    actions = read_flight_log(tmp_path / "h.mcap").messages["/action"]
    assert [a["tick"] for a in actions if a.get("via") == "plan_head"] == heads


def test_action_repeat_shifts_the_warm_start_every_r_ticks() -> None:
    """With planner.action_repeat = 2 (one planner step = 2 ticks) the warm start is the previous
    plan unshifted after odd calls and shifted by one step after even calls."""
    clock = FakeClock()
    backend = FakeBackend(clock)
    backend.bundle.manifest["planner"]["action_repeat"] = 2
    loop, clock, link, backend, infos = make_loop(clock=clock, backend=backend)
    loop.run(max_ticks=4)
    out = (np.tile(backend.action, (4, 1)) + np.c_[np.arange(4) * 0.01, np.zeros(4)]).astype(np.float32)
    calls = backend.calls[1:]
    np.testing.assert_allclose(calls[0]["mean"], 0.0)
    np.testing.assert_allclose(calls[1]["mean"], out, atol=1e-7)
    np.testing.assert_allclose(calls[2]["mean"], shift_plan(out), atol=1e-7)
    np.testing.assert_allclose(calls[3]["mean"], out, atol=1e-7)
