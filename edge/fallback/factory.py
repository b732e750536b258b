"""`make_fallback(cfg)`: the one place that turns `--llm none|embedded|URL` into a :class:`Fallback`.

Never imports torch; xllamacpp only when ``llm == "embedded"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edge.fallback.base import Fallback
from edge.fallback.client import ChatClient, ClientConfig
from edge.fallback.embedded import EmbeddedConfig, EmbeddedLLMServer
from edge.fallback.llm import LLMFallback


@dataclass(frozen=True)
class FallbackConfig:
    """Which LLM to ask when the planner is not confident, and how."""

    llm: str = "none"  # "none" (no fallback: hold the safe action), "embedded", or an http(s):// URL
    model: str = "local"  # model name sent to the server (cloud APIs need a real one)
    api_key_env: str | None = None  # NAME of the environment variable holding the API key
    timeout_s: float = 10.0  # per attempt, seconds
    max_retries: int = 2  # extra attempts on transport errors / HTTP 429, 5xx
    breaker_failures: int = 3  # consecutive failed requests that open the circuit
    breaker_cooldown_s: float = 15.0  # seconds before a probe is allowed again
    max_tokens: int = 300  # generation budget per reply
    durations_s: tuple[float, ...] = (0.5, 1.0, 2.0)  # the only macro-action durations allowed, s
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)  # used when llm == "embedded"

    def __post_init__(self) -> None:
        if self.llm not in ("none", "embedded") and urlsplit(self.llm).scheme not in ("http", "https"):
            raise ValueError(
                f"FallbackConfig.llm must be 'none', 'embedded' or an http(s):// URL of an "
                f"OpenAI-compatible server, got {self.llm!r}"
            )
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"FallbackConfig.timeout_s must be finite and > 0, got {self.timeout_s!r}")

    def client_config(self, base_url: str) -> ClientConfig:
        """The :class:`ClientConfig` for ``base_url`` with this config's limits."""
        return ClientConfig(
            base_url=base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            breaker_failures=self.breaker_failures,
            breaker_cooldown_s=self.breaker_cooldown_s,
            max_tokens=self.max_tokens,
            durations_s=tuple(self.durations_s),
        )


def make_fallback(cfg: FallbackConfig) -> Fallback | None:
    """Build the fallback named by ``cfg.llm``; None for ``"none"``.

    ``"embedded"`` starts an :class:`EmbeddedLLMServer` (blocks until its ``/health`` is ok,
    a second or two for SmolLM2) which the returned fallback stops on ``close()``.

    Raises:
        edge.fallback.embedded.EmbeddedServerError: embedded server could not start (message
            names the install command when a package is missing).
        ValueError: bad config, or ``api_key_env`` names an unset variable.
    """
    if cfg.llm == "none":
        return None
    if cfg.llm == "embedded":
        server = EmbeddedLLMServer(cfg.embedded).start()
        try:
            client = ChatClient(cfg.client_config(server.base_url))
        except Exception:
            server.close()
            raise
        return LLMFallback(client, on_close=server.close)
    return LLMFallback(ChatClient(cfg.client_config(cfg.llm)))
