"""Safety guard and e-stop: the invariants every command obeys."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import ConfigError, LimitsConfig, RecoveryConfig
from edge.safety import EStop, SafetyGuard, StuckRecovery, plan_is_clear, sensor_problems, wall_follow_command

CLEAR = [2.0] * 8
OK = dict(wheel_speeds=[0.0, 0.0], pose=[0.0, 0.0, 0.0])


def make(**kw) -> SafetyGuard:
    return SafetyGuard(LimitsConfig(**kw), max_range_m=3.0, max_wheel_speed=10.0)


def test_range_guard_blocks_forward_but_allows_turning_and_reverse() -> None:
    """With an obstacle 5 cm ahead, forward motion is removed, a pivot turn and reversing pass."""
    g = make(range_guard_m=0.12, max_accel=1000.0)
    ranges = list(CLEAR)
    ranges[0] = 0.05
    fwd = g.guard(1.0, 1.0, ranges, dt=0.05, **OK)
    assert (fwd.left, fwd.right) == (0.0, 0.0) and fwd.modified
    assert "range guard" in fwd.reasons[0]
    turn = g.guard(-0.5, 0.5, ranges, dt=0.05, **OK)
    assert (turn.left, turn.right) == (-0.5, 0.5) and not turn.modified
    back = g.guard(-0.5, -0.5, ranges, dt=0.05, **OK)
    assert (back.left, back.right) == (-0.5, -0.5)
    arc = g.guard(0.2, 1.0, ranges, dt=0.05, **OK)  # forward arc: only the turning part stays
    assert arc.left == pytest.approx(-0.4) and arc.right == pytest.approx(0.4)


def test_rear_guard_blocks_reverse() -> None:
    """An obstacle behind blocks backward motion."""
    g = make(range_guard_m=0.12, max_accel=1000.0)
    ranges = list(CLEAR)
    ranges[4] = 0.03
    out = g.guard(-1.0, -1.0, ranges, dt=0.05, **OK)
    assert (out.left, out.right) == (0.0, 0.0)


@pytest.mark.parametrize("bad", [
    dict(ranges_m=[math.nan] + [2.0] * 7),
    dict(ranges_m=[-0.5] + [2.0] * 7),
    dict(ranges_m=[50.0] + [2.0] * 7),
    dict(wheel_speeds=[math.inf, 0.0]),
    dict(pose=[0.0, math.nan, 0.0]),
])
def test_bad_sensors_stop_the_robot(bad: dict) -> None:
    """NaN, negative, beyond-max-range ranges, infinite wheel speeds or a NaN pose zero the command."""
    g = make(max_accel=1000.0)
    args = dict(ranges_m=CLEAR, **OK)
    args.update(bad)
    g.guard(0.5, 0.5, args["ranges_m"], args["wheel_speeds"], args["pose"], dt=0.05)
    out = g.guard(0.5, 0.5, args["ranges_m"], args["wheel_speeds"], args["pose"], dt=0.05)
    assert (out.left, out.right) == (0.0, 0.0) and out.sensor_fault
    good = g.guard(0.5, 0.5, CLEAR, dt=0.05, **OK)
    assert (good.left, good.right) == (0.5, 0.5)  # resumes when the sensors are valid again


def test_bad_sensor_tolerance_counts_consecutive_ticks() -> None:
    """With max_bad_sensor_ticks=2 the third consecutive bad tick stops, not the first."""
    g = make(max_bad_sensor_ticks=2, max_accel=1000.0)
    ranges = [math.nan] + [2.0] * 7
    ranges[0] = 2.0
    ranges[2] = math.nan  # a side sensor: not in a guarded cone
    outs = [g.guard(0.5, 0.5, ranges, dt=0.05, **OK) for _ in range(3)]
    assert [o.sensor_fault for o in outs] == [False, False, True]


def test_non_finite_command_is_a_stop() -> None:
    """A NaN command from a broken planner never reaches the motors."""
    out = make().guard(math.nan, 0.3, CLEAR, dt=0.05, **OK)
    assert (out.left, out.right) == (0.0, 0.0)


@settings(max_examples=300, deadline=None)
@given(cmds=st.lists(st.tuples(st.floats(-2, 2), st.floats(-2, 2)), min_size=1, max_size=30),
       max_speed=st.floats(0.1, 1.0), max_accel=st.floats(0.5, 20.0),
       front=st.floats(0.0, 3.0))
def test_invariants_hold_for_any_command_sequence(cmds, max_speed, max_accel, front) -> None:
    """For any requests: |command| <= max_speed, speeding up a wheel by at most max_accel*dt,
    and no forward motion while the front range is inside the guard distance."""
    dt = 0.05
    g = make(max_speed=max_speed, max_accel=max_accel, range_guard_m=0.12)
    ranges = list(CLEAR)
    ranges[0] = front
    prev = (0.0, 0.0)
    for l, r in cmds:
        out = g.guard(l, r, ranges, dt=dt, **OK)
        for p, c in zip(prev, (out.left, out.right)):
            assert abs(c) <= max_speed + 1e-9
            if abs(c) > abs(p) or p * c < 0:
                base = 0.0 if p * c < 0 else p
                assert abs(c - base) <= max_accel * dt + 1e-9
        if front < 0.12:
            assert out.left + out.right <= 1e-9
        prev = (out.left, out.right)


def test_speed_limit_keeps_curvature() -> None:
    """Scaling keeps the left/right ratio (the path's curvature)."""
    out = make(max_speed=0.5, max_accel=1000.0).guard(1.0, 0.5, CLEAR, dt=0.05, **OK)
    assert (out.left, out.right) == (pytest.approx(0.5), pytest.approx(0.25))


def test_sensor_problems_lists_each_issue() -> None:
    """Each kind of problem is named (so the recorder and status say why the robot stopped)."""
    probs = sensor_problems([math.nan] + [9.0] + [1.0] * 6, [0, 50], [0, 0, math.inf], 3.0, 10.0)
    text = " ".join(probs)
    assert "NaN range" in text and "outside" in text and "wheel speeds" in text and "pose" in text
    assert sensor_problems(CLEAR, [1.0, 1.0], [0, 0, 0], 3.0, 10.0) == []


def test_estop_latches_on_sigterm_and_restores_handlers() -> None:
    """SIGTERM sets the latched stop with a reason; a second one raises KeyboardInterrupt (a stuck
    shutdown can be broken); the previous handler is restored on exit."""
    before = signal.getsignal(signal.SIGTERM)
    with EStop() as estop:
        assert not estop.triggered
        os.kill(os.getpid(), signal.SIGTERM)
        assert estop.event.wait(2.0)
        assert estop.reason == "SIGTERM received"
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            estop.event.wait(0.5)  # the handler runs in the main thread at the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before


def test_guard_result_values_are_plain_floats() -> None:
    """Commands are Python floats in [-1, 1] (what the link and the recorder expect)."""
    out = make(max_accel=1000.0).guard(np.float32(0.3), np.float32(-0.2), CLEAR, dt=0.05, **OK)
    assert isinstance(out.left, float) and isinstance(out.right, float)


def test_diagonal_sensors_guard_at_half_the_distance() -> None:
    """A door post 0.08 m away on the +45 degree beam does not block forward motion with a
    0.12 m guard (half distance on diagonals), 0.05 m does."""
    g = make(range_guard_m=0.12, max_accel=1000.0)
    ranges = list(CLEAR)
    ranges[1] = 0.08
    assert g.guard(0.5, 0.5, ranges, dt=0.05, **OK).left == 0.5
    ranges[1] = 0.05
    out = g.guard(0.5, 0.5, ranges, dt=0.05, **OK)
    assert (out.left, out.right) == (0.0, 0.0) and "sensor 1" in out.reasons[0]


def test_run_summary_counts_guard_changes_by_kind() -> None:
    """The run summary says why the guard changed commands, with kinds read from the guard's
    real reason texts (a tick with two reasons counts once per kind, once in the total)."""
    from edge.loop import TickInfo
    from edge.status import RunStats, print_summary, summarise

    g = make(range_guard_m=0.12, max_accel=4.0, max_speed=0.8)
    blocked = list(CLEAR)
    blocked[0] = 0.05
    results = [
        g.guard(1.0, 1.0, CLEAR, dt=0.05, **OK),     # speed 0.8 cap, then accel 4/s * 0.05 s
        g.guard(0.2, 0.2, CLEAR, dt=0.05, **OK),     # slowing down: unchanged
        g.guard(0.5, 0.5, blocked, dt=0.05, **OK),   # obstacle ahead
        g.guard(math.nan, 0.0, CLEAR, dt=0.05, **OK),
    ]
    stats = RunStats(20.0)
    for i, r in enumerate(results):
        stats.add(TickInfo(tick=i, t=i * 0.05, action=(r.left, r.right), source="planner",
                           timings_ms={}, total_ms=1.0, overrun=False, link_ok=True,
                           guard_reasons=r.reasons))
    s = summarise(stats)
    assert s["guard_interventions"] == 3
    assert s["guard_reasons"] == {"speed limit": 1, "acceleration limit": 1, "range guard": 1,
                                  "non-finite command": 1}
    from rich.console import Console

    console = Console(record=True, width=200)
    print_summary(s, console=console)
    assert ("guard changed 3 commands (range guard 1, speed limit 1, acceleration limit 1, "
            "non-finite command 1)") in console.export_text()


# ---------------------------------------------------------------- unsticking reflex (StuckRecovery)

def _drive(rec: StuckRecovery, requested, positions):
    """Feed one requested command per tick with the given odometry positions; return the outputs."""
    out = []
    for xy in positions:
        out.append(rec.step(np.asarray(requested, float), np.asarray(xy, float)))
    return out


def test_reflex_starts_after_stuck_s_of_pushing_and_backs_off_with_a_turn() -> None:
    """Period 0.05 s, stuck_s 0.15 -> 3 ticks; backoff_s 0.3 -> 6 ticks of [-s -+ t, -s +- t]."""
    cfg = RecoveryConfig()
    rec = StuckRecovery(cfg, 0.05, batch=1, seed=0)
    assert (rec.stuck_ticks, rec.backoff_ticks) == (3, 6)
    out = _drive(rec, [[0.8, 0.8]], [[[0.5, 0.0]]] * 12)   # forward requested, odometry never moves
    starts = [i for i, (_, _, started) in enumerate(out) if started[0]]
    # tick 0 has no motion history; ticks 1, 2, 3 see no motion after a forward command -> start at 3
    assert starts[0] == 3
    for i in range(3):
        assert not out[i][1][0] and np.allclose(out[i][0], [[0.8, 0.8]])
    cmd = out[3][0][0]
    assert cmd.mean() == pytest.approx(-cfg.backoff_speed)              # drives backwards
    assert abs(cmd[1] - cmd[0]) == pytest.approx(2 * cfg.backoff_turn)  # and turns
    assert [bool(o[1][0]) for o in out[3:9]] == [True] * 6              # for backoff_ticks ticks
    assert all(np.allclose(o[0][0], cmd) for o in out[3:9])
    assert not out[9][1][0] and np.allclose(out[9][0], [[0.8, 0.8]])   # then the planner again
    assert rec.count.tolist() == [len(starts)]


def test_moving_robot_turning_robot_and_inactive_robot_never_trigger() -> None:
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=3, seed=0)
    requested = np.array([[0.8, 0.8], [-0.5, 0.5], [0.8, 0.8]])      # drive; turn in place; drive
    active = np.array([True, True, False])
    for t in range(20):
        xy = np.array([[0.01 * t, 0.0], [0.0, 0.0], [0.0, 0.0]])     # robot 0 moves 0.2 m/s
        out, reflex, started = rec.step(requested, xy, active)
        assert not reflex.any() and not started.any()
        assert np.allclose(out, requested)
    assert rec.count.tolist() == [0, 0, 0]


