"""Issue 16 on the real stack: output for machines, `leadflow tail`, `leadflow sales record`.

Every command here runs as a user's subprocess with stdout and stderr as pipes and the default
terminal width (no COLUMNS): what a pipe or a log collector gets.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from schemas.activity import SalesActivity
from schemas.deadletter import DeadLetterHeaders, DeadLetterKind
from schemas.handoff import MqlHandoff
from streams.settings import Settings
from tests.harness import (
    ROOT,
    WorkerProcess,
    fresh_settings,
    produce,
    qualifying,
    wait_for,
)

pytestmark = pytest.mark.integration


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")
    }
    return {
        **environment,
        "LEADFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEADFLOW_REDIS_URL": settings.redis_url.get_secret_value(),
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
        **extra,
    }


def piped(settings: Settings, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`leadflow ARGS` with stdout and stderr as pipes, default width, colours not turned off."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env_of(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for stream in (result.stdout, result.stderr):
        assert "\x1b[" not in stream, (args, stream)
        assert "Traceback" not in stream, (args, stream)
    return result


def tsv(text: str) -> list[list[str]]:
    """The TSV rows of a command's stdout (a `# ` title line is not a row)."""
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("# ")]


def handoff(lead: str, n: int, at: datetime) -> tuple[bytes, bytes]:
    h = {
        "handoff_id": f"ho-{lead}-{n:02d}-{'f' * 40}",
        "lead_id": lead,
        "qualified_at": at.isoformat(),
        "score": 120.5,
        "fit_score": 55,
        "engagement_score": 65.5,
        "threshold": 100,
        "rules_version": "r1",
        "triggering_event_id": f"{lead}-e{n}",
        "reasons": [{"kind": "fit", "rule": "Decision maker [vp]", "points": 20}],
        "first_contact_due_at": (at + timedelta(hours=24)).isoformat(),
    }
    return lead.encode(), orjson.dumps(h)


