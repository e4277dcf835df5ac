"""The AsyncAPI document is generated from the models, kept current, and valid AsyncAPI 3.0.0.

Validity is checked offline against the official AsyncAPI 3.0.0 JSON Schema, vendored from the
npm package @asyncapi/specs (tests/data/asyncapi/README.md), plus the two rules that schema cannot
express and the official parser enforces: every $ref resolves, and an operation's messages are
messages of its own channel.
"""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel, ValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from schemas.activity import SalesActivity
from schemas.alert import SlaAlert
from schemas.asyncapi import (
    ASYNCAPI_FILE,
    SCHEMA_FORMAT,
    build_document,
    draft07_schema,
    inline_refs,
    render,
)
from schemas.deadletter import DEADLETTER_HEADERS, DeadLetterHeaders, DeadLetterKind
from schemas.engagement import EngagementEvent
from schemas.generate import SCHEMAS, write_all
from schemas.handoff import MqlHandoff, ScoreReason
from schemas.lifecycle import LifecycleTransition
from streams.settings import Settings

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO_ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
SAMPLE = REPO_ROOT / "streams" / "data" / "engagement-sample.ndjson"

# The topics of the contract (default names) and leadflow's side of each.
TOPICS = {
    "leads.engagement": "receive",
    "leads.anonymous": "receive",
    "sales.activity": "receive",
    "leads.handoff": "send",
    "leads.lifecycle": "send",
    "alerts.sla": "send",
    "leads.deadletter": "send",
    "notify.deadletter": "send",
}
NOT_DRAFT_07 = {"$defs", "prefixItems", "unevaluatedProperties", "dependentRequired", "$anchor"}


def _no_network(uri: str) -> Any:
    raise NoSuchResource(ref=uri)


@pytest.fixture(scope="module")
def spec_validator() -> Draft7Validator:
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    assert spec["$schema"].startswith("http://json-schema.org/draft-07/schema")
    assert spec["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    # The spec is bundled: each definition is a resource under its own $id (the draft-07
    # meta-schema and the bindings included). Register them all; never fetch anything.
    resources = [(spec["$id"], DRAFT7.create_resource(spec))] + [
        (uri, DRAFT7.create_resource(definition)) for uri, definition in spec["definitions"].items()
    ]
    registry: Registry[Any] = Registry(retrieve=_no_network).with_resources(resources)
    Draft7Validator.check_schema(spec)
    return Draft7Validator(spec, registry=registry)


@pytest.fixture()
def document() -> dict[str, Any]:
    """The checked-in file, as a consumer would read it."""
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text(encoding="utf-8"))
    return loaded


