"""LLM fallback: when the planner is not confident, ask a language model for a safe macro-action.

``base`` holds the hook the control loop codes against (:class:`Fallback`, :class:`Situation`,
:class:`MacroAction`, :class:`FallbackEvent`). Never imports torch; xllamacpp is imported
lazily by ``embedded`` only.
"""

from edge.fallback.base import ACTIONS, Fallback, FallbackEvent, MacroAction, Situation

__all__ = ["ACTIONS", "Fallback", "FallbackEvent", "MacroAction", "Situation"]
