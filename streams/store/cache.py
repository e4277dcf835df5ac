"""The lead states this worker wrote last, kept in memory.

A batch sends Redis the version it holds for each lead; Redis answers with the state only where
the version moved (another worker, the sales consumer, a restore). An unchanged lead then costs
neither the transfer nor the decoding. Correctness does not depend on the cache: every write is
still a compare-and-set on the version, and the cache is dropped whenever the offsets or the
generation move under the worker.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from streams.core.lead import LeadState


@dataclass(slots=True)
class CachedLead:
    version: int
    state: LeadState  # its seen ids are not the truth: `seen` is, read for each batch
    seen: bytes
    digests: set[bytes] | None = field(default=None)


class StateCache:
    """Least recently used lead states, by (generation, lead id), at most `max_leads`."""

    def __init__(self, max_leads: int) -> None:
        self.max_leads = max_leads
        self._leads: OrderedDict[tuple[int, str], CachedLead] = OrderedDict()

    def get(self, generation: int, lead_id: str) -> CachedLead | None:
        entry = self._leads.get((generation, lead_id))
        if entry is not None:
            self._leads.move_to_end((generation, lead_id))
        return entry

    def put(self, generation: int, lead_id: str, entry: CachedLead) -> None:
        if self.max_leads <= 0:
            return
        self._leads[(generation, lead_id)] = entry
        self._leads.move_to_end((generation, lead_id))
        while len(self._leads) > self.max_leads:
            self._leads.popitem(last=False)

    def clear(self) -> None:
        self._leads.clear()

    def __len__(self) -> int:
        return len(self._leads)
