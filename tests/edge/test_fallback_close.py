"""Closing the LLM fallback is bounded even while a request is in flight.

Seen before the fix: ``EmbeddedLLMServer.close()`` (via ``LLMFallback.close()``) blocked for more
than 10 minutes when a request was still being generated, so ``edge-run --llm embedded`` hung
on exit. Each test calls ``close()`` in a helper thread and joins it with a generous bound; a
hung close leaves the thread alive, which fails the test (no timing assertion).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from edge.fallback.base import Situation
from edge.fallback.client import ChatClient, ClientConfig
from edge.fallback.llm import LLMFallback

SITUATION = Situation(
    ranges_m=(0.4, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0),
    goal_bearing_rad=0.5,
    goal_distance_m=1.2,
    recent_actions=((0.1, 0.1),),
    reason="predicted error 0.8 > 0.3 for 12 ticks",
)
REPO = Path(__file__).resolve().parents[2]
JOIN_S = 20.0  # generous: a working close() takes about a second


def _close_returns(closeable) -> bool:
    """Call ``closeable.close()`` in a thread; True when it returned within JOIN_S."""
    t = threading.Thread(target=closeable.close, daemon=True)
    t.start()
    t.join(JOIN_S)
    return not t.is_alive()


class _BlockingServer:
    """Loopback HTTP server whose handler reads the request, then blocks on an Event."""

    def __init__(self) -> None:
        self.got_request = threading.Event()
        self.release = threading.Event()
        self.client_gone = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.got_request.set()
                # Block until released, watching for the client closing its socket (EOF).
                self.connection.settimeout(0.05)
                while not outer.release.is_set():
                    try:
                        if self.connection.recv(1) == b"":
                            outer.client_gone.set()
                            return
                    except TimeoutError:
                        continue
                    except OSError:
                        outer.client_gone.set()
                        return

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_close_with_request_blocked_in_flight_returns_and_cancels_it():
    """close() returns while the server still holds the request, the worker's socket is closed
    (the server sees the client leave), no retry follows, and on_close runs once."""
    server = _BlockingServer()
    closed_hook = []
    try:
        client = ChatClient(ClientConfig(base_url=server.url, timeout_s=600.0, max_retries=2))
        fb = LLMFallback(client, on_close=lambda: closed_hook.append(1))
        assert fb.submit(SITUATION)
        assert server.got_request.wait(10.0), "the fake server never received the request"
        assert _close_returns(fb), "LLMFallback.close() did not return while a request was in flight"
        assert server.client_gone.wait(10.0), "close() left the in-flight socket open"
        fb._worker.join(10.0)
        assert not fb._worker.is_alive(), "the worker stayed blocked on the aborted request"
        assert client.attempts == 1, "an aborted request must not be retried"
        assert closed_hook == [1]
        assert fb.poll() is None  # events after close are dropped
        assert not fb.submit(SITUATION)
    finally:
        server.stop()


# --------------------------------------------------------------------------- real llama.cpp

xllamacpp = pytest.importorskip("xllamacpp", reason="pip install 'edge-jepa[llm]'")

from edge.fallback.embedded import EmbeddedConfig, EmbeddedLLMServer, EmbeddedServerError, smollm2_gguf_path  # noqa: E402


def _smollm2_or_skip():
    try:
        return smollm2_gguf_path()
    except EmbeddedServerError as e:
        pytest.skip(str(e))


def test_embedded_fallback_close_with_request_in_flight_cancels_generation():
    """LLMFallback over the real embedded server: closing while a long generation runs returns,
    the worker is released at once (its socket shut, no retry) and the server is stopped
    (llama.cpp notices the client leave within seconds; otherwise close() abandons it, bounded)."""
    _smollm2_or_skip()
    server = EmbeddedLLMServer(EmbeddedConfig(close_timeout_s=10.0, max_predict=4096)).start()
    # No schema and a big budget: SmolLM2 rambles, so the request stays in flight for many seconds.
    client = ChatClient(ClientConfig(base_url=server.base_url, timeout_s=300.0, max_retries=0,
                                     use_response_format=False, max_tokens=4000, temperature=1.0))
    fb = LLMFallback(client, on_close=server.close)
    assert fb.submit(SITUATION)
    for _ in range(200):  # wait until llama.cpp is working on it
        if server.busy():
            break
        threading.Event().wait(0.05)
    assert server.busy(), "the request never reached the server"
    assert _close_returns(fb), "LLMFallback.close() hung with an embedded request in flight"
    assert not server.running
    assert not fb._worker.is_alive(), "the worker stayed blocked on the aborted request"
    assert client.attempts == 1


# Runs in a child process: an abandoned server's llama.cpp threads keep generating until the
# process ends, and finalising an interpreter under them can crash it (CI saw pytest exit with
# SIGSEGV after every test had passed). The child ends the way `edge-run` does.
_FOREIGN_CHILD = r"""
import json, sys, threading, time, urllib.request
from edge.fallback.embedded import EmbeddedConfig, EmbeddedLLMServer, abandoned_servers, exit_now_if_abandoned

