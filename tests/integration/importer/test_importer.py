"""`leadflow import` as an operator runs it: a subprocess producing to the real broker."""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from streams.bootstrap import open_store
from streams.importer import Mapped, load_mapping, map_row, prepare, rejected_path
from streams.settings import Settings
from tests.harness import (
    ROOT,
    WorkerProcess,
    consumer_caught_up,
    eventually,
    free_port,
    read_topic,
)

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "data" / "imports"
WEBINAR_MAPPING = DATA / "generic_webinar_mapping.yaml"


def leadflow_import(
    settings: Settings, path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "LEADFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "import", str(path), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy(name: str, to: Path) -> Path:
    target = to / name
    shutil.copy(DATA / name, target)
    return target


def expected(
    path: Path, profile: str | None, mapping: Path | None = None, timezone: str | None = None
) -> list[tuple[str, str]]:
    """(lead_id, event_id) of every row the importer maps, in file order, by the pure mapping."""
    from streams.core.rules import load_rules

    known = load_rules(ROOT / "tests" / "data" / "rules.yaml").event_types
    with path.open("rb") as fh:
        reader, compiled = prepare(
            path, fh, load_mapping(profile, mapping), known, timezone=timezone
        )
        out = []
        for _, row, _, problem in reader.rows():
            if problem is None and row is not None:
                result = map_row(compiled, row)
                if isinstance(result, Mapped):
                    out.append((result.event.lead_id, result.event.event_id))
        return out


async def on_topic(settings: Settings) -> list[tuple[str, str, dict[str, object]]]:
    """(key, event_id, body) of every record on the engagement topic."""
    records = await read_topic(settings, settings.engagement)
    out = []
    for r in records:
        assert r.key is not None and r.value is not None
        body = orjson.loads(r.value)
        out.append((r.key.decode(), body["event_id"], body))
    return out


def rejected_lines(path: Path) -> list[tuple[str, str]]:
    with rejected_path(path).open(encoding="utf-8", newline="") as fh:
        delimiter = ";" if "webinar" in path.name else ","
        return [
            (row["leadflow_line"], row["leadflow_error"].split(":")[0])
            for row in csv.DictReader(fh, delimiter=delimiter)
        ]


async def test_marketo_sample_lands_keyed_by_lead_with_marketo_ids(
    settings: Settings, tmp_path: Path
) -> None:
    path = copy("marketo_activities.csv", tmp_path)
    result = await asyncio.to_thread(leadflow_import, settings, path, "--profile", "marketo")
    assert result.returncode == 0, result.stderr + result.stdout
    # In a pipe the summary table is TSV: one "row<TAB>count" line each.
    lines = result.stdout.splitlines()
    assert "produced\t10" in lines and "duplicates within the file\t1" in lines

    records = await on_topic(settings)
    assert sorted((k, i) for k, i, _ in records) == sorted(set(expected(path, "marketo")))
    assert {i for _, i, _ in records} == {f"600{n:02d}" for n in (1, 2, 3, 4, 5, 8, 9, 10, 11, 13)}
    assert all(key == body["lead_id"] for key, _, body in records)
    types = {i: body["type"] for _, i, body in records}
    assert types["60002"] == "pricing_page_view" and types["60011"] == "webinar_attended"
    assert rejected_lines(path) == [
        ("16", "bad_time"),
        ("17", "missing_lead"),
        ("18", "bad_json"),
        ("19", "missing_type"),
        ("21", "bad_row"),
    ]


async def test_hubspot_csv_and_ndjson_samples(settings: Settings, tmp_path: Path) -> None:
    csv_path = copy("hubspot_events.csv", tmp_path)
    ndjson_path = copy("hubspot_events.ndjson", tmp_path)
    for path in (csv_path, ndjson_path):
        result = await asyncio.to_thread(
            leadflow_import, settings, path, "--profile", "hubspot", "--timezone", "Europe/Berlin"
        )
        assert result.returncode == 0, result.stderr + result.stdout

    want = expected(csv_path, "hubspot", timezone="Europe/Berlin") + expected(
        ndjson_path, "hubspot"
    )
    records = await on_topic(settings)
    assert sorted((k, i) for k, i, _ in records) == sorted(want)
    assert len(want) == 8
    by_id = {i: body for _, i, body in records}
    assert by_id["hs-ev-1"]["occurred_at"] == "2024-03-05T09:00:00+01:00"
    assert by_id["b1f0c6a2-0001"]["type"] == "pricing_page_view"
    assert sum(i.startswith("imp-") for i in by_id) == 2  # rows without an Event ID
    assert rejected_lines(csv_path) == [
        ("9", "bad_time"),
        ("10", "missing_lead"),
        ("11", "missing_type"),
    ]
    with rejected_path(ndjson_path).open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["leadflow_line"], r["leadflow_error"].split(":")[0]) for r in rows] == [
        ("4", "bad_json"),
        ("5", "bad_time"),
    ]
    assert rows[1]["record"].startswith('{"id":"b1f0c6a2-0005"')


