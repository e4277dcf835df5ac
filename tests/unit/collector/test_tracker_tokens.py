"""The collector's website side over local HTTP (aiohttp's test server; Kafka replaced by a
gate that records what it would produce): anonymous routing, tracker tokens (scope, origin,
per-client rate limit, the token in the URL for sendBeacon), truncated addresses, tracker.js."""

from __future__ import annotations

import gzip
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams import collector as c
from streams.collector.access import client_address, truncate_ip
from streams.core.rules import parse_rules
from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

SERVER_TOKEN = "server-token-0123456789abcdef"
TRACKER_TOKEN = "tracker-token-0123456789abcdef"
SITE = "https://www.example.com"
RULES = parse_rules(
    {
        "mql": {"threshold": 50},
        "engagement": {"pricing_page_view": 25, "webinar_signup": 10},
        "tracker": {
            "pages": [{"match": "/pricing", "type": "pricing_page_view"}],
            "events": ["webinar_signup"],
        },
    }
)
NOW = datetime.now(UTC).isoformat()


class RecordingGate:
    """The KafkaGate's interface; everything is acknowledged at once and kept here."""

    topic = "leads.engagement"

    def __init__(self) -> None:
        self.state = "ready"
        self.detail = "test"
        self.since = datetime.now(UTC)
        self.produced: list[tuple[str, bytes, bytes]] = []

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def produce(self, records: Sequence[tuple[str, bytes, bytes]], within: float) -> None:
        self.produced.extend(records)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> Any:
    tokens = {
        "crm": SERVER_TOKEN,
        "website": {"token": TRACKER_TOKEN, "scope": "tracker", "origins": [SITE]},
    }
    return load_settings(
        namespace="",
        collector_tokens=orjson.dumps(tokens).decode(),
        collector_tracker_rate_per_second=1,
        collector_tracker_burst=5,
        **overrides,
    )


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], RecordingGate, Clock]]:
    gate, clock = RecordingGate(), Clock()
    app = c.Collector(
        settings(), RULES.event_types, gate=cast(Any, gate), clock=clock, rules=RULES
    ).app()
    async with TestClient(TestServer(app)) as http:
        yield http, gate, clock


def visit(n: int, visitor: str = "anon-1", **extra: Any) -> dict[str, Any]:
    body = {
        "event_id": f"v-{n}",
        "anonymous_id": visitor,
        "type": "pricing_page_view",
        "occurred_at": NOW,
    }
    return {**body, **extra}


async def beacon(
    http: TestClient[Any, Any], body: Any, origin: str | None = SITE, token: str = TRACKER_TOKEN
) -> tuple[int, dict[str, Any]]:
    """What tracker.js's sendBeacon sends: text/plain, the token in the URL, the page's Origin."""
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    if origin is not None:
        headers["Origin"] = origin
    resp = await http.post(f"/v1/events?token={token}", data=orjson.dumps(body), headers=headers)
    return resp.status, await resp.json()


# -- anonymous routing -----------------------------------------------------------------------


