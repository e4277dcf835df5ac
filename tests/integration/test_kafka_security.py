"""leadflow against a real Kafka broker that requires SASL_SSL (SCRAM-SHA-512) and enforces ACLs.

The broker is `ops/stack up kafka-secure` (started here if it is not running; the tests fail,
never skip, when it cannot start). Its admin creates the topics; the worker principal
(User:leadflow) may only use topics and groups under the `secure.` prefix.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError

from streams.kafka import client_options
from streams.settings import Settings, load_settings
from tests.harness import (
    ROOT,
    TEST_RULES,
    WorkerProcess,
    free_port,
    produce,
    qualifying,
    read_topic,
    wait_for,
)
from tests.secured import KAFKA_SECURE_PREFIX, up_secure_kafka

pytestmark = pytest.mark.integration

PREFIX = KAFKA_SECURE_PREFIX  # the worker principal's topics and groups


@pytest.fixture(scope="session")
def secure_env() -> dict[str, dict[str, str]]:
    """`ops/stack up kafka-secure` (idempotent: reuses a running one); the client settings of
    the admin and of the worker principal."""
    return up_secure_kafka()


def settings_for(env: dict[str, str], namespace: str, **overrides: object) -> Settings:
    return load_settings(
        kafka_bootstrap=env["LEADFLOW_KAFKA_BOOTSTRAP"],
        kafka_security_protocol=env["LEADFLOW_KAFKA_SECURITY_PROTOCOL"],
        kafka_sasl_mechanism=env["LEADFLOW_KAFKA_SASL_MECHANISM"],
        kafka_sasl_username=env["LEADFLOW_KAFKA_SASL_USERNAME"],
        kafka_sasl_password=env["LEADFLOW_KAFKA_SASL_PASSWORD"],
        kafka_ssl_cafile=env["LEADFLOW_KAFKA_SSL_CAFILE"],
        namespace=namespace,
        rules=TEST_RULES,
        **overrides,
    )


def leadflow(
    env: dict[str, str], *args: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    """A real `leadflow` command (this checkout's code) with these LEADFLOW_* settings."""
    stack = {k: os.environ[k] for k in ("LEADFLOW_REDIS_URL",) if k in os.environ}
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")},
        **stack,  # the plain Redis where ops/test runs it (other ports are possible)
        **env,
        "LEADFLOW_RULES": str(TEST_RULES),
        "LEADFLOW_STARTUP_TIMEOUT": "20",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        cwd=ROOT,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "╭─" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    at = datetime.now(UTC)
    path = tmp_path / "events.ndjson"
    lines = [value for lead in ("s1", "s2") for _, value in qualifying(lead, at)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def new_namespace() -> str:
    return f"{PREFIX}.t{uuid.uuid4().hex[:8]}"


async def test_admin_creates_topics_worker_scores_and_hands_off_over_sasl_ssl(
    secure_env: dict[str, dict[str, str]], sample: Path, tmp_path: Path
) -> None:
    ns = new_namespace()
    admin_env = {**secure_env["admin"], "LEADFLOW_NAMESPACE": ns}
    worker_env = {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": ns}
    created = leadflow(admin_env, "topics", "create")
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"{ns}.leads.engagement: created" in created.stdout

    # the worker principal: `leadflow produce`, then a consumer round trip
    produced = leadflow(worker_env, "produce", str(sample))
    assert produced.returncode == 0, produced.stdout + produced.stderr
    settings = settings_for(secure_env["leadflow"], ns)
    on_topic = await read_topic(settings, settings.engagement)
    assert len(on_topic) == 6
    assert {r.key for r in on_topic} == {b"s1", b"s2"}

    # a real worker (its Faust app and the engagement consumer) scores them and hands off
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        extra_env={**worker_env, "PYTHONPATH": str(ROOT)},
    ).start()
    try:
        await worker.wait_ready(within=90)
        handoffs = await wait_for(settings, settings.handoff, lambda seen: len(seen) >= 2, 60)
        leads = {orjson.loads(r.value or b"{}")["lead_id"] for r in handoffs}
        assert leads == {"s1", "s2"}
        # the worker committed in its own consumer group (allowed by the group prefix ACL)
        more = [(b"s3", value) for _, value in qualifying("s3", datetime.now(UTC))]
        await produce(settings, more)
        await wait_for(settings, settings.handoff, lambda seen: len(seen) >= 3, 60)
    finally:
        worker.stop()
        log = worker.tail(400)
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() not in log


def test_wrong_password_is_refused_with_one_line(
    secure_env: dict[str, dict[str, str]], sample: Path
) -> None:
    secret = f"wrong-{uuid.uuid4().hex}"
    env = {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": new_namespace()}
    done = leadflow(env, "produce", str(sample), LEADFLOW_KAFKA_SASL_PASSWORD=secret)
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done)
    assert "LEADFLOW_KAFKA_SASL_PASSWORD" in line and "refused" in line
    assert secret not in done.stdout + done.stderr
    assert secure_env["leadflow"]["LEADFLOW_KAFKA_SASL_PASSWORD"] not in done.stdout + done.stderr


def test_worker_with_wrong_password_stops_at_once(
    secure_env: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    env = {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": new_namespace()}
    done = leadflow(
        env,
        "worker",
        LEADFLOW_KAFKA_SASL_PASSWORD="nope-nope",
        LEADFLOW_WEB_PORT=str(free_port()),
        timeout=40,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "LEADFLOW_KAFKA_SASL_PASSWORD" in one_error_line(done)
    assert "nope-nope" not in done.stdout + done.stderr


def test_plaintext_client_is_refused_with_one_line(
    secure_env: dict[str, dict[str, str]], sample: Path
) -> None:
    env = {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": new_namespace()}
    done = leadflow(env, "produce", str(sample), LEADFLOW_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done)
    assert "LEADFLOW_KAFKA_SECURITY_PROTOCOL" in line and "expects TLS" in line

    # and a bare plaintext aiokafka client gets nowhere either
    async def bare() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=env["LEADFLOW_KAFKA_BOOTSTRAP"], request_timeout_ms=3000
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(bare())


async def test_worker_principal_is_denied_outside_its_prefix(
    secure_env: dict[str, dict[str, str]], sample: Path
) -> None:
    # the admin creates topics outside the prefix: they exist, but are not the worker's
    outside = f"other{uuid.uuid4().hex[:8]}"
    created = leadflow({**secure_env["admin"], "LEADFLOW_NAMESPACE": outside}, "topics", "create")
    assert created.returncode == 0, created.stdout + created.stderr

    done = leadflow(
        {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": outside}, "produce", str(sample)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done)
    assert "denied" in line and f"{outside}.leads.engagement" in line
    assert "LEADFLOW_NAMESPACE" in line

    # a consumer group outside the prefix is denied too, even on the worker's own topic
    ns = new_namespace()
    own = leadflow({**secure_env["admin"], "LEADFLOW_NAMESPACE": ns}, "topics", "create")
    assert own.returncode == 0, own.stdout + own.stderr
    settings = settings_for(secure_env["leadflow"], ns)
    consumer = AIOKafkaConsumer(
        settings.engagement,
        **client_options(settings),
        group_id=f"{outside}.group",
        auto_offset_reset="earliest",
    )
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            await consumer.start()  # joining the group is refused
            await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()


def test_a_ca_that_did_not_sign_the_broker_is_refused_with_one_line(
    secure_env: dict[str, dict[str, str]], sample: Path, tmp_path: Path
) -> None:
    # A CA of its own (openssl, as ops/stack makes the broker's): valid, but not the broker's.
    other_ca = tmp_path / "other-ca.pem"
    made = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=some other CA", "-keyout", str(tmp_path / "other-ca.key"),
            "-out", str(other_ca),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    env = {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": new_namespace()}
    done = leadflow(env, "produce", str(sample), LEADFLOW_KAFKA_SSL_CAFILE=str(other_ca))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "LEADFLOW_KAFKA_SSL_CAFILE" in one_error_line(done)
    assert secure_env["leadflow"]["LEADFLOW_KAFKA_SASL_PASSWORD"] not in done.stdout + done.stderr


def test_worker_denied_its_topics_ends_in_one_line_naming_the_acls(
    secure_env: dict[str, dict[str, str]],
) -> None:
    # The topics exist (the admin made them), but outside the worker principal's prefix: the
    # ACLs hide them from it. Waiting would not help: the worker asks the broker, learns that it
    # is denied, and says what to do at once (exit 2, a configuration error), no traceback.
    outside = f"other{uuid.uuid4().hex[:8]}"
    created = leadflow({**secure_env["admin"], "LEADFLOW_NAMESPACE": outside}, "topics", "create")
    assert created.returncode == 0, created.stdout + created.stderr
    done = leadflow(
        {**secure_env["leadflow"], "LEADFLOW_NAMESPACE": outside},
        "worker",
        LEADFLOW_STARTUP_TIMEOUT="3",
        LEADFLOW_WEB_PORT=str(free_port()),
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done)
    assert f"{outside}.leads.engagement" in line and "denied" in line
    assert "ACLs" in line and "LEADFLOW_NAMESPACE" in line
    assert "waiting for" not in done.stdout + done.stderr  # said at once
