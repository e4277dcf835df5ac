"""Settings come from LEADFLOW_* variables; a bad value names the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.settings import (
    DEFAULT_RULES,
    STARTUP_TIMEOUT_COMMAND,
    STARTUP_TIMEOUT_SERVICE,
    SettingsError,
    load_settings,
    redact_url,
    scrub,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from the defaults, whatever the shell running the tests exported."""
    for name in list(os.environ):
        if name.upper().startswith("LEADFLOW_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.topic_partitions == 8
    assert settings.rules == DEFAULT_RULES
    assert settings.rules.is_file()
    assert settings.namespace == ""


def test_empty_namespace_uses_plain_names() -> None:
    settings = load_settings()
    assert settings.all_topics == (
        "leads.engagement",
        "leads.anonymous",
        "leads.handoff",
        "leads.deadletter",
        "sales.activity",
        "leads.lifecycle",
        "alerts.sla",
        "notify.deadletter",
    )
    assert settings.worker_topics == settings.all_topics[:7]
    assert settings.notify_group == "leadflow-notify"
    assert settings.app_id == "leadflow-scoring"
    assert settings.redis_prefix == "lf:"


def test_namespace_prefixes_topics_group_and_redis_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_NAMESPACE", "ns")
    settings = load_settings()
    assert settings.engagement == "ns.leads.engagement"
    assert settings.handoff == "ns.leads.handoff"
    assert settings.deadletter == "ns.leads.deadletter"
    assert settings.app_id == "ns.leadflow-scoring"
    assert settings.redis_prefix == "ns:lf:"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("mql: {threshold: 10}\n", encoding="utf-8")
    monkeypatch.setenv("LEADFLOW_KAFKA_BOOTSTRAP", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("LEADFLOW_TOPIC_PARTITIONS", "24")
    monkeypatch.setenv("LEADFLOW_BATCH_MAX", "1000")
    monkeypatch.setenv("LEADFLOW_RULES", str(rules))
    monkeypatch.setenv("LEADFLOW_ENGAGEMENT_TOPIC", "crm.engagement")
    settings = load_settings()
    assert settings.kafka_bootstrap == "kafka-1:9093,kafka-2:9093"
    assert settings.topic_partitions == 24
    assert settings.batch_max == 1000
    assert settings.rules == rules
    assert settings.engagement == "crm.engagement"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_NAMESPACE", "from-env")
    assert load_settings(namespace="demo-1").app_id == "demo-1.leadflow-scoring"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEADFLOW_BATCH_MAX", "0"),
        ("LEADFLOW_BATCH_MAX", "lots"),
        ("LEADFLOW_NAMESPACE", "my ns"),
        ("LEADFLOW_NAMESPACE", "ns/prod"),
        ("LEADFLOW_TOPIC_PARTITIONS", "0"),
        ("LEADFLOW_WEB_PORT", "70000"),
        ("LEADFLOW_LOG_LEVEL", "LOUD"),
        ("LEADFLOW_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("LEADFLOW_MAX_EVENT_BYTES", "10"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert f"{variable}:" in message
    # Only the bad variable is blamed.
    assert message.count("LEADFLOW_") == 1


def test_missing_rules_file_names_variable_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-rules.yaml"
    monkeypatch.setenv("LEADFLOW_RULES", str(missing))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "LEADFLOW_RULES:" in str(info.value)
    assert str(missing) in str(info.value)


def test_every_bad_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_BATCH_MAX", "-1")
    monkeypatch.setenv("LEADFLOW_NAMESPACE", "has space")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "LEADFLOW_BATCH_MAX:" in str(info.value)
    assert "LEADFLOW_NAMESPACE:" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.namespace = "other"  # type: ignore[misc]


# -- start-up timeout ------------------------------------------------------------------------


def test_startup_timeout_defaults_differ_for_services_and_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    assert settings.startup_timeout is None
    assert settings.startup_within(service=True) == STARTUP_TIMEOUT_SERVICE == 60
    assert settings.startup_within(service=False) == STARTUP_TIMEOUT_COMMAND == 15
    monkeypatch.setenv("LEADFLOW_STARTUP_TIMEOUT", "2.5")
    settings = load_settings()
    assert settings.startup_within(service=True) == settings.startup_within(service=False) == 2.5
    monkeypatch.setenv("LEADFLOW_STARTUP_TIMEOUT", "")  # empty: not set
    assert load_settings().startup_timeout is None


@pytest.mark.parametrize("value", ["-1", "soon", "100000"])
def test_bad_startup_timeout_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LEADFLOW_STARTUP_TIMEOUT", value)
    with pytest.raises(SettingsError, match="LEADFLOW_STARTUP_TIMEOUT:"):
        load_settings()


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://default:S3cretXYZ@10.0.0.5:6379/0", "redis://default:***@10.0.0.5:6379/0"),
        ("rediss://:S3cretXYZ@cache:6380/2", "rediss://:***@cache:6380/2"),
        ("redis://user@cache:6379/0", "redis://user@cache:6379/0"),
        ("redis://u:p%40ss@w0rd@cache/0", "redis://u:***@cache/0"),
        ("redis://cache/0?password=S3cretXYZ&db=1", "redis://cache/0?password=***&db=1"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redis_url_is_a_secret_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "redis://default:S3cretXYZ@127.0.0.1:6379/0"
    monkeypatch.setenv("LEADFLOW_REDIS_URL", url)
    monkeypatch.setenv("LEADFLOW_KAFKA_SASL_PASSWORD", "KafkaPw123")
    settings = load_settings()
    assert settings.redis_url.get_secret_value() == url
    for text in (
        str(settings.redis_url),
        f"{settings.redis_url}",
        repr(settings.redis_url),
        repr(settings),
        str(settings),
        settings.model_dump_json(),
    ):
        assert "S3cretXYZ" not in text
        assert "KafkaPw123" not in text
    assert str(settings.redis_url) == "redis://default:***@127.0.0.1:6379/0"
    assert set(settings.secrets) == {"S3cretXYZ", "KafkaPw123"}
    # Text from elsewhere (a library's error message) is scrubbed before it is shown.
    assert scrub("AUTH S3cretXYZ failed; sasl KafkaPw123") == "AUTH *** failed; sasl ***"


def test_redis_credentials_and_tls_files_are_their_own_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.crt", "client.crt", "client.key"))
    for f in (ca, cert, key):
        f.write_text("-----BEGIN-----\n")
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "rediss://redis.internal:6380/0")
    monkeypatch.setenv("LEADFLOW_REDIS_USERNAME", "leadflow")
    monkeypatch.setenv("LEADFLOW_REDIS_PASSWORD", "RedisPw-9876")
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_CAFILE", str(ca))
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_CERTFILE", str(cert))
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_KEYFILE", str(key))
    settings = load_settings()
    assert settings.redis_options() == {
        "username": "leadflow",
        "password": "RedisPw-9876",
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "RedisPw-9876" not in text
    assert "RedisPw-9876" in settings.secrets
    assert scrub("WRONGPASS RedisPw-9876") == "WRONGPASS ***"
    assert "LEADFLOW_REDIS_PASSWORD" in settings.redis_credentials_variable


def test_redis_security_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "rediss://127.0.0.1:6380/0")
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_CAFILE", str(tmp_path / "missing-ca.crt"))
    with pytest.raises(SettingsError, match=r"LEADFLOW_REDIS_SSL_CAFILE: .*missing-ca.crt"):
        load_settings()

    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_CAFILE", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(SettingsError, match=r"LEADFLOW_REDIS_SSL_CAFILE set.*use rediss://"):
        load_settings()

    monkeypatch.delenv("LEADFLOW_REDIS_SSL_CAFILE")
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "redis://app:UrlPw-1234@127.0.0.1:6379/0")
    monkeypatch.setenv("LEADFLOW_REDIS_PASSWORD", "VarPw-5678")
    with pytest.raises(SettingsError, match="keep them in one place") as raised:
        load_settings()
    assert "UrlPw-1234" not in str(raised.value) and "VarPw-5678" not in str(raised.value)

    # Empty variables mean "not set".
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("LEADFLOW_REDIS_PASSWORD", "")
    monkeypatch.setenv("LEADFLOW_REDIS_SSL_CAFILE", "")
    assert load_settings().redis_options() == {}


def test_empty_kafka_security_variables_mean_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty LEADFLOW_KAFKA_SSL_CAFILE= used to become Path(".") and end, after the whole
    # start-up wait, in an "is a directory" error.
    monkeypatch.setenv("LEADFLOW_KAFKA_SSL_CAFILE", "")
    monkeypatch.setenv("LEADFLOW_KAFKA_SASL_USERNAME", " ")
    monkeypatch.setenv("LEADFLOW_KAFKA_SASL_PASSWORD", "")
    settings = load_settings()
    assert settings.kafka_ssl_cafile is None
    assert settings.kafka_sasl_username is None
    assert settings.kafka_sasl_password is None


def test_a_missing_kafka_ca_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEADFLOW_KAFKA_SSL_CAFILE", str(tmp_path / "no-ca.pem"))
    with pytest.raises(SettingsError, match=r"LEADFLOW_KAFKA_SSL_CAFILE: .*no-ca.pem"):
        load_settings()


@pytest.mark.parametrize(
    ("heartbeat", "session", "ok"), [(3, 30, True), (10, 30, True), (11, 30, False), (3, 8, False)]
)
def test_heartbeat_must_fit_three_times_into_the_session(
    heartbeat: float, session: float, ok: bool
) -> None:
    # Kafka's guidance: two heartbeats may be missed before the session expires.
    if ok:
        load_settings(kafka_heartbeat_interval=heartbeat, kafka_session_timeout=session)
        return
    with pytest.raises(SettingsError) as info:
        load_settings(kafka_heartbeat_interval=heartbeat, kafka_session_timeout=session)
    message = str(info.value)
    assert "LEADFLOW_KAFKA_HEARTBEAT_INTERVAL" in message
    assert "LEADFLOW_KAFKA_SESSION_TIMEOUT" in message
    assert f"({session:g} s)" in message


def test_a_visitor_retention_longer_than_the_dedupe_memory_stops_the_worker() -> None:
    from streams.app import check_identity_rules
    from streams.core.rules import parse_rules
    from streams.settings import SettingsError

    rules = parse_rules({"mql": {"threshold": 10}, "identity": {"retention": "60d"}})
    check_identity_rules(load_settings(dedupe_ttl_days=90), rules)
    with pytest.raises(SettingsError) as refused:
        check_identity_rules(load_settings(dedupe_ttl_days=30), rules)
    assert "identity.retention" in str(refused.value)
    assert "LEADFLOW_DEDUPE_TTL_DAYS" in str(refused.value)
