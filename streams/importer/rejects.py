"""The rejected file, `<FILE>.rejected.csv`: every rejected row as it was, with its reason and
line, so it can be fixed and imported again (the added columns never enter a derived id)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from streams.importer.cells import as_text
from streams.importer.compile import ERROR_COLUMN, LINE_COLUMN
from streams.importer.rows import Rejected


def rejected_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejected.csv")


class RejectWriter:
    """`<FILE>.rejected.csv`: the original columns + leadflow_error + leadflow_line, opened at the
    first reject (a stale file from an earlier run is removed at the start)."""

    def __init__(self, path: Path, header: list[str] | None, delimiter: str) -> None:
        self.path = path
        self.header = header
        self.delimiter = delimiter
        self.count = 0
        self._fh: IO[str] | None = None
        self._writer: Any = None
        path.unlink(missing_ok=True)

    def write(self, line: int, row: Mapping[str, Any] | None, text: str, problem: Rejected) -> None:
        if self._writer is None:
            self._fh = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._fh, delimiter=self.delimiter)
            columns = self.header if self.header is not None else ["record"]
            self._writer.writerow([*columns, ERROR_COLUMN, LINE_COLUMN])
        error = f"{problem.reason}: {problem.message}"
        if self.header is None:
            values = [text]
        else:
            values = [
                (as_text(row.get(c)) if row and row.get(c) is not None else "") for c in self.header
            ]
        self._writer.writerow([*values, error, line])
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