def test_reflex_after_a_backward_push_drives_forward_and_reset_forgets_history() -> None:
    cfg = RecoveryConfig()
    rec = StuckRecovery(cfg, 0.05, batch=1, seed=1)
    out = _drive(rec, [[-0.7, -0.7]], [[[0.0, 0.0]]] * 4)
    assert out[3][2][0] and out[3][0][0].mean() == pytest.approx(cfg.backoff_speed)
    rec.reset()
    assert not rec.recovering.any()
    out = _drive(rec, [[0.8, 0.8]], [[[0.0, 0.0]]] * 3)              # history restarts: 3 more ticks needed
    assert not any(o[2][0] for o in out)


def test_reflex_ticks_follow_the_control_period() -> None:
    rec = StuckRecovery(RecoveryConfig(stuck_s=0.2, backoff_s=0.5), 0.02)
    assert (rec.stuck_ticks, rec.backoff_ticks) == (10, 25)
    with pytest.raises(ValueError, match="period_s"):
        StuckRecovery(RecoveryConfig(), 0.0)


@pytest.mark.parametrize("kw, field", [({"backoff_speed": 0.8, "backoff_turn": 0.3}, "recovery.backoff_turn"),
                                       ({"stuck_s": 0.0}, "recovery.stuck_s"),
                                       ({"drive_threshold": 1.0}, "recovery.drive_threshold"),
                                       ({"enabled": "yes"}, "recovery.enabled"),
                                       ({"follow_wall": 1}, "recovery.follow_wall"),
                                       ({"follow_speed": 1.2}, "recovery.follow_speed"),
                                       ({"follow_distance_m": 0.0}, "recovery.follow_distance_m"),
                                       ({"follow_max_s": float("nan")}, "recovery.follow_max_s")])
