"""Waiting out an outage, two ways.

- The batch path (a taken batch of engagement or sales records) retries until Redis or Kafka
  answer again, because giving up on it would lose records (they are already fetched, and their
  offsets move on): `Retrying`.
- A background task (the outbox, SLA and KPI timers, the Kafka offset commits, the consumer's
  loop) gives up the tick instead: its work is still in Redis or Kafka and the next tick does it.
  `Ticks` runs one tick with a single attempt per call (`single_attempt`), so a tick that meets
  an outage ends at once, logs one structured warning naming the dependency and what to check
  (then one every `repeat_every` seconds while it lasts, and one line when it recovers), and
  never raises into Faust, which would crash the worker ("Crashed reason=...").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streams.kafka import KafkaUnavailable
from streams.observability import (
    DEPENDENCY_VARIABLE,
    Metrics,
    dependency_hint,
    log,
    redis_refusal,
)

T = TypeVar("T")

# Errors that mean "the service is not answering right now", not "the request is wrong".
# (asyncio.IncompleteReadError is an EOFError: a connection closed in the middle of a reply.)
OUTAGES: tuple[type[BaseException], ...] = (
    TimeoutError,
    RedisError,
    KafkaError,
    KafkaUnavailable,
    OSError,
    EOFError,
)
VARIABLE = DEPENDENCY_VARIABLE


class Unavailable(Exception):
    """A dependency did not answer and this task does not wait for it (`single_attempt`)."""

    def __init__(self, dependency: str, cause: BaseException) -> None:
        super().__init__(f"{dependency} unavailable: {type(cause).__name__}: {cause}")
        self.dependency = dependency
        self.cause = cause


_single_attempt: ContextVar[bool] = ContextVar("leadflow_single_attempt", default=False)


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Inside this block (this asyncio task and the tasks it starts), `Retrying` makes one
    attempt and raises `Unavailable` on an outage instead of waiting it out."""
    token = _single_attempt.set(True)
    try:
        yield
    finally:
        _single_attempt.reset(token)


def dependency_of(exc: BaseException) -> str:
    """redis, kafka, or unknown (a bare socket error or timeout names no service)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Unavailable):
            return current.dependency
        if isinstance(current, RedisError):
            return "redis"
        if isinstance(current, KafkaError | KafkaUnavailable):
            return "kafka"
        current = current.__cause__ or current.__context__
    return "unknown"


class Retrying:
    """Retry an I/O step with exponential backoff (capped), counting and logging each wait."""

    def __init__(self, metrics: Metrics, max_delay: float) -> None:
        self.metrics = metrics
        self.max_delay = max_delay

    async def __call__(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        dependencies = self.metrics.dependencies
        while True:
            try:
                result = await call()
            except OUTAGES as exc:
                self.metrics.retries.labels(operation).inc()
                dependencies.failed(operation, exc)
                if _single_attempt.get():
                    raise Unavailable(operation, exc) from exc
                refused = redis_refusal(exc) if operation == "redis" else None
                log.error(
                    f"{refused or f'{operation} unavailable'}; retrying",
                    error=repr(exc),
                    detail=str(exc)[:300],
                    retry_in_seconds=delay,
                    hint=dependency_hint(operation, exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            else:
                dependencies.succeeded(operation)
                return result


class Ticks:
    """One background task's ticks: a failed tick is logged and skipped, never raised.

    An outage (any of OUTAGES, or `Unavailable`) is a warning naming the dependency and what to
    check, logged when the task first fails and then every `repeat_every` seconds while it keeps
    failing, with the count of failed ticks; anything else is an error with its traceback, once
    per kind of error per failure spell. When a tick succeeds again, one line says so.
    """

    def __init__(
        self,
        task: str,
        metrics: Metrics,
        repeat_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        dependency: str | None = None,
    ) -> None:
        self.task = task
        self.dependency = dependency  # the one dependency this task talks to, if only one
        self.metrics = metrics
        self.repeat_every = repeat_every
        self.clock = clock
        self.failing_since: float | None = None
        self.failed_ticks = 0
        self._last_logged = 0.0
        self._tracebacks: set[type[BaseException]] = set()

    async def __call__(self, tick: Callable[[], Awaitable[object]]) -> bool:
        """Run one tick with single attempts; True if it completed."""
        try:
            with single_attempt():
                await tick()
        except Exception as exc:  # CancelledError (a shutdown) is not an Exception: it passes
            try:
                self.failed(exc)
            except Exception:  # reporting must not be what crashes the worker either
                log.exception(f"{self.task} failed", task=self.task)
            return False
        self.succeeded()
        return True

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        dependency = dependency_of(exc)
        if self.dependency is not None and not isinstance(exc, Unavailable):
            dependency = self.dependency
        outage = isinstance(exc, (Unavailable, *OUTAGES))
        self.metrics.background_failures.labels(self.task, dependency).inc()
        if outage:
            self.metrics.dependencies.failed(dependency, exc)
        first = self.failing_since is None
        if first:
            self.failing_since = now
        self.failed_ticks += 1
        cause = exc.cause if isinstance(exc, Unavailable) else exc
        fields = {
            "task": self.task,
            "dependency": dependency,
            "error": type(cause).__name__,
            "detail": str(cause)[:300],
            "failed_ticks": self.failed_ticks,
            "failing_for_seconds": round(now - (self.failing_since or now), 1),
        }
        new_kind = type(cause) not in self._tracebacks
        if outage and (first or now - self._last_logged >= self.repeat_every):
            self._last_logged = now
            refused = redis_refusal(cause) if dependency == "redis" else None
            log.warning(
                f"{self.task}: {refused or f'{dependency} unavailable'}; skipped, the next tick "
                "tries again",
                hint=dependency_hint(dependency, cause),
                **fields,
            )
        elif not outage and (new_kind or now - self._last_logged >= self.repeat_every):
            self._last_logged = now
            self._tracebacks.add(type(cause))
            log.error(
                f"{self.task} failed; skipped, the next tick tries again",
                exc_info=cause if new_kind else None,
                **fields,
            )

    def succeeded(self) -> None:
        if self.failing_since is None:
            return
        log.info(
            f"{self.task} recovered",
            task=self.task,
            failed_ticks=self.failed_ticks,
            failed_for_seconds=round(self.clock() - self.failing_since, 1),
        )
        self.failing_since = None
        self.failed_ticks = 0
        self._tracebacks.clear()
