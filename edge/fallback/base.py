"""The LLM fallback hook: what the control loop hands over and what comes back.

The control loop (``edge/loop.py``) builds a :class:`Situation` when the planner's confidence
stays low, calls :meth:`Fallback.submit` (never blocks), keeps ticking with a safe action, and
each tick calls :meth:`Fallback.poll`. A finished request comes back as a
:class:`FallbackEvent`: either an accepted :class:`MacroAction`, which the loop executes for
``duration_s`` seconds through the same safety guard, or a rejection with its reason. Every
event goes to the flight recorder.

Never imports torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

#: The macro-actions a fallback may return; any other word is rejected.
ACTIONS: tuple[str, ...] = ("forward", "backward", "turn_left", "turn_right", "stop")

#: Normalised (left, right) wheel command per unit speed for each macro-action. Turning left
#: (counter-clockwise) drives the left wheel backward and the right wheel forward.
_WHEEL_SIGNS: dict[str, tuple[float, float]] = {
    "forward": (1.0, 1.0),
    "backward": (-1.0, -1.0),
    "turn_left": (-1.0, 1.0),
    "turn_right": (1.0, -1.0),
    "stop": (0.0, 0.0),
}


@dataclass(frozen=True)
class Situation:
    """What the prompt is built from.

    Attributes:
        ranges_m: 8 range readings in metres, index 0 = forward, counter-clockwise in 45 degree
            steps; NaN = no reading.
        goal_bearing_rad: relative bearing of the goal in radians, + = left; None if unknown.
        goal_distance_m: distance to the goal in metres; None if unknown.
        recent_actions: the last normalised (left, right) wheel commands, oldest first.
        reason: why confidence is low, in words (e.g. "predicted error 0.8 > 0.3 for 12 ticks").
    """

    ranges_m: tuple[float, ...]
    goal_bearing_rad: float | None
    goal_distance_m: float | None
    recent_actions: tuple[tuple[float, float], ...]
    reason: str

    def __post_init__(self) -> None:
        if len(self.ranges_m) != 8:
            raise ValueError(
                f"Situation.ranges_m must hold 8 readings (index 0 forward, CCW), got {len(self.ranges_m)}"
            )
        for i, pair in enumerate(self.recent_actions):
            if len(pair) != 2:
                raise ValueError(
                    f"Situation.recent_actions[{i}] must be a (left, right) pair, got {pair!r}"
                )
        if self.goal_distance_m is not None and not (
            math.isfinite(self.goal_distance_m) and self.goal_distance_m >= 0.0
        ):
            raise ValueError(
                f"Situation.goal_distance_m must be finite and >= 0 or None, got {self.goal_distance_m!r}"
            )
        if self.goal_bearing_rad is not None and not math.isfinite(self.goal_bearing_rad):
            raise ValueError(
                f"Situation.goal_bearing_rad must be finite or None, got {self.goal_bearing_rad!r}"
            )


@dataclass(frozen=True)
class MacroAction:
    """A high-level action to execute for a fixed time (through the safety guard).

    Attributes:
        action: one of :data:`ACTIONS`.
        duration_s: how long to execute it, seconds, finite and > 0.
    """

    action: str
    duration_s: float

    def __post_init__(self) -> None:
        if self.action not in _WHEEL_SIGNS:
            raise ValueError(f"MacroAction.action must be one of {ACTIONS}, got {self.action!r}")
        if not (isinstance(self.duration_s, (int, float)) and math.isfinite(self.duration_s)
                and self.duration_s > 0.0):
            raise ValueError(
                f"MacroAction.duration_s must be a finite number > 0 seconds, got {self.duration_s!r}"
            )

    def wheel_command(self, speed: float) -> tuple[float, float]:
        """Normalised (left, right) wheel command in [-1, 1] for this action at ``speed``.

        Args:
            speed: magnitude in [0, 1] (fraction of max wheel speed).
        Raises:
            ValueError: speed outside [0, 1] or not finite.
        """
        if not (math.isfinite(speed) and 0.0 <= speed <= 1.0):
            raise ValueError(f"wheel_command speed must be in [0, 1], got {speed!r}")
        left, right = _WHEEL_SIGNS[self.action]
        return (left * speed, right * speed)


@dataclass(frozen=True)
class FallbackEvent:
    """One finished request, accepted or rejected, for the flight recorder.

    Exactly one of ``macro`` and ``rejected_reason`` is set.

    Attributes:
        request_id: increasing id per fallback instance, from 1.
        prompt: the user prompt that was sent.
        reply_text: the model's raw reply text, None if none came back (timeout, refused, ...).
        latency_s: seconds from submit to the end of the request (all retries included).
        macro: the accepted macro-action, or None.
        rejected_reason: why the request gave no action, or None when accepted.
    """

    request_id: int
    prompt: str
    reply_text: str | None
    latency_s: float
    macro: MacroAction | None
    rejected_reason: str | None

    @property
    def accepted(self) -> bool:
        """True when the event carries an accepted macro-action."""
        return self.macro is not None


class Fallback(ABC):
    """A source of macro-actions when the planner is not confident.

    Implementations run requests off the caller's thread: ``submit`` and ``poll`` return at once.
    """

    @abstractmethod
    def submit(self, situation: Situation) -> bool:
        """Start a request in a worker; never blocks. False if one is already in flight
        (or the fallback is closed)."""

    @abstractmethod
    def poll(self) -> FallbackEvent | None:
        """A finished request's event, or None; never blocks. Each event is returned once."""

    @property
    @abstractmethod
    def in_flight(self) -> bool:
        """True while a submitted request has not finished."""

    @abstractmethod
    def close(self) -> None:
        """Stop the worker and release resources; idempotent."""

    def __enter__(self) -> "Fallback":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
