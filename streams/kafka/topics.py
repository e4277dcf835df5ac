"""Topics: create leadflow's with explicit partition counts, wait for the cluster, list
partitions. Faust never declares topics (it would invent them with broker defaults)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)

from streams.kafka.options import client_options
from streams.kafka.producer import quiet
from streams.settings import Settings
from streams.startup import (
    ATTEMPT_TIMEOUT,
    Dependency,
    Say,
    ServiceRefused,
    speaks_tls,
    wait_for_all,
)

TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29


@dataclass(frozen=True)
class TopicOutcome:
    topic: str
    partitions: int
    created: bool
    note: str = ""  # why an existing topic differs from the settings, e.g. its partition count

    def sentence(self) -> str:
        """What `leadflow topics create` did to this topic, in one sentence."""
        if self.created:
            return f"{self.topic}: created with {self.partitions} partitions"
        if self.note:
            return f"{self.topic} exists with {self.partitions} partitions ({self.note}); kept"
        return f"{self.topic}: exists with {self.partitions} partitions"


def kafka_dependency(settings: Settings) -> Dependency:
    """Kafka as a start-up dependency: it answers when a metadata request succeeds. A broker
    that answers but refuses us (wrong password, TLS against a plaintext port or the reverse, a
    CA that does not sign its certificate) ends the wait at once with ServiceRefused naming the
    variable to fix (aiokafka's bootstrap only says "Unable to bootstrap"; `diagnose` asks why)."""

    async def probe() -> None:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            with quiet():
                await admin.start()
                await admin.list_topics()
        except KafkaConnectionError:
            refusal = await diagnose(settings)
            if refusal is not None:
                raise ServiceRefused(refusal) from None
            raise
        finally:
            with contextlib.suppress(Exception), quiet():
                await admin.close()

    return Dependency(
        "Kafka",
        settings.kafka_bootstrap,
        "LEADFLOW_KAFKA_BOOTSTRAP",
        probe,
        refusals=(
            ServiceRefused,
            SaslAuthenticationFailed,
            AuthenticationFailedError,
            UnsupportedSaslMechanismError,
        ),
    )


async def diagnose(settings: Settings) -> str | None:
    """Why a reachable broker refused the connection, as one line naming the variable to fix;
    None if it did not answer at all (keep waiting) or the reason is unknown. Tries the first
    bootstrap server with one connection (and, for a plaintext setting, one TLS handshake)."""
    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port_text = first.rpartition(":")
    host = host.strip("[]") or first
    try:
        port = int(port_text)
    except ValueError:
        return None
    protocol = settings.kafka_security_protocol
    where = f"Kafka at {first}"
    options = client_options(settings)
    options.pop("bootstrap_servers", None)
    try:
        with quiet():
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=5000, **options),
                timeout=ATTEMPT_TIMEOUT,
            )
        conn.close()
    except (SaslAuthenticationFailed, AuthenticationFailedError):
        user = settings.kafka_sasl_username or "(none)"
        return (
            f"{where} refused the SASL {settings.kafka_sasl_mechanism} login of user {user}: "
            "check LEADFLOW_KAFKA_SASL_PASSWORD (and LEADFLOW_KAFKA_SASL_USERNAME)"
        )
    except UnsupportedSaslMechanismError:
        return (
            f"{where} does not accept SASL mechanism {settings.kafka_sasl_mechanism}: "
            "set LEADFLOW_KAFKA_SASL_MECHANISM to one it enables"
        )
    except ssl.SSLCertVerificationError as exc:
        return (
            f"{where}: its TLS certificate is not trusted ({exc.verify_message}): set "
            "LEADFLOW_KAFKA_SSL_CAFILE to the CA that signed it"
        )
    except ssl.SSLError as exc:
        if protocol in ("SSL", "SASL_SSL"):
            return (
                f"{where} does not speak TLS ({exc.reason or exc}) but "
                f"LEADFLOW_KAFKA_SECURITY_PROTOCOL={protocol}: set it to "
                f"{'SASL_PLAINTEXT' if protocol == 'SASL_SSL' else 'PLAINTEXT'} or use the TLS port"
            )
        return None
    except (OSError, TimeoutError):
        return None  # not listening (yet): keep waiting
    except Exception:
        pass
    else:
        return None
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and await speaks_tls(host, port):
        return (
            f"{where} expects TLS, but LEADFLOW_KAFKA_SECURITY_PROTOCOL={protocol} connects "
            f"without it: set LEADFLOW_KAFKA_SECURITY_PROTOCOL="
            f"{'SASL_SSL' if protocol == 'SASL_PLAINTEXT' else 'SSL or SASL_SSL'} "
            "(and LEADFLOW_KAFKA_SSL_CAFILE)"
        )
    return None


