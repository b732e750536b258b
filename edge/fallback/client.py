"""OpenAI-compatible chat client for the LLM fallback, with structured output and a strict reply check.

Works with any server that speaks ``POST /v1/chat/completions`` (llama.cpp server, Ollama,
vLLM, a cloud API). The request carries ``response_format`` = ``json_schema`` restricting the
reply to ``{"action": <enum>, "duration_s": <enum>}``; because a server may ignore the schema
(or its grammar may not enforce everything), :func:`validate_reply` checks the reply again on
our side and rejects anything else with a reason.

Robustness: per-attempt wall-clock timeout (connect + send + read), bounded retries with
exponential backoff for transport errors and HTTP 429/5xx, a response size bound, and a
:class:`CircuitBreaker` that stops calling a server after K consecutive failed requests and
lets one probe through after a cool-down.

The API key is read once from the environment variable named in the config; it is sent only
in the ``Authorization`` header and never appears in a repr, a log line or an error message.

Standard library only (http.client); never imports torch.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge.fallback.base import ACTIONS, MacroAction

#: Reply keys, exactly.
REPLY_KEYS: tuple[str, str] = ("action", "duration_s")


class FallbackRequestError(Exception):
    """A request gave no usable action.

    Attributes:
        category: a short machine-readable cause (``timeout``, ``connection``, ``http_status``,
            ``circuit_open``, ``bad_response``, ``too_large``, ``invalid_json``, ``schema``,
            ``unknown_action``, ``bad_duration``, ``non_finite``, ``echo``, ``aborted``).
        detail: words for people; never contains the API key.
        reply_text: the model's reply text when one came back, else None.
    """

    def __init__(self, category: str, detail: str, reply_text: str | None = None) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail
        self.reply_text = reply_text


class ReplyRejected(FallbackRequestError):
    """The server answered, but the reply is not a valid macro-action."""


@dataclass(frozen=True)
class ClientConfig:
    """How to reach an OpenAI-compatible chat endpoint and how hard to try.

    ``base_url`` may be the server root (``http://127.0.0.1:8080``), the API root
    (``.../v1``) or the full endpoint (``.../v1/chat/completions``).
    """

    base_url: str
    model: str = "local"  # sent as "model"; llama.cpp ignores it, cloud APIs need it
    api_key_env: str | None = None  # NAME of the environment variable holding the key (never the key)
    timeout_s: float = 10.0  # wall-clock limit per attempt: connect + send + read
    max_retries: int = 2  # extra attempts after a transport error or HTTP 429/5xx
    backoff_initial_s: float = 0.25  # first retry delay; doubles each retry
    backoff_max_s: float = 2.0  # cap on one retry delay
    breaker_failures: int = 3  # consecutive failed requests that open the circuit
    breaker_cooldown_s: float = 15.0  # open -> half-open (one probe allowed) after this long
    max_tokens: int = 300  # generation budget; enough for a small model to close the JSON
    temperature: float = 0.0  # deterministic choice
    durations_s: tuple[float, ...] = (0.5, 1.0, 2.0)  # the only durations a reply may pick, s
    use_response_format: bool = True  # send the json_schema; False only to test our own checks
    max_response_bytes: int = 256 * 1024  # HTTP body bound; larger -> rejected, not parsed
    max_reply_chars: int = 512  # reply content bound; a valid reply is ~40 chars

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"ClientConfig.base_url must be an http(s) URL like http://127.0.0.1:8080, got {self.base_url!r}"
            )
        if parts.username or parts.password:
            raise ValueError(
                "ClientConfig.base_url must not carry credentials; put the API key in an environment "
                "variable and name it in api_key_env"
            )
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise ValueError("ClientConfig.api_key_env must be an environment variable name or None")
        for name in ("timeout_s", "breaker_cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ClientConfig.{name} must be finite and > 0, got {value!r}")
        for name in ("backoff_initial_s", "backoff_max_s", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ClientConfig.{name} must be finite and >= 0, got {value!r}")
        if self.max_retries < 0:
            raise ValueError(f"ClientConfig.max_retries must be >= 0, got {self.max_retries}")
        if self.breaker_failures < 1:
            raise ValueError(f"ClientConfig.breaker_failures must be >= 1, got {self.breaker_failures}")
        if self.max_tokens < 16:
            raise ValueError(f"ClientConfig.max_tokens must be >= 16, got {self.max_tokens}")
        if not self.durations_s or any(
            not (math.isfinite(d) and 0 < d <= 60) for d in self.durations_s
        ):
            raise ValueError(
                f"ClientConfig.durations_s must be a non-empty tuple of finite durations in (0, 60] s, got {self.durations_s!r}"
            )
        if self.max_response_bytes < 1024 or self.max_reply_chars < 64:
            raise ValueError(
                "ClientConfig.max_response_bytes must be >= 1024 and max_reply_chars >= 64"
            )


def reply_schema(durations_s: Sequence[float]) -> dict:
    """JSON schema of a valid reply: exactly ``action`` (enum) and ``duration_s`` (enum, seconds)."""
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "duration_s": {"type": "number", "enum": [float(d) for d in durations_s]},
        },
        "required": list(REPLY_KEYS),
        "additionalProperties": False,
    }


def response_format(durations_s: Sequence[float]) -> dict:
    """The OpenAI ``response_format`` field restricting the reply to :func:`reply_schema`."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "macro_action", "strict": True, "schema": reply_schema(durations_s)},
    }