def test_recovery_config_errors_name_the_field(kw, field) -> None:
    with pytest.raises(ConfigError, match=field):
        RecoveryConfig(**kw)


# ---------------------------------------------------------------- wall follower (Bug-style escape)

def _door_world(n: int, starts: np.ndarray):
    from edge.sim.env import BatchSim, SimConfig
    from edge.sim.world import Layout

    sim = BatchSim(SimConfig(), n, seed=0)
    layout = Layout(wall_x=np.zeros(n), door_y=np.full(n, 0.2), door_width=np.full(n, 0.4))
    sim.reset(layout=layout, start=starts, goal=np.tile([1.0, 0.0], (n, 1)))
    return sim


@pytest.mark.parametrize("speed", [0.6, RecoveryConfig().follow_speed, 1.0])
def test_wall_follower_tracks_the_wall_and_goes_through_the_door(speed) -> None:
    """In the simulator: robots beside the dividing wall (x = 0) below the door (y 0..0.4), heading
    up with the wall on their right, follow it at about follow_distance_m and round the door post
    into the other room; with the wall on their left (heading down) they follow it down, away
    from the door, and stay in their room."""
    starts = np.array([[-0.2, -0.7, math.pi / 2], [-0.25, -0.5, 1.2], [-0.2, -0.2, -math.pi / 2]])
    side = np.array([-1.0, -1.0, 1.0])
    sim = _door_world(3, starts)
    xs, gaps = [], []
    for t in range(160):
        cmd = wall_follow_command(sim.ranges, side, 0.12, speed)
        assert np.abs(cmd).max() <= 1.0 + 1e-12           # top speed gives way to the turn
        sim.step(cmd)
        xs.append(sim.robot.pose[:, 0].copy())
        y = sim.robot.pose[:, 1]
        x = sim.robot.pose[:, 0]
        gaps.append(np.where((t > 20) & (y < -0.05) & (y > -0.8) & (x < 0), -x - 0.08, np.nan))
    xs, gaps = np.array(xs), np.array(gaps)
    assert (xs[:, :2] > 0.15).any(axis=0).all()          # both up-going robots got through the door
    assert (xs[:, 2] < 0.0).all()                         # the down-going one never crossed
    tracked = gaps[:, :2][np.isfinite(gaps[:, :2])]       # surface gap to the wall while tracking it
    assert tracked.size > 10 and np.all((tracked > 0.03) & (tracked < 0.3))


