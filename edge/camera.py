"""Camera sources for the control loop: the newest frame, never a queue of old ones.

- :class:`OpenCVCamera`: a capture thread reads a V4L2 device / file / stream with OpenCV and
  keeps only the latest frame (converted to RGB and resized to the model's size), so the loop
  never blocks on the camera and never plans on a stale backlog.
- :class:`SimCamera`: renders the simulator's forward camera at the robot's current true pose.

Frames are ``uint8 [H, W, 3]`` RGB (default 64 x 64, docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera could not be opened or stopped delivering frames."""


#: How this runtime turns a camera image into the encoder's input (:func:`to_model_frame`), in the
#: vocabulary of the ``encoders.camera.preprocessing`` entry that I-JEPA bundles carry.
RUNTIME_RESIZE = "area"
RUNTIME_CHANNEL_ORDER = "RGB"


def check_camera_preprocessing(preprocessing: Mapping[str, Any] | None, width: int, height: int) -> None:
    """Refuse a camera encoder pretrained on frames other than this runtime feeds it.

    ``preprocessing``: the bundle manifest's ``encoders.camera.preprocessing`` (``image_size``,
    ``resize``, ``channel_order``; ``mean``/``std`` are applied inside the graph), or None for
    bundles that record none (the contract: 64 x 64 RGB, area resize). ``width``/``height``:
    the frame size the runtime hands the encoder (``camera.width/height``). The runtime always
    resizes with OpenCV INTER_AREA (``area``; ``none`` = frames taken at the model size are also
    accepted) and feeds RGB. Raises :class:`CameraError` naming each differing field, both
    values and the fix.
    """
    if preprocessing is None:
        return
    problems = []
    size = preprocessing.get("image_size")
    if size is not None and (int(size), int(size)) != (width, height):
        problems.append(f"image_size: the bundle's camera encoder takes {size}x{size} frames, camera.width/height "
                        f"give {width}x{height} (set camera.width={size} camera.height={size})")
    resize = preprocessing.get("resize", RUNTIME_RESIZE)
    if resize not in (RUNTIME_RESIZE, "none"):
        problems.append(f"resize: the bundle's encoder was pretrained on {resize!r}-resized frames, this runtime "
                        f"resizes with {RUNTIME_RESIZE!r} (OpenCV INTER_AREA)")
    order = preprocessing.get("channel_order", RUNTIME_CHANNEL_ORDER)
    if order != RUNTIME_CHANNEL_ORDER:
        problems.append(f"channel_order: the bundle's encoder was pretrained on {order} frames, this runtime feeds "
                        f"{RUNTIME_CHANNEL_ORDER}")
    if problems:
        raise CameraError("camera preprocessing mismatch: " + "; ".join(problems)
                          + ". Pretrain with the runtime's preprocessing (resize 'area', RGB) and re-export the bundle")


class CameraSource(ABC):
    """A source of the latest camera frame. Use as a context manager (``start``/``stop``)."""

    @abstractmethod
    def latest(self) -> np.ndarray | None:
        """The newest frame ``uint8 [H, W, 3]`` RGB, or None before the first one."""

    def start(self) -> CameraSource:
        return self

    def stop(self) -> None:
        """Release the device; idempotent."""

    def __enter__(self) -> CameraSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def to_model_frame(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """An OpenCV BGR image -> ``uint8 [height, width, 3]`` RGB (area-averaged resize)."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    small = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


class OpenCVCamera(CameraSource):
    """Capture thread over ``cv2.VideoCapture``.

    Args:
        source: device index as text (``"0"`` -> ``/dev/video0``), a device path, a video file
            or a stream URL.
        width, height: size of the frames handed to the model.
        open_timeout_s: how long :meth:`start` waits for the first frame.
        capture_factory: builds the ``cv2.VideoCapture`` (injectable for tests).

    Attributes:
        frames: frames captured so far. failures: failed reads.
    """

    def __init__(self, source: str, width: int = 64, height: int = 64, open_timeout_s: float = 5.0,
                 capture_factory: Callable[[int | str], cv2.VideoCapture] = cv2.VideoCapture):
        self.source = source
        self.width, self.height = int(width), int(height)
        self.open_timeout_s = open_timeout_s
        self._factory = capture_factory
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0
        self.failures = 0

    def start(self) -> OpenCVCamera:
        target: int | str = int(self.source) if self.source.isdigit() else self.source
        cap = self._factory(target)
        if cap is None or not cap.isOpened():
            raise CameraError(
                f"Could not open camera {self.source!r}. Check it is plugged in (`ls /dev/video*`), "
                "that no other program holds it, or set camera.source to none.")
        self._cap = cap
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()
        if not self._first.wait(self.open_timeout_s):
            self.stop()
            raise CameraError(f"Camera {self.source!r} opened but sent no frame within "
                              f"{self.open_timeout_s:g} s; check the device and its resolution settings.")
        return self

    def _run(self) -> None:
        cap = self._cap
        while not self._stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                self.failures += 1
                if self._stop.wait(0.02):
                    break
                continue
            frame = to_model_frame(img, self.width, self.height)
            with self._lock:
                self._frame = frame
                self._stamp = time.monotonic()
            self.frames += 1
            self._first.set()

    def latest(self) -> np.ndarray | None:
        with self._lock:
            return self._frame

    @property
    def age_s(self) -> float:
        """Seconds since the newest frame arrived (inf before the first)."""
        with self._lock:
            return time.monotonic() - self._stamp if self._frame is not None else float("inf")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SimCamera(CameraSource):
    """The simulator's forward camera: ``render()`` returns the frame at the current true pose."""

    def __init__(self, render: Callable[[], np.ndarray]):
        self._render = render
        self.frames = 0

    def latest(self) -> np.ndarray | None:
        self.frames += 1
        return self._render()