def _reject_constant(name: str) -> float:
    raise ReplyRejected("non_finite", f"reply contains the non-finite number {name}")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise ReplyRejected("non_finite", f"reply contains a huge integer ({len(text)} digits)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ReplyRejected("non_finite", f"reply number {text[:32]!r} overflows to {value}")
    return value


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ReplyRejected("schema", f"reply object repeats a key: {sorted(keys)}")
    return dict(pairs)


def _echo_fragments(prompt: str, min_len: int = 16) -> list[str]:
    """Distinctive lines of the prompt; a valid reply contains none of them."""
    return [line.strip() for line in prompt.splitlines() if len(line.strip()) >= min_len]


def validate_reply(
    text: str,
    *,
    durations_s: Sequence[float],
    prompt: str,
    max_chars: int = 512,
) -> MacroAction:
    """Turn a model reply into a :class:`MacroAction` or raise :class:`ReplyRejected`.

    Accepts only a JSON object with exactly the keys ``action`` and ``duration_s``, ``action``
    in :data:`ACTIONS`, ``duration_s`` a finite number equal to one of ``durations_s``. Rejects
    replies longer than ``max_chars``, replies that echo a line of ``prompt``, NaN/Infinity,
    numbers that overflow, huge integers, duplicate keys, and anything that is not JSON.
    """
    if not isinstance(text, str):
        raise ReplyRejected("bad_response", f"reply content is {type(text).__name__}, not text")
    if len(text) > max_chars:
        raise ReplyRejected("too_large", f"reply has {len(text)} chars > {max_chars}", text)
    for fragment in _echo_fragments(prompt):
        if fragment in text:
            raise ReplyRejected("echo", f"reply echoes the prompt ({fragment[:40]!r})", text)
    try:
        obj = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
            object_pairs_hook=_unique_object,
        )
    except ReplyRejected as e:
        raise ReplyRejected(e.category, e.detail, text) from None
    except (ValueError, RecursionError) as e:
        raise ReplyRejected("invalid_json", f"reply is not JSON ({str(e)[:80]})", text) from None
    if not isinstance(obj, dict):
        raise ReplyRejected("schema", f"reply is a JSON {type(obj).__name__}, not an object", text)
    if set(obj) != set(REPLY_KEYS):
        raise ReplyRejected(
            "schema", f"reply keys {sorted(obj)[:8]} != {sorted(REPLY_KEYS)}", text
        )
    action = obj["action"]
    if not isinstance(action, str) or action not in ACTIONS:
        raise ReplyRejected("unknown_action", f"action {str(action)[:40]!r} not in {ACTIONS}", text)
    duration = obj["duration_s"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ReplyRejected("bad_duration", f"duration_s {str(duration)[:40]!r} is not a number", text)
    if not math.isfinite(duration):
        raise ReplyRejected("non_finite", f"duration_s {duration} is not finite", text)
    matches = [d for d in durations_s if abs(float(duration) - d) <= 1e-9]
    if not matches:
        raise ReplyRejected(
            "bad_duration", f"duration_s {duration!r} not one of {tuple(durations_s)}", text
        )
    return MacroAction(action=action, duration_s=float(matches[0]))


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s``.

    In half-open state exactly one probe is allowed; its success closes the circuit, its failure
    opens it again for another cool-down. Thread-safe.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probe_out = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if self._clock() - self._opened_at >= self._cooldown_s:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        """True if a request may go out now (in half-open state: only the first caller)."""
        with self._lock:
            state = self._state_locked()
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return True
            return False

    def seconds_until_probe(self) -> float:
        """Seconds until the next probe is allowed; 0 when closed or half-open."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._cooldown_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._opened_at = None
            self._probe_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            was_open = self._opened_at is not None
            if was_open or self._consecutive >= self._threshold:
                if not was_open:
                    self.times_opened += 1
                self._opened_at = self._clock()
                self._probe_out = False


_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass
class _Endpoint:
    scheme: str
    host: str
    port: int
    path: str


def _endpoint(base_url: str) -> _Endpoint:
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = path + ("/chat/completions" if path.endswith("/v1") else "/v1/chat/completions")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _Endpoint(parts.scheme, parts.hostname or "", port, path)


class ChatClient:
    """Sends one situation prompt and returns the validated :class:`MacroAction`.

    Blocking; :class:`edge.fallback.llm.LLMFallback` calls it from its worker thread.

    Args:
        config: the endpoint and limits.
        clock, sleep: injectable for tests (monotonic seconds, and a sleep function).
    Raises:
        ValueError: ``config.api_key_env`` names a variable that is not set.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._endpoint = _endpoint(config.base_url)
        self._clock = clock
        self._sleep = sleep
        self._api_key: str | None = None
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(
                    f"environment variable {config.api_key_env} (ClientConfig.api_key_env) is not set; "
                    f"export {config.api_key_env}=<your key> or leave api_key_env unset for a local server"
                )
            self._api_key = key
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s, clock)
        self.attempts = 0  # HTTP attempts made, retries included
        self.retries = 0  # of which retries
        self._sock_lock = threading.Lock()
        self._sock: socket.socket | None = None  # socket of the request in flight, for abort()
        self._aborted = False

    def abort(self) -> None:
        """Cancel the request in flight (if any) and refuse all later ones; callable from any thread.

        Shuts the in-flight socket down, so the blocked worker's read returns at once (it raises
        :class:`FallbackRequestError` ``aborted``) and the server sees the client go away (llama.cpp
        then cancels the generation). No retry follows an abort. Never blocks.
        """
        with self._sock_lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed or never connected
                pass

    def _check_aborted(self) -> None:
        if self._aborted:
            raise FallbackRequestError("aborted", "the fallback was closed while this request was in flight")

    def __repr__(self) -> str:
        key = "<from $%s>" % self.config.api_key_env if self._api_key else "none"
        return f"ChatClient(url={self.config.base_url!r}, model={self.config.model!r}, api_key={key})"

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def request_body(self, messages: list[dict[str, str]]) -> dict:
        """The JSON body sent to the endpoint (without credentials)."""
        body: dict = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "stream": False,
        }
        if self.config.use_response_format:
            body["response_format"] = response_format(self.config.durations_s)
        return body

    def complete(self, messages: list[dict[str, str]], prompt_for_echo: str) -> tuple[MacroAction, str]:
        """Send ``messages``; return (accepted macro-action, raw reply text).

        Raises:
            FallbackRequestError: transport failure after all retries, circuit open, bad HTTP
                response; :class:`ReplyRejected` when the reply is not a valid macro-action.
        """
        if not self.breaker.allow():
            raise FallbackRequestError(
                "circuit_open",
                f"{self.config.base_url} failed {self.config.breaker_failures} times in a row; "
                f"next probe in {self.breaker.seconds_until_probe():.1f} s",
            )
        self._check_aborted()
        try:
            text = self._post_with_retries(json.dumps(self.request_body(messages)).encode())
            macro = validate_reply(
                text,
                durations_s=self.config.durations_s,
                prompt=prompt_for_echo,
                max_chars=self.config.max_reply_chars,
            )
        except FallbackRequestError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return macro, text

    def _post_with_retries(self, payload: bytes) -> str:
        delay = self.config.backoff_initial_s
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.retries += 1
                self._sleep(min(delay, self.config.backoff_max_s))
                delay *= 2.0
            self._check_aborted()
            self.attempts += 1
            try:
                status, body = self._post_once(payload)
            except FallbackRequestError as e:
                if e.category in ("timeout", "connection") and attempt < self.config.max_retries:
                    continue
                raise
            if status in _RETRY_STATUS and attempt < self.config.max_retries:
                continue
            if status != 200:
                snippet = self.redact(body[:120].decode("utf-8", "replace"))
                raise FallbackRequestError("http_status", f"HTTP {status} from server: {snippet!r}")
            return self._reply_text(body)
        raise AssertionError("unreachable: the loop returns or raises")

    def _reply_text(self, body: bytes) -> str:
        try:
            doc = json.loads(body.decode("utf-8"))
            content = doc["choices"][0]["message"]["content"]
        except (ValueError, UnicodeDecodeError) as e:
            raise FallbackRequestError("bad_response", f"response body is not JSON ({str(e)[:60]})") from None
        except (KeyError, IndexError, TypeError):
            raise FallbackRequestError(
                "bad_response", "response has no choices[0].message.content"
            ) from None
        if not isinstance(content, str):
            raise FallbackRequestError("bad_response", f"message content is {type(content).__name__}, not text")
        return content

    def _post_once(self, payload: bytes) -> tuple[int, bytes]:
        ep = self._endpoint
        deadline = self._clock() + self.config.timeout_s
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if ep.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.config.timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.config.timeout_s)
        try:
            conn.connect()
            with self._sock_lock:
                self._sock = conn.sock
            self._check_aborted()  # abort() raced with connect(): it could not reach this socket
            conn.request("POST", ep.path, body=payload, headers=headers)
            self._set_remaining(conn, deadline)
            resp = conn.getresponse()
            chunks: list[bytes] = []
            total = 0
            while True:
                self._set_remaining(conn, deadline, resp)
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > self.config.max_response_bytes:
                    raise FallbackRequestError(
                        "too_large", f"response body exceeds {self.config.max_response_bytes} bytes"
                    )
                chunks.append(chunk)
            return resp.status, b"".join(chunks)
        except (socket.timeout, TimeoutError):
            self._check_aborted()
            raise FallbackRequestError(
                "timeout", f"no complete reply within {self.config.timeout_s:.1f} s"
            ) from None
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            self._check_aborted()
            raise FallbackRequestError(
                "connection", self.redact(f"{type(e).__name__} talking to {ep.host}:{ep.port}: {e}")
            ) from None
        finally:
            with self._sock_lock:
                self._sock = None
            conn.close()

    def _set_remaining(self, conn: http.client.HTTPConnection, deadline: float, resp=None) -> None:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        sock = conn.sock
        if sock is None and resp is not None and resp.fp is not None:
            raw = getattr(resp.fp, "raw", None)
            sock = getattr(raw, "_sock", None)
        if sock is not None:
            sock.settimeout(remaining)