def test_wall_follower_turns_in_place_away_from_a_wall_ahead() -> None:
    r = np.full((2, 8), 1.5)
    r[:, 0] = 0.05                                        # wall right ahead
    cmd = wall_follow_command(r, np.array([1.0, -1.0]), 0.12, 0.6)
    assert np.allclose(cmd.mean(axis=1), 0.0)             # no forward motion
    assert cmd[0, 0] > 0 > cmd[0, 1] and cmd[1, 0] < 0 < cmd[1, 1]  # wall kept left: turn right; and mirror
    nan = np.full((1, 8), np.nan)                         # unknown ranges count as touching
    assert wall_follow_command(nan, np.array([1.0]), 0.12, 0.6).mean() == pytest.approx(0.0)


def _follow_setup(ranges):
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    r = np.asarray([ranges], float)
    out = [rec.step(np.array([[0.8, 0.8]]), np.zeros((1, 2)), None, r, np.array([3.0])) for _ in range(4)]
    return rec, r, out


def test_stuck_robot_backs_off_then_follows_the_wall_towards_the_longer_side_until_the_goal_is_closer() -> None:
    ranges = [0.02, 0.05, 1.5, 1.2, 1.0, 1.2, 0.4, 0.05]  # pressed against a wall, more room on the left
    rec, r, out = _follow_setup(ranges)
    assert out[3][2][0] and rec.following[0] and rec.side[0] == -1.0   # travel left: wall on the right
    assert rec.stuck_distance[0] == 3.0 and rec.follows.tolist() == [1]
    for i in range(5):                                    # the rest of the 6-tick back-off first
        cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, -0.02 * (i + 1)]]), None, r,
                                    np.array([3.1]))
        assert override[0] and cmd.mean() < 0
    for i in range(5):                                    # then the follower, while not closer to the goal
        cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.03 * i, -0.2]]), None, r, np.array([3.2]))
        assert override[0]
        np.testing.assert_allclose(cmd, wall_follow_command(r, np.array([-1.0]), 0.12, RecoveryConfig().follow_speed))
    cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.2, -0.2]]), None, r, np.array([2.95]))
    assert override[0] and rec.following[0]              # closer, but by less than FOLLOW_LEAVE_FRAC: noise
    cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.23, -0.2]]), None, r, np.array([2.9]))
    assert not override[0] and not rec.following[0] and np.allclose(cmd, [[0.8, 0.8]])  # planner again
    assert rec.follow_ended.tolist() == ["closer"]
    assert rec.follow_ticks.tolist() == [12]


