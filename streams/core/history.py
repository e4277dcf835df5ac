"""Bounded histories kept per lead for "why this score": the events that changed the
engagement score and the stage changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from streams.core.rules import Rules


@dataclass(frozen=True, slots=True)
class Contribution:
    """One event that changed the engagement score, for "why this score"."""

    event_id: str
    type: str
    occurred_at: datetime
    points: float  # as counted when it arrived (after the daily cap, before decay)


@dataclass(frozen=True, slots=True)
class JourneyStep:
    """One stage change in the lead's history."""

    at: datetime
    from_stage: str
    to_stage: str
    handoff_id: str | None
    reason: str | None


H = TypeVar("H")


def remember(history: tuple[H, ...], entry: H, rules: Rules) -> tuple[H, ...]:
    """Append to a bounded history: the newest `rules.history_limit` entries are kept."""
    return (*history, entry)[-rules.history_limit :]