def _refs(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield path, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{path}/{i}")


def _pointer(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise KeyError(f"{ref}: not a local reference")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every payload and headers Multi Format Schema Object of the document's messages."""
    for message_id, message in document.get("components", {}).get("messages", {}).items():
        for part in ("payload", "headers"):
            if part in message:
                yield f"{message_id}.{part}", message[part]


def problems(document: dict[str, Any], spec_validator: Draft7Validator) -> list[str]:
    """Why the document is not valid AsyncAPI 3.0.0 (empty when it is)."""
    found = [
        f"spec: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in spec_validator.iter_errors(document)
    ]
    for where, ref in _refs(document):
        try:
            _pointer(document, ref)
        except (KeyError, IndexError, TypeError):
            found.append(f"{where}: $ref {ref} does not resolve")
    for op_id, operation in document.get("operations", {}).items():
        channel = operation.get("channel", {}).get("$ref", "")
        for message in operation.get("messages", []):
            if not message.get("$ref", "").startswith(f"{channel}/messages/"):
                found.append(f"operations/{op_id}: message {message} is not of {channel}")
    meta = Draft7Validator(Draft7Validator.META_SCHEMA)
    for where, multi in _schemas(document):
        if multi.get("schemaFormat") != SCHEMA_FORMAT:
            found.append(f"{where}: schemaFormat {multi.get('schemaFormat')!r}")
        found += [
            f"{where}: draft-07: {e.message[:200]}" for e in meta.iter_errors(multi["schema"])
        ]
    return found


# -- (a) current ---------------------------------------------------------------------------


def test_checked_in_document_is_current() -> None:
    assert ASYNCAPI_FILE.read_bytes() == render(), "run `leadflow schemas generate`"
    assert ASYNCAPI_FILE.name not in write_all(check=True)


def test_render_is_deterministic_and_round_trips() -> None:
    assert render() == render()
    assert yaml.safe_load(render()) == build_document()
    assert b"&id" not in render()  # no YAML anchors/aliases


def test_generate_writes_and_checks_the_document(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    written = write_all(directory=tmp_path / "json", asyncapi_file=target)
    assert sorted(written) == sorted([*SCHEMAS, "asyncapi.yaml"])
    assert target.read_bytes() == render()
    assert write_all(check=True, directory=tmp_path / "json", asyncapi_file=target) == []

    target.write_bytes(target.read_bytes().replace(b"leads.handoff", b"lead.handoff"))
    tampered = target.read_bytes()
    assert write_all(check=True, directory=tmp_path / "json", asyncapi_file=target) == [
        "asyncapi.yaml"
    ]
    assert target.read_bytes() == tampered  # check writes nothing
    assert write_all(directory=tmp_path / "json", asyncapi_file=target) == ["asyncapi.yaml"]
    assert target.read_bytes() == render()


# -- (b) valid -----------------------------------------------------------------------------


def test_document_is_valid_asyncapi_3(
    document: dict[str, Any], spec_validator: Draft7Validator
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert problems(document, spec_validator) == []


@pytest.mark.parametrize("message_id", sorted(build_document()["components"]["messages"]))
def test_message_schemas_are_self_contained_draft_07(message_id: str) -> None:
    message = build_document()["components"]["messages"][message_id]
    for part in ("payload", "headers"):
        if part not in message:
            continue
        assert message[part]["schemaFormat"] == "application/schema+json;version=draft-07"
        schema = message[part]["schema"]
        Draft7Validator.check_schema(schema)
        text = json.dumps(schema)
        assert '"$ref"' not in text
        assert not any(f'"{keyword}"' in text for keyword in NOT_DRAFT_07)


# -- (c) complete, and the check can fail --------------------------------------------------


def test_document_covers_every_topic_of_the_settings_and_the_contract(
    document: dict[str, Any],
) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(TOPICS)
    configured = {
        field.default
        for name, field in Settings.model_fields.items()
        if name.endswith("_topic") and isinstance(field.default, str)
    }
    assert configured >= {"leads.engagement", "leads.handoff", "leads.deadletter"}
    assert configured <= addresses, (
        f"topics in Settings without a channel: {configured - addresses}"
    )
    # Every topic leadflow uses, under a namespace, is `<namespace>.` + a channel address.
    namespaced = set(Settings.model_construct(namespace="acme").all_topics)
    assert {f"acme.{topic}" for topic in configured} <= namespaced
    assert namespaced <= {f"acme.{address}" for address in addresses}
    for channel in document["channels"].values():
        assert f"<namespace>.{channel['address']}" in channel["description"]
        assert "LEADFLOW_NAMESPACE" in channel["description"]


def test_document_covers_every_model(document: dict[str, Any]) -> None:
    by_address = {channel["address"]: channel for channel in document["channels"].values()}
    for model, topic, what in SCHEMAS.values():
        (ref,) = [m["$ref"] for m in by_address[topic]["messages"].values()]
        message = _pointer(document, ref)
        part = "headers" if what.startswith("record headers") else "payload"
        schema = message[part]["schema"]
        assert schema["title"] == model.__name__
        if part == "payload":
            expected = draft07_schema(model, "receive" if TOPICS[topic] == "receive" else "send")
            assert schema == expected
            # A union (leads.anonymous: an identify or an anonymous event) lists each model.
            for branch, member in zip(schema.get("anyOf", [schema]), _members(model), strict=True):
                assert set(branch["properties"]) == set(member.model_fields)


def test_operations_are_from_leadflows_point_of_view(document: dict[str, Any]) -> None:
    seen = {}
    for operation in document["operations"].values():
        channel = _pointer(document, operation["channel"]["$ref"])
        seen[channel["address"]] = operation["action"]
        assert len(operation["messages"]) == 1
    assert seen == TOPICS


def test_every_message_has_the_lead_id_as_kafka_key(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    assert len(messages) == len(TOPICS)
    for message_id, message in messages.items():
        kafka = message["bindings"]["kafka"]
        assert kafka["bindingVersion"] == "0.5.0"
        assert kafka["key"]["type"] == "string"
        key = "anonymous_id" if message_id == "AnonymousRecord" else "lead_id"
        assert key in kafka["key"]["description"], message_id


def _members(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models a root model is one of, in order; a plain model is its own only member."""
    root = model.model_fields.get("root")
    if root is None:
        return [model]
    return list(typing.get_args(root.annotation))


def test_deadletter_is_original_bytes_with_described_headers(document: dict[str, Any]) -> None:
    (dead,) = [
        _pointer(document, ref["$ref"])
        for channel in document["channels"].values()
        if channel["address"] == "leads.deadletter"
        for ref in channel["messages"].values()
    ]
    assert dead["contentType"] == "application/octet-stream"
    assert dead["payload"]["schema"]["format"] == "binary"
    headers = dead["headers"]["schema"]
    assert headers["type"] == "object"
    assert set(headers["properties"]) == set(DEADLETTER_HEADERS.values())
    assert set(headers["required"]) == set(DEADLETTER_HEADERS.values())
    kinds = headers["properties"][DEADLETTER_HEADERS["error_kind"]]["enum"]
    assert kinds == [kind.value for kind in DeadLetterKind]
    # What leadflow actually writes on a dead letter matches the headers schema.
    written = DeadLetterHeaders(
        error_kind=DeadLetterKind.KEY_MISMATCH,
        error_message="lead_id: differs from the Kafka key",
        source_topic="leads.engagement",
        source_partition=3,
        source_offset=12345,
    ).to_kafka()
    instance = {name: value.decode() for name, value in written}
    assert list(Draft7Validator(headers).iter_errors(instance)) == []
    instance[DEADLETTER_HEADERS["source_offset"]] = "twelve"
    assert list(Draft7Validator(headers).iter_errors(instance)) != []


def _payload(document: dict[str, Any], message_id: str) -> Draft7Validator:
    return Draft7Validator(document["components"]["messages"][message_id]["payload"]["schema"])


def test_payloads_accept_what_the_models_accept_and_emit(document: dict[str, Any]) -> None:
    engagement = _payload(document, "EngagementEvent")
    accepted = 0
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        try:
            EngagementEvent.model_validate_json(line)
        except ValidationError:
            continue
        accepted += 1
        assert list(engagement.iter_errors(json.loads(line))) == [], line
    assert accepted > 100
    assert list(engagement.iter_errors({"event_id": "e1", "lead_id": "l1"})) != []

    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    emitted: dict[str, BaseModel] = {
        "SalesActivity": SalesActivity.model_validate(
            {
                "activity_id": "a1",
                "lead_id": "l1",
                "type": "bant_assessed",
                "occurred_at": now,
                "bant": {"budget": True, "authority": False, "need": True, "timeframe": True},
            }
        ),
        "MqlHandoff": MqlHandoff(
            handoff_id="ho-1",
            lead_id="l1",
            qualified_at=now,
            score=72.5,
            fit_score=30,
            engagement_score=42.5,
            threshold=60,
            rules_version="abc",
            triggering_event_id="e9",
            reasons=[ScoreReason(kind="engagement", rule="download", points=20.5, events=2)],
            first_contact_due_at=now,
        ),
        "LifecycleTransition": LifecycleTransition(
            transition_id="t1",
            lead_id="l1",
            from_stage="mql",
            to_stage="nurture",
            occurred_at=now,
            handoff_id="ho-1",
            missing_bant=["budget"],
        ),
        "SlaAlert": SlaAlert(
            alert_id="al-1",
            lead_id="l1",
            handoff_id="ho-1",
            kind="mql_first_contact",
            severity="breach",
            due_at=now,
            detected_at=now,
        ),
    }
    for message_id, value in emitted.items():
        instance = value.model_dump(mode="json")
        assert list(_payload(document, message_id).iter_errors(instance)) == [], message_id
    bad_bant = emitted["SalesActivity"].model_dump(mode="json")
    bad_bant["bant"]["budget"] = "yes"
    assert list(_payload(document, "SalesActivity").iter_errors(bad_bant)) != []


def _remove_channel(doc: dict[str, Any]) -> None:
    del doc["channels"]["alertsSla"]


def _publish(doc: dict[str, Any]) -> None:
    doc["operations"]["sendLeadsHandoff"]["action"] = "publish"


def _version_2(doc: dict[str, Any]) -> None:
    doc["asyncapi"] = "2.6.0"


def _no_info_version(doc: dict[str, Any]) -> None:
    del doc["info"]["version"]


def _message_from_components(doc: dict[str, Any]) -> None:
    doc["operations"]["sendAlertsSla"]["messages"] = [{"$ref": "#/components/messages/SlaAlert"}]


def _bad_payload_keyword(doc: dict[str, Any]) -> None:
    doc["components"]["messages"]["MqlHandoff"]["payload"]["schema"]["required"] = "lead_id"


def _unknown_kafka_binding_field(doc: dict[str, Any]) -> None:
    doc["components"]["messages"]["SlaAlert"]["bindings"]["kafka"]["partitionKey"] = "lead_id"


def _server_without_protocol(doc: dict[str, Any]) -> None:
    del doc["servers"]["local"]["protocol"]


@pytest.mark.parametrize(
    ("mutate", "caught_by"),
    [
        (_remove_channel, "does not resolve"),
        (_publish, "spec: operations/sendLeadsHandoff"),
        (_version_2, "spec: asyncapi"),
        (_no_info_version, "spec: info"),
        (_message_from_components, "is not of #/channels/alertsSla"),
        # The spec schema itself checks a draft-07 payload against the draft-07 meta-schema.
        (_bad_payload_keyword, "spec: components/messages/MqlHandoff"),
        (_unknown_kafka_binding_field, "spec: components/messages/SlaAlert"),
        (_server_without_protocol, "spec: servers/local"),
    ],
)
def test_a_broken_document_fails_validation(
    document: dict[str, Any],
    spec_validator: Draft7Validator,
    mutate: Callable[[dict[str, Any]], None],
    caught_by: str,
) -> None:
    broken = copy.deepcopy(document)
    mutate(broken)
    found = problems(broken, spec_validator)
    assert any(caught_by in problem for problem in found), found


# -- the generator's guards ----------------------------------------------------------------


class _Node(BaseModel):
    name: str
    children: list[_Node] = []


class _Pair(BaseModel):
    pair: tuple[int, str]


def test_recursive_models_and_2020_12_keywords_are_refused() -> None:
    with pytest.raises(ValueError, match="recursive"):
        inline_refs(_Node.model_json_schema())
    with pytest.raises(ValueError, match="prefixItems"):
        draft07_schema(_Pair, "send")


def test_ref_siblings_survive_inlining() -> None:
    schema = {
        "$defs": {"K": {"type": "string", "enum": ["a"], "description": "inner"}},
        "properties": {"k": {"$ref": "#/$defs/K", "description": "outer"}},
    }
    assert inline_refs(schema) == {
        "properties": {"k": {"type": "string", "enum": ["a"], "description": "outer"}}
    }


def test_every_topic_variable_renames_the_topic_it_names() -> None:
    """The catalogue's LEADFLOW_*_TOPIC names are real settings whose default is that topic."""
    from schemas.catalog import TOPIC_VARIABLES
    from streams.settings import Settings

    for topic, variable in TOPIC_VARIABLES.items():
        field = Settings.model_fields[variable.removeprefix("LEADFLOW_").lower()]
        assert field.default == topic
    assert set(TOPIC_VARIABLES) == {topic for _, topic, _ in SCHEMAS.values()}