async def test_tail_prints_each_record_as_tsv_or_json_and_stops_at_the_end(
    settings: Settings,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    leads = [f"lead-{i}-with-a-rather-long-id-{'x' * 30}" for i in range(5)]
    await produce(
        settings, [handoff(lead, i, now) for i, lead in enumerate(leads)], settings.handoff
    )

    started = time.monotonic()
    result = piped(settings, "tail", "handoff")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # ends at the end offsets it saw, no idle wait
    rows = tsv(result.stdout)
    header = rows[0]
    assert header[:3] == ["qualified_at", "lead_id", "score"]
    assert len(rows) == 1 + len(leads)  # one line per record: none broken over two
    assert all(len(r) == len(header) for r in rows)
    by_lead = {r[header.index("lead_id")]: r for r in rows[1:]}
    assert set(by_lead) == set(leads)  # complete ids
    assert by_lead[leads[0]][header.index("handoff_id")] == f"ho-{leads[0]}-00-{'f' * 40}"
    assert "Decision maker [vp] +20" in by_lead[leads[0]][header.index("reasons")]
    assert "5 records" in result.stderr

    # --json: one JSON object per line, each the record as it is on the topic.
    result = piped(settings, "tail", "handoff", "--json")
    assert result.returncode == 0, result.stderr
    parsed = [MqlHandoff.model_validate_json(line) for line in result.stdout.splitlines()]
    assert {h.lead_id for h in parsed} == set(leads)

    # --limit N; the topic's own name works as well as the short one.
    result = piped(settings, "tail", settings.handoff_topic, "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert len(tsv(result.stdout)) == 1 + 2

    # `handoffs` in a pipe: the same rows, its summary on stderr.
    result = piped(settings, "handoffs", "--idle", "3")
    assert result.returncode == 0, result.stderr
    rows = tsv(result.stdout)
    assert rows[0] == header and len(rows) == 1 + len(leads)
    assert "5 handoffs on" in result.stderr
    result = piped(settings, "handoffs", "--idle", "3", "--json")
    assert len([MqlHandoff.model_validate_json(x) for x in result.stdout.splitlines()]) == 5


async def test_tail_deadletter_shows_the_reason_headers(settings: Settings) -> None:
    reasons = [
        DeadLetterHeaders(
            error_kind=DeadLetterKind.NOT_JSON,
            error_message="not valid UTF-8 JSON: unexpected character: line 1 column 1 (char 0)",
            source_topic=settings.engagement,
            source_partition=3,
            source_offset=17,
        ),
        DeadLetterHeaders(
            error_kind=DeadLetterKind.INVALID_EVENT,
            error_message="occurred_at: Input should have timezone info",
            source_topic=settings.activity,
            source_partition=0,
            source_offset=4,
        ),
    ]
    from aiokafka import AIOKafkaProducer

    from streams.kafka import client_options

    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.deadletter,
            b"{not json\tat all\n",
            key=b"lead-a",
            headers=reasons[0].to_kafka(),
        )
        await producer.send_and_wait(
            settings.deadletter,
            b'{"lead_id": "lead-b"}',
            key=b"lead-b",
            headers=reasons[1].to_kafka(),
        )
    finally:
        await producer.stop()

    result = piped(settings, "tail", "deadletter")
    assert result.returncode == 0, result.stderr
    rows = tsv(result.stdout)
    header = rows[0]
    assert {
        "error.kind",
        "error.message",
        "source.topic",
        "source.partition",
        "source.offset",
    } <= set(header)
    assert len(rows) == 3 and all(len(r) == len(header) for r in rows)
    shown = {r[header.index("key")]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    assert shown["lead-a"]["error.kind"] == "not_json"
    assert shown["lead-a"]["source.offset"] == "17"
    assert shown["lead-a"]["value"] == "{not json at all"  # a tab and a newline: one line still
    assert shown["lead-b"]["error.message"] == "occurred_at: Input should have timezone info"

    result = piped(settings, "tail", "deadletter", "--json")
    lines = [orjson.loads(x) for x in result.stdout.splitlines()]
    by_key = {x["key"]: x for x in lines}
    assert by_key["lead-b"]["headers"]["leadflow.error.kind"] == "invalid_event"
    assert by_key["lead-b"]["headers"]["leadflow.source.topic"] == settings.activity
    assert by_key["lead-b"]["value"] == {"lead_id": "lead-b"}
    assert by_key["lead-a"]["value"] == "{not json\tat all\n"
    assert (
        DeadLetterHeaders.from_kafka(
            (k, v.encode()) for k, v in by_key["lead-a"]["headers"].items()
        )
        == reasons[0]
    )


async def test_tail_follow_from_end_prints_new_records(settings: Settings) -> None:
    now = datetime.now(UTC)
    await produce(settings, [handoff("old", 0, now)], settings.handoff)
    proc = subprocess.Popen(  # noqa: ASYNC220 (a user's process beside the test's loop)
        [sys.executable, "-m", "streams.cli", "tail", "handoff", "--follow", "--from-end",
         "--limit", "2", "--json"],
        env=env_of(settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await asyncio.sleep(6)  # it has started and taken the end offsets
        assert proc.poll() is None
        await produce(
            settings, [handoff("new1", 1, now), handoff("new2", 2, now)], settings.handoff
        )
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert sorted(orjson.loads(x)["lead_id"] for x in stdout.splitlines()) == ["new1", "new2"]


async def test_tail_errors_are_one_line(services: None) -> None:
    missing = fresh_settings()  # a namespace whose topics were never created
    result = piped(missing, "tail", "nope")
    assert result.returncode == 2  # an unknown name: a usage error
    assert (
        result.stderr.count("\n") == 1 and "handoff, lifecycle, alerts, deadletter" in result.stderr
    )
    result = piped(missing, "tail", "alerts")
    assert result.returncode == 3  # a topic not created yet, like every command's (not usage)
    assert result.stderr.count("\n") == 1
    assert f"{missing.alerts} does not exist" in result.stderr
    assert "leadflow topics create" in result.stderr


async def test_sales_record_sends_what_the_worker_reads(settings: Settings) -> None:
    lead = "lead-rep-1"
    result = piped(settings, "sales", "record", "contacted", lead, "--owner", "sato")
    assert result.returncode == 0, result.stderr
    sent = SalesActivity.model_validate_json(result.stdout)
    assert sent.type == "contacted" and sent.owner == "sato" and sent.lead_id == lead
    assert abs((datetime.now(UTC) - sent.occurred_at).total_seconds()) < 60

    args = ["sales", "record", "bant", lead, "--budget", "--authority", "--need",
            "--no-timeframe", "--id", "bant-1", "--at", "2026-03-02T10:00:00+09:00"]  # fmt: skip
    result = piped(settings, *args)
    assert result.returncode == 0, result.stderr
    bant = orjson.loads(result.stdout)
    assert bant["activity_id"] == "bant-1" and bant["type"] == "bant_assessed"
    assert bant["bant"] == {"budget": True, "authority": True, "need": True, "timeframe": False}
    assert result.stdout.count("\n") == 1
    result = piped(settings, "sales", "record", "lost", lead, "--reason", "went with a rival")
    assert result.returncode == 0, result.stderr
    args = ["sales", "record", "opportunity", lead, "--amount", "1200.50", "--currency", "usd"]
    result = piped(settings, *args)
    assert result.returncode == 0, result.stderr

    records = await wait_for(settings, settings.activity, lambda seen: len(seen) >= 4)
    assert all(r.key == lead.encode() for r in records)
    values = sorted((orjson.loads(r.value or b"") for r in records), key=lambda v: v["type"])
    assert [v["type"] for v in values] == [
        "bant_assessed", "contacted", "lost", "opportunity_created"
    ]  # fmt: skip
    assert values[0] == bant  # what it printed is what it sent
    assert values[2]["reason"] == "went with a rival"
    assert (values[3]["amount"], values[3]["currency"]) == ("1200.50", "USD")

    result = piped(settings, "tail", "activity")
    assert len(tsv(result.stdout)) == 5


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["won", "L1", "--at", "2026-03-02T10:00:00"], "--at"),
        (["won", "L1", "--at", "yesterday"], "--at"),
        (["bant", "L1", "--budget"], "--authority/--no-authority"),
        (["won", "L1", "--need"], "--need"),
        (["maybe", "L1"], "TYPE"),
        (["won", "  "], "LEAD"),
        (["won", "L1", "--id", ""], "--id"),
        (["won", "L1", "--owner", "x" * 300], "--owner"),
        (["won", "L1", "--amount", "10.5", "--currency", "JPY"], "--amount: 10.5 has more"),
        (["opportunity", "L1", "--amount", "5"], "--amount and --currency: give both"),
        (["won", "L1", "--amount", "5", "--currency", "ABC"], "--currency: 'ABC' is not"),
        (["contacted", "L1", "--amount", "5", "--currency", "USD"], "--amount: only"),
    ],
)
def test_sales_record_refuses_a_bad_value_naming_the_option(
    services: None, args: list[str], option: str
) -> None:
    result = piped(fresh_settings(), "sales", "record", *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {option}") and result.stderr.count("\n") == 1


async def test_worker_log_and_pipes_are_clean(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A real worker: its log is JSON lines without cursor codes; its handoffs, stage changes
    and dead letters read back through `tail`, and `explain` in a pipe shows complete ids."""
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    lead = "lead-pipe-" + "y" * 40
    now = datetime.now(UTC)
    await produce(settings, [*qualifying(lead, now), (lead.encode(), b"not json")])
    handoffs = await wait_for(settings, settings.handoff, lambda seen: len(seen) >= 1, within=60)
    handoff_id = orjson.loads(handoffs[0].value or b"")["handoff_id"]
    result = piped(settings, "sales", "record", "bant", lead, "--budget", "--authority",
                   "--need", "--no-timeframe")  # fmt: skip
    assert result.returncode == 0, result.stderr
    await wait_for(settings, settings.lifecycle, lambda seen: len(seen) >= 2, within=60)
    await wait_for(settings, settings.deadletter, lambda seen: len(seen) >= 1, within=60)

    result = piped(settings, "tail", "lifecycle")
    rows = tsv(result.stdout)
    stages = [(r[rows[0].index("from_stage")], r[rows[0].index("to_stage")]) for r in rows[1:]]
    assert ("lead", "mql") in stages and ("mql", "sql") in stages
    result = piped(settings, "tail", "deadletter")
    assert "not_json" in result.stdout and settings.engagement in result.stdout

    result = piped(settings, "explain", lead)
    assert result.returncode == 0, result.stderr
    assert handoff_id in result.stdout  # the deadlines table's ids are complete
    assert "…" not in result.stdout
    assert any(line.split("\t")[:1] == ["kind"] for line in result.stdout.splitlines())

    worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "\x1b" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(orjson.loads(line), dict), line
    assert any(orjson.loads(line).get("event") == "starting worker" for line in lines)
