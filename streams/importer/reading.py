"""Reading the export: CSV or NDJSON rows one at a time, never the whole file, each with the
line it starts on and, for a row that cannot be read, the reason it is rejected."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from streams.importer.mapping import ImportMapping, MappingError
from streams.importer.rows import Rejected

NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")
CSV_FIELD_LIMIT = 1 << 20
# DictReader's key for values beyond the header: a name no real column can have.
_EXTRA = "\x00extra"
RowItem = tuple[int, Mapping[str, Any] | None, str, Rejected | None]


class _Lines:
    """A binary file's lines, decoded as UTF-8, counting bytes and lines; a line that is not
    UTF-8 is decoded with replacement characters and remembered, so its row is rejected."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.bytes_read = 0
        self.number = 0
        self.last_bad = 0

    def __iter__(self) -> Iterator[str]:
        first = True
        for raw in self.fh:
            self.bytes_read += len(raw)
            self.number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.last_bad = self.number
                text = raw.decode("utf-8", "replace")
            if first:
                text = text.removeprefix("\ufeff")  # Excel's byte order mark
                first = False
            yield text


class ExportReader:
    """Rows of a CSV (csv.DictReader over the open file) or NDJSON export, one at a time."""

    def __init__(self, fh: IO[bytes], kind: Literal["csv", "ndjson"], delimiter: str = ",") -> None:
        self.kind = kind
        self.lines = _Lines(fh)
        self.header: list[str] | None = None
        self._csv: csv.DictReader[str] | None = None
        if kind == "csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)
            self._csv = csv.DictReader(
                iter(self.lines), delimiter=delimiter, restkey=_EXTRA, restval=None
            )
            try:
                self.header = list(self._csv.fieldnames or [])
            except csv.Error as exc:  # e.g. a lone CR (old Mac line ends): no row can be read
                raise MappingError(f"the header line is not CSV: {exc}") from None

    @property
    def bytes_read(self) -> int:
        return self.lines.bytes_read

    def rows(self) -> Iterator[RowItem]:
        """(line the row starts on, row or None, original text for NDJSON, problem or None)."""
        if self._csv is None:
            yield from self._ndjson()
            return
        reader = self._csv
        previous = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                start, previous = previous + 1, reader.line_num
                yield start, None, "", Rejected("bad_row", f"not a CSV row: {exc}")
                continue
            start, previous = previous + 1, reader.line_num
            yield start, row, "", self._csv_problem(start, row)

    def _csv_problem(self, start: int, row: dict[str, Any]) -> Rejected | None:
        """Why a CSV row cannot be mapped (undecodable, too many or too few values), or None.
        Values beyond the header are taken out of the row, so the rejected file stays aligned."""
        width = len(self.header or [])
        if self.lines.last_bad >= start:
            return Rejected("bad_encoding", "the line is not valid UTF-8")
        if _EXTRA in row:
            extra = row.pop(_EXTRA)
            return Rejected(
                "bad_row",
                f"{width + len(extra)} values but the header has {width} columns "
                f"(extra: {', '.join(map(repr, extra[:3]))})",
            )
        if None in row.values():
            have = sum(v is not None for v in row.values())
            return Rejected("bad_row", f"{have} values but the header has {width} columns")
        return None

    def _ndjson(self) -> Iterator[RowItem]:
        for text in self.lines:
            number = self.lines.number
            stripped = text.strip()
            if not stripped:
                continue
            if self.lines.last_bad == number:
                yield number, None, stripped, Rejected("bad_encoding", "the line is not UTF-8")
                continue
            try:
                obj = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                yield number, None, stripped, Rejected("bad_json", f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                problem = Rejected("bad_row", f"expected a JSON object, got {type(obj).__name__}")
                yield number, None, stripped, problem
                continue
            yield number, obj, stripped, None


def file_kind(path: Path, mapping: ImportMapping) -> Literal["csv", "ndjson"]:
    if mapping.format != "auto":
        return mapping.format
    return "ndjson" if path.suffix.lower() in NDJSON_SUFFIXES else "csv"
