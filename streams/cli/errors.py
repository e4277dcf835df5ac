"""How every `leadflow` command ends on a user's mistake: one clear line, a stable exit code.

- 2: the input or configuration is wrong (a LEADFLOW_* variable, a rules file, a command's
  input file); the message names what is wrong.
- 3: a service (Kafka, Redis) did not answer in time; the message says how to start it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from streams.core.rules import RulesError
from streams.settings import SettingsError

console = Console(stderr=True)

# Errors whose message is already written for the user: exit 2 with that message.
INPUT_ERRORS: tuple[type[Exception], ...] = (SettingsError, RulesError)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


@contextmanager
def user_errors(*input_errors: type[Exception]) -> Iterator[None]:
    """Configuration mistakes (plus the command's own `input_errors`) end with one clear line
    and exit code 2; a service that does not answer in time, exit code 3. No traceback."""
    try:
        yield
    except (*INPUT_ERRORS, *input_errors) as exc:
        raise fail(str(exc), 2) from None
    except TimeoutError as exc:
        raise fail(str(exc), 3) from None
