"""A request body into events, and each event's verdict: accepted or rejected, and why (pure).

Events are validated exactly like the worker validates them
(streams.pipeline.intake.parse_engagement), so an event the collector accepts is never
dead-lettered by the worker for its shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from schemas.anonymous import IDENTIFY, AnonymousEvent, IdentifyEvent
from schemas.deadletter import DeadLetterKind
from schemas.engagement import EngagementEvent
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_anonymous, parse_engagement

# Where an accepted event goes: the lead's engagement topic, or the anonymous topic (keyed by
# anonymous_id) for a visitor not known yet and for identifies.
Route = Literal["engagement", "anonymous"]

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
# text/plain: what a browser sends for a string body when no Content-Type is set.
JSON_TYPES = frozenset({"", "application/json", "text/plain"})
HTTP_LOCATION = RecordLocation(topic="http", partition=-1, offset=-1)
NOT_JSON = DeadLetterKind.NOT_JSON.value
INVALID_EVENT = DeadLetterKind.INVALID_EVENT.value
# orjson reads JSON nested up to 1024 levels but writes at most 254: an event the collector must
# re-encode (an array item, or one it adds `source` to) deeper than that is rejected, not a 500.
TOO_DEEP = (
    "the event is nested more than 254 levels deep, too deep to be re-encoded; "
    "flatten its properties"
)

# -- body parsing --------------------------------------------------------------------------

BodyFormat = Literal["json", "ndjson"]


@dataclass(frozen=True, slots=True)
class Item:
    """One event of a request body, decoded but not validated yet."""

    index: int
    value: Any  # the decoded JSON (anything: validation says what is wrong with it)
    raw: bytes  # the event's JSON as sent (object body, NDJSON line) or re-encoded (array item)
    line: int | None = None  # NDJSON: 1-based line number in the body
    error: str | None = None  # NDJSON: this line is not JSON; an array item: nested too deep
    reason: str = NOT_JSON  # the reason of `error`


@dataclass(frozen=True, slots=True)
class Body:
    items: tuple[Item, ...]
    single: bool  # one JSON object (not an array or NDJSON): the short response shape


@dataclass(frozen=True, slots=True)
class BodyError:
    """The body as a whole is unusable: 400 (or 415 for the media type)."""

    error: str
    reason: str
    status: int = 400


def body_format(content_type: str | None) -> BodyFormat | None:
    """NDJSON for the NDJSON media types, JSON for JSON (and text/plain); None = 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in JSON_TYPES or media.endswith("+json"):
        return "json"
    return None


