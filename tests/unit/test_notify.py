"""`leadflow notify`'s decisions without I/O: config, filters, bodies, signature, retries."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from streams.notify.config import (
    NotifyConfigError,
    RetryPolicy,
    Target,
    load_notify_config,
    parse_notify_config,
)
from streams.notify.decide import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    NotRecord,
    Outcome,
    after_failure,
    backoff,
    matches,
    parse_notice,
    render,
    request_headers,
    retry_after_seconds,
    signature,
)

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-webhook-key-0123456789"
URL = "https://hooks.example.com/services/T000/B000/XYZ"


def alert(n: int = 1, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "schema_version": 1,
        "alert_id": f"a-{n}",
        "lead_id": f"L{n}",
        "handoff_id": f"h-{n}",
        "kind": "mql_first_contact",
        "severity": "breach",
        "due_at": "2025-03-01T10:00:00+00:00",
        "detected_at": "2025-03-01T10:00:01+00:00",
        "owner": None,
    }
    return orjson.dumps({**body, **extra})


def handoff(n: int = 1, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "schema_version": 1,
        "handoff_id": f"h-{n}",
        "lead_id": f"L{n}",
        "qualified_at": "2025-03-01T09:00:00+00:00",
        "score": 125.0,
        "fit_score": 55.0,
        "engagement_score": 70.0,
        "threshold": 100.0,
        "rules_version": "abc",
        "triggering_event_id": "e-1",
        "reasons": [
            {"kind": "engagement", "rule": "demo_request", "points": 40.0, "events": 1},
            {"kind": "fit", "rule": "Target industry", "points": 20.0},
        ],
        "first_contact_due_at": "2025-03-02T09:00:00+00:00",
    }
    return orjson.dumps({**body, **extra})


def lifecycle(n: int = 1) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "transition_id": f"t-{n}",
            "lead_id": f"L{n}",
            "from_stage": "mql",
            "to_stage": "nurture",
            "occurred_at": "2025-03-01T09:00:00+00:00",
            "handoff_id": f"h-{n}",
            "reason": "bant",
            "missing_bant": ["budget", "timeframe"],
        }
    )


def target(**fields: Any) -> Target:
    return Target.model_validate({"name": "t", "url": URL, **fields})


# -- config ----------------------------------------------------------------------------------


def test_config_reads_targets_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(
        f"""
defaults: {{max_attempts: 5, backoff_initial: 0.5}}
targets:
  - {{name: slack, url: "{URL}", format: slack, secret: "{SECRET}", kinds: [alert]}}
  - {{name: crm, url: "http://127.0.0.1:9/x", max_attempts: 2, timeout: 3}}
  - {{name: stages, url: "http://127.0.0.1:9/y", kinds: [lifecycle]}}
