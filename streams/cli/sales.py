"""`leadflow sales record TYPE LEAD`: send one sales activity, as a CRM connector would.

For trying leadflow out and for small teams without a connector. The activity is checked with
the parser the worker uses (schemas/activity.py, streams/pipeline/intake.py), keyed by lead id,
and printed as the JSON that was sent.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer

from schemas.activity import SalesActivity
from streams.cli.errors import fail, require_services, user_errors
from streams.cli.output import out
from streams.settings import Settings, load_settings

# What the command takes -> the activity type on the wire.
TYPES = {
    "contacted": "contacted",
    "bant": "bant_assessed",
    "bant_assessed": "bant_assessed",
    "action": "sales_action",
    "sales_action": "sales_action",
    "opportunity": "opportunity_created",
    "opportunity_created": "opportunity_created",
    "disqualified": "disqualified",
    "won": "won",
    "lost": "lost",
    "reassigned": "reassigned",  # with --owner: the new owner
}
BANT = ("budget", "authority", "need", "timeframe")

# A field of the activity -> the argument or option that sets it (named in errors).
OPTION = {
    "activity_id": "--id",
    "lead_id": "LEAD",
    "type": "TYPE",
    "occurred_at": "--at",
    "owner": "--owner",
    "reason": "--reason",
    "bant": "--budget/--authority/--need/--timeframe",
    "amount": "--amount",
    "currency": "--currency",
    **{f"bant.{c}": f"--{c}/--no-{c}" for c in BANT},
}


def _bant_option(criterion: str) -> Any:
    return typer.Option(
        f"--{criterion}/--no-{criterion}",
        help=f"BANT: {criterion} met or not (bant only)",
        show_default=False,
    )


def record_command(
    kind: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            help="contacted, bant, action, opportunity, disqualified, won or lost "
            "(also the wire names bant_assessed, sales_action, opportunity_created)",
            show_default=False,
        ),
    ],
    lead_id: Annotated[
        str, typer.Argument(metavar="LEAD", help="The lead's id", show_default=False)
    ],
    owner: Annotated[
        str | None, typer.Option(help="Sales rep or queue", show_default=False)
    ] = None,
    budget: Annotated[bool | None, _bant_option("budget")] = None,
    authority: Annotated[bool | None, _bant_option("authority")] = None,
    need: Annotated[bool | None, _bant_option("need")] = None,
    timeframe: Annotated[bool | None, _bant_option("timeframe")] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Why (lost, disqualified), or what was done", show_default=False),
    ] = None,
    amount: Annotated[
        str | None,
        typer.Option(
            help="opportunity, won: the deal's value, a decimal (with --currency)",
            show_default=False,
        ),
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="ISO 4217 code of --amount: JPY, USD, EUR", show_default=False),
    ] = None,
    activity_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="The activity's id, its idempotency key: the same id sent twice counts once "
            "[default: a new one]",
            show_default=False,
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="When sales did it, RFC 3339 with offset [default: now]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Send one sales activity to the activity topic (sales.activity), keyed by the lead.

    Examples: `leadflow sales record contacted LEAD --owner sato`,
    `leadflow sales record bant LEAD --budget --authority --need --no-timeframe`,
    `leadflow sales record opportunity LEAD --amount 1200000 --currency JPY`,
    `leadflow sales record won LEAD`, `leadflow sales record lost LEAD --reason "went with X"`.
    """
    with user_errors():
        settings = load_settings()
    body = build(
        kind,
        lead_id,
        owner=owner,
        bant={"budget": budget, "authority": authority, "need": need, "timeframe": timeframe},
        reason=reason,
        activity_id=activity_id,
        at=at,
        now=datetime.now(UTC),
        amount=amount,
        currency=currency,
    )
    value = check(body, settings.max_event_bytes)
    with user_errors():
        require_services(settings, kafka=True)
        asyncio.run(send(settings, body["lead_id"], value))
    out.file.write(value.decode() + "\n")
    out.file.flush()


def build(
    kind: str,
    lead_id: str,
    *,
    owner: str | None,
    bant: dict[str, bool | None],
    reason: str | None,
    activity_id: str | None,
    at: str | None,
    now: datetime,
    amount: str | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    """The activity's JSON fields from the command line (before validation)."""
    wire = TYPES.get(kind.strip().lower())
    if wire is None:
        raise fail(f"TYPE: unknown activity {kind!r}; one of {', '.join(TYPES)}", 2)
    given = {c: v for c, v in bant.items() if v is not None}
    if wire == "bant_assessed":
        missing = [c for c in BANT if c not in given]
        if missing:
            raise fail(
                ", ".join(f"--{c}/--no-{c}" for c in missing)
                + ": missing; `bant` takes every criterion, met or not",
                2,
            )
    elif given:
        raise fail(f"--{next(iter(given))}: BANT criteria go with `bant` only, not {kind}", 2)
    body: dict[str, Any] = {
        "activity_id": activity_id if activity_id is not None else f"cli-{uuid.uuid4().hex}",
        "lead_id": lead_id.strip(),
        "type": wire,
        "occurred_at": at if at is not None else now.isoformat(timespec="milliseconds"),
    }
    if owner is not None:
        body["owner"] = owner
    if wire == "bant_assessed":
        body["bant"] = {c: given[c] for c in BANT}
    if reason is not None:
        body["reason"] = reason
    if amount is not None:
        body["amount"] = amount.strip()
    if currency is not None:
        body["currency"] = currency.strip().upper()
    return body


def check(body: dict[str, Any], max_bytes: int) -> bytes:
    """The record as the worker will read it, or exit 2 naming the option that is wrong."""
    from streams.pipeline.intake import DeadLetter, RecordLocation, parse_record

    value = orjson.dumps(body)
    key = str(body["lead_id"]).encode()
    parsed = parse_record(SalesActivity, key, value, RecordLocation("cli", 0, 0), max_bytes)
    if not isinstance(parsed, DeadLetter):
        # Exactly what the worker keeps (identifiers stripped, as it reads them).
        return orjson.dumps(parsed.model_dump(mode="json", exclude_none=True))
    message = parsed.headers.error_message
    if parsed.headers.error_kind == "oversized":
        raise fail(f"--reason: the activity is too large ({message})", 2)
    # A rule across fields is reported on the record: "(record): Value error, amount: ...".
    message = re.sub(r"^\(record\): (Value error, )?", "", message)
    match = re.match(r"([\w.]+(?: and [\w.]+)?): (.*)", message)
    fields, problem = (match.group(1), match.group(2)) if match else ("", message)
    options = [OPTION.get(f) or OPTION.get(f.split(".")[0]) for f in fields.split(" and ")]
    option = " and ".join(o for o in options if o) or "the activity"
    raise fail(f"{option}: {problem}", 2)


async def send(settings: Settings, lead_id: str, value: bytes) -> None:
    """Send one record to the activity topic, keyed by lead; return once Kafka has it."""
    from streams.kafka import OutRecord, Producer

    producer = Producer(settings, client_id="leadflow-sales")
    await producer.start(require_topics=[settings.activity])
    try:
        await producer.publish([OutRecord(settings.activity, lead_id.encode(), value)])
    finally:
        await producer.stop()
