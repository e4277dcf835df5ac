"""How a lead's state is stored in Redis. The storage format lives here, beside the adapter,
not in the core: the core's values never know how they are written down."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from streams.core.clocks import Clock
from streams.core.history import Contribution, JourneyStep
from streams.core.lead import Attribute, LeadState, Tally


def encode_lead(state: LeadState) -> bytes:
    """The bytes stored for a lead (seen event ids are kept apart, see the store)."""
    return orjson.dumps(lead_to_json(state))


def decode_lead(raw: bytes | str, seen_event_ids: Iterable[str] = ()) -> LeadState:
    return lead_from_json(orjson.loads(raw), seen_event_ids)


def lead_to_json(state: LeadState) -> dict[str, Any]:
    """State as stored in Redis (seen_event_ids are kept apart, see the store)."""
    return {
        "lead_id": state.lead_id,
        "stage": state.stage,
        "attributes": {k: [a.value, a.as_of.isoformat()] for k, a in state.attributes.items()},
        "engagement": {k: [t.points, t.events] for k, t in state.engagement.items()},
        "engagement_as_of": _iso(state.engagement_as_of),
        "daily_points": dict(state.daily_points),
        "events_counted": state.events_counted,
        "handoff_id": state.handoff_id,
        "qualified_at": _iso(state.qualified_at),
        "last_event_at": _iso(state.last_event_at),
        "qualifications": state.qualifications,
        "clocks": [clock_to_json(c) for c in state.clocks],
        "last_contact_at": _iso(state.last_contact_at),
        "contact_times": [t.isoformat() for t in state.contact_times],
        "last_sales_action_at": _iso(state.last_sales_action_at),
        "owner": state.owner,
        "missing_bant": list(state.missing_bant),
        "sql_at": _iso(state.sql_at),
        "recent_events": [
            [c.event_id, c.type, c.occurred_at.isoformat(), c.points] for c in state.recent_events
        ],
        "journey": [
            [j.at.isoformat(), j.from_stage, j.to_stage, j.handoff_id, j.reason]
            for j in state.journey
        ],
    }


def lead_from_json(data: Mapping[str, Any], seen_event_ids: Iterable[str] = ()) -> LeadState:
    return LeadState(
        lead_id=data["lead_id"],
        stage=data["stage"],
        attributes={
            k: Attribute(v, datetime.fromisoformat(t)) for k, (v, t) in data["attributes"].items()
        },
        engagement={k: Tally(p, n) for k, (p, n) in data["engagement"].items()},
        engagement_as_of=_dt(data["engagement_as_of"]),
        daily_points=data["daily_points"],
        seen_event_ids=frozenset(seen_event_ids),
        events_counted=data["events_counted"],
        handoff_id=data["handoff_id"],
        qualified_at=_dt(data["qualified_at"]),
        last_event_at=_dt(data["last_event_at"]),
        qualifications=data.get("qualifications", 0),
        clocks=tuple(clock_from_json(c) for c in data.get("clocks", ())),
        last_contact_at=_dt(data.get("last_contact_at")),
        contact_times=tuple(datetime.fromisoformat(t) for t in data.get("contact_times", ())),
        last_sales_action_at=_dt(data.get("last_sales_action_at")),
        owner=data.get("owner"),
        missing_bant=tuple(data.get("missing_bant", ())),
        sql_at=_dt(data.get("sql_at")),
        recent_events=tuple(
            Contribution(e, t, datetime.fromisoformat(at), p)
            for e, t, at, p in data.get("recent_events", ())
        ),
        journey=tuple(
            JourneyStep(datetime.fromisoformat(at), f, t, h, r)
            for at, f, t, h, r in data.get("journey", ())
        ),
    )


def clock_to_json(clock: Clock) -> dict[str, Any]:
    return {
        "kind": clock.kind,
        "handoff_id": clock.handoff_id,
        "started_at": clock.started_at.isoformat(),
        "due_at": clock.due_at.isoformat(),
        "warn_at": _iso(clock.warn_at),
        "status": clock.status,
        "warned": clock.warned,
        "ended_at": _iso(clock.ended_at),
        "late_action_at": _iso(clock.late_action_at),
        "owner": clock.owner,
        "round": clock.round,
    }


def clock_from_json(data: Mapping[str, Any]) -> Clock:
    return Clock(
        kind=data["kind"],
        handoff_id=data["handoff_id"],
        started_at=datetime.fromisoformat(data["started_at"]),
        due_at=datetime.fromisoformat(data["due_at"]),
        warn_at=_dt(data["warn_at"]),
        status=data["status"],
        warned=data["warned"],
        ended_at=_dt(data["ended_at"]),
        late_action_at=_dt(data["late_action_at"]),
        owner=data["owner"],
        round=data.get("round", 0),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
