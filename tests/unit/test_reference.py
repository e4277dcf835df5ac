"""The generated reference tables in docs/ are current, and say what the code does."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streams.reference import Generated, regenerate, settings_table
from streams.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def test_every_generated_table_in_docs_is_current() -> None:
    assert regenerate(check=True) == [], "run `leadflow docs generate`"


def test_the_settings_table_names_every_variable_with_its_real_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("LEADFLOW_"):
            monkeypatch.delenv(name)
    rows = {
        m[1]: (m[2], m[3])
        for m in re.finditer(r"^\| (LEADFLOW_\w+) \| (.*?) \| (.*) \|$", settings_table(), re.M)
    }
    # Every variable, except fields derived from another one (collector_token_scopes).
    variables = {n for n, f in Settings.model_fields.items() if not f.exclude}
    assert set(rows) == {f"LEADFLOW_{n.upper()}" for n in variables}
    assert all(meaning for _, meaning in rows.values())
    defaults = load_settings()
    # A few defaults, as a user reads them, against the settings a bare environment gives.
    assert rows["LEADFLOW_BATCH_MAX"][0] == str(defaults.batch_max) == "500"
    assert rows["LEADFLOW_REDIS_URL"][0] == "redis://127.0.0.1:6379/0"
    assert rows["LEADFLOW_REDIS_CLUSTER"][0] == "false"
    assert rows["LEADFLOW_RULES"][0] == "rules/example.yaml"
    assert rows["LEADFLOW_REDIS_PASSWORD"][0] == ""


def test_a_stale_table_is_reported_then_rewritten_between_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "guide.md"
    region = Generated(doc, "demo", lambda: "| a |\n")
    before = f"intro\n{region.begin}\n| old |\n{region.end}\nafter\n"
    doc.write_text(before, encoding="utf-8")
    assert regenerate(check=True, regions=(region,)) == [f"{doc} (demo)"]
    assert doc.read_text(encoding="utf-8") == before  # --check writes nothing
    regenerate(regions=(region,))
    assert doc.read_text(encoding="utf-8") == f"intro\n{region.begin}\n| a |\n{region.end}\nafter\n"
    assert regenerate(check=True, regions=(region,)) == []


def test_missing_markers_are_named(tmp_path: Path) -> None:
    doc = tmp_path / "guide.md"
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        regenerate(regions=(Generated(doc, "demo", lambda: ""),))


def test_the_rules_reference_lists_every_key_a_rules_file_may_use() -> None:
    from streams.reference import rules_table

    keys = set(re.findall(r"^\| `([^`]+)` \|", rules_table(), re.M))
    # The keys the issue found missing from the hand-written table, and a few others.
    for key in (
        "sla.backfill_grace",
        "sla.early_warning",
        "sla.calendar.timezone",
        "bant.required",
        "bant.mandatory",
        "recycle.engagement_factor",
        "recycle.disqualified_can_requalify",
        "history_limit",
        "reporting.timezone",
        "fit[].between",
        "engagement.<type>.cap_per_day",
    ):
        assert key in keys, key
    required = re.findall(r"^\| `([^`]+)` \| [^|]+ \| required \|", rules_table(), re.M)
    assert "mql.threshold" in required and "sla.mql_first_contact" not in required
