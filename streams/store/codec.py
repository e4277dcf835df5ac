"""How a lead's state is stored in Redis. The storage format lives here, beside the adapter,
not in the core: the core's values never know how they are written down.

A lead is one MessagePack array (format 2): fields by position, timestamps as one integer
(microseconds since the epoch and the UTC offset in minutes), event types through a small
per-lead table, and the dedupe memory inline: 8 bytes per seen id (a 6-byte hash of the id and
the day it was recorded), instead of a Redis set of full ids beside the state. A lead with 10
events takes about a third of the JSON form (docs/benchmarks.md). JSON (format 1, leadflow 0.1)
is still read; `lead_to_json` is also the plain view tests compare.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from operator import attrgetter
from typing import Any

import msgpack
import orjson

from streams.core.attribution import Deal, Touch
from streams.core.clocks import Clock
from streams.core.history import Contribution, JourneyStep
from streams.core.lead import Attribute, CapShare, LeadState, Tally

FORMAT = 2
TZ_CODES = 2048  # offsets from -1024 to +1023 minutes
DAY_ZERO = date(2020, 1, 1).toordinal()
SEEN_ENTRY = 8  # bytes: 6 of hash, 2 of day
_ZONES: dict[int, timezone] = {}
_OFFSETS: dict[Any, int] = {}
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MICROSECOND = timedelta(microseconds=1)


def encode_lead(state: LeadState, seen: bytes = b"") -> bytes:
    """The bytes stored for a lead: its state and its dedupe memory (`seen` entries)."""
    # The string table: a name's index is its position; a lookup of a known name stays in C.
    types: defaultdict[str, int] = defaultdict(lambda: len(types))
    t = types.__getitem__

    # First, so that their strings are in the table written below.
    touches = _pack_touches(state.touches, t)
    attribution = _pack_touches(state.attribution, t)
    shares = [_pack_shares(b, s, t) for b, s in state.cap_shares.items()]
    packed = [
        FORMAT,
        state.lead_id,
        state.stage,
        [[k, a.value, _pack_time(a.as_of)] for k, a in state.attributes.items()],
        [[t(k), x.points, x.events] for k, x in state.engagement.items()],
        _pack_opt(state.engagement_as_of),
        [_pack_bucket(b, v, t) for b, v in state.daily_points.items()],
        state.events_counted,
        state.handoff_id,
        _pack_opt(state.qualified_at),
        _pack_opt(state.last_event_at),
        state.qualifications,
        [_pack_clock(c) for c in state.clocks],
        _pack_opt(state.last_contact_at),
        [_pack_time(x) for x in state.contact_times],
        _pack_opt(state.last_sales_action_at),
        state.owner,
        list(state.missing_bant),
        _pack_opt(state.sql_at),
        [[c.event_id, t(c.type), _pack_time(c.occurred_at), c.points] for c in state.recent_events],
        [
            [_pack_time(j.at), j.from_stage, j.to_stage, j.handoff_id, j.reason]
            for j in state.journey
        ],
        list(types),
        seen,
        state.queue,  # appended later: states written before have 23 fields
        # attribution, appended later (states written before have 24 fields); sources and
        # campaigns go through the same string table as event types
        touches,
        attribution,
        _pack_deal(state.opportunity),
        _pack_deal(state.won_deal),
        shares,  # appended later: states written before have 28 fields (no times known)
    ]
    return bytes(msgpack.packb(packed, use_bin_type=True))


def decode_lead(raw: bytes | str, seen_event_ids: Iterable[str] = ()) -> LeadState:
    """The stored lead, with `seen_event_ids` set to the given ids (those the caller found in
    its dedupe memory)."""
    return decode_stored(raw, seen_event_ids)[0]


def decode_stored(raw: bytes | str, seen_event_ids: Iterable[str] = ()) -> tuple[LeadState, bytes]:
    """The stored lead and its dedupe memory (empty for a leadflow 0.1 JSON state)."""
    if isinstance(raw, str) or raw[:1] == b"{":
        return lead_from_json(orjson.loads(raw), seen_event_ids), b""
    f = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    if f[0] != FORMAT:
        raise ValueError(f"unknown lead state format {f[0]!r}")
    types = f[21]
    attributed = len(f) > 24
    state = LeadState(
        lead_id=f[1],
        stage=f[2],
        attributes={k: Attribute(v, _time(at)) for k, v, at in f[3]},
        engagement={types[i]: Tally(float(p), n) for i, p, n in f[4]},
        engagement_as_of=_opt(f[5]),
        daily_points={_bucket(types, i, d): float(v) for i, d, v in f[6]},
        seen_event_ids=frozenset(seen_event_ids),
        events_counted=f[7],
        handoff_id=f[8],
        qualified_at=_opt(f[9]),
        last_event_at=_opt(f[10]),
        qualifications=f[11],
        clocks=tuple(_clock(c) for c in f[12]),
        last_contact_at=_opt(f[13]),
        contact_times=tuple(_time(x) for x in f[14]),
        last_sales_action_at=_opt(f[15]),
        owner=f[16],
        missing_bant=tuple(f[17]),
        sql_at=_opt(f[18]),
        recent_events=tuple(
            Contribution(e, types[i], _time(at), float(p)) for e, i, at, p in f[19]
        ),
        journey=tuple(JourneyStep(_time(at), a, b, h, r) for at, a, b, h, r in f[20]),
        queue=f[23] if len(f) > 23 else None,
        touches=_touches(f[24], types) if attributed else (),
        attribution=_touches(f[25], types) if attributed else (),
        opportunity=_deal(f[26]) if attributed else None,
        won_deal=_deal(f[27]) if attributed else None,
        cap_shares={_bucket(types, i, d): _shares(s) for i, d, s in f[28]} if len(f) > 28 else {},
    )
    return state, bytes(f[22])


def _pack_touches(touches: tuple[Touch, ...], t: Callable[[str], int]) -> list[list[int]]:
    """Touches as three columns (times, source indices, campaign indices), packed in C."""
    return [
        list(map(_US, touches)),
        list(map(t, map(_SOURCE, touches))),
        list(map(t, map(_CAMPAIGN, touches))),
    ]


def _touches(columns: list[list[int]], types: list[str]) -> tuple[Touch, ...]:
    times, sources, campaigns = columns
    name = types.__getitem__
    return tuple(map(Touch, times, map(name, sources), map(name, campaigns)))


_US, _SOURCE, _CAMPAIGN = attrgetter("us"), attrgetter("source"), attrgetter("campaign")


def _pack_deal(deal: Deal | None) -> list[Any] | None:
    return None if deal is None else [_pack_time(deal.at), deal.amount, deal.currency]


def _deal(packed: list[Any] | None) -> Deal | None:
    return None if packed is None else Deal(_time(packed[0]), packed[1], packed[2])


# -- the dedupe memory ------------------------------------------------------------------------


def seen_digest(seen_id: str) -> bytes:
    return hashlib.blake2b(seen_id.encode(), digest_size=6).digest()


def seen_digests(seen: bytes) -> set[bytes]:
    return {seen[i : i + 6] for i in range(0, len(seen), SEEN_ENTRY)}


def remember_seen(seen: bytes, ids: Iterable[str], on: date | None, keep_days: int) -> bytes:
    """Add ids to the dedupe memory, recorded on day `on`; forget entries older than
    `keep_days` before it (a duplicate older than that counts again)."""
    day = (on.toordinal() - DAY_ZERO) if on else 0
    fresh = b"".join(seen_digest(x) + day.to_bytes(2, "big") for x in sorted(ids))
    if not seen or day <= keep_days:
        return seen + fresh
    oldest = day - keep_days
    kept = b"".join(
        seen[i : i + SEEN_ENTRY]
        for i in range(0, len(seen), SEEN_ENTRY)
        if int.from_bytes(seen[i + 6 : i + SEEN_ENTRY], "big") >= oldest
    )
    return kept + fresh


# -- packing helpers ----------------------------------------------------------------------------


def _pack_time(at: datetime) -> int:
    # Integer arithmetic on the wall-clock fields: exact, and no per-call utcoffset() (slow
    # for the parser's tzinfo objects; fixed offsets are looked up once per zone).
    tz = at.tzinfo
    minutes = _OFFSETS.get(tz)
    if minutes is None:
        minutes = _OFFSETS[tz] = _offset_minutes(at)
    local = (
        (at.toordinal() - EPOCH_ORDINAL) * 86_400 + at.hour * 3_600 + at.minute * 60 + at.second
    ) * 1_000_000 + at.microsecond
    return (local - minutes * 60_000_000) * TZ_CODES + minutes + TZ_CODES // 2


def _offset_minutes(at: datetime) -> int:
    offset = at.utcoffset()
    if offset is None:
        return 0
    seconds = int(offset.total_seconds())
    if seconds % 60:
        raise ValueError(f"UTC offset {offset} is not whole minutes; cannot store {at}")
    return seconds // 60


def _time(packed: int) -> datetime:
    us, code = divmod(packed, TZ_CODES)
    zone = _ZONES.get(code)
    if zone is None:
        minutes = code - TZ_CODES // 2
        zone = _ZONES[code] = UTC if minutes == 0 else timezone(timedelta(minutes=minutes))
    return datetime.fromtimestamp(us / 1_000_000, zone)


def _pack_opt(at: datetime | None) -> int | None:
    return None if at is None else _pack_time(at)


def _opt(packed: int | None) -> datetime | None:
    return None if packed is None else _time(packed)


@lru_cache(maxsize=8192)
def _bucket_parts(bucket: str) -> tuple[str, int]:
    """A daily cap bucket's event type and day (ordinal); the same few buckets recur across
    every lead written, so each is parsed once."""
    kind, day = bucket.rsplit("|", 1)
    return kind, date.fromisoformat(day).toordinal()


def _pack_bucket(bucket: str, points: float, t: Any) -> list[Any]:
    kind, day = _bucket_parts(bucket)
    return [t(kind), day, points]


def _pack_shares(bucket: str, shares: tuple[CapShare, ...], t: Any) -> list[Any]:
    # Times as whole microseconds since the epoch (UTC), exact.
    kind, day = _bucket_parts(bucket)
    return [t(kind), day, [[at // _MICROSECOND, points, weight] for at, points, weight in shares]]


def _shares(packed: list[Any]) -> tuple[CapShare, ...]:
    return tuple((timedelta(microseconds=at), float(p), float(w)) for at, p, w in packed)


def _bucket(types: list[str], i: int, day: int) -> str:
    return f"{types[i]}|{date.fromordinal(day).isoformat()}"


def _pack_clock(c: Clock) -> list[Any]:
    return [
        c.kind,
        c.handoff_id,
        _pack_time(c.started_at),
        _pack_time(c.due_at),
        _pack_opt(c.warn_at),
        c.status,
        c.warned,
        _pack_opt(c.ended_at),
        _pack_opt(c.late_action_at),
        c.owner,
        c.round,
        c.queue,
    ]


def _clock(f: list[Any]) -> Clock:
    return Clock(
        kind=f[0],
        handoff_id=f[1],
        started_at=_time(f[2]),
        due_at=_time(f[3]),
        warn_at=_opt(f[4]),
        status=f[5],
        warned=f[6],
        ended_at=_opt(f[7]),
        late_action_at=_opt(f[8]),
        owner=f[9],
        round=f[10],
        queue=f[11] if len(f) > 11 else None,
    )


def lead_to_json(state: LeadState) -> dict[str, Any]:
    """State as stored in Redis (seen_event_ids are kept apart, see the store)."""
    return {
        "lead_id": state.lead_id,
        "stage": state.stage,
        "attributes": {k: [a.value, a.as_of.isoformat()] for k, a in state.attributes.items()},
        "engagement": {k: [t.points, t.events] for k, t in state.engagement.items()},
        "engagement_as_of": _iso(state.engagement_as_of),
        "daily_points": dict(state.daily_points),
        "cap_shares": {
            b: [[at // _MICROSECOND, points, weight] for at, points, weight in s]
            for b, s in state.cap_shares.items()
        },
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
        "queue": state.queue,
        "missing_bant": list(state.missing_bant),
        "sql_at": _iso(state.sql_at),
        "recent_events": [
            [c.event_id, c.type, c.occurred_at.isoformat(), c.points] for c in state.recent_events
        ],
        "journey": [
            [j.at.isoformat(), j.from_stage, j.to_stage, j.handoff_id, j.reason]
            for j in state.journey
        ],
        "touches": [[x.at.isoformat(), x.source, x.campaign] for x in state.touches],
        "attribution": [[x.at.isoformat(), x.source, x.campaign] for x in state.attribution],
        "opportunity": _deal_json(state.opportunity),
        "won_deal": _deal_json(state.won_deal),
    }


def _deal_json(deal: Deal | None) -> list[Any] | None:
    return None if deal is None else [deal.at.isoformat(), deal.amount, deal.currency]


def _deal_from_json(value: list[Any] | None) -> Deal | None:
    return None if value is None else Deal(datetime.fromisoformat(value[0]), value[1], value[2])


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
        # Microseconds since the epoch; a state written before has no times known.
        cap_shares={b: _shares(s) for b, s in data.get("cap_shares", {}).items()},
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
        queue=data.get("queue"),
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
        touches=tuple(
            Touch.at_time(datetime.fromisoformat(at), s, c) for at, s, c in data.get("touches", ())
        ),
        attribution=tuple(
            Touch.at_time(datetime.fromisoformat(at), s, c)
            for at, s, c in data.get("attribution", ())
        ),
        opportunity=_deal_from_json(data.get("opportunity")),
        won_deal=_deal_from_json(data.get("won_deal")),
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
        "queue": clock.queue,
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
        queue=data.get("queue"),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
