"""Where the `leadflow` commands write: results on stdout (`out`), progress and problems on
stderr (`console`), so a command's result can be piped."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
out = Console()
