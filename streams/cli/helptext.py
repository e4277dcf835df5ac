"""How `leadflow ... --help` names parameters.

Typer (0.29, which vendors Click) shows a type after every option, flags included
(`--json <bool>`, even `--help <bool>`, though `--json true` is refused), and required arguments
as `{lead_id}` in the usage line. Here, once for every command: a flag shows no value
placeholder, and an argument is shown by its name as Click does (`LEAD_ID`, `[PATH]` when
optional), in the usage line, the Arguments panel and the errors (`Missing argument 'LEAD_ID'`).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

# Typer internals (checked on 0.29): if a release renames them, `install` leaves Typer's own
# rendering alone rather than break every command (tests/unit/cli/test_error_path.py tells).
_option_type = getattr(TyperOption, "display_type_rich", None)


def _option_display_type(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None  # a flag takes no value
    assert _option_type is not None
    return _option_type(self, ctx)  # type: ignore[no-any-return]


def _argument_name(self: TyperArgument) -> str:
    if self.metavar is not None:
        return str(self.metavar)
    return str(self.name or "").upper()


def _argument_usage(self: TyperArgument) -> str:
    name = _argument_name(self)
    if self.nargs != 1:
        name += "..."
    return name if self.required else f"[{name}]"


def install() -> None:
    """Apply the rendering above (idempotent); nothing when this Typer lacks the hooks."""
    hooks = ("display_name_raw", "_usage_display_name")
    if _option_type is None or not all(hasattr(TyperArgument, h) for h in hooks):
        return
    TyperOption.display_type_rich = _option_display_type  # type: ignore[method-assign]
    TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[assignment,method-assign]
    TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
