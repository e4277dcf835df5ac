"""Human durations ("24h", "90s", "1h30m", "30d") as used in the rules file."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")


def parse_duration(text: str) -> timedelta:
    """Parse '24h', '48h', '90s', '1h30m', '1.5d' into a timedelta; raise ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError("empty duration; use e.g. '24h', '90s', '30d'")
    pos, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(
            f"invalid duration {text!r}; use a number and a unit (w, d, h, m, s), e.g. '24h', '90s'"
        )
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest canonical form, e.g. timedelta(hours=24) -> '24h', 5400 s -> '1h30m'."""
    total = int(value.total_seconds())
    if total != value.total_seconds():
        return f"{value.total_seconds()}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"
