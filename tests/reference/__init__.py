"""An independent reference model of leadflow's rules, written from the docs, not from the core.

It never imports `streams`: rules are parsed from plain dicts (YAML), events and activities are
plain mappings. See `tests/reference/model.py` for the readings taken where the docs are silent.
"""

from tests.reference.model import (
    RefActivity,
    RefClock,
    Reference,
    RefEvent,
    RefHandoff,
    RefLead,
    RefRules,
    RefTransition,
    event_from,
)

__all__ = [
    "RefActivity",
    "RefClock",
    "RefEvent",
    "RefHandoff",
    "RefLead",
    "RefRules",
    "RefTransition",
    "Reference",
    "event_from",
]
