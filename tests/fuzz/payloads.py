"""Payloads for fuzzing the wire parsers, valid and hostile, each with the verdict it must get.

A valid record is built from a contract model's fields (schemas/, their JSON Schemas in
schemas/json/). A hostile one is a valid record with one named mutation (a field missing or of the
wrong JSON type, a huge string, deep nesting, NaN, a bad timestamp, a byte that is not UTF-8, a
wrong or empty key, an oversized record...) and the dead-letter kind plus the words its reason must
contain; random bytes and a few mutations whose outcome is not decided here carry `kind=ANY`, and
the tests then check the verdict against an independent oracle (`accepted_by_contract`).

Every choice goes through a `Pick`: `Drawn` draws with hypothesis (the fuzz tests, which shrink a
failure to a small example), `Seeded` with `random.Random` (the memory check, which feeds 10,000+
records without hypothesis's own bookkeeping in the measurement).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from schemas.deadletter import DeadLetterKind
from schemas.engagement import KNOWN_EVENT_TYPES

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 65_536  # LEADFLOW_MAX_EVENT_BYTES's default
ANY = "any"  # a hostile record whose verdict the oracle decides
DEAD = "dead"  # any dead-letter kind will do (random bytes)

# -- how many examples ---------------------------------------------------------------------------

# Unset or 0: the default suite's small counts, derandomized (CI runs the same examples every
# time). `ops/chaos fuzz` sets LEADFLOW_FUZZ_EXAMPLES=10000: that many examples per parser (the
# hostile-record test of each; the other tests take a share), random every run.
FUZZ_EXAMPLES = int(os.environ.get("LEADFLOW_FUZZ_EXAMPLES", "0") or "0")


def fuzz_settings(default: int, share: float = 1.0) -> settings:
    """`default` examples in the default suite; `share` x LEADFLOW_FUZZ_EXAMPLES (at least
    `default`) under `ops/chaos fuzz`."""
    examples = max(default, round(FUZZ_EXAMPLES * share)) if FUZZ_EXAMPLES else default
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not FUZZ_EXAMPLES,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- choices -----------------------------------------------------------------------------------

# Identifier characters: no control characters or separators, so Python's str.strip() and
# pydantic's (Rust) trim agree on what a blank or padded id is.
_ID_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Z"))
_SEEDED_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/+"
    "äöüßéñçÅØ日本語リード€™😀🚀\u0301\u200d"
)
_SEEDED_FREE = _SEEDED_ALPHABET + ' \t\n"\\{}[],\x00\x1f\u2028\ufeff'


class Pick(Protocol):
    def one(self, options: Sequence[T]) -> T: ...
    def integer(self, lo: int, hi: int) -> int: ...
    def text(self, lo: int, hi: int, *, ident: bool = False) -> str: ...
    def number(self) -> float: ...
    def binary(self, hi: int) -> bytes: ...


class Drawn:
    """Choices drawn by hypothesis (`st.data()`), so a failure shrinks."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def one(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(_integers(lo, hi))

    def text(self, lo: int, hi: int, *, ident: bool = False) -> str:
        return self.data.draw(_texts(lo, hi, ident))

    def number(self) -> float:
        return self.data.draw(_FLOATS)

    def binary(self, hi: int) -> bytes:
        return self.data.draw(_binaries(hi))


# Strategies are built once: building one per draw costs more than the draw.
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@cache
def _texts(lo: int, hi: int, ident: bool) -> st.SearchStrategy[str]:
    alphabet = _ID_CHARS if ident else st.characters(codec="utf-8")
    return st.text(alphabet, min_size=lo, max_size=hi)


@cache
def _binaries(hi: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=hi)


