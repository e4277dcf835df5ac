"""The checked-in JSON Schema files are generated from the models and kept current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.generate import JSON_DIR, SCHEMAS, render, write_all
from streams.settings import load_settings

pytestmark = pytest.mark.unit


def test_checked_in_schemas_are_current() -> None:
    stale = write_all(check=True)
    assert stale == [], f"run `leadflow schemas generate` to refresh {stale}"


def test_every_model_has_a_checked_in_file_and_nothing_else_is_there() -> None:
    assert {p.name for p in JSON_DIR.glob("*.json")} == set(SCHEMAS)


def test_check_reports_an_altered_file_and_does_not_rewrite_it(tmp_path: Path) -> None:
    # Writing into an empty directory creates every file (all were missing).
    assert sorted(write_all(directory=tmp_path)) == sorted(SCHEMAS)
    assert write_all(check=True, directory=tmp_path) == []

    name = sorted(SCHEMAS)[0]
    altered = tmp_path / name
    text = altered.read_text(encoding="utf-8")
    altered.write_text(text.replace('"x-leadflow-topic": "', '"x-leadflow-topic": "x'), "utf-8")
    tampered = altered.read_bytes()
    assert write_all(check=True, directory=tmp_path) == [name]
    assert altered.read_bytes() == tampered  # check writes nothing

    # A missing file is stale too; writing repairs both.
    missing = sorted(SCHEMAS)[1]
    (tmp_path / missing).unlink()
    assert sorted(write_all(check=True, directory=tmp_path)) == sorted([name, missing])
    assert sorted(write_all(directory=tmp_path)) == sorted([name, missing])
    assert write_all(check=True, directory=tmp_path) == []


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_files_are_valid_json_schema_documents(name: str) -> None:
    model, topic, what = SCHEMAS[name]
    text = (JSON_DIR / name).read_text(encoding="utf-8")
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["x-leadflow-topic"] == topic
    assert topic in load_settings(namespace="").all_topics
    assert schema["x-leadflow-describes"] == what
    assert schema["$id"].endswith(f"{topic}.v1.json")
    assert schema["title"] == model.__name__
    # One object, or (leads.anonymous) one of several objects.
    branches = [
        schema["$defs"][b["$ref"].rsplit("/", 1)[1]] if "$ref" in b else b
        for b in schema.get("anyOf", [schema])
    ]
    for branch in branches:
        assert branch["type"] == "object"
        assert set(branch["required"]) <= set(branch["properties"])
    assert text.encode() == render(model, topic, what)


def test_the_anonymous_topic_names_an_identify_and_an_anonymous_event() -> None:
    schema = json.loads((JSON_DIR / "anonymous.v1.schema.json").read_text("utf-8"))
    required = {name: set(branch["required"]) for name, branch in schema["$defs"].items()}
    assert required == {
        "IdentifyEvent": {"event_id", "anonymous_id", "lead_id", "occurred_at"},
        "AnonymousEvent": {"event_id", "anonymous_id", "type", "occurred_at"},
    }


def test_schemas_name_the_fields_producers_must_send() -> None:
    engagement = json.loads((JSON_DIR / "engagement.v1.schema.json").read_text("utf-8"))
    assert set(engagement["required"]) == {"event_id", "lead_id", "type", "occurred_at"}
    handoff = json.loads((JSON_DIR / "handoff.v1.schema.json").read_text("utf-8"))
    for field in ("handoff_id", "lead_id", "score", "reasons", "first_contact_due_at"):
        assert field in handoff["required"]