def _clear(plan, ranges, **kw):
    """plan_is_clear for one robot with the shipped geometry: 20 Hz, 5 ticks a plan step."""
    plan = np.broadcast_to(np.asarray(plan, float), (16, 2))[None]
    return bool(plan_is_clear(plan, np.asarray([ranges], float), 0.05, 5, 0.033, 0.16, 15.0, **kw)[0])


def test_plan_is_clear_drives_the_plan_through_the_kinematics_against_the_ranges() -> None:
    wall_ahead = [0.3, 0.42, 2.0, 2.0, 2.0, 2.0, 2.0, 0.42]   # a wall 0.3 m ahead, open elsewhere
    # full speed (0.5 m/s) for 0.75 s reaches 0.375 m: into the wall; half speed reaches 0.19 m
    assert not _clear([1.0, 1.0], wall_ahead)
    assert _clear([0.5, 0.5], wall_ahead)
    assert not _clear([0.5, 0.5], wall_ahead, horizon_s=1.5)   # ... but not for twice as long
    assert not _clear([0.5, 0.5], wall_ahead, margin_m=0.15)   # ... nor with a wider margin
    assert _clear([-1.0, -1.0], wall_ahead)                    # reversing away is clear
    assert _clear([0.0, 0.0], [0.01] * 8)                      # standing still hits nothing
    wall_left = [2.0, 0.15, 0.1, 0.15, 2.0, 2.0, 2.0, 2.0]    # a wall 0.1 m on the left
    assert _clear([1.0, 1.0], wall_left)                       # straight along it
    assert not _clear([0.3, 1.0], wall_left)                   # curving left into it (a 0.15 m radius)
    assert _clear([1.0, 0.3], wall_left)                       # curving right, away from it
    # a path between two beams (22.5 deg) is checked against the nearer of them
    ahead_open = [2.0, 0.12, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert _clear([1.0, 1.0], ahead_open, horizon_s=1.0)
    assert not _clear([0.75, 1.0], ahead_open, horizon_s=1.0)  # a gentle left curve ends ~22 deg left
    assert not _clear([1.0, 1.0], [2.0] * 8, horizon_s=5.0)   # 2.5 m of travel passes the 2 m reading
    nan = [np.nan] + [2.0] * 7                                  # unknown ahead counts as touching
    assert not _clear([0.5, 0.5], nan) and _clear([-0.5, -0.5], nan)


def test_following_ends_on_a_closer_goal_only_where_the_plan_runs_clear() -> None:
    ranges = [0.02, 0.05, 1.5, 1.2, 1.0, 1.2, 0.4, 0.05]
    rec, r, _ = _follow_setup(ranges)
    for i in range(8):                                    # the back-off, then the follower
        rec.step(np.array([[0.8, 0.8]]), np.array([[0.03 * i, -0.2]]), None, r, np.array([3.1]), np.array([True]))
    assert rec.following[0]
    for i in range(3):  # closer, but the planner would drive back into the wall: keep following
        _, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.3 + 0.03 * i, -0.2]]), None, r,
                                  np.array([2.5]), np.array([False]))
        assert override[0] and rec.following[0] and rec.follow_ended[0] == ""
    cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.4, -0.2]]), None, r, np.array([2.5]),
                                np.array([True]))
    assert not override[0] and rec.follow_ended.tolist() == ["closer"] and np.allclose(cmd, [[0.8, 0.8]])


