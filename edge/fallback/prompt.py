"""The situation as text for the language model, plus the system prompt.

Plain ASCII on purpose: small models and tiny tokenizers handle it, and a log reader sees
exactly what was sent. Never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edge.fallback.base import ACTIONS, Situation

#: Direction names for the 8 range sensors, index 0 = forward, counter-clockwise (45 deg steps).
DIRECTIONS: tuple[str, ...] = (
    "front",
    "front-left",
    "left",
    "back-left",
    "back",
    "back-right",
    "right",
    "front-right",
)

#: Longest ``Situation.reason`` copied into the prompt, characters.
MAX_REASON_CHARS = 200
#: At most this many recent actions are described (the newest ones).
MAX_RECENT_ACTIONS = 5


def system_prompt(durations_s: Sequence[float]) -> str:
    """Instructions: the robot, the allowed actions and durations, the reply format."""
    durations = ", ".join(f"{d:g}" for d in durations_s)
    return (
        "You are the safety fallback of a small two-wheeled indoor robot. Its learned planner is "
        "not confident, so you choose ONE short high-level action.\n"
        f"Allowed actions: {', '.join(ACTIONS)}. Allowed durations in seconds: {durations}.\n"
        "Rules: never drive toward an obstacle closer than 0.3 m; prefer turning toward open "
        "space or toward the goal; choose stop when every direction is blocked or you are unsure.\n"
        'Answer with one JSON object only: {"action": <one allowed action>, "duration_s": <one allowed duration>}.'
    )


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _describe_action(left: float, right: float) -> str:
    if abs(left) < 0.05 and abs(right) < 0.05:
        kind = "stopped"
    elif left > 0 and right > 0:
        kind = "forward" if abs(left - right) < 0.2 else ("curving left" if right > left else "curving right")
    elif left < 0 and right < 0:
        kind = "backward"
    elif right > left:
        kind = "turning left"
    else:
        kind = "turning right"
    return f"left {left:+.2f}, right {right:+.2f} ({kind})"


def situation_text(situation: Situation) -> str:
    """The user prompt: ranges by direction, goal, recent actions, reason. ASCII, one fact per line."""
    lines = ["Range readings (metres, distance to the nearest obstacle):"]
    for name, value in zip(DIRECTIONS, situation.ranges_m):
        reading = "no reading" if not math.isfinite(value) else f"{value:.2f} m"
        lines.append(f"  {name}: {reading}")
    if situation.goal_bearing_rad is not None and situation.goal_distance_m is not None:
        deg = math.degrees(situation.goal_bearing_rad)
        side = "ahead" if abs(deg) < 5 else (f"{abs(deg):.0f} degrees to the left" if deg > 0 else f"{abs(deg):.0f} degrees to the right")
        lines.append(f"Goal: {situation.goal_distance_m:.2f} m away, {side}.")
    elif situation.goal_bearing_rad is not None:
        deg = math.degrees(situation.goal_bearing_rad)
        lines.append(f"Goal direction: {abs(deg):.0f} degrees to the {'left' if deg > 0 else 'right'}, distance unknown.")
    else:
        lines.append("Goal: unknown.")
    recent = situation.recent_actions[-MAX_RECENT_ACTIONS:]
    if recent:
        lines.append("Recent wheel commands (oldest first, -1..1):")
        lines.extend(f"  {_describe_action(float(l), float(r))}" for l, r in recent)
    else:
        lines.append("Recent wheel commands: none.")
    reason = _ascii(" ".join(situation.reason.split()))[:MAX_REASON_CHARS]
    lines.append(f"Why the planner is not confident: {reason or 'not given'}.")
    lines.append("Choose the action now.")
    return "\n".join(lines)


def build_messages(situation: Situation, durations_s: Sequence[float]) -> list[dict[str, str]]:
    """OpenAI chat messages: system instructions then the situation."""
    return [
        {"role": "system", "content": system_prompt(durations_s)},
        {"role": "user", "content": situation_text(situation)},
    ]
