"""Reading the YAML files a user writes (rules, notify targets, import profiles): one way to
read them and one way to name the key a validation error is about."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def key_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as the user wrote it: `targets[0].format`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_yaml_mapping(
    path: Path, what: str, error: type[Exception], expected: str
) -> dict[str, Any]:
    """The YAML mapping in `path`; `error` names the file (and `what` it is) when it cannot be
    read, is not YAML, or is not a mapping (`expected` says what it should hold)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {expected}")
    return data
