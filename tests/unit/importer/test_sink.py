"""`leadflow import` producing: bounded in-flight sends, a refused record stops the import."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.importer.mapping import load_mapping
from streams.importer.rejects import RejectWriter, rejected_path
from streams.importer.run import ImportSummary, prepare, run_rows
from streams.importer.sink import KafkaSink
from streams.settings import load_settings
from tests.unit.importer.samples import DATA, KNOWN, TEST_RULES

pytestmark = pytest.mark.unit


# -- producing: bounded in-flight sends, a refused record stops the import ------------------------


class FakeProducer:
    """Stands in for AIOKafkaProducer: each send is acknowledged (or refused) a loop turn later."""

    def __init__(self, sink: KafkaSink, refuse_from: int | None = None) -> None:
        self.sink = sink
        self.refuse_from = refuse_from
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.peak = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.sent.append((key, value))
        self.peak = max(self.peak, self.sink.in_flight)
        if self.refuse_from is not None and len(self.sent) >= self.refuse_from:
            loop.call_soon(future.set_exception, RuntimeError("broker said no"))
        else:
            loop.call_soon(future.set_result, None)
        return future

    async def flush(self) -> None:
        await asyncio.sleep(0)


def produce_with(
    tmp_path: Path, max_in_flight: int, refuse_from: int | None = None
) -> tuple[ImportSummary, FakeProducer]:
    path = tmp_path / "m.csv"
    shutil.copy(DATA / "marketo_activities.csv", path)
    settings = load_settings(namespace="unit", rules=TEST_RULES)

    async def run() -> tuple[ImportSummary, FakeProducer]:
        sink = KafkaSink(settings, max_in_flight=max_in_flight)
        fake = FakeProducer(sink, refuse_from)
        sink.producer = fake
        with path.open("rb") as fh:
            reader, compiled = prepare(path, fh, load_mapping("marketo"), KNOWN)
            summary = ImportSummary(path, "marketo", sink.topic)
            rejects = RejectWriter(rejected_path(path), reader.header, ",")
            return await run_rows(reader, compiled, summary, rejects, sink), fake

    return asyncio.run(run())


def test_sends_in_flight_are_bounded_and_every_record_is_acknowledged(tmp_path: Path) -> None:
    summary, fake = produce_with(tmp_path, max_in_flight=2)
    assert fake.peak <= 2
    assert summary.produced == summary.mapped == len(fake.sent) == 10
    assert all(key == orjson.loads(value)["lead_id"].encode() for key, value in fake.sent)
    assert summary.failure is None


def test_a_refused_record_stops_the_import_with_a_failure(tmp_path: Path) -> None:
    summary, fake = produce_with(tmp_path, max_in_flight=1, refuse_from=3)
    assert summary.failure is not None and "broker said no" in summary.failure
    assert "run the same import again" in summary.failure
    assert summary.produced == 2 and len(fake.sent) == 3
    assert summary.rows < 20  # it stopped reading