""",
        encoding="utf-8",
    )
    config = load_notify_config(path)
    slack, crm, stages = config.targets
    assert slack.format == "slack" and crm.format == "json"
    assert slack.secret_value == SECRET.encode()
    assert config.policy(slack) == RetryPolicy(max_attempts=5, backoff_initial=0.5)
    assert config.policy(crm).max_attempts == 2 and config.policy(crm).timeout == 3
    assert config.wants_lifecycle and stages.wants_lifecycle and not slack.wants_lifecycle
    assert set(config.secrets) == {URL, SECRET, "http://127.0.0.1:9/x", "http://127.0.0.1:9/y"}
    # The secret never shows in a repr (a log line, a traceback).
    assert SECRET not in repr(config) and URL not in repr(config)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (f'targets: [{{name: a, url: "{URL}", format: discord}}]', "targets[0].format: Input"),
        ('targets: [{name: a, url: "ftp://x/y"}]', "targets[0]: url must be an http"),
        (f'targets: [{{name: "a b", url: "{URL}"}}]', "targets[0].name: String should match"),
        (f'targets: [{{name: a, url: "{URL}", kinds: [won]}}]', "targets[0].kinds[0]: Input"),
        (f'targets: [{{name: a, url: "{URL}", secret: short}}]', "secret must be at least 16"),
        (f'targets: [{{name: a, url: "{URL}", secret_env: LF_NOPE_UNSET}}]', "LF_NOPE_UNSET"),
        (f'targets: [{{name: a, url: "{URL}", retries: 3}}]', "targets[0].retries: Extra"),
        (f'targets: [{{name: a, url: "{URL}"}}, {{name: a, url: "{URL}"}}]', "unique: a"),
        ("targets: []", "targets: Tuple should have at least 1 item"),
        ("defaults: {max_attempts: 0}\ntargets: []", "defaults.max_attempts: Input should be"),
        ("[1, 2]", "expected a mapping with 'targets'"),
        ("targets: [", "not valid YAML"),
    ],
)
def test_a_bad_config_names_the_field(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(NotifyConfigError) as info:
        load_notify_config(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)
    assert "\n" not in str(info.value).split(": not valid YAML")[0]


def test_the_command_ends_a_bad_config_with_exit_2_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.cli import app

    path = tmp_path / "notify.yaml"
    path.write_text(
        f'targets: [{{name: a, url: "{URL}", format: discord, secret: "{SECRET}"}}]',
        encoding="utf-8",
    )
    monkeypatch.setenv("LEADFLOW_NOTIFY_CONFIG", str(path))
    result = CliRunner().invoke(app, ["notify"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "targets[0].format" in lines[0]
    assert SECRET not in result.output

    monkeypatch.delenv("LEADFLOW_NOTIFY_CONFIG")
    result = CliRunner().invoke(app, ["notify"])
    assert result.exit_code == 2 and "LEADFLOW_NOTIFY_CONFIG is not set" in result.output
    monkeypatch.setenv("LEADFLOW_NOTIFY_CONFIG", str(tmp_path / "missing.yaml"))
    result = CliRunner().invoke(app, ["notify"])
    assert result.exit_code == 2 and "LEADFLOW_NOTIFY_CONFIG" in result.output


def test_parse_errors_have_no_file_when_given_an_origin() -> None:
    with pytest.raises(NotifyConfigError, match=r"^here: targets: Field required$"):
        parse_notify_config({}, "here")


# -- records and filters ---------------------------------------------------------------------


def test_records_become_notices_with_their_delivery_id() -> None:
    a = parse_notice("alert", alert(1, owner="sato"))
    assert (a.kind, a.delivery_id, a.severity, a.owner, a.queue) == (
        "mql_first_contact",
        "a-1",
        "breach",
        "sato",
        None,
    )
    h = parse_notice("handoff", handoff(2))
    assert (h.kind, h.delivery_id, h.severity, h.owner) == ("handoff", "h-2", None, None)
    # Fields routing adds later (owner, queue) are read when present.
    h = parse_notice("handoff", handoff(2, owner="abe", queue="enterprise"))
    assert (h.owner, h.queue) == ("abe", "enterprise")
    t = parse_notice("lifecycle", lifecycle(3))
    assert (t.kind, t.delivery_id) == ("lifecycle", "t-3")
    with pytest.raises(NotRecord, match="not JSON"):
        parse_notice("alert", b"{nope")
    with pytest.raises(NotRecord, match="severity"):
        parse_notice("alert", alert(1, severity="panic"))


def test_filters() -> None:
    breach = parse_notice("alert", alert(1, owner="sato"))
    warning = parse_notice("alert", alert(2, severity="warning", kind="sql_follow_up"))
    mql = parse_notice("handoff", handoff(3))
    routed = parse_notice("handoff", handoff(4, owner="abe", queue="enterprise"))
    stage = parse_notice("lifecycle", lifecycle(5))

    def wanted(**filters: Any) -> list[str]:
        t = target(**filters)
        return [n.delivery_id for n in (breach, warning, mql, routed, stage) if matches(t, n)]

    # No filter: handoffs and alerts; lifecycle only when asked for.
    assert wanted() == ["a-1", "a-2", "h-3", "h-4"]
    assert wanted(kinds=["lifecycle"]) == ["t-5"]
    assert wanted(kinds=["alert"]) == ["a-1", "a-2"]
    assert wanted(kinds=["sql_follow_up", "handoff"]) == ["a-2", "h-3", "h-4"]
    # A filter on a field the record does not have does not match it.
    assert wanted(severities=["breach"]) == ["a-1"]
    assert wanted(owners=["sato", "abe"]) == ["a-1", "h-4"]
    assert wanted(queues=["enterprise"]) == ["h-4"]
    assert wanted(kinds=["handoff"], queues=["smb"]) == []
    assert wanted(kinds=["alert"], severities=["warning"]) == ["a-2"]


# -- bodies ----------------------------------------------------------------------------------


def test_json_body_is_the_record_as_is() -> None:
    raw = alert(1)
    assert render("json", parse_notice("alert", raw)) == raw


def test_slack_body_of_a_breach_hand_checked() -> None:
    body = orjson.loads(render("slack", parse_notice("alert", alert(7, owner="sato"))))
    text = "Lead L7: first contact was due 2025-03-01 10:00 UTC (owner sato)"
    assert body == {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "SLA breach: first contact"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Lead*\nL7"},
                    {"type": "mrkdwn", "text": "*Owner*\nsato"},
                    {"type": "mrkdwn", "text": "*Due*\n2025-03-01 10:00 UTC"},
                    {"type": "mrkdwn", "text": "*Severity*\nbreach"},
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "leadflow mql_first_contact `a-7`"}],
            },
        ],
    }


def test_slack_body_of_a_handoff_and_a_warning() -> None:
    body = orjson.loads(render("slack", parse_notice("handoff", handoff(3))))
    assert body["blocks"][0]["text"]["text"] == "New MQL: L3"
    assert body["text"] == (
        "Lead L3 qualified with score 125 (threshold 100); contact by 2025-03-02 09:00 UTC"
    )
    fields = [f["text"] for f in body["blocks"][2]["fields"]]
    assert fields == [
        "*Lead*\nL3",
        "*Score*\n125 (fit 55, engagement 70)",
        "*Contact by*\n2025-03-02 09:00 UTC",
        "*Why*\ndemo_request +40; Target industry +20",
    ]
    warning = orjson.loads(
        render("slack", parse_notice("alert", alert(4, severity="warning", kind="sql_follow_up")))
    )
    assert warning["blocks"][0]["text"]["text"] == "SLA warning: SQL follow-up"
    assert warning["text"] == (
        "Lead L4: SQL follow-up is due 2025-03-01 10:00 UTC (owner unassigned)"
    )


def test_teams_body_is_a_message_card() -> None:
    card = orjson.loads(render("teams", parse_notice("alert", alert(1))))
    assert card["@type"] == "MessageCard"
    assert card["@context"] == "https://schema.org/extensions"
    assert card["themeColor"] == "D32F2F"
    assert card["title"] == "SLA breach: first contact"
    assert {"name": "Owner", "value": "unassigned"} in card["sections"][0]["facts"]
    stage = orjson.loads(render("teams", parse_notice("lifecycle", lifecycle(1))))
    assert stage["title"] == "Lead L1: mql → nurture"
    assert {"name": "Missing BANT", "value": "budget, timeframe"} in stage["sections"][0]["facts"]


# -- signature and headers -------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = render("slack", parse_notice("alert", alert(1)))
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature(SECRET.encode(), body) == f"sha256={expected}"
    t = target(secret=SECRET, format="slack")
    headers = request_headers(t, parse_notice("alert", alert(1)), body, 1, "leadflow-notify/1")
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert headers[DELIVERY_HEADER] == "a-1"
    assert headers["X-Leadflow-Target"] == "t"
    assert headers["User-Agent"] == "leadflow-notify/1"
    assert headers["Content-Type"] == "application/json"
    unsigned = request_headers(target(), parse_notice("alert", alert(1)), body, 1, "ua")
    assert SIGNATURE_HEADER not in unsigned


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LF_TEST_HOOK_SECRET", SECRET)
    assert target(secret_env="LF_TEST_HOOK_SECRET").secret_value == SECRET.encode()


# -- retries ---------------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=8, backoff_initial=1, backoff_max=60, retry_after_max=600)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, POLICY) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_retry_after_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7", NOW) == 7
    assert retry_after_seconds(" 0 ", NOW) == 0
    assert retry_after_seconds("Sat, 01 Mar 2025 10:00:30 GMT", NOW) == 30
    assert retry_after_seconds("Sat, 01 Mar 2025 09:59:00 GMT", NOW) == 0  # already past
    assert retry_after_seconds(None, NOW) is None
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds("-5", NOW) is None


def test_what_is_retried() -> None:
    def next_of(outcome: Outcome, attempt: int = 1) -> tuple[str, float, str]:
        n = after_failure(outcome, attempt, POLICY, NOW)
        return n.action, n.delay, n.reason

    assert next_of(Outcome(status=500)) == ("retry", 1, "")
    assert next_of(Outcome(status=503), 3) == ("retry", 4, "")
    assert next_of(Outcome(error="timeout"), 2) == ("retry", 2, "")
    assert next_of(Outcome(error="connection_error"), 7) == ("retry", 60, "")
    assert next_of(Outcome(status=408)) == ("retry", 1, "")
    # 429: its Retry-After, in seconds or as a date, capped by retry_after_max.
    assert next_of(Outcome(status=429, retry_after="5")) == ("retry", 5, "")
    later = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert next_of(Outcome(status=429, retry_after=later)) == ("retry", 90, "")
    assert next_of(Outcome(status=429, retry_after="86400")) == ("retry", 600, "")
    assert next_of(Outcome(status=429, retry_after="garbage"), 2) == ("retry", 2, "")
    # Not retried: other 4xx and 3xx.
    for status in (400, 401, 403, 404, 410, 422, 301):
        assert next_of(Outcome(status=status)) == ("deadletter", 0, "not_retryable")
    # The last allowed attempt.
    assert next_of(Outcome(status=500), 8) == ("deadletter", 0, "attempts_exhausted")
    assert Outcome(status=500).reason == "http_500"
    assert Outcome(error="timeout").reason == "timeout"
    assert Outcome(status=204).ok and not Outcome(status=302).ok