# max_predict bounds how long the abandoned generation keeps a core busy until the child exits.
server = EmbeddedLLMServer(EmbeddedConfig(close_timeout_s=0.2, max_predict=1024)).start()
body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story about robots."}],
                   "max_tokens": 4000, "temperature": 1.0, "stream": False}).encode()
req = urllib.request.Request(f"{server.base_url}/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})

def foreign():
    try:
        urllib.request.urlopen(req, timeout=120).read()
    except OSError:
        pass

threading.Thread(target=foreign, daemon=True).start()
for _ in range(200):
    if server.busy():
        break
    time.sleep(0.05)
busy = server.busy()
t = threading.Thread(target=server.close, daemon=True)
t.start()
t.join(JOIN_S)
print(json.dumps({"busy": busy, "close_returned": not t.is_alive(), "running": server.running,
                  "abandoned": server.abandoned, "abandoned_servers": abandoned_servers()}), flush=True)
exit_now_if_abandoned(7)
sys.exit(3)  # not reached when the server was abandoned
"""


def test_embedded_server_close_with_foreign_request_in_flight_is_bounded():
    """A client we cannot abort keeps a long request open: close() still returns (waiting at most
    close_timeout_s, then abandoning the server rather than joining its threads), and the
    process then ends cleanly through exit_now_if_abandoned with the status it was given."""
    _smollm2_or_skip()
    proc = subprocess.run([sys.executable, "-c", f"JOIN_S = {JOIN_S}\n" + _FOREIGN_CHILD],
                          capture_output=True, text=True, timeout=JOIN_S + 120, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"child printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    got = json.loads(lines[-1])
    assert got["busy"], "the foreign request never reached the server"
    assert got["close_returned"], "EmbeddedLLMServer.close() hung with a request in flight"
    assert not got["running"]
    assert got["abandoned"] and got["abandoned_servers"] == 1  # still generating after 0.2 s
    # 7 = the status handed to exit_now_if_abandoned: the process ended there, at once, without
    # finalising under llama.cpp's threads (a crash there would read -11 / 139).
    assert proc.returncode == 7, f"child exit {proc.returncode}:\n{proc.stderr[-3000:]}"


def test_exit_now_if_abandoned_ends_with_the_given_status_only_after_an_abandon():
    """No abandoned server: returns (the caller exits normally). One abandoned: the process ends
    at once with the given status, output flushed, atexit handlers skipped."""
    child = ("import atexit, sys\n"
             "from edge.fallback import embedded\n"
             "atexit.register(lambda: print('atexit ran', flush=True))\n"
             "embedded.exit_now_if_abandoned(9)\n"
             "print('returned', end='')\n"
             "embedded._ABANDONED.append(object())\n"
             "sys.stdout.write(' then exiting')\n"
             "embedded.exit_now_if_abandoned(5)\n"
             "sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == "returned then exiting"  # flushed; the atexit handler did not run
