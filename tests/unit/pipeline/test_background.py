"""No background task may crash the worker (issue 10, item 0): an outage injected at each tick
of the outbox, SLA and KPI timers, the consumer-lag report and the Kafka offset commits fails
that tick only; the next tick, once the fault is gone, does the work. In memory (unit: no I/O).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.agents import consumer as consumer_loop
from streams.agents.scoring import EngagementConsumer
from streams.core.lead import LeadState, apply_all
from streams.kafka import OutRecord
from streams.observability import DependencyHealth, Metrics
from streams.pipeline.background import BackgroundTasks
from streams.pipeline.batch import InRecord
from streams.pipeline.retry import Retrying, Ticks, Unavailable, dependency_of, single_attempt
from streams.pipeline.sales import SalesService
from streams.pipeline.scoring import ScoringService
from streams.settings import Settings, load_settings
from streams.store import Generation, OutboxEntry, ReminderEntry
from streams.store.redis_store import Keys
from tests.unit.pipeline.test_scoring import RULES, MemoryStore, event, parse

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 20)  # the day of the test events (test_scoring.event)
QUALIFIED = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

# The outages a tick may meet: Redis's own error, the builtin ones a socket raises, Kafka's.
OUTAGES = {
    "redis ConnectionError": lambda: RedisConnectionError("Error 111 connecting"),
    "ConnectionError": lambda: ConnectionRefusedError(111, "Connection refused"),
    "TimeoutError": lambda: TimeoutError("Timeout reading from socket"),
    "KafkaConnectionError": lambda: KafkaConnectionError("broker down"),
}
REDIS_SIDE = {k: v for k, v in OUTAGES.items() if k != "KafkaConnectionError"}


class FakeStore(MemoryStore):
    """The in-memory store of test_scoring, with the sweeper's and the KPI reads, and an outage
    switch: while `down` is set, every call raises it (as a dead Redis would)."""

    def __init__(self) -> None:
        super().__init__()
        self.down: BaseException | None = None
        self.down_only: set[str] = set()  # only these methods fail (empty: all of them)
        self.reminder_partition: dict[str, int] = {}
        self.keys = Keys("test:", 8)

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            down, only = self.down, self.down_only  # at call time: a retry sees the recovery
            if down is not None and (not only or name in only):
                raise down
            return await attr(*args, **kwargs)

        return call

    async def commit(self, partition: int, changes: Any, **kwargs: Any) -> None:  # type: ignore[override]
        schedule = list(kwargs.get("schedule", ()))
        kwargs["schedule"] = schedule
        await super().commit(partition, changes, **kwargs)
        for w in schedule:
            self.reminder_partition[w.member] = w.partition

    async def active_generation(self) -> Generation:
        return Generation(0, "active", None, None)

    async def due_wakeups(
        self, partitions: Iterable[int], now_ms: int, limit: int
    ) -> list[ReminderEntry]:
        parts = set(partitions)
        due = []
        for member, at in sorted(self.reminders_of.items(), key=lambda kv: kv[1]):
            partition = self.reminder_partition.get(member, 0)
            if at <= now_ms and partition in parts:
                due.append(ReminderEntry.parse(partition, member.encode(), at))
        return due[:limit]

    async def count_wakeups(self, partitions: Iterable[int]) -> int:
        parts = set(partitions)
        return sum(1 for m in self.reminders_of if self.reminder_partition.get(m, 0) in parts)

    async def read_kpis(
        self, days: Iterable[date], series: Iterable[str] = ()
    ) -> tuple[dict[date, dict[str, int]], dict[tuple[date, str], list[float]]]:
        wanted = list(days)
        counts: dict[date, dict[str, int]] = {d: {} for d in wanted}
        for (day, name), amount in self.kpis.items():
            if day in counts:
                counts[day][str(name)] = amount
        return counts, {(d, s): [] for d in wanted for s in series}


class FakePublisher:
    """Kafka: while `down` is set, publish raises it."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.down: BaseException | None = None

    async def publish(self, records: Sequence[OutRecord]) -> None:
        if self.down is not None:
            raise self.down
        self.sent.extend(records)

    async def stop(self) -> None:
        pass