def test_backward_stall_follows_towards_the_longer_side_with_the_wall_behind() -> None:
    """Reversing into a wall: the wall is behind, so travelling along the longer (left) beam puts
    it on the robot's left, the mirror of a forward push."""
    ranges = [1.0, 0.4, 1.5, 0.05, 0.02, 0.05, 0.4, 1.0]
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    out = [rec.step(np.array([[-0.8, -0.8]]), np.zeros((1, 2)), None, np.array([ranges]), np.array([3.0]))
           for _ in range(4)]
    assert out[3][2][0] and rec.following[0] and rec.side[0] == 1.0
    assert out[3][0].mean() > 0                           # the back-off drives forward, away from the wall


def test_after_the_back_off_the_follower_first_turns_the_wall_onto_its_side() -> None:
    """A robot that reversed into a wall has it behind: following it on the left needs a quarter
    turn counter-clockwise in place, not an arc through the open room."""
    behind = [1.0, 0.4, 1.5, 0.05, 0.02, 0.05, 0.4, 1.0]
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    for _ in range(4):
        rec.step(np.array([[-0.8, -0.8]]), np.zeros((1, 2)), None, np.array([behind]), np.array([3.0]))
    assert rec.following[0] and rec.side[0] == 1.0
    for i in range(5):                                    # the rest of the back-off
        rec.step(np.array([[-0.8, -0.8]]), np.array([[0.02 * (i + 1), 0.0]]), None, np.array([behind]),
                 np.array([3.0]))
    for i in range(3):                                    # the wall still behind: turn left in place
        cmd, override, _ = rec.step(np.array([[-0.8, -0.8]]), np.array([[0.1, 0.0]]), None,
                                    np.array([behind]), np.array([3.0]))
        assert override[0] and cmd[0, 1] == -cmd[0, 0] > 0
    on_left = np.array([[1.0, 0.2, 0.12, 0.2, 1.0, 1.5, 1.5, 1.5]])  # turned: the wall along the left
    cmd, override, _ = rec.step(np.array([[-0.8, -0.8]]), np.array([[0.1, 0.0]]), None, on_left, np.array([3.0]))
    np.testing.assert_allclose(cmd, wall_follow_command(on_left, np.array([1.0]), 0.12,
                                                        RecoveryConfig().follow_speed))
    assert cmd.mean() > 0.5                               # and drives along it
    # mirrored: the wall behind, followed on the right -> turn clockwise
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    mirror = [1.0, 1.0, 0.4, 0.05, 0.02, 0.05, 1.5, 0.4]
    for i in range(10):
        cmd, _, _ = rec.step(np.array([[-0.8, -0.8]]), np.array([[0.01 * max(0, i - 3), 0.0]]), None,
                             np.array([mirror]), np.array([3.0]))
    assert rec.side[0] == -1.0 and cmd[0, 0] == -cmd[0, 1] > 0


