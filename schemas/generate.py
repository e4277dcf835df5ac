"""Generate the checked-in JSON Schema files from the pydantic models."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.activity import SalesActivity
from schemas.alert import SlaAlert
from schemas.deadletter import DeadLetterHeaders
from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition

JSON_DIR = Path(__file__).resolve().parent / "json"

# file name -> (model, topic, what the schema describes)
SCHEMAS: dict[str, tuple[type[BaseModel], str, str]] = {
    "engagement.v1.schema.json": (EngagementEvent, "leads.engagement", "record value"),
    "handoff.v1.schema.json": (MqlHandoff, "leads.handoff", "record value"),
    "activity.v1.schema.json": (SalesActivity, "sales.activity", "record value"),
    "lifecycle.v1.schema.json": (LifecycleTransition, "leads.lifecycle", "record value"),
    "alert.v1.schema.json": (SlaAlert, "alerts.sla", "record value"),
    "deadletter-headers.v1.schema.json": (
        DeadLetterHeaders,
        "leads.deadletter",
        "record headers (the value and key are the original bytes)",
    ),
}


def render(model: type[BaseModel], topic: str, what: str) -> bytes:
    schema = model.model_json_schema(mode="serialization")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://leadflow.dev/schemas/{topic}.v1.json",
        "x-leadflow-topic": topic,
        "x-leadflow-describes": what,
        **schema,
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all(
    check: bool = False, directory: Path = JSON_DIR, asyncapi_file: Path | None = None
) -> list[str]:
    """Write every schema file; with check=True write nothing and return the stale ones.

    The AsyncAPI document (schemas/asyncapi.yaml) is covered too when writing the default
    directory, or at asyncapi_file when one is given.
    """
    from schemas.asyncapi import ASYNCAPI_FILE, write_document  # it imports SCHEMAS from here

    stale = []
    directory.mkdir(parents=True, exist_ok=True)
    for name, (model, topic, what) in SCHEMAS.items():
        path = directory / name
        text = render(model, topic, what)
        if not path.exists() or path.read_bytes() != text:
            stale.append(name)
            if not check:
                path.write_bytes(text)
    asyncapi_file = asyncapi_file or (ASYNCAPI_FILE if directory == JSON_DIR else None)
    if asyncapi_file is not None and write_document(asyncapi_file, check=check):
        stale.append(asyncapi_file.name)
    return stale


if __name__ == "__main__":
    write_all()