class World:
    """A worker's background tasks over one fake Redis and one fake Kafka."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FakeStore()
        self.publisher = FakePublisher()
        self.metrics = Metrics()
        self.clock = [QUALIFIED + timedelta(minutes=1)]
        self.scoring = ScoringService(settings, RULES, self.store, self.publisher, self.metrics)  # type: ignore[arg-type]
        self.sales = SalesService(
            settings,
            RULES,
            self.store,  # type: ignore[arg-type]
            self.publisher,
            self.metrics,
            now=lambda: self.clock[0],
        )
        self.ticks = BackgroundTasks(
            self.scoring,
            self.sales,
            self.store,  # type: ignore[arg-type]
            self.metrics,
            lambda: [0],
            lambda: [0],
            today=lambda tz: DAY,
        )

    def outage(self, error: BaseException | None, *, kafka: bool = False) -> None:
        """Take Redis (or Kafka) down with this error; None brings everything back."""
        if error is None:
            self.store.down = self.publisher.down = None
        elif kafka:
            self.publisher.down = error
        else:
            self.store.down = error

    def sent(self, topic: str) -> list[OutRecord]:
        return [r for r in self.publisher.sent if r.topic == topic]

    def failures(self, task: str) -> float:
        families = self.metrics.registry.collect()
        return sum(
            s.value
            for f in families
            if f.name == "leadflow_background_failures"
            for s in f.samples
            if s.name.endswith("_total") and s.labels["task"] == task
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("mql: {threshold: 20}\n", encoding="utf-8")
    return World(load_settings(rules=rules_file, redis_retry_max_seconds=0.01))


def stranded_handoff(w: World) -> MqlHandoff:
    """A handoff in the outbox that never reached Kafka (a crash after the Redis write)."""
    _, (handoff,) = apply_all(LeadState(lead_id="a"), [parse(event("a", "e1", 0))], RULES)
    entry = OutboxEntry(
        0, handoff.handoff_id, w.settings.handoff, b"a", handoff.model_dump_json().encode()
    )
    w.store.outbox[(0, handoff.handoff_id)] = entry.encode()
    return handoff


def handoff_record(w: World, handoff: MqlHandoff) -> InRecord:
    return InRecord(b"a", handoff.model_dump_json().encode(), w.settings.handoff, 0, 0)


# -- the outbox timer -------------------------------------------------------------------------


@pytest.mark.parametrize("error", REDIS_SIDE.values(), ids=REDIS_SIDE.keys())
async def test_outbox_tick_survives_a_redis_outage_and_delivers_on_the_next(world, error) -> None:
    w = world
    handoff = stranded_handoff(w)
    w.outage(error())
    assert await w.ticks.deliver_outbox() is False  # no exception out of the tick
    assert w.publisher.sent == [] and w.failures("deliver_outbox") == 1
    w.outage(None)
    assert await w.ticks.deliver_outbox() is True
    assert [MqlHandoff.model_validate_json(r.value) for r in w.sent(w.settings.handoff)] == [
        handoff
    ]
    assert w.store.outbox == {}


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_outbox_tick_survives_a_kafka_outage_and_delivers_on_the_next(world, error) -> None:
    w = world
    handoff = stranded_handoff(w)
    w.outage(error(), kafka=True)
    for _ in range(3):  # several ticks during the outage: none waits it out, none raises
        assert await asyncio.wait_for(w.ticks.deliver_outbox(), timeout=1) is False
    assert len(w.store.outbox) == 1  # still there for the next tick
    assert not w.scoring.delivery._in_flight  # nothing left reserved by the failed ticks
    w.outage(None)
    assert await w.ticks.deliver_outbox() is True
    assert [MqlHandoff.model_validate_json(r.value) for r in w.sent(w.settings.handoff)] == [
        handoff
    ]
    assert w.store.outbox == {}


# -- the SLA sweeper --------------------------------------------------------------------------


async def open_deadline(w: World) -> MqlHandoff:
    """A handoff the sales side has taken in: its first-contact clock is open (24 h)."""
    _, (handoff,) = apply_all(LeadState(lead_id="a"), [parse(event("a", "e1", 0))], RULES)
    await w.sales.process([handoff_record(w, handoff)])
    assert w.store.reminders_of, "the handoff should have scheduled a reminder"
    return handoff


@pytest.mark.parametrize("error", REDIS_SIDE.values(), ids=REDIS_SIDE.keys())
@pytest.mark.parametrize("failing", ["due_wakeups", "load", "commit"])
async def test_sla_sweep_survives_a_redis_outage_and_alerts_on_the_next_tick(
    world, error, failing
) -> None:
    w = world
    handoff = await open_deadline(w)
    w.clock[0] = handoff.first_contact_due_at + timedelta(seconds=1)
    w.store.down_only = {failing}
    w.outage(error())
    assert await w.ticks.sweep_deadlines() is False
    assert w.sent(w.settings.alerts) == []
    w.outage(None)
    assert await w.ticks.sweep_deadlines() is True
    alerts = [SlaAlert.model_validate_json(r.value) for r in w.sent(w.settings.alerts)]
    assert [(a.lead_id, a.kind) for a in alerts] == [("a", "mql_first_contact")]
    assert await w.ticks.sweep_deadlines() is True  # nothing more: one alert per deadline
    assert len(w.sent(w.settings.alerts)) == 1


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_an_alert_kafka_did_not_take_leaves_with_the_next_outbox_tick(world, error) -> None:
    w = world
    handoff = await open_deadline(w)
    w.clock[0] = handoff.first_contact_due_at + timedelta(seconds=1)
    w.outage(error(), kafka=True)
    assert await w.ticks.sweep_deadlines() is False  # decided and written, not sent
    assert await w.ticks.deliver_outbox() is False
    assert w.sent(w.settings.alerts) == [] and len(w.store.outbox) == 1
    w.outage(None)
    assert await w.ticks.sweep_deadlines() is True  # the deadline already alerted: nothing new
    assert await w.ticks.deliver_outbox() is True
    alerts = [SlaAlert.model_validate_json(r.value) for r in w.sent(w.settings.alerts)]
    assert [(a.lead_id, a.kind) for a in alerts] == [("a", "mql_first_contact")]
    assert w.store.outbox == {}


# -- the KPI gauges ---------------------------------------------------------------------------


def mqls_7d(w: World) -> float | None:
    return w.metrics.registry.get_sample_value(
        "leadflow_kpi_stage_count", {"stage": "mql", "window": "7d"}
    )


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_kpi_refresh_survives_an_outage_and_refreshes_on_the_next_tick(world, error) -> None:
    w = world
    await w.scoring.process([event("a", "e1", 0)])  # one MQL counted in Redis
    w.outage(error())
    assert await w.ticks.refresh_kpis() is False
    assert mqls_7d(w) in (None, 0.0)
    assert w.failures("refresh_kpis") == 1
    w.outage(None)
    assert await w.ticks.refresh_kpis() is True
    assert mqls_7d(w) == 1.0


async def test_a_bug_in_a_tick_is_logged_with_its_traceback_once_and_does_not_raise(world) -> None:
    w = world
    w.store.down = ValueError("a bug, not an outage")
    with capture_logs() as logs:
        for _ in range(3):
            assert await w.ticks.refresh_kpis() is False
        w.outage(None)
        assert await w.ticks.refresh_kpis() is True
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["exc_info"] is not None
    assert errors[0]["task"] == "refresh_kpis" and errors[0]["dependency"] == "unknown"
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["refresh_kpis recovered"]


# -- how an outage is told --------------------------------------------------------------------


async def test_an_outage_is_one_warning_naming_the_dependency_not_one_per_tick(world) -> None:
    w = world
    w.outage(RedisConnectionError("Error 111 connecting"))
    with capture_logs() as logs:
        for _ in range(20):
            assert await w.ticks.refresh_kpis() is False
        w.outage(None)
        assert await w.ticks.refresh_kpis() is True
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning["task"] == "refresh_kpis" and warning["dependency"] == "redis"
    assert "LEADFLOW_REDIS_URL" in warning["hint"] and "exc_info" not in warning
    assert not [e for e in logs if e["log_level"] == "error"]  # the retrying path stayed silent
    recovered = [e for e in logs if e["log_level"] == "info"]
    assert recovered[0]["failed_ticks"] == 20
    assert w.failures("refresh_kpis") == 20


async def test_a_long_outage_is_repeated_every_30_seconds() -> None:
    now = [0.0]
    ticks = Ticks("sweep_deadlines", Metrics(), repeat_every=30, clock=lambda: now[0])

    async def tick() -> None:
        raise KafkaConnectionError("broker down")

    with capture_logs() as logs:
        for _ in range(100):  # a tick every second for 100 s
            await ticks(tick)
            now[0] += 1
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["failed_ticks"] for e in warnings] == [1, 31, 61, 91]
    assert {e["dependency"] for e in warnings} == {"kafka"}


def test_the_dependency_is_named_from_the_error_or_its_cause() -> None:
    assert dependency_of(RedisConnectionError("x")) == "redis"
    assert dependency_of(KafkaConnectionError("x")) == "kafka"
    assert dependency_of(Unavailable("kafka", TimeoutError())) == "kafka"
    assert dependency_of(TimeoutError()) == "unknown"
    try:
        try:
            raise RedisConnectionError("reset")
        except RedisConnectionError as exc:
            raise ConnectionResetError("reset") from exc
    except ConnectionResetError as wrapped:
        assert dependency_of(wrapped) == "redis"


async def test_single_attempt_raises_where_the_batch_path_waits() -> None:
    metrics = Metrics()
    retrying = Retrying(metrics, max_delay=0.01)
    failures = [RedisConnectionError("down")] * 3

    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    with single_attempt(), pytest.raises(Unavailable) as raised:
        await retrying("redis", flaky)
    assert raised.value.dependency == "redis"
    assert metrics.dependencies.unavailable().keys() == {"redis"}
    assert await retrying("redis", flaky) == "ok"  # outside: waits the outage out
    assert metrics.dependencies.unavailable() == {}


def test_dependency_health_forgets_a_failure_nothing_retried() -> None:
    now = [0.0]
    health = DependencyHealth(forget_after=60, clock=lambda: now[0])
    health.failed("kafka", KafkaConnectionError("down"))
    now[0] = 10
    assert health.unavailable()["kafka"]["down_for_seconds"] == 10
    assert "LEADFLOW_KAFKA_BOOTSTRAP" in str(health.unavailable()["kafka"]["hint"])
    now[0] = 71
    assert health.unavailable() == {}


# -- the sales agent's batches: retried, never dropped ----------------------------------------


@pytest.mark.parametrize("kafka", [False, True], ids=["redis", "kafka"])
async def test_the_sales_batch_waits_out_an_outage_and_then_applies(world, kafka) -> None:
    w = world
    await open_deadline(w)
    body = {
        "activity_id": "a-dq",
        "lead_id": "a",
        "type": "disqualified",
        "occurred_at": (QUALIFIED + timedelta(minutes=5)).isoformat(),
        "reason": "no budget",
    }
    record = InRecord(b"a", orjson.dumps(body), w.settings.activity, 0, 0)
    w.outage(
        RedisConnectionError("down") if not kafka else KafkaConnectionError("down"), kafka=kafka
    )
    batch = asyncio.create_task(w.sales.process([record]))
    await asyncio.sleep(0.1)
    assert not batch.done()  # waiting, not failing: the records are already taken
    w.outage(None)
    result = await asyncio.wait_for(batch, timeout=5)
    assert result.counted == 1
    moves = [LifecycleTransition.model_validate_json(r.value) for r in w.sent(w.settings.lifecycle)]
    assert [(t.lead_id, t.to_stage) for t in moves] == [("a", "disqualified")]


# -- the engagement consumer: lag gauges, Kafka commits, its loop ----------------------------


class FakeConsumer:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.parts = {TopicPartition(topic, 0)}
        self.commit_error: BaseException | None = None
        self.committed_offsets: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.parts)

    def highwater(self, tp: TopicPartition) -> int:
        assert tp in self.parts, "Partition is not assigned"  # what aiokafka does
        return 10

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed_offsets.update(offsets)


def consumer_of(w: World) -> tuple[EngagementConsumer, FakeConsumer]:
    engagement = EngagementConsumer(w.settings, w.scoring, w.metrics)
    fake = FakeConsumer(w.settings.engagement)
    engagement.consumer = fake  # type: ignore[assignment]
    return engagement, fake


def test_lag_report_skips_a_partition_revoked_during_the_batch(world) -> None:
    engagement, _ = consumer_of(world)
    engagement._report_lag({0: 4, 1: 2})  # partition 1 went to another worker meanwhile
    lag = world.metrics.registry.get_sample_value
    assert (
        lag(
            "leadflow_consumer_lag_messages", {"topic": world.settings.engagement, "partition": "0"}
        )
        == 6
    )
    assert (
        lag(
            "leadflow_consumer_lag_messages", {"topic": world.settings.engagement, "partition": "1"}
        )
        is None
    )


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
def test_lag_report_never_raises(world, error, monkeypatch) -> None:
    engagement, fake = consumer_of(world)

    def broken(tp: TopicPartition) -> int:
        raise error()

    monkeypatch.setattr(fake, "highwater", broken)
    engagement._report_lag({0: 4})  # no exception into the batch loop
    assert world.failures("consumer_lag") == 1
    monkeypatch.undo()
    engagement._report_lag({0: 4})
    assert engagement._lag_ticks.failing_since is None


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_a_kafka_commit_that_fails_is_tried_again_by_the_next(world, error) -> None:
    engagement, fake = consumer_of(world)
    engagement.stored = {0: 7}
    fake.commit_error = error()
    await engagement.commits.now()  # no exception, nothing committed
    assert fake.committed_offsets == {} and world.failures("kafka_offset_commit") == 1
    fake.commit_error = None
    await engagement.commits.now()
    assert fake.committed_offsets == {TopicPartition(world.settings.engagement, 0): 7}
    assert world.metrics.dependencies.unavailable() == {}


async def test_a_commit_refused_by_a_rebalance_is_not_an_outage(world) -> None:
    engagement, fake = consumer_of(world)
    engagement.stored = {0: 7}
    fake.commit_error = CommitFailedError("rebalanced")
    await engagement.commits.now()
    assert world.failures("kafka_offset_commit") == 0
    assert world.metrics.dependencies.unavailable() == {}


async def test_the_engagement_loop_backs_off_through_an_outage_and_goes_on(
    world, monkeypatch
) -> None:
    engagement, fake = consumer_of(world)
    monkeypatch.setattr(consumer_loop, "LOOP_RETRY_MIN_SECONDS", 0.001)
    monkeypatch.setattr(consumer_loop, "LOOP_RETRY_MAX_SECONDS", 0.002)
    steps: list[str] = []
    failures = [KafkaConnectionError("down")] * 5

    async def connect() -> FakeConsumer:
        return fake

    async def step(consumer: Any) -> None:
        if failures:
            steps.append("failed")
            raise failures.pop()
        steps.append("ok")
        if steps.count("ok") == 3:
            raise asyncio.CancelledError  # the worker stops

    monkeypatch.setattr(engagement, "_connect", connect)
    monkeypatch.setattr(engagement, "_step", step)
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(engagement._run(), timeout=5)
    assert steps == ["failed"] * 5 + ["ok"] * 3
    assert [e["log_level"] for e in logs] == ["warning", "info"]  # one outage, one recovery
    assert logs[0]["dependency"] == "kafka" and "LEADFLOW_KAFKA_BOOTSTRAP" in logs[0]["hint"]