def test_a_wall_beside_the_push_is_followed_on_in_the_push_direction_round_corners() -> None:
    """Held by the range guard while driving along a wall (the wall at 90 degrees of the push):
    that wall is not what blocks the way, so the robot follows it on forwards, even though the
    beam behind reads longer; no turn-back at the next inner corner (it turns the corner), and
    the next following (at the wall that blocks the way) chooses its own direction."""
    beside = [0.36, 1.5, 1.8, 1.5, 0.9, 0.05, 0.03, 0.05]   # wall on the right, a wall 0.36 m ahead
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    for _ in range(4):
        rec.step(np.array([[0.9, 0.9]]), np.zeros((1, 2)), None, np.array([beside]), np.array([3.0]))
    assert rec.following[0] and rec.side[0] == -1.0          # wall on the right: travel forwards
    assert rec._next_side[0] == 0.0                           # no direction remembered
    for i in range(6):                                        # back-off, then along the wall
        rec.step(np.array([[0.9, 0.9]]), np.array([[0.0, 0.01 * i]]), None, np.array([beside]), np.array([3.0]))
    corner = np.array([[0.1, 0.3, 1.8, 1.5, 0.9, 0.1, 0.12, 0.1]])  # inner corner ahead, 0.3 m along
    cmd, _, _ = rec.step(np.array([[0.9, 0.9]]), np.array([[0.3, 0.0]]), None, corner, np.array([3.0]))
    assert rec.side[0] == -1.0 and cmd[0, 1] > cmd[0, 0]     # no turn-back: turns left, round the corner
    # reversing along a wall (wall on the robot's left, the push backwards): following it on
    # backwards puts it on the right of the travel direction
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    behind_beside = [0.9, 0.05, 0.03, 0.05, 0.36, 1.5, 1.8, 1.5]
    for _ in range(4):
        rec.step(np.array([[-0.9, -0.9]]), np.zeros((1, 2)), None, np.array([behind_beside]), np.array([3.0]))
    assert rec.following[0] and rec.side[0] == -1.0


def test_side_choice_follows_the_wall_where_it_is_not_where_the_push_went() -> None:
    """Held by the range guard with the wall at the rear left (from an edge-run flight log): the
    nearest beam (135 degrees) gives the wall's bearing; travelling along it towards the longer of
    the two beams 90 degrees either side (45 degrees: 1.13 m, not 225 degrees: 0.71 m) keeps the
    wall on the left. (The push was backwards, but the wall is not behind the robot.)"""
    ranges = [1.74, 1.13, 0.15, 0.07, 0.12, 0.71, 0.98, 1.55]
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=1, seed=0)
    for _ in range(4):
        rec.step(np.array([[-0.9, -0.2]]), np.zeros((1, 2)), None, np.array([ranges]), np.array([3.0]))
    assert rec.following[0] and rec.side[0] == 1.0


def test_a_stall_in_the_open_backs_off_but_does_not_follow() -> None:
    """A stall with no wall within FOLLOW_NEAR_M (a robot turning in place from rest) gets the
    reflex only: there is no wall to follow, and the follower would circle in the open."""
    rec = StuckRecovery(RecoveryConfig(), 0.05, batch=2, seed=0)
    r = np.array([[0.5] * 8, [0.2] + [0.5] * 7])
    out = [rec.step(np.array([[0.8, 0.8]] * 2), np.zeros((2, 2)), None, r, np.array([3.0, 3.0])) for _ in range(4)]
    assert out[3][2].tolist() == [True, True]             # both back off
    assert rec.following.tolist() == [False, True] and rec.follows.tolist() == [0, 1]