async def test_a_visitors_event_goes_to_the_anonymous_topic_keyed_by_its_anonymous_id(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, _ = client
    status, body = await beacon(http, [visit(1), visit(2, "anon-2")])
    assert (status, body["accepted"]) == (202, 2), body
    assert [(t, k) for t, k, _ in gate.produced] == [
        ("leads.anonymous", b"anon-1"),
        ("leads.anonymous", b"anon-2"),
    ]
    # Stamped with the token's source, as lead events are.
    assert orjson.loads(gate.produced[0][2])["source"] == "website"


async def test_a_lead_event_naming_its_anonymous_id_also_identifies_the_visitor(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, _ = client
    form = {
        "event_id": "form-1",
        "lead_id": "lead-42",
        "anonymous_id": "anon-1",
        "type": "form_submit",
        "occurred_at": NOW,
    }
    resp = await http.post("/v1/events", json=form, headers={"X-Leadflow-Token": SERVER_TOKEN})
    assert resp.status == 202, await resp.text()
    (lead_topic, lead_key, _), (anon_topic, anon_key, identify) = gate.produced
    assert (lead_topic, lead_key) == ("leads.engagement", b"lead-42")
    assert (anon_topic, anon_key) == ("leads.anonymous", b"anon-1")
    record = orjson.loads(identify)
    assert datetime.fromisoformat(record.pop("occurred_at")) == datetime.fromisoformat(NOW)
    assert record == {
        "event_id": "form-1",
        "anonymous_id": "anon-1",
        "lead_id": "lead-42",
        "type": "identify",
        "source": "crm",
    }


async def test_a_bad_visitor_event_is_refused_naming_the_field(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, _ = client
    status, body = await beacon(http, visit(1, type="pricng_page_view"))
    assert (status, body["reason"], body["field"]) == (400, "unknown_type", "type"), body
    status, body = await beacon(
        http, {"event_id": "i-1", "anonymous_id": "a", "type": "identify", "occurred_at": NOW}
    )
    assert (status, body["reason"], body["field"]) == (400, "invalid_event", "lead_id"), body
    assert gate.produced == []


# -- tracker tokens: scope ---------------------------------------------------------------------


async def test_a_tracker_token_sends_visitors_events_and_identifies_only(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, _ = client
    identify = {
        "event_id": "i-1",
        "anonymous_id": "anon-1",
        "lead_id": "lead-42",
        "type": "identify",
        "occurred_at": NOW,
    }
    lead_event = {
        "event_id": "x-1",
        "lead_id": "lead-42",
        "type": "pricing_page_view",
        "occurred_at": NOW,
    }
    status, body = await beacon(
        http,
        [
            visit(1),
            identify,
            visit(2, type="webinar_signup"),  # tracker.events
            visit(3, type="demo_request"),  # a contract type, not the tracker's
            lead_event,  # a public token must not raise a named lead's score
        ],
    )
    assert status == 202
    verdicts = [(r["status"], r.get("reason"), r.get("field")) for r in body["results"]]
    assert verdicts == [
        ("accepted", None, None),
        ("accepted", None, None),
        ("accepted", None, None),
        ("rejected", "not_allowed", "type"),
        ("rejected", "not_allowed", "lead_id"),
    ]
    assert [orjson.loads(v)["event_id"] for _, _, v in gate.produced] == ["v-1", "i-1", "v-2"]
    assert (
        "demo_request" in body["results"][3]["error"] and "tracker" in body["results"][3]["error"]
    )


async def test_a_server_token_in_the_url_is_refused_and_a_tracker_token_in_a_header_is_scoped(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, _ = client
    status, body = await beacon(http, visit(1), token=SERVER_TOKEN)
    assert (status, body["reason"]) == (403, "forbidden")
    assert "header" in body["error"] and SERVER_TOKEN not in body["error"]
    status, body = await beacon(http, visit(1), token="not-a-token-at-all-0000")
    assert (status, body["reason"]) == (403, "forbidden")
    resp = await http.post(
        "/v1/events",
        json={"event_id": "x", "lead_id": "L", "type": "download", "occurred_at": NOW},
        headers={"Authorization": f"Bearer {TRACKER_TOKEN}", "Origin": SITE},
    )
    answer = await resp.json()
    assert (resp.status, answer["reason"], answer["field"]) == (400, "not_allowed", "lead_id")
    assert gate.produced == []


# -- tracker tokens: origin --------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", [None, "https://evil.example", "https://www.example.com.evil.io"]
)
async def test_a_tracker_token_is_refused_from_another_origin(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock], origin: str | None
) -> None:
    http, gate, _ = client
    status, body = await beacon(http, visit(1), origin=origin)
    assert (status, body["reason"]) == (403, "origin_not_allowed"), body
    assert gate.produced == []
    metrics = await (await http.get("/metrics")).text()
    assert 'leadflow_collector_tracker_refused_total{why="origin"} 1.0' in metrics


def test_a_tracker_token_without_origins_stops_the_collector_naming_the_variable() -> None:
    tokens = orjson.dumps({"website": {"token": TRACKER_TOKEN, "scope": "tracker"}}).decode()
    with pytest.raises(SettingsError, match="LEADFLOW_COLLECTOR_TOKENS: source 'website'"):
        c.check_collector_settings(load_settings(collector_tokens=tokens))
    # The CORS list serves as the origins of a tracker token that names none.
    c.check_collector_settings(load_settings(collector_tokens=tokens, collector_cors_origins=SITE))


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"token": TRACKER_TOKEN, "scope": "public"}, "scope: Input should be 'full' or 'tracker'"),
        ({"token": TRACKER_TOKEN, "scopes": "tracker"}, "unknown key 'scopes'"),
        ({"scope": "tracker"}, "no 'token'"),
        ({"token": "short", "scope": "tracker"}, "shorter than 16 characters"),
    ],
)
def test_bad_token_objects_name_the_variable_and_the_key(given: Any, problem: str) -> None:
    with pytest.raises(SettingsError) as failed:
        load_settings(collector_tokens=orjson.dumps({"website": given}).decode())
    assert "LEADFLOW_COLLECTOR_TOKENS" in str(failed.value) and problem in str(failed.value)
    assert TRACKER_TOKEN not in str(failed.value)