async def test_reimports_and_overlapping_exports_are_counted_once(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    first = copy("generic_webinar.csv", tmp_path)
    later = copy("generic_webinar_later.csv", tmp_path)
    mapping = ("--mapping", str(WEBINAR_MAPPING))
    marketo_first = copy("marketo_activities.csv", tmp_path)
    marketo_later = copy("marketo_activities_later.csv", tmp_path)
    runs = [
        (first, mapping),
        (first, mapping),  # the same file again
        (later, mapping),  # a later export overlapping the first, columns in another order
        (marketo_first, ("--profile", "marketo")),
        (marketo_later, ("--profile", "marketo")),
    ]
    for path, args in runs:
        result = await asyncio.to_thread(leadflow_import, settings, path, *args)
        assert result.returncode == 0, result.stderr + result.stdout

    first_ids = set(expected(first, None, WEBINAR_MAPPING))
    later_ids = set(expected(later, None, WEBINAR_MAPPING))
    marketo_ids = set(expected(marketo_first, "marketo")) | set(expected(marketo_later, "marketo"))
    assert len(first_ids & later_ids) == 2 and len(later_ids - first_ids) == 2
    assert (
        len(set(expected(marketo_first, "marketo")) & set(expected(marketo_later, "marketo"))) == 2
    )

    records = await on_topic(settings)
    produced = [(k, i) for k, i, _ in records]
    # Everything produced (a file's own repeats are left out), the overlap more than once ...
    assert len(produced) == 2 * len(first_ids) + len(later_ids) + 10 + 5
    # ... but the distinct ids are exactly the union.
    assert set(produced) == first_ids | later_ids | marketo_ids

    # A worker counts each activity once per lead.
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 90, "the worker to commit every record")
    distinct: dict[str, set[str]] = defaultdict(set)
    for lead, event_id in set(produced):
        distinct[lead].add(event_id)
    store = open_store(settings)
    try:
        for lead, ids in distinct.items():
            state = await store.read_lead(lead)
            assert state is not None, lead
            assert state.events_counted == len(ids), lead
    finally:
        await store.close()


async def test_generic_mapping_rejects_are_written_next_to_the_file(
    settings: Settings, tmp_path: Path
) -> None:
    path = copy("generic_webinar.csv", tmp_path)
    result = await asyncio.to_thread(
        leadflow_import, settings, path, "--mapping", str(WEBINAR_MAPPING)
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert rejected_lines(path) == [("5", "unknown_type"), ("6", "missing_lead"), ("7", "bad_time")]
    records = await on_topic(settings)
    assert len(records) == 4
    assert {body["occurred_at"] for _, _, body in records} >= {"2024-03-05T14:02:00+01:00"}


async def test_dry_run_needs_no_kafka_and_kafka_down_exits_3(
    settings: Settings, tmp_path: Path
) -> None:
    path = copy("marketo_activities.csv", tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"
    dry = await asyncio.to_thread(
        leadflow_import, settings, path, "--profile", "marketo", "--dry-run",
        LEADFLOW_KAFKA_BOOTSTRAP=nowhere,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr + dry.stdout
    assert "would be produced\t10" in dry.stdout.splitlines()

    down = await asyncio.to_thread(
        leadflow_import, settings, path, "--profile", "marketo",
        LEADFLOW_KAFKA_BOOTSTRAP=nowhere, LEADFLOW_STARTUP_TIMEOUT="1",
    )  # fmt: skip
    assert down.returncode == 3
    message = " ".join(down.stderr.split())
    assert f"waiting for Kafka at {nowhere} (attempt 1" in message
    assert "cannot reach Kafka" in message and "ops/stack up" in message
    assert "Traceback" not in down.stderr

    missing = await asyncio.to_thread(
        leadflow_import, settings, path, "--profile", "marketo",
        LEADFLOW_NAMESPACE=settings.namespace + "-none",
    )  # fmt: skip
    assert missing.returncode == 3
    assert "leadflow topics create" in " ".join(missing.stderr.split())
    assert await read_topic(settings, settings.engagement) == []