def test_wall_following_times_out_and_the_next_one_goes_the_other_way() -> None:
    ranges = [0.02, 0.05, 1.5, 1.2, 1.0, 1.2, 0.4, 0.05]
    rec, r, out = _follow_setup(ranges)
    n = rec.follow_max_ticks
    for i in range(n):
        rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, 0.05 * (i + 1)]]), None, r, np.array([3.5]))
    assert not rec.following[0] and rec.follow_ended.tolist() == ["timeout"]  # gave up after follow_max_s
    rec.reset(np.array([False]))                          # (a masked reset leaves the robot alone)
    out = [rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, 0.0]]), None, r, np.array([3.5])) for _ in range(4)]
    assert any(o[2][0] for o in out) and rec.following[0] and rec.side[0] == 1.0   # the other way now
    rec.reset()
    assert not rec.following[0]


def test_wall_follower_turns_back_at_an_inner_corner() -> None:
    ranges = [0.02, 0.05, 1.5, 1.2, 1.0, 1.2, 0.4, 0.05]
    rec, r, _ = _follow_setup(ranges)
    corner = np.array([[0.1, 0.3, 1.0, 1.2, 1.0, 1.2, 0.2, 0.15]])  # wall ahead and on the right
    rec.step(np.array([[0.8, 0.8]]), np.array([[0.05, 0.0]]), None, corner, np.array([3.5]))
    assert rec.side[0] == -1.0                            # only 0.05 m along the wall: not a corner yet
    rec.step(np.array([[0.8, 0.8]]), np.array([[0.3, 0.0]]), None, corner, np.array([3.5]))
    assert rec.side[0] == 1.0 and rec.following[0]        # 0.3 m along: turned back, wall now on the left
    rec.step(np.array([[0.8, 0.8]]), np.array([[0.35, 0.0]]), None, corner[:, [0, 7, 6, 5, 4, 3, 2, 1]],
             np.array([3.5]))
    assert rec.side[0] == 1.0                             # only once per following


def test_turn_back_turns_in_place_restarts_the_clock_and_keeps_its_direction_after_a_timeout() -> None:
    ranges = [0.02, 0.05, 1.5, 1.2, 1.0, 1.2, 0.4, 0.05]
    rec, r, _ = _follow_setup(ranges)
    for _ in range(5):                                    # the rest of the back-off
        rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, 0.0]]), None, r, np.array([3.5]))
    corner = np.array([[0.1, 0.3, 1.0, 1.2, 1.0, 1.2, 0.2, 0.15]])  # wall ahead and on the right
    for i in range(20):                                   # ticks along the wall before the corner
        rec.step(np.array([[0.8, 0.8]]), np.array([[0.01 * i, 0.0]]), None, r, np.array([3.5]))
    cmd, override, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.3, 0.0]]), None, corner, np.array([3.5]))
    assert rec.side[0] == 1.0 and override[0]
    np.testing.assert_allclose(cmd, [[0.5, -0.5]])         # turn in place towards the old wall (right)
    cmd, _, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.3, 0.0]]), None, r, np.array([3.5]))
    np.testing.assert_allclose(cmd, [[0.5, -0.5]])         # still: the front is not clear yet
    along = np.array([[1.0, 1.2, 0.12, 0.17, 1.0, 1.2, 1.5, 1.2]])  # the wall on the left, the way clear
    cmd, _, _ = rec.step(np.array([[0.8, 0.8]]), np.array([[0.3, 0.0]]), None, along, np.array([3.5]))
    np.testing.assert_allclose(cmd, wall_follow_command(along, np.array([1.0]), 0.12, RecoveryConfig().follow_speed))
    for i in range(rec.follow_max_ticks - 3):            # the way back has a whole follow_max_s of its own
        rec.step(np.array([[0.8, 0.8]]), np.array([[0.3 - 0.01 * i, 0.0]]), None, along, np.array([3.5]))
        assert rec.following[0]
    rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, 0.0]]), None, along, np.array([3.5]))
    assert rec.follow_ended.tolist() == ["timeout"]
    out = [rec.step(np.array([[0.8, 0.8]]), np.array([[0.0, 0.0]]), None, r, np.array([3.5])) for _ in range(4)]
    assert any(o[2][0] for o in out) and rec.side[0] == 1.0  # it already heads the unexplored way: keep it
