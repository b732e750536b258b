"""Link benchmarks against the compiled emulator over a real pseudo-terminal.

1. PING -> ACK round trip through ``SerialLink`` (reader thread, acked-command machinery),
   compared in the same run with the floor: the same PING written and its ACK read back in
   one thread with no link (pty + emulator + codec only). Goal: link p50 < 0.5 ms.
2. Watchdog stop: drive the wheels, then go silent; the time from the host's last frame to
   the emulator cutting the motors (first TELEMETRY with WATCHDOG_TRIPPED, device clock) and
   to the wheels being at rest (|speed| < 0.05 rad/s). Telemetry runs at 1 ms for resolution;
   host and device clocks are aligned by the minimum host-receive minus device-time offset.
   Goal: motors cut <= 220 ms after the last frame (the firmware watchdog is 200 ms).
   Compared in the same run with an explicit stop (one SET_VEL 0, the PID brakes): why
   MotorController always sends one on exit instead of relying on the watchdog.

Run:  python benchmarks/bench_link.py [--pings 2000] [--trials 10]
Writes benchmarks/results/link.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import sys
import threading
import time
from pathlib import Path

import numpy as np

from firmware_bridge import native, protocol
from firmware_bridge.cli import ping_summary
from firmware_bridge.emulator import Emulator
from firmware_bridge.link import LinkConfig, SerialLink, Telemetry
from firmware_bridge.protocol import MsgType, StatusBits

RESULTS = Path(__file__).resolve().parent / "results" / "link.json"
PING_GOAL_P50_MS = 0.5
STOP_GOAL_MS = 220.0
WATCHDOG_MS = 200
REST_RAD_S = 0.05


def bench_ping_link(port: str, n: int, warmup: int) -> list[float]:
    with SerialLink(port, LinkConfig(ack_timeout_s=0.5)) as link:
        for _ in range(warmup):
            link.ping()
        return [link.ping() for _ in range(n)]


def bench_ping_raw(port: str, n: int, warmup: int) -> list[float]:
    """Floor: write PING, block on the fd until its ACK decodes, same thread, no link."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    decoder = protocol.FrameDecoder()
    rtts = []
    try:
        for i in range(warmup + n):
            seq = i % 65536
            packet = protocol.encode(MsgType.PING, seq, 0, token=i)
            start = time.perf_counter()
            os.write(fd, packet)
            done = False
            while not done:
                select.select([fd], [], [], 1.0)
                for frame in decoder.feed(os.read(fd, 4096)):
                    if frame.type == MsgType.ACK and frame.fields["acked_seq"] == seq:
                        done = True
            if i >= warmup:
                rtts.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return rtts


