"""Where the `leadflow` commands write: results on stdout (`out`), progress and problems on
stderr (`console`), so a command's result can be piped.

On a terminal both are rich (colours, tables, progress bars). When one is not a terminal (a
pipe, a file, a log collector) it is plain for machines: no colours or cursor codes, no
wrapping at 80 columns, and every table is tab-separated values, one header row then one
line per row (its title, if any, on a `# ` line before it), with complete cell text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text


def plain(cell: object) -> str:
    """A cell's text without markup or styles, on one line (tabs and newlines as spaces)."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        try:
            text = Text.from_markup(cell).plain
        except Exception:  # not valid markup: the text as it is
            text = cell
    else:
        text = str(cell)
    return one_line(text)


def one_line(text: str) -> str:
    """Tabs and line breaks as spaces: a TSV cell."""
    if "\t" in text or "\n" in text or "\r" in text:
        return " ".join(text.replace("\t", " ").splitlines())
    return text


def tsv_lines(table: Table) -> list[str]:
    """A rich Table as TSV: `# title`, the header row, the rows, `# caption` (if any)."""
    lines = []
    if table.title:
        lines.append(f"# {plain(table.title)}")
    columns = table.columns
    lines.append("\t".join(plain(c.header) for c in columns))
    cells = [list(c.cells) for c in columns]
    for i in range(table.row_count):
        lines.append("\t".join(plain(col[i]) if i < len(col) else "" for col in cells))
    if table.caption:
        lines.append(f"# {plain(table.caption)}")
    return lines


class PlainWhenPiped(Console):
    """A rich Console that, when its file is not a terminal, never wraps and prints tables as
    TSV (see the module's docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.is_terminal:
            self.soft_wrap = True

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal or not any(isinstance(o, Table) for o in objects):
            super().print(*objects, **kwargs)
            return
        for o in objects:
            if isinstance(o, Table):
                self.file.write("\n".join(tsv_lines(o)) + "\n")
                self.file.flush()
            else:
                super().print(o, **kwargs)


console = PlainWhenPiped(stderr=True)
out = PlainWhenPiped()


def stdout_is_terminal() -> bool:
    return out.is_terminal


def tsv_row(values: Sequence[object]) -> str:
    """One TSV line of raw text cells (not markup)."""
    return "\t".join(one_line(str(v)) for v in values)


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for long work; yields `advance(done, total)`."""
    with Progress(console=console) as progress:
        task = progress.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance
