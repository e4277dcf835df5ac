"""The e-mail identity map: which lead an e-mail address belongs to, for exports that name a
lead only by its address (HubSpot's email events API: `recipient`).

Pure: `EmailIdentities` is a read-only map built from (e-mail, lead id) pairs; the pairs come
from a contact export (`identity_pairs`, e.g. HubSpot's contacts export: Email -> Record ID) or
from the Redis-backed map an earlier import saved (streams/store/email_identity.py). An address
with no lead stays unresolved: the row is rejected as `unknown_identity`, never given a lead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.importer.cells import first_text


def normalize_email(text: str) -> str:
    """Addresses are matched case-insensitively, without surrounding blanks."""
    return text.strip().casefold()


@dataclass(frozen=True)
class EmailIdentities:
    """E-mail address (normalised) -> lead id, and where the map came from (for messages)."""

    leads: Mapping[str, str]
    source: str
    conflicts: int = 0  # addresses listed with two different leads (the first one is kept)
    notes: tuple[str, ...] = field(default=())

    def lead_for(self, email: str) -> str | None:
        return self.leads.get(normalize_email(email))

    def __len__(self) -> int:
        return len(self.leads)


def identity_pairs(
    rows: Iterable[Mapping[str, Any]], email: tuple[str, ...], lead: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    """(normalised e-mail, lead id) of every row that has both."""
    for row in rows:
        address = first_text(row, email)
        lead_id = first_text(row, lead)
        if address and lead_id and "@" in address:
            yield normalize_email(address), lead_id


def build_identities(pairs: Iterable[tuple[str, str]], source: str) -> EmailIdentities:
    """The map from pairs; an address listed for two leads keeps its first and is counted."""
    leads: dict[str, str] = {}
    conflicts = 0
    for address, lead_id in pairs:
        known = leads.setdefault(address, lead_id)
        if known != lead_id:
            conflicts += 1
    notes = (
        (
            f"{conflicts} e-mail address(es) in {source} belong to more than one lead: the "
            "first lead listed is used",
        )
        if conflicts
        else ()
    )
    return EmailIdentities(leads, source, conflicts, notes)
