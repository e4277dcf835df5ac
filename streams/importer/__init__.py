"""`leadflow import`: stream a marketing-automation export (CSV or NDJSON) into Kafka.

Two layers:

- pure: a mapping (a built-in profile, a YAML file, or a profile with overrides) is validated
  (`mapping`) and compiled once against the file's header (`compile`); `map_row` (`rows`) turns
  one row (a dict) into a `Mapped` engagement record, a `Skipped` row (an activity type leadflow
  does not score) or a `Rejected` row with a reason. The final check is the worker's own
  `parse_engagement`, so nothing is produced that the worker would dead-letter.
- I/O: the file is read line by line, never whole (`reading`); rejected rows are written next to
  it as `<FILE>.rejected.csv` (`rejects`); records are produced keyed by lead_id with acks=all
  and a bounded number of sends in flight (`sink`); duplicates within the file are tracked in a
  temporary SQLite table (`duplicates`), so memory does not grow with the file. `run` ties
  them together.

Event ids come from the export's own activity id where it has one, otherwise they are derived
from the row (`imp-` + sha256), so importing the same activity twice gives the same id and the
worker's per-lead dedupe counts it once. See docs/importer.md.
"""

from streams.importer.compile import (
    ERROR_COLUMN,
    LINE_COLUMN,
    CompiledMapping,
    compile_mapping,
    normalize_type,
)
from streams.importer.mapping import (
    PROFILES,
    ImportMapping,
    MappingError,
    load_mapping,
    override_warnings,
)
from streams.importer.reading import ExportReader
from streams.importer.rejects import RejectWriter, rejected_path
from streams.importer.rows import (
    Mapped,
    Outcome,
    Rejected,
    Skipped,
    derive_event_id,
    map_row,
    parse_time,
)
from streams.importer.run import ImportSummary, import_file, prepare, run_rows
from streams.importer.sink import KafkaSink

__all__ = [
    "ERROR_COLUMN",
    "LINE_COLUMN",
    "PROFILES",
    "CompiledMapping",
    "ExportReader",
    "ImportMapping",
    "ImportSummary",
    "KafkaSink",
    "Mapped",
    "MappingError",
    "Outcome",
    "RejectWriter",
    "Rejected",
    "Skipped",
    "compile_mapping",
    "derive_event_id",
    "import_file",
    "load_mapping",
    "map_row",
    "normalize_type",
    "override_warnings",
    "parse_time",
    "prepare",
    "rejected_path",
    "run_rows",
]
