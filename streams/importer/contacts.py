"""Reading a contact export (CSV or XLSX) for its (e-mail, lead id) pairs: the identity map
`--identity FILE` uses, and what `--save-identity` stores in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from streams.importer.compile import required_columns
from streams.importer.identity import EmailIdentities, build_identities, identity_pairs
from streams.importer.mapping import ImportMapping, MappingError, load_mapping
from streams.importer.reading import ExportReader, file_kind

IDENTITY_PROFILE = "hubspot-contacts"


def contact_pairs(path: Path, mapping: ImportMapping) -> Iterator[tuple[str, str]]:
    """(normalised e-mail, lead id) of every contact in the export that has both."""
    if mapping.email is None:
        raise MappingError(
            f"mapping '{mapping.name}': key 'email': the mapping names no e-mail column, so "
            "the file cannot build an identity map"
        )
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise MappingError(f"--identity: cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        kind = file_kind(path, mapping)
        reader = ExportReader(
            fh, kind, mapping.delimiter, header_names=mapping.header_names, records=mapping.records
        )
        email = required_columns(mapping, "email", mapping.email, reader.header)
        lead = required_columns(mapping, "lead", mapping.lead, reader.header)
        rows = (row for _, row, _, problem in reader.rows() if row is not None and not problem)
        yield from identity_pairs(rows, email, lead)


def identities_from_file(path: Path, mapping: ImportMapping | None = None) -> EmailIdentities:
    """The identity map of a contact export (by default read as HubSpot's contacts export)."""
    chosen = mapping or load_mapping(IDENTITY_PROFILE)
    return build_identities(contact_pairs(path, chosen), str(path))
