"""Every way a `sales.activity` record is dead-lettered, one test each, through the sales side's
shell (SalesService, in-memory store and publisher).

The paths are those of streams.pipeline.intake.parse_record with the SalesActivity model (what
streams.pipeline.sales does with every record of the activity topic): no value, oversized, not
UTF-8 JSON, not an object, a field missing or invalid (ids, type, occurred_at, BANT, owner,
reason), the key not the lead id. `sales.activity` has no `unknown_type` kind: its type is one of
six, so an unknown one is `invalid_event` naming `type`.

Each test checks the dead-letter record as it goes to Kafka: the deadletter topic, the original
key and value byte for byte, the kind, a reason naming the field or problem, and the source
topic/partition/offset; and that a good record in the same batch is still counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.deadletter import DEADLETTER_HEADERS, DeadLetterHeaders, DeadLetterKind
from streams.core.rules import parse_rules
from streams.kafka import OutRecord
from streams.observability import Metrics
from streams.pipeline.batch import InRecord
from streams.pipeline.sales import SalesService
from streams.settings import load_settings
from tests.unit.pipeline.test_scoring import MemoryStore, SlowPublisher

pytestmark = pytest.mark.unit

RULES = parse_rules({"mql": {"threshold": 20}, "engagement": {"pricing_page_view": 25}})
MAX_BYTES = 4096
PARTITION, OFFSET = 3, 4242
GOOD: dict[str, Any] = {
    "activity_id": "act-1",
    "lead_id": "lead-42",
    "type": "bant_assessed",
    "occurred_at": "2026-03-02T09:15:00+09:00",
    "owner": "rep-7",
    "bant": {"budget": True, "authority": True, "need": False, "timeframe": True},
    "reason": "first call",
}


def body(**changes: Any) -> bytes:
    """GOOD with fields changed; a value of `...` removes the field."""
    data = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.fixture
def sales(tmp_path: Path) -> tuple[SalesService, SlowPublisher]:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("mql: {threshold: 20}\n", encoding="utf-8")
    settings = load_settings(
        rules=rules_file, redis_retry_max_seconds=0.01, max_event_bytes=MAX_BYTES
    )
    publisher = SlowPublisher()
    service = SalesService(settings, RULES, MemoryStore(), publisher, Metrics())  # type: ignore[arg-type]
    return service, publisher


async def dead_letter_of(
    sales: tuple[SalesService, SlowPublisher],
    value: bytes | None,
    key: bytes | None = b"lead-42",
    kind: DeadLetterKind = DeadLetterKind.INVALID_EVENT,
    words: tuple[str, ...] = (),
) -> DeadLetterHeaders:
    """Process the record beside a good one; return the dead letter's headers after checking
    what every dead letter must carry."""
    service, publisher = sales
    topic = service.settings.activity
    good = orjson.dumps({**GOOD, "activity_id": "act-good", "lead_id": "lead-9"})
    records = [
        InRecord(key, value, topic, PARTITION, OFFSET),
        InRecord(b"lead-9", good, topic, PARTITION, OFFSET + 1),
    ]
    result = await service.process(records)
    assert result.counted == 1, "the good record after the bad one is still counted"
    assert len(result.deadletters) == 1
    sent: list[OutRecord] = [r for r in publisher.sent if r.topic == service.settings.deadletter]
    assert len(sent) == 1
    (letter,) = sent
    assert letter.key == key and letter.value == value  # the original bytes, byte for byte
    assert (letter.key is None) == (key is None) and (letter.value is None) == (value is None)
    assert [name for name, _ in letter.headers] == list(DEADLETTER_HEADERS.values())
    headers = DeadLetterHeaders.from_kafka(letter.headers)
    assert (headers.source_topic, headers.source_partition, headers.source_offset) == (
        topic,
        PARTITION,
        OFFSET,
    )
    assert headers.error_kind is kind, headers
    for word in words:
        assert word in headers.error_message, (word, headers.error_message)
    assert headers == result.deadletters[0].headers
    return headers


async def test_a_record_without_a_value(sales) -> None:
    await dead_letter_of(sales, None, words=("empty record",))


async def test_an_oversized_record(sales) -> None:
    value = body(reason="r" * 2000, owner="o" * 250, padding="p" * 2000)
    assert len(value) > MAX_BYTES
    await dead_letter_of(
        sales,
        value,
        kind=DeadLetterKind.OVERSIZED,
        words=(str(len(value)), str(MAX_BYTES), "max_event_bytes"),
    )


@pytest.mark.parametrize(
    "value",
    [b'{"activity_id": "act-1", "lead_id": ', b"", b"{'type': 'won'}", b'{"type": NaN}'],
    ids=["truncated", "empty", "single-quotes", "nan"],
)
async def test_a_record_that_is_not_json(sales, value: bytes) -> None:
    await dead_letter_of(sales, value, kind=DeadLetterKind.NOT_JSON, words=("not valid",))


async def test_a_record_that_is_not_utf8(sales) -> None:
    value = body(owner="Müller").decode().encode("latin-1")
    await dead_letter_of(sales, value, kind=DeadLetterKind.NOT_JSON, words=("UTF-8",))


@pytest.mark.parametrize(
    ("value", "got"), [(b"[1, 2]", "list"), (b'"won"', "str"), (b"null", "NoneType")]
)
async def test_a_record_that_is_not_an_object(sales, value: bytes, got: str) -> None:
    await dead_letter_of(sales, value, words=("expected a JSON object", got))


@pytest.mark.parametrize("field", ["activity_id", "lead_id", "type", "occurred_at"])
async def test_a_required_field_missing(sales, field: str) -> None:
    await dead_letter_of(sales, body(**{field: ...}), words=(field, "Field required"))


@pytest.mark.parametrize("field", ["activity_id", "lead_id"])
@pytest.mark.parametrize("bad", ["", "   ", 42, None, "x" * 257], ids=repr)
async def test_an_invalid_identifier(sales, field: str, bad: Any) -> None:
    key = None if field == "lead_id" else b"lead-42"
    await dead_letter_of(sales, body(**{field: bad}), key=key, words=(field,))


@pytest.mark.parametrize("bad", ["called", "WON", "", 3, None])
async def test_an_unknown_activity_type(sales, bad: Any) -> None:
    await dead_letter_of(sales, body(type=bad), words=("type", "'contacted'", "'lost'"))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("yesterday", ()),
        ("2026-03-02T09:15:00", ("timezone",)),
        ("2026-02-30T09:15:00Z", ()),
        (1772410500, ("RFC 3339", "int")),
        ("1772410500", ("RFC 3339",)),
        ("9999-12-31T23:59:59-01:00", ("2999",)),
        ("0001-01-01T00:00:00+01:00", ("1900",)),
    ],
    ids=["not-a-time", "naive", "no-such-day", "epoch-number", "epoch-text", "year-9999",
         "year-1"],
)  # fmt: skip
async def test_an_invalid_occurred_at(sales, bad: Any, words: tuple[str, ...]) -> None:
    await dead_letter_of(sales, body(occurred_at=bad), words=("occurred_at", *words))


@pytest.mark.parametrize("bant", [..., None], ids=["missing", "null"])
async def test_a_bant_assessment_without_bant(sales, bant: Any) -> None:
    await dead_letter_of(sales, body(bant=bant), words=("bant", "required", "bant_assessed"))


@pytest.mark.parametrize(
    ("bant", "words"),
    [
        ({"budget": True, "authority": True, "need": True}, ("bant.timeframe", "required")),
        ({**GOOD["bant"], "champion": True}, ("bant.champion", "Extra inputs")),
        ({**GOOD["bant"], "need": "no"}, ("bant.need", "boolean")),
        ({**GOOD["bant"], "budget": 1}, ("bant.budget", "boolean")),
        ({**GOOD["bant"], "authority": None}, ("bant.authority", "boolean")),
        ([True, True, True, True], ("bant",)),
    ],
    ids=["criterion-missing", "extra-criterion", "yes-no-text", "number", "null", "list"],
)
async def test_a_malformed_bant(sales, bant: Any, words: tuple[str, ...]) -> None:
    await dead_letter_of(sales, body(bant=bant), words=words)


@pytest.mark.parametrize(
    ("field", "bad"),
    [("owner", "o" * 257), ("owner", 7), ("reason", "r" * 2001), ("reason", ["late"])],
    ids=["owner-too-long", "owner-number", "reason-too-long", "reason-list"],
)
async def test_an_invalid_optional_field(sales, field: str, bad: Any) -> None:
    await dead_letter_of(sales, body(**{field: bad}, padding=...), words=(field,))


async def test_a_key_that_is_not_the_lead_id(sales) -> None:
    await dead_letter_of(
        sales,
        body(),
        key=b"lead-7",
        kind=DeadLetterKind.KEY_MISMATCH,
        words=("'lead-7'", "'lead-42'", "key"),
    )


async def test_an_empty_key(sales) -> None:
    await dead_letter_of(
        sales, body(), key=b"", kind=DeadLetterKind.KEY_MISMATCH, words=("''", "'lead-42'")
    )


async def test_a_key_that_is_not_utf8(sales) -> None:
    await dead_letter_of(
        sales, body(), key=b"lead-42\xff", kind=DeadLetterKind.KEY_MISMATCH, words=("key",)
    )


async def test_a_huge_key_gives_a_short_reason(sales) -> None:
    # The reason travels in a header beside the original key: it must not repeat a huge key.
    kind = DeadLetterKind.KEY_MISMATCH
    headers = await dead_letter_of(sales, body(), b"k" * 100_000, kind, ("'lead-42'",))
    assert len(headers.error_message) < 300


async def test_every_dead_letter_kind_of_the_sales_side_is_covered() -> None:
    # The kinds this file shows for sales.activity; unknown_type is the engagement side's only.
    shown = {
        DeadLetterKind.INVALID_EVENT,
        DeadLetterKind.OVERSIZED,
        DeadLetterKind.NOT_JSON,
        DeadLetterKind.KEY_MISMATCH,
    }
    assert set(DeadLetterKind) - shown == {DeadLetterKind.UNKNOWN_TYPE}