# -- tracker tokens: rate per client address ---------------------------------------------------


async def test_a_tracker_token_is_rate_limited_per_client_address(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, gate, clock = client
    status, _ = await beacon(http, [visit(n) for n in range(5)])  # the burst: 5
    assert status == 202
    status, body = await beacon(http, visit(9))
    assert (status, body["reason"]) == (429, "rate_limited"), body
    assert "per client" in body["error"]
    clock.now += 1.0  # 1 event per second
    status, _ = await beacon(http, visit(10))
    assert status == 202
    assert len(gate.produced) == 6  # the 429 took nothing


def test_client_addresses_are_truncated_before_anything_keeps_them() -> None:
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("::ffff:203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348") == "2001:db8:85a3::"
    assert truncate_ip("fe80::1%eth0") == "fe80::"
    assert truncate_ip(None) == truncate_ip("not an address") == "unknown"
    # Behind a load balancer: its last hop, when trusted; else the peer.
    assert client_address("10.0.0.5", "198.51.100.9, 192.0.2.44", True) == "192.0.2.0"
    assert client_address("10.0.0.5", "198.51.100.9", False) == "10.0.0.0"


async def test_two_networks_behind_a_trusted_proxy_have_budgets_of_their_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, clock = RecordingGate(), Clock()
    app = c.Collector(
        settings(collector_trust_forwarded=True),
        RULES.event_types,
        gate=cast(Any, gate),
        clock=clock,
        rules=RULES,
    ).app()
    async with TestClient(TestServer(app)) as http:

        async def send(address: str, n: int) -> int:
            resp = await http.post(
                f"/v1/events?token={TRACKER_TOKEN}",
                data=orjson.dumps([visit(i) for i in range(n)]),
                headers={"Content-Type": "text/plain", "Origin": SITE, "X-Forwarded-For": address},
            )
            return resp.status

        with caplog.at_level(logging.WARNING):
            assert await send("198.51.100.7", 5) == 202
            assert await send("198.51.100.8", 1) == 429  # the same /24: the same budget
            assert await send("192.0.2.7", 5) == 202
    # Nothing the collector logged holds a full address.
    logged = caplog.text
    assert "198.51.100.8" not in logged and "198.51.100.7" not in logged


# -- tracker.js --------------------------------------------------------------------------------


async def test_tracker_js_is_served_small_with_the_rules_page_types(
    client: tuple[TestClient[Any, Any], RecordingGate, Clock],
) -> None:
    http, _, _ = client
    resp = await http.get("/v1/tracker.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/javascript")
    script = await resp.read()
    assert len(gzip.compress(script, 9)) < 5 * 1024
    assert b'[["/pricing","pricing_page_view"]]' in script
    assert b"sendBeacon" in script and b"__LEADFLOW_CONFIG__" not in script
    again = await http.get("/v1/tracker.js", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


def test_a_page_rule_cannot_close_the_script_tag() -> None:
    from streams.collector.tracker import tracker_script

    rules = parse_rules(
        {
            "mql": {"threshold": 5},
            "tracker": {"pages": [{"match": "/</script><b>", "type": "page_view"}]},
        }
    )
    assert b"</script>" not in tracker_script(rules).body
