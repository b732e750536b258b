"""Simulated ESP32: the real firmware core driving the simulated robot, served on a pty.

The firmware core (``libfwcore.so``, the same C code as the ESP32 app) runs through ctypes with
a simulated HAL:

- ``motor_set(wheel, duty)`` drives a first-order DC motor model per wheel
  (``speed' = (duty * free_speed - speed) / tau``) whose speed turns the simulated robot's
  wheel (collisions stall it);
- ``encoder_read`` returns the robot's cumulative encoder counts (int32, wrapping);
- ``range_read`` returns the simulator's range raycasts (refreshed at 50 Hz like a ToF sensor;
  NaN = no reading);
- ``micros`` is the simulation clock;
- ``uart_write`` writes to the master side of a pseudo-terminal; whole frames are dropped when
  the host has not read 3 KiB (a real UART at 460800 baud would drop too).

The host talks the real protocol on ``.port`` (the pty slave, raw mode), exactly as on a robot:
``firmware_bridge.link.SerialLink(sim.port)``. A thread advances simulated time in 1 ms steps
(``fw_poll`` at 1 kHz of simulated time, robot physics every ``physics_dt``), paced to the wall
clock times ``time_scale``.

Example::

    from edge.sim.esp32 import SimulatedESP32
    with SimulatedESP32(seed=0) as esp:
        link = SerialLink(esp.port); link.open(); link.send_velocity(5.0, 5.0)
        ...; print(esp.true_pose)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from ctypes import CFUNCTYPE, POINTER, c_float, c_int, c_int32, c_size_t, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from dataclasses import dataclass, field, replace

import numpy as np

from edge.sim.camera import render_topdown
from edge.sim.env import BatchSim, SimConfig
from edge.sim.robot import RobotBatch
from edge.sim.world import Layout, WorldConfig

MOTOR_SET = CFUNCTYPE(None, c_void_p, c_int, c_float)
ENCODER_READ = CFUNCTYPE(c_int32, c_void_p, c_int)
RANGE_READ = CFUNCTYPE(c_float, c_void_p, c_int)
MICROS = CFUNCTYPE(c_uint64, c_void_p)
UART_WRITE = CFUNCTYPE(None, c_void_p, POINTER(c_uint8), c_size_t)


class FwHal(ctypes.Structure):
    """``fw_hal_t`` of ``firmware_bridge/firmware/core/hal.h``."""

    _fields_ = [
        ("ctx", c_void_p),
        ("motor_set", MOTOR_SET),
        ("encoder_read", ENCODER_READ),
        ("range_read", RANGE_READ),
        ("micros", MICROS),
        ("uart_write", UART_WRITE),
    ]


RESET_POWER_ON = 1  # fw_reset_reason_t FW_RESET_POWER_ON (protocol ResetReason.POWER_ON)
MAX_UNREAD_BYTES = 3072  # unread bytes at the pty slave beyond which whole frames are dropped


def load_core() -> ctypes.CDLL:
    """Load ``libfwcore.so`` (``firmware_bridge.native.core_library()``) with its prototypes.

    Raises:
        FileNotFoundError: the library is not built (the message names the build command).
    """
    from firmware_bridge import native

    lib = ctypes.CDLL(str(native.core_library()))
    lib.fw_create.argtypes = [POINTER(FwHal), c_uint32, c_uint8]
    lib.fw_create.restype = c_void_p
    lib.fw_destroy.argtypes = [c_void_p]
    lib.fw_destroy.restype = None
    lib.fw_rx.argtypes = [c_void_p, POINTER(c_uint8), c_size_t]
    lib.fw_rx.restype = None
    lib.fw_poll.argtypes = [c_void_p]
    lib.fw_poll.restype = None
    lib.fw_status.argtypes = [c_void_p]
    lib.fw_status.restype = c_uint16
    for name in ("fw_target_speed", "fw_motor_duty", "fw_measured_speed"):
        getattr(lib, name).argtypes = [c_void_p, c_int]
        getattr(lib, name).restype = c_float
    lib.fw_encoder_count.argtypes = [c_void_p, c_int]
    lib.fw_encoder_count.restype = c_int32
    lib.fw_counter.argtypes = [c_void_p, c_int]
    lib.fw_counter.restype = c_uint32
    return lib


@dataclass(frozen=True)
class MotorConfig:
    """First-order DC motor model of each wheel (the same model as ``fw_emulator``)."""

    free_speed: float = 18.0  # wheel speed at duty 1 (rad/s); above the sim's 15 rad/s so the PID has headroom
    tau: float = 0.08  # mechanical time constant (s)

    def __post_init__(self) -> None:
        if not (self.free_speed > 0):
            raise ValueError(f"MotorConfig.free_speed must be > 0 rad/s, got {self.free_speed}")
        if not (self.tau > 0):
            raise ValueError(f"MotorConfig.tau must be > 0 s, got {self.tau}")


@dataclass
class _Markers:
    plan: np.ndarray | None = None  # [N, 2] planned path (world frame)
    trail: list = field(default_factory=list)


class SimulatedESP32:
    """The simulated robot body behind the real firmware core, on a pseudo-terminal.

    Args:
        world_config: ``SimConfig`` (or just a ``WorldConfig``); default ``SimConfig()``.
        seed: layout, start, goal and sensor noise (None: random).
        time_scale: simulated seconds per wall-clock second (> 0; 1 = real time).
        motor: motor model.
        mode: ``"evaluate"`` (goal in the other room) or ``"explore"``.
        camera: render camera frames on request (``camera_frame()``).
        boot_count: reported in HELLO.
        physics_dt: robot physics step (s), a multiple of 1 ms (default 5 ms = the firmware's PID period).
    """

    def __init__(
        self,
        world_config: SimConfig | WorldConfig | None = None,
        seed: int | None = None,
        *,
        time_scale: float = 1.0,
        motor: MotorConfig | None = None,
        mode: str = "evaluate",
        camera: bool = True,
        boot_count: int = 1,
        physics_dt: float = 0.005,
    ):
        if isinstance(world_config, WorldConfig):
            world_config = SimConfig(world=world_config)
        self.config: SimConfig = world_config or SimConfig()
        if not (time_scale > 0 and np.isfinite(time_scale)):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale}")
        self._phys_ms = int(round(physics_dt * 1000))
        if self._phys_ms < 1 or abs(self._phys_ms / 1000 - physics_dt) > 1e-9:
            raise ValueError(f"physics_dt must be a positive multiple of 0.001 s, got {physics_dt}")
        if boot_count < 0:
            raise ValueError(f"boot_count must be >= 0, got {boot_count}")
        self.time_scale = float(time_scale)
        self.motor = motor or MotorConfig()
        self.boot_count = boot_count
        # The body: the sim robot with the motor model in charge of the wheel speeds.
        self.robot_config = replace(
            self.config.robot, max_wheel_speed=self.motor.free_speed * 1.01, max_wheel_accel=1e9, physics_substeps=1
        )
        self._sim = BatchSim(self.config, 1, camera=camera, seed=seed)
        self._lock = threading.RLock()
        self._markers = _Markers()
        self.collisions = 0
        self.dropped_frames = 0
        self.lag_dropped_s = 0.0  # backlog given up (s of sim time) when the CPU could not keep up with time_scale
        self._t_us = 0
        self._duty = [0.0, 0.0]
        self._lib = None
        self._fw = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._master = self._slave = -1
        self.port: str | None = None
        self.reset_episode(mode=mode)

    # ---- episode / world -------------------------------------------------------------------

    def reset_episode(
        self,
        seed: int | None = None,
        *,
        mode: str = "evaluate",
        layout: Layout | None = None,
        start: np.ndarray | None = None,
        goal: np.ndarray | None = None,
    ) -> None:
        """New layout, start pose and goal (the robot is picked up and put down: the encoders keep
        counting from where they were, wheels at rest). Arguments as ``BatchSim.reset``."""
        with self._lock:
            old = getattr(self._sim, "robot", None)
            self._sim.reset(
                seed, mode=mode, layout=layout,
                start=None if start is None else np.asarray(start, dtype=np.float64).reshape(1, 3),
                goal=None if goal is None else np.asarray(goal, dtype=np.float64).reshape(1, 2),
            )
            robot = RobotBatch(self.robot_config, self._sim.robot.pose)
            if isinstance(old, RobotBatch):
                robot.wheel_angle = old.wheel_angle.copy()
                robot.enc = old.enc.copy()
            self._sim.robot = robot
            self._motor_speed = np.zeros(2)
            self._markers = _Markers(trail=[robot.pose[0, :2].copy()])
            self.start_pose = robot.pose[0].copy()

    @property
    def true_pose(self) -> np.ndarray:
        """Ground-truth pose ``[3]`` (x, y, theta) in the arena-centred world frame."""
        with self._lock:
            return self._sim.robot.pose[0].copy()

    @property
    def wheel_speeds(self) -> np.ndarray:
        """True wheel angular speeds ``[2]`` (rad/s)."""
        with self._lock:
            return self._sim.robot.wheel[0].copy()

    @property
    def encoder_counts(self) -> np.ndarray:
        """Cumulative encoder counts ``[2]`` as the HAL reports them (before wrap to int32)."""
        with self._lock:
            return self._sim.robot.enc[0].copy()

    def snapshot(self) -> dict[str, np.ndarray | float]:
        """A consistent view of the body at one instant: ``t`` (sim s), ``pose [3]``,
        ``wheel_speeds [2]`` (rad/s), ``encoder_counts [2]``."""
        with self._lock:
            r = self._sim.robot
            return {"t": self.sim_time_s, "pose": r.pose[0].copy(), "wheel_speeds": r.wheel[0].copy(),
                    "encoder_counts": r.enc[0].copy()}

    @property
    def layout(self) -> Layout:
        return self._sim.layout

    @property
    def goal(self) -> np.ndarray:
        """Goal position ``[2]`` (m)."""
        with self._lock:
            return self._sim.goal[0].copy()

    def set_goal(self, xy) -> None:
        """Move the goal marker to ``xy`` (m, world frame)."""
        with self._lock:
            self._sim.goal[0] = np.asarray(xy, dtype=np.float64).reshape(2)

    def set_plan(self, points: np.ndarray | None) -> None:
        """Planned path ``[N, 2]`` (world frame) to draw in ``render_topdown``; None clears it."""
        with self._lock:
            self._markers.plan = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)

    @property
    def goal_distance(self) -> float:
        return float(np.hypot(*(self.true_pose[:2] - self.goal)))

    @property
    def goal_reached(self) -> bool:
        """True pose within the success radius of the goal."""
        return self.goal_distance <= self.config.success_radius

    @property
    def sim_time_s(self) -> float:
        return self._t_us * 1e-6

    def ranges_m(self) -> np.ndarray:
        """Latest range readings ``[8]`` (m, NaN = dropout), as the firmware sees them."""
        with self._lock:
            return self._sim.ranges[0].copy()

    def camera_frame(self) -> np.ndarray:
        """Forward camera frame ``uint8 [64, 64, 3]`` at the current true pose."""
        with self._lock:
            if self._sim.camera is None:
                raise RuntimeError("SimulatedESP32 was created with camera=False")
            return self._sim.camera.render(self._sim.robot.pose, self._sim.seg, self._sim.layout.wall_x)[0]

    def observe_at(self, pose) -> dict[str, np.ndarray]:
        """Noise-free observation standing still at ``pose [3]`` (``BatchSim.observe_at``),
        e.g. the goal observation: ``ranges [8]``, ``pose [3]``, ``wheel_speeds [2]``,
        ``sensor [14]`` and, with the camera, ``frame [64, 64, 3]``."""
        with self._lock:
            obs = self._sim.observe_at(np.asarray(pose, dtype=np.float64).reshape(1, 3))
        return {k: v[0] for k, v in obs.items()}

    def render_topdown(self, px_per_m: float = 100.0) -> np.ndarray:
        """Top-down RGB image: walls, goal, the robot, its trail and the planned path if set."""
        import cv2

        with self._lock:
            img = render_topdown(
                self.config.world, self._sim.layout, self._sim.robot.pose[0], radius=self.config.robot.radius,
                goal=self._sim.goal[0], goal_radius=self.config.success_radius,
                trail=np.array(self._markers.trail), ranges=self._sim.ranges[0], px_per_m=px_per_m,
            )
            plan = self._markers.plan
        if plan is not None and len(plan) > 1:
            hw, hh, m = self.config.world.half_width, self.config.world.half_height, 10
            pts = np.stack([(plan[:, 0] + hw) * px_per_m + m, (hh - plan[:, 1]) * px_per_m + m], -1)
            cv2.polylines(img, [np.round(pts).astype(np.int32)], False, (0, 160, 255), 1, cv2.LINE_AA)
        return img

    # ---- firmware ---------------------------------------------------------------------------

    def firmware_status(self) -> int:
        """``fw_status`` bits (``firmware_bridge.protocol.StatusBits``)."""
        with self._lock:
            self._require_running()
            return int(self._lib.fw_status(self._fw))

    def firmware_counter(self, counter: int) -> int:
        """``fw_counter`` (``fw_counter_t`` index)."""
        with self._lock:
            self._require_running()
            return int(self._lib.fw_counter(self._fw, counter))

    def motor_duty(self) -> tuple[float, float]:
        """Duties last given to the motors by the firmware."""
        return (self._duty[0], self._duty[1])

    def _require_running(self) -> None:
        if self._fw is None:
            raise RuntimeError("SimulatedESP32 is not running: call start() or use it as a context manager")

    # HAL callbacks: called by the core on the simulation thread (under self._lock).
    def _hal_motor_set(self, ctx, wheel, duty):
        if 0 <= wheel < 2:
            self._duty[wheel] = float(duty) if np.isfinite(duty) else 0.0

    def _hal_encoder_read(self, ctx, wheel):
        if not 0 <= wheel < 2:
            return 0
        v = int(self._sim.robot.enc[0, wheel])
        return ((v + 2**31) % 2**32) - 2**31

    def _hal_range_read(self, ctx, index):
        if not 0 <= index < 8:
            return float("nan")
        return float(self._sim.ranges[0, index])

    def _hal_micros(self, ctx):
        return self._t_us

    def _hal_uart_write(self, ctx, buf, length):
        data = ctypes.string_at(buf, length)
        try:
            unread = struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]
            if unread + len(data) > MAX_UNREAD_BYTES:
                self.dropped_frames += 1
                return
            os.write(self._master, data)
        except (BlockingIOError, OSError):
            self.dropped_frames += 1

    def start(self) -> "SimulatedESP32":
        """Open the pty, boot the firmware core (it sends HELLO) and start the simulation thread.

        Raises:
            FileNotFoundError: ``libfwcore.so`` is not built (names the build command).
        """
        if self._thread is not None:
            return self
        self._lib = load_core()
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise
        return self

    def _boot(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        fl = fcntl.fcntl(self._master, fcntl.F_GETFL)
        fcntl.fcntl(self._master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.port = os.ttyname(self._slave)
        self._cbs = (
            MOTOR_SET(self._hal_motor_set),
            ENCODER_READ(self._hal_encoder_read),
            RANGE_READ(self._hal_range_read),
            MICROS(self._hal_micros),
            UART_WRITE(self._hal_uart_write),
        )
        self._hal = FwHal(None, *self._cbs)
        with self._lock:
            self._fw = self._lib.fw_create(ctypes.byref(self._hal), self.boot_count, RESET_POWER_ON)
            if not self._fw:
                raise RuntimeError("fw_create failed (out of memory or an incomplete HAL)")
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="SimulatedESP32", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, destroy the core and close the pty (idempotent)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None
        with self._lock:
            if self._fw is not None:
                self._lib.fw_destroy(self._fw)
                self._fw = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> "SimulatedESP32":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self) -> None:
        """Re-raise an exception that stopped the simulation thread, if any."""
        if self._error is not None:
            raise RuntimeError("the SimulatedESP32 thread failed") from self._error

    # ---- simulation thread ------------------------------------------------------------------

    def _read_host(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            buf = (c_uint8 * len(data)).from_buffer_copy(data)
            self._lib.fw_rx(self._fw, buf, len(data))

    def _physics(self, dt: float) -> None:
        a = 1.0 - np.exp(-dt / self.motor.tau)
        duty = np.clip(np.array(self._duty), -1.0, 1.0)
        robot = self._sim.robot
        # the wheels' actual speed is the motor's, unless a collision stalled them
        self._motor_speed = robot.wheel[0] + (duty * self.motor.free_speed - robot.wheel[0]) * a
        hit = robot.step(self._motor_speed[None], dt, self._sim.seg, self._sim.rng, odometry=False)
        if hit[0]:
            self.collisions += 1

    def _step_ms(self, n: int) -> None:
        """Advance simulated time by ``n`` ms: physics every ``physics_dt``, ranges at 50 Hz,
        ``fw_poll`` every ms. Caller holds the lock."""
        for _ in range(n):
            self._t_us += 1000
            ms = self._t_us // 1000
            if ms % self._phys_ms == 0:
                self._physics(self._phys_ms / 1000)
            if ms % 20 == 0:
                self._sim.sense()
            if ms % 50 == 0:
                self._markers.trail.append(self._sim.robot.pose[0, :2].copy())
                if len(self._markers.trail) > 4000:
                    del self._markers.trail[:1000]
            self._lib.fw_poll(self._fw)

    def _main(self) -> None:
        try:
            wall0 = time.monotonic()
            sim0 = self._t_us
            while not self._stop.is_set():
                due_us = sim0 + int((time.monotonic() - wall0) * self.time_scale * 1e6)
                behind_ms = (due_us - self._t_us) // 1000
                if behind_ms > 50:  # fell behind (CPU starved): drop the backlog, like fw_emulator
                    self.lag_dropped_s += (behind_ms - 1) / 1000
                    wall0, sim0 = time.monotonic(), self._t_us
                    behind_ms = 1
                if behind_ms > 0:
                    with self._lock:
                        self._read_host()
                        self._step_ms(int(behind_ms))
                        self._read_host()
                wait = max(0.0, (self._t_us + 1000 - due_us) * 1e-6 / self.time_scale)
                readable, _, _ = select.select([self._master], [], [], min(wait, 0.005))
                if readable:
                    with self._lock:
                        self._read_host()
        except BaseException as e:  # surfaced by check()
            self._error = e
