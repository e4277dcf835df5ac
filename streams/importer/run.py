"""The import: open the file, compile the mapping against its header, then every row mapped,
deduplicated within the file, produced (or only counted, in a dry run) or written as a reject."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from streams.importer.compile import CompiledMapping, compile_mapping
from streams.importer.duplicates import SeenIds
from streams.importer.identity import EmailIdentities
from streams.importer.mapping import ImportMapping, MappingError
from streams.importer.reading import ExportReader, file_kind
from streams.importer.rejects import RejectWriter, rejected_path
from streams.importer.rows import Mapped, Outcome, Skipped, map_row
from streams.importer.sink import KafkaSink

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.startup import Say

MAX_SKIP_KEYS = 200  # distinct skipped source types counted by name; the rest are "(other)"


@dataclass
class ImportSummary:
    path: Path
    profile: str
    topic: str | None  # None: dry run
    rows: int = 0
    mapped: int = 0  # rows that became a new event (a dry run stops here)
    produced: int = 0  # acknowledged by Kafka
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_file: Path | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    failure: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def dry_run(self) -> bool:
        return self.topic is None


Progress = Callable[[int, int], None]  # (bytes read, rows read)


def prepare(
    path: Path,
    fh: IO[bytes],
    mapping: ImportMapping,
    known_types: frozenset[str],
    *,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
    identities: EmailIdentities | None = None,
) -> tuple[ExportReader, CompiledMapping]:
    """Open the rows and compile the mapping against the header (MappingError on a mismatch)."""
    kind = file_kind(path, mapping)
    reader = ExportReader(
        fh,
        kind,
        mapping.delimiter,
        header_names=mapping.header_names,
        records=mapping.records,
    )
    if kind in ("csv", "xlsx") and not reader.header:
        raise MappingError(f"{path}: the file is empty (no header line)")
    compiled = compile_mapping(
        mapping,
        known_types,
        header=reader.header,
        timezone=timezone,
        max_event_bytes=max_event_bytes,
        note_missing=note_missing,
        identities=identities,
    )
    return reader, compiled


class _Outcomes:
    """Where each row's outcome goes: a new event is produced (each lead and id once per file),
    a skip is counted by source type, a reject is counted and written to the rejected file."""

    def __init__(self, summary: ImportSummary, rejects: RejectWriter, sink: KafkaSink | None):
        self.summary = summary
        self.rejects = rejects
        self.sink = sink
        self.seen = SeenIds()

    async def take(
        self, line: int, row: Mapping[str, Any] | None, text: str, outcome: Outcome
    ) -> None:
        summary = self.summary
        if isinstance(outcome, Mapped):
            if not self.seen.add(outcome.event.lead_id, outcome.event.event_id):
                summary.duplicates += 1
                return
            summary.mapped += 1
            if self.sink is not None:
                await self.sink.send(outcome.key, outcome.value)
        elif isinstance(outcome, Skipped):
            self._skip(outcome.source_type)
        else:
            summary.rejected[outcome.reason] += 1
            self.rejects.write(line, row, text, outcome)

    def _skip(self, name: str) -> None:
        # An export with ids as types could have millions of distinct ones: count a few by name.
        skipped = self.summary.skipped
        if name not in skipped and len(skipped) >= MAX_SKIP_KEYS:
            name = "(other)"
        skipped[name] += 1

    def close(self) -> None:
        self.seen.close()
        self.rejects.close()


def _sum_up(
    summary: ImportSummary,
    reader: ExportReader,
    rejects: RejectWriter,
    sink: KafkaSink | None,
    seconds: float,
) -> None:
    """What was delivered, why the import stopped (if it did), and how much was read."""
    if sink is not None:
        summary.produced = sink.delivered
        if sink.failure is not None:
            summary.failure = (
                f"Kafka did not accept every record ({sink.failure!r}); the import stopped "
                f"after {summary.rows} rows. Fix the cause and run the same import again: "
                "event ids are stable, so the worker counts each activity once"
            )
    summary.bytes_read = reader.bytes_read
    summary.seconds = seconds
    summary.rejected_file = rejects.path if rejects.count else None


async def run_rows(
    reader: ExportReader,
    compiled: CompiledMapping,
    summary: ImportSummary,
    rejects: RejectWriter,
    sink: KafkaSink | None,
    progress: Progress | None = None,
    every: int = 2000,
) -> ImportSummary:
    """The loop: every row mapped, deduplicated within the file, produced or written as a reject."""
    outcomes = _Outcomes(summary, rejects, sink)
    started = time.monotonic()
    try:
        for line, row, text, problem in reader.rows():
            if sink is not None and sink.failure is not None:
                break  # Kafka refused a record: stop reading, report what was done
            summary.rows += 1
            if progress is not None and summary.rows % every == 0:
                progress(reader.bytes_read, summary.rows)
            outcome: Outcome
            if problem is not None:
                outcome = problem
            elif row is not None:
                outcome = map_row(compiled, row)
            else:  # pragma: no cover - the reader gives a problem whenever it has no row
                continue
            await outcomes.take(line, row, text, outcome)
        if sink is not None:
            await sink.drain()
    finally:
        outcomes.close()
        _sum_up(summary, reader, rejects, sink, time.monotonic() - started)
        if progress is not None:
            progress(reader.bytes_read, summary.rows)
    return summary


def _check_writable(path: Path) -> None:
    if not os.access(path.parent, os.W_OK):
        raise MappingError(
            f"{path.parent} is not writable; rejected rows are written next to the file "
            f"({rejected_path(path).name}): copy the file to a writable directory"
        )


async def import_file(
    path: Path,
    mapping: ImportMapping,
    known_types: frozenset[str],
    settings: Settings | None,
    *,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
    identities: EmailIdentities | None = None,
    progress: Progress | None = None,
    on_ready: Callable[[CompiledMapping], None] | None = None,
    say: Say | None = None,
) -> ImportSummary:
    """Import one file; `settings=None` is a dry run (no Kafka). Raises MappingError before
    reading any row when the mapping does not fit the file, KafkaUnavailable when Kafka is not
    there (after waiting for it up to LEADFLOW_STARTUP_TIMEOUT, each attempt told to `say`)."""
    with path.open("rb") as fh:
        reader, compiled = prepare(
            path,
            fh,
            mapping,
            known_types,
            timezone=timezone,
            max_event_bytes=max_event_bytes,
            note_missing=note_missing,
            identities=identities,
        )
        _check_writable(path)
        sink = KafkaSink(settings, say=say) if settings is not None else None
        if sink is not None:
            await sink.start()
        if on_ready is not None:
            on_ready(compiled)
        summary = ImportSummary(
            path, mapping.name, sink.topic if sink else None, notes=compiled.notes
        )
        rejects = RejectWriter(rejected_path(path), reader.header, reader.delimiter)
        try:
            return await run_rows(reader, compiled, summary, rejects, sink, progress)
        finally:
            if sink is not None:
                await sink.stop()
