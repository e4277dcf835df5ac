"""How every `leadflow` command ends on a user's mistake: one clear line, a stable exit code.

- 2: the input or configuration is wrong (a LEADFLOW_* variable, a rules file, a command's
  input file, credentials a service refused); the message names what is wrong.
- 3: a service (Kafka, Redis) did not answer in time; the message names the variable and how
  to start it.

Commands that need Kafka or Redis first wait for them (`require_services`): one line per
attempt on stderr, until LEADFLOW_STARTUP_TIMEOUT. Nothing printed here shows a secret.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from streams.core.rules import RulesError
from streams.settings import SettingsError, scrub

if TYPE_CHECKING:
    from streams.settings import Settings

console = Console(stderr=True)

# Errors whose message is already written for the user: exit 2 with that message.
INPUT_ERRORS: tuple[type[Exception], ...] = (SettingsError, RulesError)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr (one line, never a known secret) and return the Exit
    to raise."""
    console.print(f"[bold red]error:[/] {escape(scrub(message))}", soft_wrap=True)
    return typer.Exit(code)


def waiting(line: str, reason: str) -> None:
    """A start-up attempt failed: one line on stderr (stdout stays the command's result)."""
    console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)


def require_services(
    settings: Settings,
    *,
    kafka: bool = False,
    redis: bool = False,
    service: bool = False,
    topics: Sequence[str] = (),
) -> None:
    """Wait until Kafka and/or Redis answer and `topics` exist, within LEADFLOW_STARTUP_TIMEOUT
    (unset: 15 s for a one-shot command, 60 s for a `service` or a set-up step such as `topics
    create`); ServiceUnavailable, a TimeoutError, then ends the command in `user_errors` (a
    missing topic names `leadflow topics create`)."""
    from streams.bootstrap import wait_for_services

    asyncio.run(
        wait_for_services(
            settings,
            waiting,
            kafka=kafka or bool(topics),
            redis=redis,
            service=service,
            topics=topics,
        )
    )


def denied(exc: BaseException) -> str | None:
    """The one-line message for a Kafka ACL refusal (the principal may not use a topic, group or
    the cluster), naming what to fix; None for anything else."""
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
        TransactionalIdAuthorizationFailed,
    )

    kinds = {
        TopicAuthorizationFailedError: "topic",
        GroupAuthorizationFailedError: "consumer group",
        ClusterAuthorizationFailedError: "cluster operation",
        TransactionalIdAuthorizationFailed: "transactional id",
    }
    for kind, what in kinds.items():
        if isinstance(exc, kind):
            detail = " ".join(str(exc).replace(f"[Error {kind.errno}] {kind.__name__}", "").split())
            detail = detail.strip(": ") or "?"
            return (
                f"Kafka denied this {what} ({detail}) to user "
                f"{os.environ.get('LEADFLOW_KAFKA_SASL_USERNAME') or '(anonymous)'}: the ACLs "
                "allow it only its own prefix; check LEADFLOW_NAMESPACE (and the topic "
                "variables), or grant the ACLs in docs/operations.md"
            )
    return None


def outage(exc: BaseException) -> str | None:
    """The one-line message for a Kafka or Redis outage that surfaced as a library error, naming
    the variable to check; None for anything else."""
    from aiokafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        NodeNotReadyError,
        RequestTimedOutError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from streams.kafka import KafkaUnavailable
    from streams.startup import describe

    if isinstance(exc, KafkaUnavailable):
        return str(exc)
    kafka = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
    if isinstance(exc, kafka):
        variable, name = "LEADFLOW_KAFKA_BOOTSTRAP", "Kafka"
    elif isinstance(exc, RedisConnectionError | RedisTimeoutError):
        variable, name = "LEADFLOW_REDIS_URL", "Redis"
    else:
        return None
    return (
        f"{name} is not answering ({describe(exc)}); check that it runs (`ops/stack up` for "
        f"the local one) and that {variable} points at it"
    )


@contextmanager
def user_errors(*input_errors: type[Exception]) -> Iterator[None]:
    """Configuration mistakes (plus the command's own `input_errors`) end with one clear line
    and exit code 2; a service that does not answer in time, exit code 3. No traceback."""
    from streams.startup import ServiceRefused

    wrong: tuple[type[Exception], ...] = (*INPUT_ERRORS, ServiceRefused, *input_errors)
    try:
        yield
    except wrong as exc:
        raise fail(str(exc), 2) from None
    except TimeoutError as exc:
        raise fail(str(exc), 3) from None
    except Exception as exc:
        from streams.observability import redis_refusal

        # An ACL refusal, or Redis refusing the credentials after start-up (redis-py's
        # AuthenticationError is a ConnectionError: not an outage).
        refused = denied(exc) or redis_refusal(exc)
        if refused is not None:
            raise fail(refused, 2) from None
        message = outage(exc)
        if message is None:
            raise
        raise fail(message, 3) from None
