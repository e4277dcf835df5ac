"""Reading the export: CSV, NDJSON or XLSX rows one at a time, never the whole file (a JSON
document, e.g. one saved API page, is the exception), each with the line it starts on and,
for a row that cannot be read, the reason it is rejected. API pages (`{results: [...]}`) are
read as their records; renamed headers are read under the export's own column names."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from streams.importer.mapping import ImportMapping, MappingError
from streams.importer.rows import Rejected

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
JSON_SUFFIXES = (".json",)
XLSX_SUFFIXES = (".xlsx", ".xlsm")
SNIFFED_DELIMITERS = (",", "\t", ";")
CSV_FIELD_LIMIT = 1 << 20
Kind = Literal["csv", "ndjson", "json", "xlsx"]
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
    """Rows of a CSV (csv.DictReader over the open file), NDJSON, JSON or XLSX export."""

    def __init__(
        self,
        fh: IO[bytes],
        kind: Kind,
        delimiter: str = ",",
        *,
        header_names: Mapping[str, str] | None = None,
        records: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.fh = fh
        self.lines = _Lines(fh)
        self.header: list[str] | None = None
        self.records = tuple(records)
        self.delimiter = delimiter if len(delimiter) == 1 else ","  # "auto": sniffed for CSV
        # The file's header -> the export's own column name (the inverse of header_names).
        self._renamed = {shown: own for own, shown in (header_names or {}).items()}
        self._csv: csv.DictReader[str] | None = None
        self._xlsx: Iterator[tuple[Any, ...]] | None = None
        if kind == "csv":
            self._open_csv(delimiter)
        elif kind == "xlsx":
            self._open_xlsx()

    def _open_csv(self, delimiter: str) -> None:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        lines: Iterator[str] = iter(self.lines)
        if delimiter == "auto":
            first = next(lines, "")
            delimiter = sniff_delimiter(first)
            lines = itertools.chain([first], lines)
        self.delimiter = delimiter
        self._csv = csv.DictReader(lines, delimiter=delimiter, restkey=_EXTRA, restval=None)
        try:
            header = list(self._csv.fieldnames or [])
        except csv.Error as exc:  # e.g. a lone CR (old Mac line ends): no row can be read
            raise MappingError(f"the header line is not CSV: {exc}") from None
        if self._renamed:
            header = [self._renamed.get(h, h) for h in header]
            self._csv.fieldnames = header
        self.header = header

    def _open_xlsx(self) -> None:
        import openpyxl  # only for XLSX exports

        try:
            book = openpyxl.load_workbook(self.fh, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises zipfile, KeyError, ... for a non-XLSX file
            raise MappingError(f"not an XLSX workbook: {exc}") from None
        self._xlsx = book.worksheets[0].iter_rows(values_only=True)
        first = next(self._xlsx, ())
        self.header = [self._renamed.get(h, h) for h in (_cell(v) for v in first)]

    @property
    def bytes_read(self) -> int:
        if self.kind in ("xlsx", "json"):
            return self.fh.tell()
        return self.lines.bytes_read

    def rows(self) -> Iterator[RowItem]:
        """(line the row starts on, row or None, original text for NDJSON, problem or None)."""
        if self.kind == "xlsx":
            yield from self._xlsx_rows()
            return
        if self.kind == "json":
            yield from self._json_document()
            return
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
            yield from self._records(number, obj, stripped)

    def _records(self, number: int, obj: Any, text: str) -> Iterator[RowItem]:
        """One JSON value: a record, or an API page (its records)."""
        if not isinstance(obj, dict):
            problem = Rejected("bad_row", f"expected a JSON object, got {type(obj).__name__}")
            yield number, None, text, problem
            return
        key = next((k for k in self.records if isinstance(obj.get(k), list)), None)
        if key is None:
            yield number, obj, text, None
            return
        for item in obj[key]:
            if isinstance(item, dict):
                yield number, item, _json_text(item), None
            else:
                problem = Rejected(
                    "bad_row", f"{key}: expected JSON objects, got {type(item).__name__}"
                )
                yield number, None, _json_text(item), problem

    def _json_document(self) -> Iterator[RowItem]:
        """A whole JSON document (a saved API page); NDJSON when it is not one document."""
        data = self.fh.read()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.fh.seek(0)
            self.kind = "ndjson"
            yield from self._ndjson()
            return
        values = obj if isinstance(obj, list) else [obj]  # a list of pages or of records
        items = (item for v in values for item in self._records(1, v, _json_text(v)))
        for n, (_, row, text, problem) in enumerate(items, start=1):
            yield n, row, text, problem

    def _xlsx_rows(self) -> Iterator[RowItem]:
        assert self._xlsx is not None and self.header is not None
        width = len(self.header)
        for number, values in enumerate(self._xlsx, start=2):
            cells = [_cell(v) for v in values]
            if not any(cells):
                continue
            if len(cells) > width and any(cells[width:]):
                yield (
                    number,
                    None,
                    "",
                    Rejected("bad_row", f"{len(cells)} values but the header has {width} columns"),
                )
                continue
            cells += [""] * (width - len(cells))
            yield number, dict(zip(self.header, cells, strict=False)), "", None


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _cell(value: Any) -> str:
    """An XLSX cell as the text a CSV export would hold (whole numbers without ".0")."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def sniff_delimiter(first_line: str) -> str:
    """The delimiter that splits the header line into the most columns (comma on a tie); a
    space only when the line has none of them (a space-separated extract)."""
    counts = {d: first_line.count(d) for d in SNIFFED_DELIMITERS}
    best = max(SNIFFED_DELIMITERS, key=lambda d: counts[d])
    if counts[best]:
        return best
    return " " if " " in first_line.strip() else ","


def file_kind(path: Path, mapping: ImportMapping) -> Kind:
    if mapping.format != "auto":
        return mapping.format
    suffix = path.suffix.lower()
    if suffix in NDJSON_SUFFIXES:
        return "ndjson"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in XLSX_SUFFIXES:
        return "xlsx"
    return "csv"