class Seeded:
    """The same choices from `random.Random` (reproducible by seed, cheap per record)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def one(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def text(self, lo: int, hi: int, *, ident: bool = False) -> str:
        alphabet = _SEEDED_ALPHABET if ident else _SEEDED_FREE
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(lo, hi)))

    def number(self) -> float:
        return self.rng.choice([0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, self.rng.uniform(-1e9, 1e9)])

    def binary(self, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, hi))


# -- the contracts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """What a parser accepts, as the contract (docs/contract.md, schemas/json/) states it."""

    name: str
    schema_file: str
    ids: tuple[str, ...]  # required identifiers: 1-256 characters once trimmed
    types: tuple[str, ...]  # the types a valid record uses
    type_max: int | None  # the type's length limit (engagement: 64)
    unknown_type: DeadLetterKind  # what an unknown type is dead-lettered as
    texts: dict[str, int] = field(default_factory=dict)  # optional strings and their limits

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.ids, "type", "occurred_at")

    def validator(self) -> Any:
        return _validator(self.schema_file)


@cache
def _validator(name: str) -> Any:
    import jsonschema

    schema = json.loads((REPO / "schemas" / "json" / name).read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


ENGAGEMENT = Contract(
    name="leads.engagement",
    schema_file="engagement.v1.schema.json",
    ids=("event_id", "lead_id"),
    types=tuple(sorted(KNOWN_EVENT_TYPES)),
    type_max=64,
    unknown_type=DeadLetterKind.UNKNOWN_TYPE,
    texts={"source": 256},
)
ACTIVITY = Contract(
    name="sales.activity",
    schema_file="activity.v1.schema.json",
    ids=("activity_id", "lead_id"),
    types=("contacted", "bant_assessed", "sales_action", "disqualified", "won", "lost"),
    type_max=None,
    unknown_type=DeadLetterKind.INVALID_EVENT,
    texts={"owner": 256, "reason": 2000},
)
BANT = ("budget", "authority", "need", "timeframe")

# occurred_at: RFC 3339 with an offset, years 1900-2999 (streams.pipeline.intake).
FIRST_YEAR, LAST_YEAR = 1900, 2999
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})$"
)
_OFFSETS = (0, 60, -300, 330, 345, -570, 840, -719, 23 * 60 + 59, -(23 * 60 + 59))


@dataclass(frozen=True)
class Record:
    """A Kafka record to parse and the verdict it must get."""

    key: bytes | None
    value: bytes | None
    kind: DeadLetterKind | str | None  # None: accepted; ANY: the oracle decides; DEAD: any kind
    words: tuple[str, ...] = ()  # the dead letter's reason must contain each
    mutation: str = "valid"
    fields: dict[str, Any] = field(default_factory=dict)  # a valid record's fields, as sent
    at: datetime | None = None  # a valid record's occurred_at, as an instant


# -- valid records --------------------------------------------------------------------------------


_PADS = (("", ""), ("", ""), ("", ""), ("", ""), (" ", ""), ("", " "), ("\t", ""), ("\n ", " "))


def identifier(p: Pick, pool: Sequence[str] | None = None) -> str:
    """1-256 characters once trimmed; sometimes padded with whitespace the parser trims."""
    core = p.one(pool) if pool else p.text(1, p.one([8, 24, 256]), ident=True)
    before, after = p.one(_PADS)
    return before + core + after


def timestamp(p: Pick, lo: int = FIRST_YEAR, hi: int = LAST_YEAR) -> tuple[str, datetime]:
    """An RFC 3339 string with an offset and the instant it names (local years lo..hi)."""
    first = datetime(lo, 1, 1)
    span = (datetime(hi, 12, 31) - first).total_seconds()
    at = first + timedelta(seconds=p.integer(0, int(span)))
    variant = p.integer(0, 15)
    if variant % 4 == 1:
        at = at.replace(microsecond=p.one([500_000, 123_456, 1]))
    at = at.replace(tzinfo=timezone(timedelta(minutes=_OFFSETS[variant % len(_OFFSETS)])))
    text = at.isoformat()
    if at.utcoffset() == timedelta(0):
        text = text.replace("+00:00", ("Z", "z", "+00:00")[variant % 3])
    if variant == 15:
        text = text.replace("T", " ", 1)
    elif variant == 14:
        text = text.replace("T", "t", 1)
    return text, at


def json_value(p: Pick, depth: int = 2) -> Any:
    """Any JSON value orjson can write (ints within 64 bits, finite floats), shallowly nested."""
    choice = p.integer(0, 7 if depth > 0 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return p.one([True, False])
    if choice == 2:
        return p.integer(-(2**63), 2**64 - 1)
    if choice == 3:
        return p.number()
    if choice in (4, 5):
        return p.text(0, 40)
    if choice == 6:
        return [json_value(p, depth - 1) for _ in range(p.integer(0, 3))]
    return {p.text(0, 12): json_value(p, depth - 1) for _ in range(p.integer(0, 3))}


def scalar(p: Pick) -> Any:
    return p.one([None, True, p.integer(-(2**63), 2**63), p.number(), p.text(0, 30), "1200"])


def _extras(p: Pick, taken: set[str]) -> dict[str, Any]:
    """Unknown fields, which the contract says are ignored."""
    names = [n for n in ("x_trace", "schema", "v", "EVENT_ID", "_meta") if n not in taken]
    return {p.one(names): json_value(p) for _ in range(p.integer(0, 2))}


def engagement_fields(
    p: Pick, types: Sequence[str], leads: Sequence[str] | None = None, ids: Sequence[str] = ()
) -> dict[str, Any]:
    """The fields of a valid `leads.engagement` record."""
    data: dict[str, Any] = {
        "event_id": identifier(p, ids or None),
        "lead_id": identifier(p, leads),
        "type": p.one(types) + p.one(["", "", " "]),
        "occurred_at": timestamp(p)[0],
    }
    if p.integer(0, 2) == 0:
        data["source"] = p.one([None, p.text(0, 256)])
    if p.integer(0, 1) == 0:
        data["properties"] = p.one([None, {p.text(0, 16): json_value(p) for _ in range(3)}])
    if p.integer(0, 1) == 0:
        attrs = ["industry", "seniority", "company_size", "job_title", "country", p.text(0, 20)]
        data["attributes"] = {p.one(attrs): scalar(p) for _ in range(p.integer(0, 4))}
    data.update(_extras(p, set(data)))
    return data


def activity_fields(
    p: Pick, leads: Sequence[str] | None = None, ids: Sequence[str] = ()
) -> dict[str, Any]:
    """The fields of a valid `sales.activity` record."""
    kind = p.one(ACTIVITY.types)
    data: dict[str, Any] = {
        "activity_id": identifier(p, ids or None),
        "lead_id": identifier(p, leads),
        "type": kind,
        "occurred_at": timestamp(p)[0],
    }
    if kind == "bant_assessed" or p.integer(0, 3) == 0:
        data["bant"] = {c: p.one([True, False]) for c in BANT}
    elif p.integer(0, 3) == 0:
        data["bant"] = None
    for name, limit in ACTIVITY.texts.items():
        if p.integer(0, 2) == 0:
            data[name] = p.one([None, p.text(0, min(limit, 300))])
    data.update(_extras(p, set(data)))
    return data


ENCODERS: tuple[Callable[[Any], bytes], ...] = (
    orjson.dumps,
    lambda d: json.dumps(d).encode(),  # ASCII with \u escapes (surrogate pairs for emoji)
    lambda d: json.dumps(d, ensure_ascii=False, indent=2).encode(),
)


def encode(p: Pick, data: Any) -> bytes:
    return p.one(ENCODERS)(data)


def key_for(p: Pick, data: dict[str, Any]) -> bytes | None:
    """The Kafka key a well-behaved producer sets: the lead id (as the parser trims it) or none."""
    return p.one([data["lead_id"].strip().encode(), data["lead_id"].strip().encode(), None])


def valid(p: Pick, contract: Contract, types: Sequence[str] = ()) -> Record:
    data = (
        engagement_fields(p, types or contract.types)
        if contract is ENGAGEMENT
        else activity_fields(p)
    )
    text, at = timestamp(p)
    data["occurred_at"] = text  # replaces the drawn one, to know the instant it names
    return Record(key_for(p, data), encode(p, data), None, fields=data, at=at)


# -- hostile records ------------------------------------------------------------------------------

WRONG_TYPES: tuple[Any, ...] = (17, -1.5, True, [], ["x"], {}, {"a": 1})
BAD_TIMES: tuple[tuple[Any, tuple[str, ...]], ...] = (
    ("", ("occurred_at",)),
    ("yesterday", ("occurred_at",)),
    ("2025-13-01T00:00:00Z", ("occurred_at", "month")),
    ("2025-02-30T00:00:00Z", ("occurred_at",)),
    ("2025-01-01T25:00:00Z", ("occurred_at",)),
    ("2025-01-01T00:00:00", ("occurred_at", "timezone")),
    ("2025-01-01", ("occurred_at",)),
    ("2025-01-01T00:00:00+24:00", ("occurred_at",)),
    ("1700000000", ("occurred_at", "RFC 3339")),
    ("1700000000000", ("occurred_at", "RFC 3339")),
    (1700000000, ("occurred_at", "RFC 3339")),
    (1.7e9, ("occurred_at", "RFC 3339")),
    (253402300800, ("occurred_at", "RFC 3339")),
    (-1, ("occurred_at", "RFC 3339")),
    ("0001-01-01T00:00:00+01:00", ("occurred_at", "1900")),
    ("0001-01-01T00:00:00Z", ("occurred_at", "1900")),
    ("1899-12-31T23:59:59Z", ("occurred_at", "1900")),
    ("3000-01-01T00:00:00Z", ("occurred_at", "2999")),
    ("9999-12-31T23:59:59-01:00", ("occurred_at", "2999")),
    ("9999-12-31T23:59:59+01:00", ("occurred_at", "2999")),
    ("+002025-01-01T00:00:00Z", ("occurred_at",)),
    ("2025-W01-1T00:00:00Z", ("occurred_at",)),
    ("Tue, 04 Mar 2025 10:15:00 GMT", ("occurred_at",)),
    ("2025-03-04T10:15:00 +01:00", ("occurred_at",)),
)
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82")
NON_OBJECTS = (b"[]", b"[1, 2]", b'"event"', b"42", b"-0.5", b"true", b"null", b"[{}]")


def _dump(p: Pick, data: Any) -> bytes:
    return encode(p, data)


def _names(contract: Contract, p: Pick) -> str:
    return p.one([*contract.required, *contract.texts])


def _missing(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = p.one(c.required)
    del data[name]
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name, "Field required"), "missing")


def _wrong_type(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = _names(c, p)
    bad = p.one(WRONG_TYPES if name in c.texts else (*WRONG_TYPES, None))
    data[name] = bad
    if name == "occurred_at" and isinstance(bad, int | float) and not isinstance(bad, bool):
        return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name, "RFC 3339"), "wrong-type")
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name,), "wrong-type")


def _blank(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = p.one([*c.ids, "type"])
    data[name] = p.one(["", " ", "\t\n", "   "])
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name,), "blank")


def _huge(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    """A string over its limit: the field is named, or the record is oversized."""
    limits = {**{n: 256 for n in c.ids}, **c.texts}
    if c.type_max:
        limits["type"] = c.type_max
    name = p.one(sorted(limits))
    data[name] = p.one(["x", "é", "日"]) * (limits[name] + p.one([1, 2, 1000, 70_000]))
    value = _dump(p, data)
    key = p.one([None, b"k"])
    if len(value) > MAX_BYTES:
        words = (str(len(value)), "max_event_bytes")
        return Record(key, value, DeadLetterKind.OVERSIZED, words, "huge")
    return Record(key, value, DeadLetterKind.INVALID_EVENT, (name, "at most"), "huge")


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def _deep(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    """Deep nesting: within orjson's limit (1024) free-form properties accept it; beyond it the
    record is not JSON; in a field that must be a scalar or a flat object it is named."""
    if c is ENGAGEMENT and p.integer(0, 1):
        data["properties"] = {"deep": _nested(p.integer(2, 200))}
        return Record(key_for(p, data), orjson.dumps(data), None, mutation="deep-ok", fields=data)
    depth = p.integer(1100, 3000)
    text = orjson.dumps({**data, "properties": "@@"}).replace(b'"@@"', b"[" * depth + b"]" * depth)
    if p.integer(0, 2) == 0:
        text = b"[" * depth + b"]" * depth
    if len(text) > MAX_BYTES:
        return Record(None, text, DeadLetterKind.OVERSIZED, ("max_event_bytes",), "deep")
    return Record(None, text, DeadLetterKind.NOT_JSON, ("JSON", "depth"), "deep")


def _deep_field(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = p.one([*c.ids, "occurred_at", *(["attributes"] if c is ENGAGEMENT else ["bant"])])
    data[name] = _nested(p.integer(2, 250))  # orjson writes up to 254 levels
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name,), "deep-field")


def _nan(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = p.one([*c.required, "extra"])
    data[name] = "@@"
    literal = p.one([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"nan"])
    text = orjson.dumps(data).replace(b'"@@"', literal)
    return Record(key_for(p, data) if "lead_id" in data else None, text,
                  DeadLetterKind.NOT_JSON, ("JSON",), "nan")  # fmt: skip


def _bad_time(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    if p.integer(0, 3) == 0:  # a well-formed time outside the accepted years
        text, _ = timestamp(p, *p.one([(1, FIRST_YEAR - 1), (LAST_YEAR + 1, 9999)]))
        data["occurred_at"] = text
        return _dead(p, data, DeadLetterKind.INVALID_EVENT, ("occurred_at",), "bad-time")
    bad, words = p.one(BAD_TIMES)
    data["occurred_at"] = bad
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, words, "bad-time")


def _random_time(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    data["occurred_at"] = p.text(0, 40)
    return Record(key_for(p, data), _dump(p, data), ANY, (), "random-time", data)


def _not_utf8(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    value = orjson.dumps(data)
    at = p.integer(0, len(value))
    value = value[:at] + p.one(BAD_UTF8) + value[at:]
    return Record(key_for(p, data), value, DeadLetterKind.NOT_JSON, ("JSON",), "not-utf8")


def _latin1(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    data["lead_id"] = "Müller-" + data["lead_id"].strip()
    value = orjson.dumps(data).decode().encode("latin-1", "replace")
    return Record(None, value, DeadLetterKind.NOT_JSON, ("UTF-8",), "latin1")


def _empty_key(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    words = ("key", "''", "lead_id")
    return Record(b"", _dump(p, data), DeadLetterKind.KEY_MISMATCH, words, "empty-key")


def _other_key(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    lead = data["lead_id"].strip()
    key = p.one([lead + "x", " " + lead, lead.upper() + "-", "\udcff"]).encode("utf-8", "replace")
    key = p.one([key, b"\xff" + lead.encode(), p.binary(40)])
    if key == lead.encode():
        key = b"\x00" + key
    words = ("key", "differs", "lead_id")
    return Record(key, _dump(p, data), DeadLetterKind.KEY_MISMATCH, words, "other-key")


def _oversized(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    data["padding"] = "p" * (MAX_BYTES + p.integer(1, 5000))
    value = _dump(p, data)
    words = (str(len(value)), str(MAX_BYTES), "max_event_bytes")
    return Record(key_for(p, data), value, DeadLetterKind.OVERSIZED, words, "oversized")


def _unknown_type(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    name = p.one(["tiktok_like", "EMAIL_OPEN", "email-open", "won!", "ページ閲覧", "x" * 64])
    data["type"] = name
    words = ("type", repr(name)) if c is ENGAGEMENT else ("type", "Input should be")
    return _dead(p, data, c.unknown_type, words, "unknown-type")


def _none_value(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    words = ("empty record",)
    return Record(key_for(p, data), None, DeadLetterKind.INVALID_EVENT, words, "none")


def _not_object(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    value = p.one([*NON_OBJECTS, orjson.dumps([data])])
    words = ("expected a JSON object",)
    return Record(None, value, DeadLetterKind.INVALID_EVENT, words, "not-object")


def _truncated(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    value = _dump(p, data)
    value = value[: p.integer(0, len(value) - 1)]
    return Record(None, value, DeadLetterKind.NOT_JSON, ("JSON",), "truncated")


def _random_bytes(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    return Record(p.one([None, b"", b"k"]), p.binary(300), DEAD, (), "random-bytes")


def _bytes_around(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    """A byte order mark, a NUL, a second document, trailing garbage: the oracle decides."""
    value = orjson.dumps(data)
    value = p.one([b"\xef\xbb\xbf" + value, value + b"\x00", value + value, value + b" x",
                   b" \n" + value + b"\r\n", value.replace(b":", b" : ")])  # fmt: skip
    return Record(key_for(p, data), value, ANY, (), "bytes-around", data)


def _bad_object_field(p: Pick, c: Contract, data: dict[str, Any]) -> Record:
    """Engagement: properties/attributes of the wrong shape. Sales: a broken BANT."""
    if c is ENGAGEMENT:
        name = p.one(["properties", "attributes"])
        if name == "attributes" and p.integer(0, 1):
            attr = p.one(["industry", "company_size"])
            data["attributes"] = {attr: p.one([{"name": "x"}, [1], []])}
            return _dead(p, data, DeadLetterKind.INVALID_EVENT, (f"attributes.{attr}",), "shape")
        data[name] = p.one(["text", 5, ["a"], True])
        return _dead(p, data, DeadLetterKind.INVALID_EVENT, (name,), "shape")
    return _bad_bant(p, data)


def _bad_bant(p: Pick, data: dict[str, Any]) -> Record:
    data["type"] = "bant_assessed"
    bant = {c: True for c in BANT}
    broken = p.integer(0, 4)
    if broken == 0:
        data.pop("bant", None)
        return _dead(p, data, DeadLetterKind.INVALID_EVENT, ("bant", "required"), "bant")
    if broken == 1:
        criterion = p.one(BANT)
        del bant[criterion]
        words: tuple[str, ...] = (f"bant.{criterion}", "required")
    elif broken == 2:
        bant["champion"] = True
        words = ("bant.champion", "Extra inputs")
    elif broken == 3:
        criterion = p.one(BANT)
        bant[criterion] = p.one(["yes", "no", 1, 0, "true", None, "", 0.0])  # type: ignore[assignment]
        words = (f"bant.{criterion}", "boolean")
    else:
        data["bant"] = p.one([[True, True, True, True], "BANT", 4])
        return _dead(p, data, DeadLetterKind.INVALID_EVENT, ("bant",), "bant")
    data["bant"] = bant
    return _dead(p, data, DeadLetterKind.INVALID_EVENT, words, "bant")


def _dead(
    p: Pick, data: dict[str, Any], kind: DeadLetterKind, words: tuple[str, ...], name: str
) -> Record:
    value = _dump(p, data)
    if len(value) > MAX_BYTES:
        return Record(None, value, DeadLetterKind.OVERSIZED, ("max_event_bytes",), name)
    # The key a producer would set from the record's (broken) lead id, or none.
    lead = data.get("lead_id")
    key = p.one([lead.strip().encode(), None]) if isinstance(lead, str) and lead.strip() else None
    return Record(key, value, kind, words, name)


MUTATIONS: tuple[Callable[[Pick, Contract, dict[str, Any]], Record], ...] = (
    _missing,
    _wrong_type,
    _blank,
    _huge,
    _deep,
    _deep_field,
    _nan,
    _bad_time,
    _random_time,
    _not_utf8,
    _latin1,
    _empty_key,
    _other_key,
    _oversized,
    _unknown_type,
    _none_value,
    _not_object,
    _truncated,
    _random_bytes,
    _bytes_around,
    _bad_object_field,
)


def hostile(p: Pick, contract: Contract, types: Sequence[str] = ()) -> Record:
    """A valid record with one named mutation, and the verdict that mutation must get."""
    base = valid(p, contract, types).fields
    return p.one(MUTATIONS)(p, contract, dict(base))


def any_record(p: Pick, contract: Contract, types: Sequence[str] = ()) -> Record:
    return valid(p, contract, types) if p.integer(0, 2) == 0 else hostile(p, contract, types)


# -- the oracle ------------------------------------------------------------------------------------


def accepted_by_contract(
    contract: Contract, key: bytes | None, value: bytes | None, known_types: frozenset[str]
) -> str | None:
    """Why the contract refuses this record, or None when it is acceptable.

    Independent of the parser: the JSON Schema in schemas/json/ (jsonschema), plus the rules the
    schema cannot say (RFC 3339 shape and years, trimmed identifiers, key = lead_id, size, the
    rules' event types, BANT required for bant_assessed).
    """
    if value is None or len(value) > MAX_BYTES:
        return "no value or oversized"
    try:
        data = json.loads(value.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not UTF-8 JSON: {exc}"
    if not isinstance(data, dict):
        return "not an object"
    error = next(contract.validator().iter_errors(data), None)
    if error is not None:
        return f"schema: {error.message}"
    problem = _semantic_problem(contract, data, known_types)
    if problem:
        return problem
    if key is not None and key != data["lead_id"].strip().encode():
        return "key differs from lead_id"
    return None


def _semantic_problem(
    contract: Contract, data: dict[str, Any], known_types: frozenset[str]
) -> str | None:
    for name in (*contract.ids, "type"):
        if not data[name].strip() or len(data[name].strip()) > 256:
            return f"{name} blank or too long once trimmed"
    match = _RFC3339.match(data["occurred_at"])
    if not match or not FIRST_YEAR <= int(match.group(1)) <= LAST_YEAR:
        return "occurred_at not RFC 3339 with offset in the years 1900-2999"
    if contract is ENGAGEMENT and data["type"].strip() not in known_types:
        return "unknown type"
    if contract is ACTIVITY and data["type"] == "bant_assessed" and data.get("bant") is None:
        return "bant_assessed without bant"
    return None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
