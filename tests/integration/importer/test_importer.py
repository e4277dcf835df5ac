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


def types_on_topic(records: list[tuple[str, str, dict[str, object]]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for _, _, body in records:
        counts[str(body["type"])] += 1
    return dict(counts)


HUBSPOT_EVENTS_PER_TYPE = {
    "page_view": 1,
    "pricing_page_view": 1,
    "form_submit": 1,
    "webinar_registered": 1,
    "webinar_attended": 1,
}
# (fixture, import options, expected events per type, lead ids) -- counted by hand from the files
VENDOR_ROUTES = [
    (
        "hubspot_events_page.json",
        ("--profile", "hubspot-events"),
        HUBSPOT_EVENTS_PER_TYPE,
        {"208451632", "208451633"},
    ),
    (
        "hubspot_events_results.ndjson",
        ("--profile", "hubspot-events"),
        HUBSPOT_EVENTS_PER_TYPE,
        {"208451632", "208451633"},
    ),
    (
        "hubspot_email_events.json",
        ("--profile", "hubspot-email-events", "--identity", str(DATA / "hubspot_contacts.csv")),
        {"email_open": 1, "email_click": 1, "opt_out": 1},
        {"101", "102"},
    ),
    (
        "hubspot_contacts.csv",
        ("--profile", "hubspot-contacts"),
        {"profile_updated": 3},
        {"101", "102", "103"},
    ),
    (
        "hubspot_contacts_ja.csv",
        ("--profile", "hubspot-contacts"),
        {"profile_updated": 2},
        {"201", "202"},
    ),
    (
        "pardot_visitor_activities.json",
        ("--profile", "pardot"),
        {
            "pricing_page_view": 1,
            "form_submit": 1,
            "email_open": 1,
            "email_click": 1,
            "webinar_registered": 1,
            "webinar_attended": 1,
            "opt_out": 1,
        },
        {"5001", "5002", "5003"},
    ),
    (
        "mautic_activity.json",
        ("--profile", "mautic"),
        {
            "webinar_attended": 1,
            "webinar_registered": 1,
            "email_open": 1,
            "form_submit": 1,
            "page_view": 1,
        },
        {"12180", "13930", "16417", "16380"},
    ),
    (
        "marketo_activities_renamed.tsv",
        ("--profile", "marketo", "--header-names", str(DATA / "marketo_header_names.json")),
        {"profile_updated": 2, "pricing_page_view": 1, "form_submit": 1},
        {"2001", "2002"},
    ),
]


@pytest.mark.parametrize(
    ("name", "options", "per_type", "leads"),
    VENDOR_ROUTES,
    ids=[r[0] for r in VENDOR_ROUTES],
)
async def test_each_vendor_route_lands_its_fixture(
    settings: Settings,
    tmp_path: Path,
    name: str,
    options: tuple[str, ...],
    per_type: dict[str, int],
    leads: set[str],
) -> None:
    path = copy(name, tmp_path)
    result = await asyncio.to_thread(leadflow_import, settings, path, *options)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"produced\t{sum(per_type.values())}" in result.stdout.splitlines()
    records = await on_topic(settings)
    assert types_on_topic(records) == per_type
    assert {key for key, _, _ in records} == leads
    assert all(key == body["lead_id"] for key, _, body in records)


async def test_contacts_saved_as_the_identity_map_resolve_email_events(
    settings: Settings, tmp_path: Path
) -> None:
    redis_env = {"LEADFLOW_REDIS_URL": settings.redis_url.get_secret_value()}
    contacts = copy("hubspot_contacts.csv", tmp_path)
    saved = await asyncio.to_thread(
        leadflow_import,
        settings,
        contacts,
        "--profile",
        "hubspot-contacts",
        "--save-identity",
        **redis_env,
    )
    assert saved.returncode == 0, saved.stderr + saved.stdout
    assert "3 e-mail address(es) saved to Redis" in saved.stderr + saved.stdout
    emails = copy("hubspot_email_events.json", tmp_path)
    result = await asyncio.to_thread(
        leadflow_import,
        settings,
        emails,
        "--profile",
        "hubspot-email-events",
        "--identity",
        "redis",
        **redis_env,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    records = await on_topic(settings)
    emailed = {
        i: (key, body["type"]) for key, i, body in records if body["type"] != "profile_updated"
    }
    assert emailed == {
        "4f0b6e1c-0003-4e8a-9c1d-2b3a4c5d6e03": ("101", "email_open"),
        "4f0b6e1c-0005-4e8a-9c1d-2b3a4c5d6e05": ("101", "email_click"),
        "4f0b6e1c-0007-4e8a-9c1d-2b3a4c5d6e07": ("102", "opt_out"),
    }
    with rejected_path(emails).open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["leadflow_error"].split(":")[0] for r in rows] == ["unknown_identity"]
    assert "dora@delta.example" in rows[0]["record"]


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