async def wait_for_kafka(settings: Settings, within: float = 60.0, say: Say | None = None) -> None:
    """Return once the cluster answers a metadata request, retrying with backoff (each failed
    attempt told to `say`); raise ServiceUnavailable (a TimeoutError) naming
    LEADFLOW_KAFKA_BOOTSTRAP after `within` seconds."""
    await wait_for_all([kafka_dependency(settings)], within, say or _silent)


def topics_dependency(settings: Settings, topics: Sequence[str]) -> Dependency:
    """The worker's topics as a start-up dependency: ready once every one is listed. A topic
    not created yet, or one this client may not describe (Kafka's ACLs hide it), is not."""

    async def probe() -> None:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            with quiet():
                await admin.start()
                listed = set(await admin.list_topics())
                missing = [t for t in topics if t not in listed]
                # A topic the ACLs hide is not listed either: ask, so a denial is said at once
                # (waiting would not help) and not taken for a topic still to be created.
                described = await admin.describe_topics(missing) if missing else []
        finally:
            with contextlib.suppress(Exception), quiet():
                await admin.close()
        hidden = [
            d["topic"] for d in described if d.get("error_code") == TOPIC_AUTHORIZATION_FAILED
        ]
        if hidden:
            user = settings.kafka_sasl_username or "(anonymous)"
            raise ServiceRefused(
                f"Kafka denied the topic(s) {', '.join(hidden)} to user {user}: the ACLs allow "
                "it only its own prefix; check LEADFLOW_NAMESPACE (and the topic variables), or "
                'grant the ACLs (docs/operations.md, "ACLs for the worker principal")'
            )
        if missing:
            raise LookupError(f"missing or not allowed: {', '.join(missing)}")

    return Dependency(
        "Kafka topics",
        settings.kafka_bootstrap,
        "LEADFLOW_NAMESPACE",
        probe,
        advice=(
            "create them with `leadflow topics create` (same LEADFLOW_NAMESPACE), or, on a "
            "broker with ACLs, allow this client's principal on them (docs/operations.md, "
            '"ACLs for the worker principal")'
        ),
    )


def _silent(line: str, reason: str) -> None:
    pass


async def create_topics(
    settings: Settings, topics: tuple[str, ...] | None = None
) -> list[TopicOutcome]:
    """Create leadflow's topics with explicit partition counts; existing ones stay as they are."""
    names = topics or settings.all_topics
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in names
            if name not in existing
        ]
        errors: dict[str, int] = {}
        if wanted:
            response = await admin.create_topics(wanted, timeout_ms=30000)
            errors = {t[0]: t[1] for t in response.topic_errors}
        described = await admin.describe_topics(list(names))
        partitions = {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
    out = []
    for name in names:
        code = errors.get(name, TOPIC_ALREADY_EXISTS if name in existing else 0)
        if code not in (0, TOPIC_ALREADY_EXISTS):
            # The broker's own error (TopicAuthorizationFailedError for an ACL refusal, which
            # the CLI turns into one line naming what to fix), not a bare code.
            raise for_code(code)(f"could not create topic {name}")
        count = partitions.get(name, 0)
        note = ""
        if code == TOPIC_ALREADY_EXISTS and count != settings.topic_partitions:
            note = f"LEADFLOW_TOPIC_PARTITIONS says {settings.topic_partitions}"
        out.append(TopicOutcome(name, count, code == 0, note))
    return out


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The topic's partitions in order (empty when the topic does not exist)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [d for d in described if d.get("error_code", 0) == 0 and d["partitions"]]
    return sorted(
        (TopicPartition(topic, p["partition"]) for d in found for p in d["partitions"]),
        key=lambda tp: tp.partition,
    )
