"""The one wiring point: settings in; the Redis store, the live rules and the worker out.

The worker, the CLI commands and the tests build what they need here (cosmicpython's
bootstrap), so a store is opened one way and "which rules are live" is decided in one place.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from streams.core.rules import Rules, load_rules, parse_rules
from streams.observability import log
from streams.settings import Settings, SettingsError, load_settings
from streams.startup import Dependency, Misconfigured, Say, speaks_tls, wait_for_all
from streams.store import Generation, LeadStore
from streams.store.redis_store import connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streams.app import Worker


def checked_settings(**overrides: object) -> Settings:
    """Settings from the environment, the rules file validated (fail fast, naming the field)."""
    settings = load_settings(**overrides)
    load_rules(settings.rules)
    return settings


def open_redis(settings: Settings) -> Redis:
    """A Redis client as every leadflow process opens it (the cluster client in cluster mode)."""
    return connect(settings.redis_url, settings.redis_options(), settings.redis_cluster)


def open_store(settings: Settings, cache_leads: int = 0) -> LeadStore:
    """The one construction of the Redis adapter for this namespace (the worker keeps the
    states it wrote last in memory: `cache_leads`)."""
    return LeadStore.from_url(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_prefix,
        source_topic=settings.engagement,
        dedupe_ttl_seconds=settings.dedupe_ttl_days * 86400,
        cache_leads=cache_leads,
        options=settings.redis_options(),
        partitions=settings.topic_partitions,
        cluster=settings.redis_cluster,
    )


def _tls_problem(exc: BaseException) -> str | None:
    """The fix for a TLS mismatch behind a Redis connection error, if it is one."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return (
            "its TLS certificate is not trusted; set LEADFLOW_REDIS_SSL_CAFILE to the CA that "
            "signed it"
        )
    if isinstance(cause, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(cause).upper():
        return "it does not speak TLS; use redis:// in LEADFLOW_REDIS_URL"
    return None


def redis_dependency(settings: Settings) -> Dependency:
    """Redis as a start-up dependency: it answers when a PING does (with the configured
    credentials; wrong ones, or a TLS mismatch, end the wait at once naming the variable)."""
    from redis.exceptions import AuthenticationError, AuthorizationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def probe() -> None:
        store = open_store(settings)
        try:
            await store.ping()
        except (AuthenticationError, AuthorizationError):
            raise
        except RedisConnectionError as exc:
            problem = _tls_problem(exc)
            if problem is None and not settings.redis_tls:
                parts = urlsplit(settings.redis_url.get_secret_value())
                if parts.hostname and await speaks_tls(parts.hostname, parts.port or 6379):
                    problem = (
                        "it accepts TLS connections only; use rediss:// in LEADFLOW_REDIS_URL "
                        "(and LEADFLOW_REDIS_SSL_CAFILE for its CA)"
                    )
            if problem is not None:
                raise Misconfigured(problem) from None
            raise
        finally:
            await store.close()

    return Dependency(
        "Redis",
        str(settings.redis_url),  # without the password
        "LEADFLOW_REDIS_URL",
        probe,
        refusals=(AuthenticationError, AuthorizationError),
        credentials=settings.redis_credentials_variable,
    )


async def wait_for_services(
    settings: Settings,
    say: Say,
    *,
    kafka: bool = False,
    redis: bool = False,
    service: bool,
    topics: Sequence[str] = (),
) -> None:
    """Wait for Kafka and/or Redis to answer, and for `topics` to exist, within
    LEADFLOW_STARTUP_TIMEOUT (or the default of a long-running `service` or of a one-shot
    command); ServiceUnavailable names the variable to fix."""
    from streams.kafka.topics import kafka_dependency, topics_dependency

    deps = [kafka_dependency(settings)] if kafka else []
    deps += [redis_dependency(settings)] if redis else []
    deps += [topics_dependency(settings, topics)] if topics else []
    await wait_for_all(deps, settings.startup_within(service), say)


class LiveRules:
    """The rules the live lead states were built with. After `leadflow rescore` they win over
    the rules file; parsed rules are kept by version."""

    def __init__(self, rules_file: Rules) -> None:
        self.rules_file = rules_file
        self._parsed: dict[str, Rules] = {rules_file.version: rules_file}

    def of(self, generation: Generation) -> Rules:
        if generation.rules is None or generation.rules_version is None:
            return self.rules_file
        if generation.rules_version not in self._parsed:
            self._parsed[generation.rules_version] = parse_rules(
                generation.rules, origin="active generation"
            )
        return self._parsed[generation.rules_version]

    def differs(self, generation: Generation) -> bool:
        return generation.rules is not None and generation.rules_version != self.rules_file.version


LEGACY_LAYOUT = (
    "Redis holds leadflow data in the layout before 0.9 (keys '{prefix}lead:<id>', no hash "
    'tags): stop every worker and run `leadflow migrate` once (docs/operations.md, "Redis key '
    'layout")'
)


async def check_layout(store: LeadStore, settings: Settings, claim: bool = False) -> None:
    """The namespace's keys follow this layout and partition count; with `claim` (the worker),
    an empty namespace is marked with them. A SettingsError names what to do otherwise."""
    layout = await store.read_layout()
    prefix = settings.redis_prefix
    if not layout:
        # Before 0.9 the one generation record was '<prefix>generation' (untagged).
        if await store.redis.exists(f"{prefix}generation"):
            raise SettingsError(LEGACY_LAYOUT.format(prefix=prefix))
        if claim:
            await store.write_layout()
        return
    stored = int(layout.get("partitions", 0))
    if stored != settings.topic_partitions:
        raise SettingsError(
            f"Redis holds this namespace's leads laid out for {stored} partitions, but "
            f"LEADFLOW_TOPIC_PARTITIONS is {settings.topic_partitions}: set it to {stored}, or "
            f"move the leads with `leadflow migrate --from-partitions {stored}` after adding "
            'partitions to the topics (docs/operations.md, "Redis key layout")'
        )


async def check_input_partitions(settings: Settings) -> None:
    """The input topics have LEADFLOW_TOPIC_PARTITIONS partitions each: a lead's records, its
    handoffs and its sales activities share one partition number, and its Redis keys that
    partition's hash slot."""
    from streams.kafka.topics import topic_partitions

    for topic in (settings.engagement, settings.handoff, settings.activity):
        count = len(await topic_partitions(settings, topic))
        if count != settings.topic_partitions:
            raise SettingsError(
                f"topic {topic} has {count} partitions, LEADFLOW_TOPIC_PARTITIONS says "
                f"{settings.topic_partitions}: the input topics must all have that many "
                '(set the variable to the topics\' count; docs/operations.md, "Redis key layout")'
            )


async def live_generation(settings: Settings, rules: Rules) -> tuple[int, Rules]:
    """The generation to work on and its rules. The first worker records its rules; after a
    `leadflow rescore` the rescored generation's rules win over a stale rules file."""
    store = open_store(settings)
    try:
        await check_layout(store, settings, claim=True)
        generation = await store.ensure_generation(
            rules.version, rules.model_dump(mode="json", by_alias=True)
        )
        while generation.state != "active":
            log.info("waiting for a rescore to finish switching", generation=generation.number)
            await asyncio.sleep(0.5)
            generation = await store.active_generation()
    finally:
        await store.close()
    live = LiveRules(rules)
    if live.differs(generation):
        log.warning(
            "the rules file differs from the rules the live lead states were built with; "
            "using the live ones. To change rules, run `leadflow rescore --rules FILE`",
            rules_file=str(settings.rules),
            rules_file_version=rules.version,
            live_rules_version=generation.rules_version,
        )
    return generation.number, live.of(generation)


def build_worker(settings: Settings, rules: Rules | None = None, generation: int = 0) -> Worker:
    """The worker: Faust app, agents, timers and web views over one store and one producer."""
    from streams.app import create_worker

    return create_worker(settings, rules or load_rules(settings.rules), generation)
