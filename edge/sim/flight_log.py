"""Flight log (MCAP) channel schemas as data, shared by the recorder and the dataset reader.

The contract is ``docs/FLIGHT_LOG.md``. Every channel is JSON-encoded with a JSON schema
(``encoding="jsonschema"``); ``CHANNELS`` maps topic -> schema dict. Camera frames travel as
base64 of PNG bytes (or JPEG, or raw RGB); ``encode_frame`` / ``decode_frame`` convert.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

SCHEMA_VERSION = 1
"""Flight log format version, written to the ``edge_jepa`` metadata record."""

MESSAGE_ENCODING = "json"
SCHEMA_ENCODING = "jsonschema"
FRAME_ENCODINGS = ("png", "jpeg", "rgb8")

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_POSE = {"type": "array", "items": _NUM, "minItems": 3, "maxItems": 3}
_HEADER = {"tick": {"type": "integer", "minimum": 0}, "t": _NUM}


def _schema(title: str, props: dict, required: list[str]) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {**_HEADER, **props},
        "required": ["tick", "t", *required],
        "additionalProperties": True,
    }


CHANNELS: dict[str, dict] = {
    "/obs": _schema(
        "edge_jepa.obs",
        {
            "ranges_m": {"type": "array", "items": _NUM_OR_NULL, "minItems": 8, "maxItems": 8},
            "pose": _POSE,
            "wheel_speeds": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
            "mcu_time_us": {"type": "integer"},
            "seq_applied": {"type": "integer"},
        },
        ["ranges_m", "pose", "wheel_speeds"],
    ),
    "/camera": _schema(
        "edge_jepa.camera",
        {
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "encoding": {"enum": list(FRAME_ENCODINGS)},
            "data": {"type": "string", "contentEncoding": "base64"},
        },
        ["width", "height", "encoding", "data"],
    ),
    "/action": _schema(
        "edge_jepa.action",
        {
            "left": {"type": "number", "minimum": -1, "maximum": 1},
            "right": {"type": "number", "minimum": -1, "maximum": 1},
            "source": {"enum": ["planner", "recovery", "fallback", "hold", "safety", "estop"]},
        },
        ["left", "right", "source"],
    ),
    "/true_pose": _schema("edge_jepa.true_pose", {"pose": _POSE}, ["pose"]),
    "/goal": _schema(
        "edge_jepa.goal",
        {
            "pose": {"type": "array", "items": _NUM_OR_NULL, "minItems": 3, "maxItems": 3},
            "source": {"type": "string"},
        },
        ["pose"],
    ),
    "/plan": _schema(
        "edge_jepa.plan",
        {
            "mean": {"type": "array", "items": {"type": "array", "items": _NUM}},
            "std": {"type": "array", "items": {"type": "array", "items": _NUM}},
            "best_cost": _NUM,
            "mean_cost": _NUM,
            "conf": {"type": "array", "items": _NUM},
        },
        ["mean", "best_cost", "mean_cost"],
    ),
    "/embedding": _schema(
        "edge_jepa.embedding",
        {"z": {"type": "array", "items": _NUM}, "goal_distance": _NUM},
        ["z"],
    ),
    "/confidence": _schema(
        "edge_jepa.confidence",
        {
            "value": _NUM,
            "threshold": _NUM,
            "low": {"type": "boolean"},
            "reason": {"type": ["string", "null"]},
        },
        ["value", "low"],
    ),
    "/fallback": _schema(
        "edge_jepa.fallback",
        {
            "request_id": {"type": "integer"},
            "prompt": {"type": "string"},
            "reply_text": {"type": ["string", "null"]},
            "latency_s": _NUM,
            "macro": {
                "type": ["object", "null"],
                "properties": {"action": {"type": "string"}, "duration_s": _NUM},
            },
            "rejected_reason": {"type": ["string", "null"]},
        },
        ["request_id", "latency_s"],
    ),
    "/timings": _schema(
        "edge_jepa.timings",
        {
            "read_ms": _NUM,
            "encode_ms": _NUM,
            "plan_ms": _NUM,
            "guard_ms": _NUM,
            "send_ms": _NUM,
            "total_ms": _NUM,
            "deadline_ms": _NUM,
            "overrun": {"type": "boolean"},
        },
        ["total_ms"],
    ),
    "/link_stats": _schema(
        "edge_jepa.link_stats",
        {"stats": {"type": "object", "additionalProperties": _NUM}},
        ["stats"],
    ),
    "/events": _schema(
        "edge_jepa.events",
        {"kind": {"type": "string"}, "message": {"type": "string"}},
        ["kind", "message"],
    ),
}
"""Topic -> JSON schema (draft 2020-12) of its messages."""

REQUIRED_FOR_TRAINING = ("/obs", "/action")


def schema_name(topic: str) -> str:
    """MCAP schema name of a topic: ``/obs`` -> ``edge_jepa.obs``."""
    return "edge_jepa." + topic.lstrip("/")


def encode_frame(frame: np.ndarray, encoding: str = "png") -> dict:
    """Camera message fields (without ``tick``/``t``) for an RGB frame.

    Args:
        frame: ``uint8 [H, W, 3]`` RGB.
        encoding: ``"png"`` (lossless, default), ``"jpeg"`` or ``"rgb8"`` (raw bytes).
    Returns:
        ``{"width", "height", "encoding", "data"}`` with ``data`` base64 text.
    Raises:
        ValueError: wrong shape/dtype or unknown encoding.
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
    if encoding == "rgb8":
        raw = np.ascontiguousarray(frame).tobytes()
    elif encoding in ("png", "jpeg"):
        ext = ".png" if encoding == "png" else ".jpg"
        ok, buf = cv2.imencode(ext, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"OpenCV could not encode the frame as {encoding}")
        raw = buf.tobytes()
    else:
        raise ValueError(f"frame encoding must be one of {FRAME_ENCODINGS}, got {encoding!r}")
    return {
        "width": int(frame.shape[1]),
        "height": int(frame.shape[0]),
        "encoding": encoding,
        "data": base64.b64encode(raw).decode("ascii"),
    }


def decode_frame(msg: dict) -> np.ndarray:
    """Inverse of ``encode_frame``: a ``/camera`` message -> ``uint8 [H, W, 3]`` RGB.

    Raises:
        ValueError: unknown encoding, undecodable bytes, or size mismatch.
    """
    enc = msg.get("encoding")
    h, w = int(msg["height"]), int(msg["width"])
    raw = base64.b64decode(msg["data"], validate=True)
    if enc == "rgb8":
        if len(raw) != h * w * 3:
            raise ValueError(f"rgb8 frame has {len(raw)} bytes, expected {h}*{w}*3 = {h * w * 3}")
        return np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
    if enc in ("png", "jpeg"):
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"could not decode the {enc} camera frame")
        if img.shape[:2] != (h, w):
            raise ValueError(f"decoded frame is {img.shape[:2]}, message says {(h, w)}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown camera frame encoding {enc!r}; expected one of {FRAME_ENCODINGS}")
