"""LLM fallback without a model: the hook types, the prompt, the strict reply check, and the HTTP
client/worker against a loopback fake server that returns crafted garbage."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.fallback import FallbackConfig, MacroAction, Situation, make_fallback
from edge.fallback.client import (
    ChatClient,
    CircuitBreaker,
    ClientConfig,
    FallbackRequestError,
    ReplyRejected,
    response_format,
    validate_reply,
)
from edge.fallback.llm import LLMFallback
from edge.fallback.prompt import build_messages, situation_text

DURATIONS = (0.5, 1.0, 2.0)
PROMPT = "Range readings (metres, distance to the nearest obstacle):\n  front: 0.20 m\nChoose the action now."


def _situation(**kw) -> Situation:
    base = dict(
        ranges_m=(0.2, 0.5, 1.5, float("nan"), 2.0, 2.0, 0.6, 0.25),
        goal_bearing_rad=math.radians(30.0),
        goal_distance_m=2.5,
        recent_actions=((0.3, 0.3), (-0.2, 0.2)),
        reason="predicted error 0.8 > 0.3 for 12 ticks",
    )
    base.update(kw)
    return Situation(**base)


# ----------------------------------------------------------------------------- hook types


def test_macro_action_wheel_commands_follow_the_ccw_convention():
    """turn_left drives the right wheel forward and the left back; stop is zero; speed scales."""
    assert MacroAction("forward", 1.0).wheel_command(0.4) == (0.4, 0.4)
    assert MacroAction("backward", 1.0).wheel_command(0.4) == (-0.4, -0.4)
    assert MacroAction("turn_left", 1.0).wheel_command(0.5) == (-0.5, 0.5)
    assert MacroAction("turn_right", 1.0).wheel_command(0.5) == (0.5, -0.5)
    assert MacroAction("stop", 1.0).wheel_command(1.0) == (0.0, 0.0)


@pytest.mark.parametrize(
    "action,duration", [("fly", 1.0), ("forward", 0.0), ("forward", float("nan")), ("stop", float("inf"))]
)
def test_macro_action_rejects_invalid_values(action, duration):
    """A MacroAction cannot be built with an unknown action or a non-positive/non-finite duration."""
    with pytest.raises(ValueError, match="MacroAction"):
        MacroAction(action, duration)


def test_situation_requires_eight_ranges():
    """Situation names the field when the range count is wrong."""
    with pytest.raises(ValueError, match="ranges_m"):
        Situation((1.0,) * 7, None, None, (), "x")


# ----------------------------------------------------------------------------- prompt


def test_prompt_describes_ranges_goal_actions_and_reason_in_ascii():
    """The user prompt names every direction with its reading, the goal side, recent commands and reason."""
    text = situation_text(_situation(reason="conf low \u00b0 " + "x" * 500))
    assert "front: 0.20 m" in text and "front-right: 0.25 m" in text
    assert "back-left: no reading" in text
    assert "2.50 m away, 30 degrees to the left" in text
    assert "left -0.20, right +0.20 (turning left)" in text
    assert "conf low ?" in text and "x" * 201 not in text
    text.encode("ascii")
    right = situation_text(_situation(goal_bearing_rad=math.radians(-90.0)))
    assert "90 degrees to the right" in right
    assert "Goal: unknown." in situation_text(_situation(goal_bearing_rad=None, goal_distance_m=None))
    messages = build_messages(_situation(), DURATIONS)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "turn_right" in messages[0]["content"] and "0.5, 1, 2" in messages[0]["content"]


def test_response_format_restricts_actions_and_durations():
    """The json_schema response_format enumerates the 5 actions and the configured durations only."""
    rf = response_format(DURATIONS)
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["properties"]["action"]["enum"] == ["forward", "backward", "turn_left", "turn_right", "stop"]
    assert schema["properties"]["duration_s"]["enum"] == [0.5, 1.0, 2.0]
    assert schema["additionalProperties"] is False and schema["required"] == ["action", "duration_s"]


# ----------------------------------------------------------------------------- reply validation


@pytest.mark.parametrize(
    "reply,expected",
    [
        ('{"action": "stop", "duration_s": 0.5}', MacroAction("stop", 0.5)),
        (' {\n "duration_s": 2.0, "action": "turn_right"}\n', MacroAction("turn_right", 2.0)),
        ('{"action": "forward", "duration_s": 1}', MacroAction("forward", 1.0)),
    ],
)
def test_valid_replies_become_macro_actions(reply, expected):
    """Exactly-keyed objects with enum values are accepted (integer 1 matches 1.0)."""
    assert validate_reply(reply, durations_s=DURATIONS, prompt=PROMPT) == expected


@pytest.mark.parametrize(
    "reply,category",
    [
        ("turn left for a second please", "invalid_json"),
        ('{"action": "forward", "duration_s": 1.0', "invalid_json"),
        ("", "invalid_json"),
        ('{"action": "fly", "duration_s": 1.0}', "unknown_action"),
        ('{"action": 3, "duration_s": 1.0}', "unknown_action"),
        ('{"action": "forward", "duration_s": NaN}', "non_finite"),
        ('{"action": "forward", "duration_s": Infinity}', "non_finite"),
        ('{"action": "forward", "duration_s": -Infinity}', "non_finite"),
        ('{"action": "forward", "duration_s": 1e999}', "non_finite"),
        ('{"action": "forward", "duration_s": 1000000000000000000000000000000}', "non_finite"),
        ('{"action": "forward", "duration_s": 3.0}', "bad_duration"),
        ('{"action": "forward", "duration_s": -1.0}', "bad_duration"),
        ('{"action": "forward", "duration_s": true}', "bad_duration"),
        ('{"action": "forward", "duration_s": "1.0"}', "bad_duration"),
        ('{"action": "forward"}', "schema"),
        ('{"action": "forward", "duration_s": 1.0, "speed": 9}', "schema"),
        ('{"action": "forward", "action": "stop", "duration_s": 1.0}', "schema"),
        ('["forward", 1.0]', "schema"),
        ('{"action": "forward", "duration_s": 1.0}' + " " * 600, "too_large"),
        ("Range readings (metres, distance to the nearest obstacle):\n  front: 0.20 m", "echo"),
    ],
)
def test_garbage_replies_are_rejected_with_a_category(reply, category):
    """Every form of garbage raises ReplyRejected with the expected cause and keeps the reply text."""
    with pytest.raises(ReplyRejected) as info:
        validate_reply(reply, durations_s=DURATIONS, prompt=PROMPT)
    assert info.value.category == category
    assert info.value.reply_text == reply or category == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["action", "duration_s", "x"]), c, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps(v, allow_nan=True))))
def test_validate_reply_never_accepts_an_invalid_macro(text):
    """Any text either raises ReplyRejected or yields an action in the enum and a listed duration."""
    try:
        macro = validate_reply(text, durations_s=DURATIONS, prompt=PROMPT)
    except ReplyRejected:
        return
    assert macro.action in ("forward", "backward", "turn_left", "turn_right", "stop")
    assert macro.duration_s in DURATIONS


# ----------------------------------------------------------------------------- circuit breaker


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_circuit_breaker_opens_after_k_failures_and_half_opens_after_cooldown():
    """closed -> open after K failures; one probe after the cool-down; success closes, failure reopens."""
    clock = FakeClock()
    br = CircuitBreaker(failures=3, cooldown_s=10.0, clock=clock)
    for _ in range(2):
        assert br.allow()
        br.record_failure()
    assert br.state == "closed"
    br.record_failure()
    assert br.state == "open" and not br.allow() and br.times_opened == 1
    clock.t += 9.9
    assert not br.allow()
    clock.t += 0.2
    assert br.state == "half_open"
    assert br.allow() and not br.allow()  # exactly one probe
    br.record_failure()
    assert br.state == "open" and not br.allow()
    clock.t += 10.0
    assert br.allow()
    br.record_success()
    assert br.state == "closed" and br.allow() and br.allow()


# ----------------------------------------------------------------------------- fake HTTP server


def _chat_body(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class FakeServer:
    """Loopback HTTP server; ``script`` is a list of responders, one per request (last one repeats).

    A responder is a callable (handler) -> None that writes the whole response.
    """

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(n))}
                )
                index = min(len(outer.requests) - 1, len(outer.script) - 1)
                outer.script[index](self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, body: bytes):
    def respond(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return respond


def content(text: str):
    return reply(200, _chat_body(text))


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def _client(url: str, sleeps: list | None = None, clock=time.monotonic, **kw) -> ChatClient:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("max_retries", 0)
    cfg = ClientConfig(base_url=url, **kw)
    return ChatClient(cfg, clock=clock, sleep=(sleeps.append if sleeps is not None else time.sleep))


def _ask(client: ChatClient):
    messages = build_messages(_situation(), client.config.durations_s)
    return client.complete(messages, "\n".join(m["content"] for m in messages))


def test_client_sends_schema_and_accepts_valid_reply(server):
    """A valid reply becomes a MacroAction; the request carries the json_schema and max_tokens >= 300."""
    server.script = [content('{"action": "turn_left", "duration_s": 1.0}')]
    macro, text = _ask(_client(server.url + "/v1"))
    assert macro == MacroAction("turn_left", 1.0) and "turn_left" in text
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["response_format"] == response_format(DURATIONS)
    assert req["body"]["max_tokens"] >= 300 and req["body"]["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    "responder,category",
    [
        (reply(200, b"<html>not json</html>"), "bad_response"),
        (reply(200, b'{"choices": []}'), "bad_response"),
        (reply(200, b'{"choices": [{"message": {"content": null}}]}'), "bad_response"),
        (content("I think you should turn left."), "invalid_json"),
        (content('{"action": "teleport", "duration_s": 1.0}'), "unknown_action"),
        (content('{"action": "forward", "duration_s": NaN}'), "non_finite"),
        (content('{"action": "forward", "duration_s": 1e308000}'), "non_finite"),
        (content("Range readings (metres, distance to the nearest obstacle):"), "echo"),
        (reply(200, _chat_body("x" * 300_000)), "too_large"),
        (reply(400, b'{"error": "bad request"}'), "http_status"),
        (reply(500, b"internal error"), "http_status"),
    ],
)
def test_client_rejects_garbage_from_server(server, responder, category):
    """Garbage of every kind from the server raises FallbackRequestError with the matching category."""
    server.script = [responder]
    with pytest.raises(FallbackRequestError) as info:
        _ask(_client(server.url))
    assert info.value.category == category


def test_client_retries_5xx_with_exponential_backoff_then_succeeds(server):
    """Two HTTP 500s then a valid reply: three attempts, backoff delays double (0.25, 0.5 s)."""
    server.script = [reply(500, b"x"), reply(503, b"x"), content('{"action": "stop", "duration_s": 2.0}')]
    sleeps: list[float] = []
    client = _client(server.url, sleeps, max_retries=3, backoff_initial_s=0.25)
    macro, _ = _ask(client)
    assert macro == MacroAction("stop", 2.0)
    assert client.attempts == 3 and sleeps == [0.25, 0.5]


def test_client_does_not_retry_client_errors(server):
    """HTTP 400 is final: one attempt, no sleep."""
    server.script = [reply(400, b"no")]
    sleeps: list[float] = []
    client = _client(server.url, sleeps, max_retries=3)
    with pytest.raises(FallbackRequestError, match="HTTP 400"):
        _ask(client)
    assert client.attempts == 1 and sleeps == []


def test_client_times_out_on_a_server_that_trickles_a_valid_reply(server):
    """The per-attempt timeout is wall-clock: a server dripping a (valid) body byte by byte past the
    limit is a timeout, not an accepted reply (a socket-idle timeout alone would accept it)."""
    body = _chat_body('{"action": "forward", "duration_s": 0.5}')

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if server.release.wait(0.02):
                return
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()

    server.script = [trickle]
    with pytest.raises(FallbackRequestError) as info:
        _ask(_client(server.url, timeout_s=0.3))
    assert info.value.category == "timeout"


def test_connection_refused_opens_the_circuit_breaker():
    """A dead server: each request fails with 'connection' (after retries), then the breaker opens
    and later requests fail fast with 'circuit_open' without touching the network."""
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        dead_url = f"http://127.0.0.1:{probe.server_address[1]}"
    clock = FakeClock()
    sleeps: list[float] = []
    client = _client(dead_url, sleeps, clock=clock, max_retries=1, breaker_failures=2, breaker_cooldown_s=5.0)
    for _ in range(2):
        with pytest.raises(FallbackRequestError) as info:
            _ask(client)
        assert info.value.category == "connection"
    assert client.attempts == 4 and client.breaker.state == "open"
    with pytest.raises(FallbackRequestError) as info:
        _ask(client)
    assert info.value.category == "circuit_open" and client.attempts == 4
    clock.t += 5.0
    with pytest.raises(FallbackRequestError) as info:
        _ask(client)  # the half-open probe goes out and fails
    assert info.value.category == "connection" and client.attempts == 6
    assert client.breaker.state == "open"


def test_api_key_comes_from_env_is_sent_and_never_shown(server, monkeypatch):
    """The key is read from the named variable, sent as a Bearer token, absent from repr and errors."""
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("EDGE_TEST_LLM_KEY", secret)
    server.script = [reply(401, json.dumps({"error": f"invalid key {secret}"}).encode())]
    client = _client(server.url, api_key_env="EDGE_TEST_LLM_KEY")
    assert secret not in repr(client) and "EDGE_TEST_LLM_KEY" in repr(client)
    with pytest.raises(FallbackRequestError) as info:
        _ask(client)
    assert secret not in str(info.value) and "***" in str(info.value)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    fb = LLMFallback(client)
    assert secret not in repr(fb)
    fb.close()


def test_missing_api_key_variable_is_a_clear_error(monkeypatch):
    """Naming an unset variable fails at construction and names the variable, not a value."""
    monkeypatch.delenv("EDGE_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="EDGE_TEST_MISSING_KEY"):
        ChatClient(ClientConfig(base_url="http://127.0.0.1:9", api_key_env="EDGE_TEST_MISSING_KEY"))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "http://user:pw@host:1"}, "api_key_env"),
        ({"base_url": "http://h:1", "timeout_s": 0.0}, "timeout_s"),
        ({"base_url": "http://h:1", "durations_s": (1.0, float("inf"))}, "durations_s"),
        ({"base_url": "http://h:1", "breaker_failures": 0}, "breaker_failures"),
    ],
)
def test_client_config_validation_names_the_field(kwargs, field):
    """Bad ClientConfig values raise ValueError naming the field to fix."""
    with pytest.raises(ValueError, match=field):
        ClientConfig(**kwargs)


# ----------------------------------------------------------------------------- LLMFallback worker


def _wait_event(fb: LLMFallback, timeout_s: float = 10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        event = fb.poll()
        if event is not None:
            return event
        time.sleep(0.005)
    raise AssertionError("no fallback event within the wait")


def test_submit_and_poll_do_not_wait_for_a_blocked_server(server):
    """While the server is provably blocked inside the request (it waits on an Event the test holds),
    submit() has returned True, poll() returns None, a second submit() is refused, and the
    reply arrives only after the test releases the server."""

    def blocked(h):
        server.entered.set()
        server.release.wait(10.0)
        content('{"action": "backward", "duration_s": 0.5}')(h)

    server.script = [blocked]
    fb = LLMFallback(_client(server.url, timeout_s=20.0))
    try:
        assert fb.submit(_situation()) is True
        assert server.entered.wait(5.0)
        assert not server.release.is_set()
        assert fb.in_flight and fb.poll() is None
        assert fb.submit(_situation()) is False and fb.stats.refused_busy == 1
        server.release.set()
        event = _wait_event(fb)
        assert event.macro == MacroAction("backward", 0.5) and event.rejected_reason is None
        assert event.request_id == 1 and "front: 0.20 m" in event.prompt and event.latency_s > 0
        assert not fb.in_flight and fb.poll() is None
        assert fb.stats.accepted == 1 and fb.stats.submitted == 1
    finally:
        fb.close()


def test_fallback_counts_rejections_by_reason_and_recovers(server):
    """Garbage replies become rejection events (reason, reply text) counted by category; the worker
    keeps serving and a later valid reply is accepted."""
    server.script = [
        content("not json"),
        content('{"action": "jump", "duration_s": 1.0}'),
        content('{"action": "forward", "duration_s": Infinity}'),
        content('{"action": "turn_right", "duration_s": 0.5}'),
    ]
    fb = LLMFallback(_client(server.url, breaker_failures=10))
    try:
        events = []
        for _ in range(4):
            assert fb.submit(_situation())
            events.append(_wait_event(fb))
        assert [e.rejected_reason.split(":")[0] for e in events[:3]] == ["invalid_json", "unknown_action", "non_finite"]
        assert events[0].reply_text == "not json" and events[0].macro is None
        assert events[3].macro == MacroAction("turn_right", 0.5)
        assert fb.stats.rejected == 3 and fb.stats.accepted == 1
        assert fb.stats.rejected_by_reason == {"invalid_json": 1, "unknown_action": 1, "non_finite": 1}
    finally:
        fb.close()


def test_close_stops_worker_refuses_submits_and_runs_on_close_once(server):
    """close() is idempotent, calls on_close once, and submit() afterwards returns False."""
    calls = []
    fb = LLMFallback(_client(server.url), on_close=lambda: calls.append(1))
    fb.close()
    fb.close()
    assert calls == [1] and fb.submit(_situation()) is False


def test_make_fallback_none_and_url():
    """--llm none gives no fallback; a URL gives an LLMFallback pointed at it; junk is refused."""
    assert make_fallback(FallbackConfig(llm="none")) is None
    fb = make_fallback(FallbackConfig(llm="http://127.0.0.1:9/v1", timeout_s=1.0))
    try:
        assert isinstance(fb, LLMFallback) and fb.client.config.base_url == "http://127.0.0.1:9/v1"
    finally:
        fb.close()
    with pytest.raises(ValueError, match="FallbackConfig.llm"):
        FallbackConfig(llm="gpt4")
