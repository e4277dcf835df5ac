"""Where the `leadflow` commands write: results on stdout (`out`), progress and problems on
stderr (`console`), so a command's result can be piped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress

console = Console(stderr=True)
out = Console()


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for long work; yields `advance(done, total)`."""
    with Progress(console=console) as progress:
        task = progress.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance
