"""Generate the checked-in JSON Schema files (and, through schemas.asyncapi, the AsyncAPI
document) from the pydantic models listed in schemas.catalog."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.asyncapi import ASYNCAPI_FILE, write_document
from schemas.catalog import SCHEMAS

JSON_DIR = Path(__file__).resolve().parent / "json"

__all__ = ["JSON_DIR", "SCHEMAS", "render", "write_all"]


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