def _reencoded(value: Any) -> bytes | None:
    """Compact JSON of a decoded value; None when it is nested too deep for orjson to write."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


def _array_item(index: int, value: Any) -> Item:
    raw = _reencoded(value)
    if raw is None:
        return Item(index, value, b"", error=TOO_DEEP, reason=INVALID_EVENT)
    return Item(index, value, raw)


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def _empty_body() -> BodyError:
    return BodyError(
        "no events in the body; send one JSON event object, a JSON array of events, or NDJSON",
        "empty_body",
    )


def _ndjson_items(body: bytes) -> list[Item]:
    """One item per non-blank line; a line that is not JSON is an item carrying its error."""
    items: list[Item] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            problem = f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}"
            items.append(Item(len(items), None, text, number, problem))
            continue
        items.append(Item(len(items), value, text, number))
    return items


def _json_body(body: bytes) -> Body | BodyError:
    """One JSON document: an event object or an array of them."""
    if not body.strip():
        return _empty_body()
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BodyError(f"body is not valid JSON: {_json_problem(exc)}", NOT_JSON)
    if isinstance(decoded, dict):
        return Body((Item(0, decoded, body.strip()),), single=True)
    if isinstance(decoded, list):
        if not decoded:
            return _empty_body()
        return Body(tuple(_array_item(i, value) for i, value in enumerate(decoded)), single=False)
    return BodyError(
        f"expected a JSON object (one event) or an array of event objects, "
        f"got {type(decoded).__name__}",
        "invalid_body",
    )


def parse_body(body: bytes, fmt: BodyFormat) -> Body | BodyError:
    """Split a request body into events: one object, an array of objects, or NDJSON lines.

    A body that is not JSON at all is a BodyError naming line and column. In NDJSON each line
    stands alone: a line that is not JSON is rejected as that event (naming its line) and the
    other lines still count.
    """
    if fmt == "ndjson":
        items = _ndjson_items(body)
        return Body(tuple(items), single=False) if items else _empty_body()
    return _json_body(body)


# -- per-event validation ------------------------------------------------------------------

_FIELD_PATH = re.compile(r"^[A-Za-z_][\w.\[\]-]*$")


def field_of(kind: DeadLetterKind, message: str) -> str | None:
    """The field a dead-letter message names ("occurred_at: Field required" -> occurred_at)."""
    if kind not in (DeadLetterKind.INVALID_EVENT, DeadLetterKind.UNKNOWN_TYPE):
        return None
    head, sep, _ = message.partition(": ")
    return head if sep and _FIELD_PATH.match(head) else None


@dataclass(frozen=True, slots=True)
class Checked:
    """One event's verdict: accepted (with the bytes and key to produce) or rejected (why)."""

    index: int
    event_id: str | None
    line: int | None = None
    event: EngagementEvent | AnonymousEvent | IdentifyEvent | None = None
    key: bytes | None = None
    value: bytes | None = None
    reason: str | None = None
    error: str | None = None
    field: str | None = None
    route: Route = "engagement"
    # A lead event that also names its anonymous_id identifies the visitor: this identify
    # record goes to the anonymous topic too (keyed by anonymous_id).
    identify: IdentifyEvent | None = None

    def records(self) -> list[tuple[Route, bytes, bytes]]:
        """What to produce for an accepted event: (route, key, value), the event first."""
        if self.event is None or self.key is None or self.value is None:
            return []
        out: list[tuple[Route, bytes, bytes]] = [(self.route, self.key, self.value)]
        if self.identify is not None:
            value = self.identify.model_dump_json(exclude_none=True).encode()
            out.append(("anonymous", self.identify.anonymous_id.encode(), value))
        return out

    @property
    def accepted(self) -> bool:
        return self.event is not None

    def result(self) -> dict[str, Any]:
        """The per-event entry of a batch response."""
        out: dict[str, Any] = {"index": self.index}
        if self.line is not None:
            out["line"] = self.line
        out["status"] = "accepted" if self.accepted else "rejected"
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if not self.accepted:
            out.update(error=self.error, reason=self.reason, field=self.field)
        return out


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_event(
    item: Item, source: str | None, known_types: frozenset[str], max_bytes: int
) -> Checked:
    """Validate one event like the worker does; stamp the authenticated source if it has none.

    The bytes produced are the event as sent; only when `source` is missing (or null/blank) is
    it re-encoded with `source` set. The size limit applies to exactly the bytes produced.
    """
    raw_id = item.value.get("event_id") if isinstance(item.value, dict) else None
    event_id = raw_id.strip() if isinstance(raw_id, str) and raw_id.strip() else None
    if item.error is not None:
        return Checked(item.index, event_id, item.line, reason=item.reason, error=item.error)
    value: bytes | None = item.raw
    if source and isinstance(item.value, dict) and _blank(item.value.get("source")):
        value = _reencoded({**item.value, "source": source})
        if value is None:
            return Checked(item.index, event_id, item.line, reason=INVALID_EVENT, error=TOO_DEEP)
    if _anonymous(item.value):
        visitor = parse_anonymous(None, value, HTTP_LOCATION, known_types, max_bytes)
        if isinstance(visitor, DeadLetter):
            return _rejected(item, event_id, visitor)
        return Checked(
            item.index,
            visitor.event_id,
            item.line,
            event=visitor,
            key=visitor.anonymous_id.encode("utf-8"),
            value=value,
            route="anonymous",
        )
    parsed = parse_engagement(None, value, HTTP_LOCATION, known_types, max_bytes)
    if isinstance(parsed, DeadLetter):
        return _rejected(item, event_id, parsed)
    identify = None
    if parsed.anonymous_id is not None:
        identify = IdentifyEvent(
            event_id=parsed.event_id,
            anonymous_id=parsed.anonymous_id,
            lead_id=parsed.lead_id,
            occurred_at=parsed.occurred_at,
            source=parsed.source,
        )
    return Checked(
        item.index,
        parsed.event_id,
        item.line,
        event=parsed,
        key=parsed.lead_id.encode("utf-8"),
        value=value,
        identify=identify,
    )


def _anonymous(value: Any) -> bool:
    """For the anonymous topic: an identify, or an event with an anonymous_id and no lead_id."""
    if not isinstance(value, dict):
        return False
    if value.get("type") == IDENTIFY:
        return True
    return value.get("lead_id") is None and value.get("anonymous_id") is not None


def _rejected(item: Item, event_id: str | None, dead: DeadLetter) -> Checked:
    kind = dead.headers.error_kind
    message = dead.headers.error_message
    return Checked(
        item.index,
        event_id,
        item.line,
        reason=kind.value,
        error=message,
        field=field_of(kind, message),
    )


def summarize(checked: Sequence[Checked], single: bool) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for a request whose events were all checked (and the accepted
    ones acknowledged by Kafka).

    One object: 202 {"accepted": 1, "event_id"} or 400 {"error", "reason", "field", ...}.
    A batch (array or NDJSON): {"accepted", "rejected", "results": [...]} with 202 when at least
    one event was accepted (look at "rejected" and the results for the others), 400 when none.
    """
    if single:
        (only,) = checked
        if only.accepted:
            return 202, {"accepted": 1, "event_id": only.event_id}
        body: dict[str, Any] = {"error": only.error, "reason": only.reason, "field": only.field}
        if only.event_id is not None:
            body["event_id"] = only.event_id
        return 400, body
    accepted = sum(1 for c in checked if c.accepted)
    body = {
        "accepted": accepted,
        "rejected": len(checked) - accepted,
        "results": [c.result() for c in checked],
    }
    if accepted:
        return 202, body
    return 400, {"error": "no event in the batch was accepted; see results", **body}
