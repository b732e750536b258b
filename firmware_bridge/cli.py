"""edge-link: open the motor-controller link, show live telemetry, measure round-trip latency.

Examples::

    edge-link --port /dev/ttyUSB0                 # live telemetry table until Ctrl-C
    edge-link --port /dev/ttyUSB0 --ping 1000     # PING->ACK round trip: p50/p90/p99/max in ms
    edge-link --emulator --plain --duration 2     # the compiled emulator instead of a board

Opening the port never resets the ESP32 (DTR/RTS stay deasserted). Exit status 0 on success,
1 when the link fails (the message says what to do), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import ExitStack

import numpy as np

from firmware_bridge.device import MotorController, MotorControllerConfig
from firmware_bridge.emulator import Emulator, EmulatorError
from firmware_bridge.link import LinkConfig, LinkError, Telemetry
from firmware_bridge.protocol import StatusBits

_EPILOG = """examples:
  edge-link --port /dev/ttyUSB0                 live telemetry until Ctrl-C
  edge-link --port /dev/ttyUSB0 --ping 1000     round trip p50/p90/p99/max in ms
  edge-link --emulator --plain --duration 2     same against the compiled emulator
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-link", description=__doc__.split("\n")[0],
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0 or /dev/edge-esp32")
    where.add_argument("--emulator", action="store_true",
                       help="start build/native/fw_emulator and talk to its pseudo-terminal")
    p.add_argument("--baud", type=int, default=LinkConfig.baudrate,
                   help="baud rate; must match the firmware (default %(default)s)")
    p.add_argument("--ping", type=int, metavar="N", default=0,
                   help="send N pings and print round-trip percentiles instead of telemetry")
    p.add_argument("--duration", type=float, metavar="S", default=0.0,
                   help="stop the telemetry view after S seconds (default: until Ctrl-C)")
    p.add_argument("--plain", action="store_true", help="print plain lines instead of a live table")
    p.add_argument("--refresh-hz", type=float, default=10.0, help="display refresh rate (default %(default)s)")
    return p


def ping_summary(rtts_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of round trips, in milliseconds."""
    ms = np.asarray(rtts_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": int(ms.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def _run_ping(mc: MotorController, count: int) -> int:
    rtts, lost = [], 0
    for _ in range(count):
        try:
            rtts.append(mc.ping())
        except LinkError:
            lost += 1
            if lost > max(10, count // 10):
                raise
    if not rtts:
        raise LinkError(f"No PING on '{mc.config.port}' was answered.")
    s = ping_summary(rtts)
    print(f"ping {mc.config.port}: {s['n']} answered, {lost} lost; round trip "
          f"p50 {s['p50_ms']:.3f} ms  p90 {s['p90_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
          f"max {s['max_ms']:.3f} ms")
    return 0


def _status_text(status: StatusBits) -> str:
    return "|".join(b.name for b in StatusBits if b & status) or "idle"


def _plain_line(mc: MotorController, t: Telemetry, rate_hz: float) -> str:
    stats = mc.stats()
    ranges = " ".join("  -  " if math.isnan(r) else f"{r:5.2f}" for r in t.ranges_m)
    return (f"{mc.state.value:12s} t={t.mcu_time_us / 1e6:10.3f}s enc={t.enc_left:+9d} {t.enc_right:+9d} "
            f"speed={t.speed_left:+6.2f} {t.speed_right:+6.2f} rad/s ranges_m=[{ranges}] "
            f"status={_status_text(t.status)} rx={rate_hz:5.1f}Hz crc={stats.crc_errors} "
            f"frame={stats.frame_errors} gaps={stats.seq_gaps} resets={stats.device_resets}")


def _table(mc: MotorController, t: Telemetry, rate_hz: float):
    from rich.table import Table

    stats = mc.stats()
    table = Table(title=f"edge-link {mc.config.port} ({mc.state.value})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("mcu time", f"{t.mcu_time_us / 1e6:.3f} s")
    table.add_row("encoders", f"{t.enc_left:+d}  {t.enc_right:+d} counts")
    table.add_row("wheel speed", f"{t.speed_left:+.2f}  {t.speed_right:+.2f} rad/s")
    table.add_row("ranges", "  ".join("-" if math.isnan(r) else f"{r:.2f}" for r in t.ranges_m) + " m")
    table.add_row("status", _status_text(t.status))
    table.add_row("telemetry rate", f"{rate_hz:.1f} Hz")
    table.add_row("errors", f"crc {stats.crc_errors}  frame {stats.frame_errors}  oversize "
                            f"{stats.oversize_frames}  gaps {stats.seq_gaps} ({stats.frames_dropped} lost)")
    table.add_row("link", f"resets {stats.device_resets}  reopens {stats.reopens}  "
                          f"low-latency: {mc.link.low_latency_note}")
    return table


def _run_telemetry(mc: MotorController, duration: float, plain: bool, refresh_hz: float) -> int:
    period = 1.0 / refresh_hz
    end = time.monotonic() + duration if duration > 0 else float("inf")
    last_count, last_time = mc.stats().telemetry_rx, time.monotonic()

    def frame():
        nonlocal last_count, last_time
        now = time.monotonic()
        count = mc.stats().telemetry_rx
        rate = (count - last_count) / max(now - last_time, 1e-9)
        last_count, last_time = count, now
        return mc.get_observation(), rate

    if plain:
        while time.monotonic() < end:
            time.sleep(period)
            t, rate = frame()
            print(_plain_line(mc, t, rate), flush=True)
        return 0
    from rich.live import Live

    with Live(_table(mc, *frame()), refresh_per_second=refresh_hz) as live:
        while time.monotonic() < end:
            time.sleep(period)
            live.update(_table(mc, *frame()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.ping < 0:
        _parser().error(f"--ping must be >= 0, got {args.ping}")
    if args.duration < 0:
        _parser().error(f"--duration must be >= 0 seconds, got {args.duration}")
    if not args.refresh_hz > 0:
        _parser().error(f"--refresh-hz must be > 0, got {args.refresh_hz}")
    try:
        link_cfg = LinkConfig(baudrate=args.baud)
    except ValueError as e:
        _parser().error(str(e))
    try:
        with ExitStack() as stack:
            port = args.port
            if args.emulator:
                port = stack.enter_context(Emulator()).port
            mc = stack.enter_context(MotorController(MotorControllerConfig(port=port, link=link_cfg)))
            if args.ping:
                return _run_ping(mc, args.ping)
            return _run_telemetry(mc, args.duration, args.plain, args.refresh_hz)
    except (LinkError, EmulatorError, FileNotFoundError) as e:
        print(f"edge-link: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