def bench_watchdog(port: str, trials: int, explicit_stop: bool = False) -> list[dict]:
    """Per trial: drive at 6 rad/s, then either go silent (watchdog) or send one SET_VEL(0, 0)
    and go silent (``explicit_stop``: the PID brakes). Times in ms from that last frame."""
    frames: list[Telemetry] = []
    lock = threading.Lock()

    def keep(t: Telemetry) -> None:
        with lock:
            frames.append(t)

    results = []
    with SerialLink(port, LinkConfig(ack_timeout_s=0.5), on_telemetry=keep) as link:
        link.configure(telemetry_period_ms=1, watchdog_ms=WATCHDOG_MS, max_wheel_speed=10.0,
                       ticks_per_rev=1320)
        for _ in range(trials):
            end = time.monotonic() + 0.4
            while time.monotonic() < end:           # drive at 50 Hz
                link.send_velocity(6.0, 6.0)
                time.sleep(0.02)
            with lock:
                frames.clear()
            t_last = time.monotonic()               # just before the last frame is written
            link.send_velocity(*((0.0, 0.0) if explicit_stop else (6.0, 6.0)))
            deadline = t_last + 2.0
            while time.monotonic() < deadline:
                latest = link.latest()
                if latest is not None and latest.watchdog_tripped and abs(latest.speed_left) < REST_RAD_S \
                        and abs(latest.speed_right) < REST_RAD_S and latest.host_time > t_last:
                    break
                time.sleep(0.005)
            with lock:
                seen = list(frames)
            offset = min(t.host_time - t.mcu_time_us * 1e-6 for t in seen)  # host = mcu + offset
            last_mcu = t_last - offset
            cut = next((t for t in seen if t.watchdog_tripped), None)
            rest = next((t for t in seen if t.host_time > t_last and (explicit_stop or cut is not None and t.seq >= cut.seq)
                         and abs(t.speed_left) < REST_RAD_S and abs(t.speed_right) < REST_RAD_S), None)
            results.append({
                "cut_ms": None if cut is None else (cut.mcu_time_us * 1e-6 - last_mcu) * 1e3,
                "rest_ms": None if rest is None else (rest.mcu_time_us * 1e-6 - last_mcu) * 1e3,
                "motors_enabled_after_cut": None if cut is None else bool(cut.status & StatusBits.MOTORS_ENABLED),
                "frames": len(seen),
            })
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="example: python benchmarks/bench_link.py --pings 2000 --trials 10")
    p.add_argument("--pings", type=int, default=2000, help="pings per variant (>= 1000 for the report)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--trials", type=int, default=10, help="watchdog stop trials")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.pings < 1 or args.trials < 1:
        p.error("--pings and --trials must be >= 1")
    try:
        exe = native.emulator_executable()
    except FileNotFoundError as e:
        print(f"bench_link: error: {e}", file=sys.stderr)
        return 1

    with Emulator(executable=exe) as emu:
        link_rtt = ping_summary(bench_ping_link(emu.port, args.pings, args.warmup))
    with Emulator(executable=exe) as emu:
        raw_rtt = ping_summary(bench_ping_raw(emu.port, args.pings, args.warmup))
    with Emulator(executable=exe) as emu:
        trials = bench_watchdog(emu.port, args.trials)
        braked = bench_watchdog(emu.port, args.trials, explicit_stop=True)
    braked_rest = np.array([t["rest_ms"] for t in braked if t["rest_ms"] is not None])

    cut = np.array([t["cut_ms"] for t in trials if t["cut_ms"] is not None])
    rest = np.array([t["rest_ms"] for t in trials if t["rest_ms"] is not None])
    stop = {
        "trials": trials, "watchdog_ms": WATCHDOG_MS, "telemetry_period_ms": 1,
        "cut_ms": {"min": float(cut.min()), "p50": float(np.median(cut)), "max": float(cut.max())} if cut.size else None,
        "rest_ms": {"min": float(rest.min()), "p50": float(np.median(rest)), "max": float(rest.max())} if rest.size else None,
        "missed_trials": int(len(trials) - cut.size),
        "explicit_stop_rest_ms": {"min": float(braked_rest.min()), "p50": float(np.median(braked_rest)),
                                  "max": float(braked_rest.max())} if braked_rest.size else None,
        "explicit_stop_trials": braked,
    }
    result = {
        "benchmark": "link",
        "command": "python benchmarks/bench_link.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "platform": platform.platform()},
        "ping_link": link_rtt,
        "ping_raw_floor": raw_rtt,
        "link_over_floor_p50": link_rtt["p50_ms"] / raw_rtt["p50_ms"],
        "watchdog_stop": stop,
        "goals": {
            "ping_p50_ms": PING_GOAL_P50_MS, "ping_p50_met": link_rtt["p50_ms"] < PING_GOAL_P50_MS,
            "stop_ms": STOP_GOAL_MS,
            "stop_met": bool(cut.size == len(trials) and cut.max() <= STOP_GOAL_MS),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'measurement':44s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'max':>9s}")
    for name, s in (("PING->ACK via SerialLink (ms)", link_rtt), ("PING->ACK raw floor, one thread (ms)", raw_rtt)):
        print(f"{name:44s} {s['p50_ms']:9.3f} {s['p90_ms']:9.3f} {s['p99_ms']:9.3f} {s['max_ms']:9.3f}")
    print(f"link / floor p50 ratio: {result['link_over_floor_p50']:.2f}x   (n={args.pings} each)")
    print(f"{'measurement':44s} {'min':>9s} {'p50':>9s} {'max':>9s}")
    for name, s in ((f"last frame -> motors cut (ms, {len(trials)} trials)", stop["cut_ms"]),
                    (f"last frame -> wheels < {REST_RAD_S} rad/s (ms)", stop["rest_ms"]),
                    ("explicit SET_VEL 0 -> wheels at rest (ms)", stop["explicit_stop_rest_ms"])):
        if s is None:
            print(f"{name:44s} {'n/a':>9s}")
        else:
            print(f"{name:44s} {s['min']:9.1f} {s['p50']:9.1f} {s['max']:9.1f}")
    g = result["goals"]
    print(f"goals: ping p50 < {PING_GOAL_P50_MS} ms: {'met' if g['ping_p50_met'] else 'MISSED'}; "
          f"motors cut <= {STOP_GOAL_MS:.0f} ms: {'met' if g['stop_met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
