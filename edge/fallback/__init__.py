"""LLM fallback: when the planner is not confident, ask a language model for a safe macro-action.

``base`` holds the hook the control loop codes against (:class:`Fallback`, :class:`Situation`,
:class:`MacroAction`, :class:`FallbackEvent`); :func:`make_fallback` builds one from a
:class:`FallbackConfig` (``llm`` = ``none`` | ``embedded`` | URL). Never imports torch;
xllamacpp is imported lazily, only when the embedded server starts.
"""

from edge.fallback.base import ACTIONS, Fallback, FallbackEvent, MacroAction, Situation
from edge.fallback.factory import FallbackConfig, make_fallback

__all__ = [
    "ACTIONS",
    "Fallback",
    "FallbackConfig",
    "FallbackEvent",
    "MacroAction",
    "Situation",
    "make_fallback",
]
