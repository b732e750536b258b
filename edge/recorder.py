"""MCAP flight recorder: every control tick on the channels of docs/FLIGHT_LOG.md.

The file is chunked (zstd) and the chunk in progress is closed and written to the OS every
``flush_period_s`` (default 0.5 s) or when it grows past ``chunk_size`` bytes, so a process
killed with ``kill -9`` loses at most the messages of the last period. A background thread
``fsync``s the file at the same period so that data also survives a power cut (fsync is kept
off the control loop's thread). A file cut short this way has no MCAP summary or footer;
:func:`read_flight_log` reads it up to the last complete chunk.

Messages are JSON (``allow_nan=False``): NaN and infinities become ``null``; numpy arrays and
scalars become lists and numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mcap.exceptions import McapError
from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from edge import __version__
from edge.sim.flight_log import CHANNELS, MESSAGE_ENCODING, SCHEMA_ENCODING, SCHEMA_VERSION, schema_name


def to_jsonable(value: Any) -> Any:
    """Plain JSON data from numpy arrays/scalars, tuples and floats; non-finite floats -> None."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(float(value))
        return value.tolist()
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class FlightRecorder:
    """Writes one run to ``path`` (``.mcap``).

    Args:
        path: output file; its folder is created.
        metadata: values of the ``edge_jepa`` metadata record besides ``flight_log_version``,
            ``created_by`` and ``start_time_utc`` (e.g. ``rate_hz``, ``device``, ``bundle``);
            converted to strings.
        normalisation: the bundle manifest's ``normalisation`` dict (values JSON-encoded).
        flush_period_s: chunk close + flush (and background fsync) period, seconds.
        chunk_size: bytes after which a chunk is closed early.
        clock: monotonic clock used for the flush period (injectable for tests).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None,
                 normalisation: dict[str, Any] | None = None, flush_period_s: float = 0.5,
                 chunk_size: int = 256 * 1024, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        self._writer.start(profile="", library=f"edge-run {__version__}")
        self._clock = clock
        self._period = float(flush_period_s)
        self._next_flush = clock() + self._period
        self._lock = threading.Lock()  # writer is used by the loop thread and close() from a signal path
        self._channels: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self.messages = 0
        self.bytes_flushed = 0
        for topic, schema in CHANNELS.items():
            sid = self._writer.register_schema(schema_name(topic), SCHEMA_ENCODING,
                                               json.dumps(schema).encode("utf-8"))
            self._channels[topic] = self._writer.register_channel(topic, MESSAGE_ENCODING, sid)
            self._seq[topic] = 0
        meta = {
            "flight_log_version": str(SCHEMA_VERSION),
            "created_by": f"edge-run {__version__}",
            "start_time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }
        meta.update({k: str(v) for k, v in (metadata or {}).items() if v is not None})
        self._writer.add_metadata("edge_jepa", meta)
        if normalisation:
            self._writer.add_metadata("normalisation", {k: json.dumps(to_jsonable(v))
                                                        for k, v in normalisation.items()})
        self._closed = False
        self._stop_sync = threading.Event()
        self._flush_locked()
        self._sync_thread = threading.Thread(target=self._sync_worker, name="recorder-fsync", daemon=True)
        self._sync_thread.start()

    def write(self, topic: str, tick: int, t: float, fields: dict[str, Any]) -> None:
        """Write one message on ``topic`` (a channel of docs/FLIGHT_LOG.md).

        Args:
            topic: e.g. ``"/obs"``.
            tick: control tick counter (>= 0).
            t: seconds since the start of the run (loop clock).
            fields: the channel's fields besides ``tick`` and ``t``.
        Raises:
            KeyError: unknown topic.
            RuntimeError: the recorder is closed.
        """
        if topic not in self._channels:
            raise KeyError(f"unknown flight-log topic {topic!r}; channels: {sorted(self._channels)}")
        payload = {"tick": int(tick), "t": to_jsonable(float(t))}
        payload.update(to_jsonable(fields))
        data = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
        now_ns = time.time_ns()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"flight recorder {self.path} is closed")
            self._writer.add_message(self._channels[topic], log_time=now_ns, data=data,
                                     publish_time=now_ns, sequence=self._seq[topic])
            self._seq[topic] += 1
            self.messages += 1

    def maybe_flush(self) -> bool:
        """Close the current chunk and hand it to the OS if the flush period has elapsed.

        Called by the loop once per tick after the command is sent. Returns True if it flushed.
        """
        now = self._clock()
        if now < self._next_flush:
            return False
        with self._lock:
            if self._closed:
                return False
            self._flush_locked()
        self._next_flush = now + self._period
        return True

    def _flush_locked(self) -> None:
        self._writer.flush()
        self.bytes_flushed = self._file.tell()

    def _sync_worker(self) -> None:
        fd = self._file.fileno()
        while not self._stop_sync.wait(self._period):
            try:
                os.fsync(fd)
            except (OSError, ValueError):
                return

    def close(self) -> None:
        """Finish the file (summary, footer), fsync and close. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_sync.set()
            try:
                self._writer.finish()
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
        self._sync_thread.join(timeout=2.0)

    def __enter__(self) -> FlightRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FlightLog:
    """What :func:`read_flight_log` found in a file.

    Attributes:
        messages: topic -> list of decoded JSON messages, in file order.
        metadata: metadata record name -> dict of strings.
        complete: False when the file ends before the MCAP footer (crash, ``kill -9``).
        schemas: topic -> (schema name, schema encoding).
    """

    messages: dict[str, list[dict]]
    metadata: dict[str, dict[str, str]]
    complete: bool
    schemas: dict[str, tuple[str, str]]


def iter_records(path: str | Path) -> Iterator[tuple[Any, bool]]:
    """Yield the MCAP records of a possibly truncated file; stop quietly at a cut-off tail."""
    with open(path, "rb") as f:
        reader = StreamReader(f, validate_crcs=True)
        it = reader.records
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except (McapError, EOFError, ValueError, OSError, AssertionError):
                return  # truncated or torn last record: everything before it was yielded
            yield rec, True


def read_flight_log(path: str | Path) -> FlightLog:
    """Read a flight log written by :class:`FlightRecorder`, tolerating a truncated tail.

    Raises:
        ValueError: the file is not an MCAP file (bad magic), naming the path.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"\x89MCAP0\r\n":
            raise ValueError(f"{path} is not an MCAP file (bad magic); expected a flight log from edge-run")
    channels: dict[int, Channel] = {}
    schemas: dict[int, Schema] = {}
    messages: dict[str, list[dict]] = {}
    metadata: dict[str, dict[str, str]] = {}
    complete = False
    from mcap.records import Footer

    for rec, _ in iter_records(path):
        if isinstance(rec, Schema):
            schemas[rec.id] = rec
        elif isinstance(rec, Channel):
            channels[rec.id] = rec
        elif isinstance(rec, Message):
            ch = channels.get(rec.channel_id)
            if ch is not None:
                messages.setdefault(ch.topic, []).append(json.loads(rec.data))
        elif isinstance(rec, Metadata):
            metadata[rec.name] = dict(rec.metadata)
        elif isinstance(rec, Footer):
            complete = True
    topic_schemas = {ch.topic: (schemas[ch.schema_id].name, schemas[ch.schema_id].encoding)
                     for ch in channels.values() if ch.schema_id in schemas}
    return FlightLog(messages=messages, metadata=metadata, complete=complete, schemas=topic_schemas)
