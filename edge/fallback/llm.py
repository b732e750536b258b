"""`LLMFallback`: the :class:`Fallback` hook backed by an OpenAI-compatible chat server.

One daemon worker thread does the blocking HTTP work; :meth:`LLMFallback.submit` only hands a
:class:`Situation` over (a lock and a queue put) and :meth:`LLMFallback.poll` only pops a
finished :class:`FallbackEvent`, so neither ever waits on the network. At most one request is
in flight. Every finished request becomes exactly one event (accepted macro-action or
rejection reason, with latency) and is counted in :class:`FallbackStats`.

Never imports torch.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.fallback.base import Fallback, FallbackEvent, Situation
from edge.fallback.client import ChatClient, FallbackRequestError
from edge.fallback.prompt import build_messages


@dataclass
class FallbackStats:
    """Counters since construction (read them from any thread; values are plain ints)."""

    submitted: int = 0  # requests started
    refused_busy: int = 0  # submit() calls refused because one was in flight (or closed)
    accepted: int = 0  # requests that produced a macro-action
    rejected: int = 0  # requests that produced none
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # category -> count
    last_latency_s: float | None = None  # latency of the newest finished request

    def as_dict(self) -> dict:
        return {
            "submitted": self.submitted,
            "refused_busy": self.refused_busy,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "last_latency_s": self.last_latency_s,
        }


_STOP = object()


class LLMFallback(Fallback):
    """Asks a chat model for a macro-action in a worker thread.

    Args:
        client: the configured :class:`ChatClient` (its breaker and retries apply).
        on_close: called once by :meth:`close` after the worker stops (e.g. to stop an
            embedded server this fallback owns).
        clock: monotonic seconds, for latencies.
    """

    CLOSE_JOIN_S = 1.0  # longest close() waits for the worker thread, s

    def __init__(
        self,
        client: ChatClient,
        *,
        on_close: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stats = FallbackStats()
        self._on_close = on_close
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._events: collections.deque[FallbackEvent] = collections.deque()
        self._in_flight = False
        self._closed = False
        self._next_id = 1
        self._worker = threading.Thread(target=self._run, name="llm-fallback", daemon=True)
        self._worker.start()

    def __repr__(self) -> str:
        return f"LLMFallback({self.client!r}, in_flight={self._in_flight}, closed={self._closed})"

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    @property
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (see :class:`edge.fallback.client.CircuitBreaker`)."""
        return self.client.breaker.state

    def submit(self, situation: Situation) -> bool:
        with self._lock:
            if self._closed or self._in_flight:
                self.stats.refused_busy += 1
                return False
            self._in_flight = True
            request_id = self._next_id
            self._next_id += 1
            self.stats.submitted += 1
        self._requests.put((request_id, situation, self._clock()))
        return True

    def poll(self) -> FallbackEvent | None:
        try:
            return self._events.popleft()
        except IndexError:
            return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._requests.put(_STOP)
        # Cancel a request in flight: abort() shuts its socket down, so the worker's blocked read
        # returns at once and the server sees the client leave (llama.cpp then stops generating).
        # Without this an embedded server's stop would wait for the whole generation.
        self.client.abort()
        # Bounded: the worker is a daemon; if it is still busy (e.g. inside DNS resolution, which a
        # socket shutdown cannot interrupt) it is abandoned, and its request dies with its own
        # per-attempt timeout (ClientConfig.timeout_s). Never hold the control loop's shutdown.
        self._worker.join(timeout=self.CLOSE_JOIN_S)
        if self._on_close is not None:
            self._on_close()

    def _run(self) -> None:
        while True:
            item = self._requests.get()
            if item is _STOP:
                return
            request_id, situation, t_submit = item
            event = self._handle(request_id, situation, t_submit)
            with self._lock:
                if event.macro is not None:
                    self.stats.accepted += 1
                else:
                    category = (event.rejected_reason or "unknown").split(":", 1)[0]
                    self.stats.rejected += 1
                    self.stats.rejected_by_reason[category] = self.stats.rejected_by_reason.get(category, 0) + 1
                self.stats.last_latency_s = event.latency_s
                if not self._closed:
                    self._events.append(event)
                self._in_flight = False

    def _handle(self, request_id: int, situation: Situation, t_submit: float) -> FallbackEvent:
        messages = build_messages(situation, self.client.config.durations_s)
        prompt = messages[-1]["content"]
        echo_source = "\n".join(m["content"] for m in messages)
        try:
            macro, reply = self.client.complete(messages, echo_source)
        except FallbackRequestError as e:
            return FallbackEvent(
                request_id=request_id,
                prompt=prompt,
                reply_text=e.reply_text,
                latency_s=self._clock() - t_submit,
                macro=None,
                rejected_reason=str(e),
            )
        except Exception as e:  # a bug must not kill the worker and leave in_flight stuck
            return FallbackEvent(
                request_id=request_id,
                prompt=prompt,
                reply_text=None,
                latency_s=self._clock() - t_submit,
                macro=None,
                rejected_reason=f"internal: {type(e).__name__}: {self.client.redact(str(e))[:200]}",
            )
        return FallbackEvent(
            request_id=request_id,
            prompt=prompt,
            reply_text=reply,
            latency_s=self._clock() - t_submit,
            macro=macro,
            rejected_reason=None,
        )

