"""Structured logs (structlog, JSON by default) and the worker's Prometheus metrics."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError

from schemas.money import from_minor_units
from streams.core.attribution import ValueFigures
from streams.core.funnel import OwnerKpis, PeriodKpis
from streams.settings import REDIS_LOGIN, scrub


def _scrubbing(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """The renderer, then no known secret in the line, whatever put it there."""

    def render(logger: Any, name: str, event_dict: structlog.types.EventDict) -> str:
        return scrub(str(renderer(logger, name, event_dict)))

    return render


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrubbing(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


log = structlog.get_logger("leadflow")


class JsonLineFormatter(logging.Formatter):
    """Library log records (Faust, mode, aiokafka) as one JSON object per line, in the shape of
    leadflow's own lines (`event`, `level`, `logger`, `timestamp`; `exception` with the
    traceback on one line), without any known secret."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return scrub(orjson.dumps(body).decode())


def library_logging_config(level: str, fmt: str) -> dict[str, Any] | None:
    """The `logging_config` for Faust's worker: with LEADFLOW_LOG_FORMAT=json, its records and
    every library's on stderr as JSON lines (not colorlog's coloured text); None keeps Faust's
    own format (console)."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLineFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
                "level": level,
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


class RepeatFilter(logging.Filter):
    """Lets the first warning or error of a kind through, then one every `every` seconds that
    says how many like it were held back. A kind is the logger and the message template (the
    text before its %-arguments are filled in).

    For libraries that log every retry: during a broker outage aiokafka's fetcher, coordinator
    and metadata loops log an error each time they try a dead node (about 70 lines a second
    per worker, ~4,000 in a 30 s outage of the fault matrix), which buries the worker's own
    one-line warnings. Records below WARNING pass untouched."""

    MAX_KINDS = 1000

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._kinds.get(key)
        if seen is not None and now - seen[0] < self.every:
            self._kinds[key] = (seen[0], seen[1] + 1)
            return False
        if len(self._kinds) >= self.MAX_KINDS:
            self._kinds.clear()
        self._kinds[key] = (now, 0)
        if seen is not None and seen[1]:
            held = f" [{seen[1]} more like this in the last {now - seen[0]:.0f} s]"
            record.msg = f"{record.msg}{held.replace('%', '%%') if record.args else held}"
        return True


def quiet_repeats(prefix: str = "aiokafka", every: float = 30.0) -> RepeatFilter:
    """Install one RepeatFilter on every logger named `prefix` or `prefix.*` that exists now (a
    logger's filters do not apply to its children, so each gets it; import the library
    first)."""
    repeat = RepeatFilter(every)
    names = [
        n for n in logging.Logger.manager.loggerDict if n == prefix or n.startswith(prefix + ".")
    ]
    for name in {prefix, *names}:
        logging.getLogger(name).addFilter(repeat)
    return repeat


NAN = float("nan")


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value


class Metrics:
    """Every metric the scoring worker exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "leadflow_events",
            "Engagement events processed, by outcome (scored, duplicate).",
            ["outcome"],
            registry=r,
        )
        self.rerouted = Counter(
            "leadflow_rerouted_records",
            "Records re-sent to their lead's partition (Redis Cluster; their producer used "
            "another partitioner than Kafka's default).",
            registry=r,
        )
        self.deadletters = Counter(
            "leadflow_deadletters",
            "Records sent to the dead-letter topic, by error kind.",
            ["kind"],
            registry=r,
        )
        self.handoffs = Counter(
            "leadflow_handoffs", "MQL handoffs written (and later delivered).", registry=r
        )
        self.identity_records = Counter(
            "leadflow_identity_records",
            "Records of leads.anonymous read by the identity agent, by kind (anonymous, "
            "identify, deadletter).",
            ["kind"],
            registry=r,
        )
        self.identity_forwarded = Counter(
            "leadflow_identity_forwarded",
            "Anonymous events sent to leads.engagement under their lead (re-sends included).",
            registry=r,
        )
        self.identity_conflicts = Counter(
            "leadflow_identity_conflicts",
            "Identifies refused: the anonymous id was already claimed by another lead (the "
            "first claim wins, docs/tracker.md).",
            registry=r,
        )
        self.delivered = Counter(
            "leadflow_outputs_delivered",
            "Records acknowledged by Kafka, by topic (including redeliveries from the outbox).",
            ["topic"],
            registry=r,
        )
        self.transitions = Counter(
            "leadflow_lifecycle_transitions",
            "Stage changes, by from and to stage.",
            ["from_stage", "to_stage"],
            registry=r,
        )
        self.sales_inputs = Counter(
            "leadflow_sales_inputs",
            "Handoffs and sales activities applied by the sales consumer (duplicates excluded).",
            registry=r,
        )
        self.sla_alerts = Counter(
            "leadflow_sla_alerts",
            "SLA alerts sent, by clock and severity.",
            ["kind", "severity"],
            registry=r,
        )
        self.sla_clocks = Counter(
            "leadflow_sla_clocks_ended",
            "SLA clocks that reached a verdict: met, breached, expired (backfill), closed.",
            ["kind", "status"],
            registry=r,
        )
        self.late_actions = Counter(
            "leadflow_sla_late_actions",
            "Contacts or sales actions that came after their deadline.",
            ["kind"],
            registry=r,
        )
        self.alert_delay = Histogram(
            "leadflow_sla_alert_delay_seconds",
            "Time from a deadline to its alert.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
            registry=r,
        )
        self.sweep_seconds = Histogram(
            "leadflow_sla_sweep_seconds",
            "Time to turn one sweep's due deadlines into alerts.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        kpi = "Over the window (7d, 28d) ending today, from the KPI state in Redis: "
        self.kpi_stage = Gauge(
            "leadflow_kpi_stage_count", kpi + "stage changes.", ["stage", "window"], registry=r
        )
        self.kpi_mql_to_sql = Gauge(
            "leadflow_kpi_mql_to_sql_ratio",
            kpi + "share of the MQLs handed off that became SQL.",
            ["window"],
            registry=r,
        )
        self.kpi_sql_to_won = Gauge(
            "leadflow_kpi_sql_to_won_ratio",
            kpi + "share of the SQLs that were won.",
            ["window"],
            registry=r,
        )
        self.kpi_compliance = Gauge(
            "leadflow_kpi_sla_compliance_ratio",
            kpi + "clocks met on time / clocks decided (met + breached).",
            ["clock", "window"],
            registry=r,
        )
        self.kpi_time_to_contact = Gauge(
            "leadflow_kpi_time_to_contact_seconds",
            kpi + "time from handoff to first contact.",
            ["quantile", "window"],
            registry=r,
        )
        self.kpi_time_to_action = Gauge(
            "leadflow_kpi_time_to_action_seconds",
            kpi + "time from SQL to sales action.",
            ["quantile", "window"],
            registry=r,
        )
        self.kpi_missing_bant = Gauge(
            "leadflow_kpi_nurture_missing_bant",
            kpi + "BANT criteria missing when leads went back to nurture.",
            ["criterion", "window"],
            registry=r,
        )
        self.kpi_clocks = Gauge(
            "leadflow_kpi_sla_clocks",
            kpi + "SLA clocks by outcome (met, breached, late, expired, closed).",
            ["clock", "outcome", "window"],
            registry=r,
        )
        self.kpi_breaches_by_owner = Gauge(
            "leadflow_kpi_breaches_by_owner",
            kpi + "breached clocks by the owner known at the time ('-' = none).",
            ["owner", "window"],
            registry=r,
        )
        # Per owner and per queue: labels only for names the routing rules know (members and
        # escalate_to; "-" = no owner); any other owner named by sales activity counts as
        # "other", so the label sets stay as small as the team (docs/routing.md, "KPIs").
        self.kpi_owner_handoffs = Gauge(
            "leadflow_kpi_owner_handoffs",
            kpi + "MQLs routed to each owner at handoff.",
            ["owner", "window"],
            registry=r,
        )
        self.kpi_owner_breach_rate = Gauge(
            "leadflow_kpi_owner_first_contact_breach_rate",
            kpi + "missed first contacts / (met + missed), per owner (NaN: none decided).",
            ["owner", "window"],
            registry=r,
        )
        self.kpi_owner_time_to_contact = Gauge(
            "leadflow_kpi_owner_time_to_first_contact_seconds",
            kpi + "mean seconds from handoff to first contact, per owner (NaN: no contact).",
            ["owner", "window"],
            registry=r,
        )
        self.kpi_owner_reassigned = Gauge(
            "leadflow_kpi_owner_reassigned_away",
            kpi + "leads moved away from each owner (missed first contact, or by hand).",
            ["owner", "window"],
            registry=r,
        )
        self.kpi_queue_handoffs = Gauge(
            "leadflow_kpi_queue_handoffs",
            kpi + "MQLs per routing queue.",
            ["queue", "window"],
            registry=r,
        )
        # Attribution by source (docs/kpis.md, "Attribution"): the TOP_SOURCES sources with the
        # most won revenue, then SQLs, each model; the rest summed as "other".
        self.attribution_conversions = Gauge(
            "leadflow_attribution_conversions",
            kpi + "credited conversions (mql, sql, opportunity, won) per source and model.",
            ["source", "conversion", "model", "window"],
            registry=r,
        )
        self.attribution_won_amount = Gauge(
            "leadflow_attribution_won_amount",
            kpi + "credited won amount per source, model and currency (major units).",
            ["source", "currency", "model", "window"],
            registry=r,
        )
        self._attribution_labels: dict[str, set[tuple[str, ...]]] = {}
        self.open_deadlines = Gauge(
            "leadflow_sla_open_deadlines",
            "Reminders waiting in Redis on this worker's partitions.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "leadflow_batch_seconds",
            "Time to process one batch end to end (parse, Redis, Kafka).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_size = Histogram(
            "leadflow_batch_records",
            "Records per batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.event_lag = Gauge(
            "leadflow_event_lag_seconds",
            "Processing lag: wall clock minus occurred_at of the newest event in the last batch.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "leadflow_consumer_lag_messages",
            "Records behind the end of the partition after the last batch.",
            ["topic", "partition"],
            registry=r,
        )
        self.partitions_stopped = Gauge(
            "leadflow_partitions_stopped",
            "1 while an input partition is stopped because Redis lost its offsets (see the log)",
            ["topic", "partition"],
            registry=r,
        )
        self.resyncs = Counter(
            "leadflow_offset_resyncs",
            "Batches given up because Redis held other input offsets (restored, emptied, moved)",
            registry=r,
        )
        self.retries = Counter(
            "leadflow_retries",
            "Retried operations, by what failed (redis, kafka, conflict).",
            ["operation"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "leadflow_outbox_pending",
            "Handoffs written to Redis but not yet acknowledged by Kafka.",
            registry=r,
        )
        self.background_failures = Counter(
            "leadflow_background_failures",
            "Ticks of a background task (timer, lag report, Kafka commit) that failed and were "
            "skipped; the next tick tries again. By task and dependency (redis, kafka, unknown).",
            ["task", "dependency"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "leadflow_dependency_up",
            "0 while the worker's last calls to a dependency (redis, kafka) failed, else 1.",
            ["dependency"],
            registry=r,
        )
        self.dependencies = DependencyHealth(self.dependency_up)

    def observe_attribution(self, window: str, by_model: Mapping[str, list[ValueFigures]]) -> None:
        """Publish one window's attribution by source (labels left from an earlier refresh
        that are no longer among the top sources are removed)."""
        gauges = {"conversions": self.attribution_conversions, "won": self.attribution_won_amount}
        seen: set[tuple[str, ...]] = set()
        for model, rows in by_model.items():
            for f in top_values(rows):
                counts = {"mql": f.mqls, "sql": f.sqls, "opportunity": f.opportunities}
                for conversion, value in {**counts, "won": f.won}.items():
                    labels = (f.value, conversion, model, window)
                    self.attribution_conversions.labels(*labels).set(float(value))
                    seen.add(("conversions", *labels))
                for cur, minor in f.revenue.items():
                    labels = (f.value, cur, model, window)
                    self.attribution_won_amount.labels(*labels).set(
                        float(from_minor_units(minor, cur))
                    )
                    seen.add(("won", *labels))
        for stale in self._attribution_labels.get(window, set()) - seen:
            gauges[stale[0]].remove(*stale[1:])
        self._attribution_labels[window] = seen

    def observe_kpis(
        self, window: str, kpis: PeriodKpis, known_owners: frozenset[str] = frozenset()
    ) -> None:
        """Publish one window's funnel KPIs (NaN where a rate has no denominator yet)."""
        stages = {
            "mql": kpis.mqls,
            "sql": kpis.sqls,
            "nurture": kpis.nurture,
            "disqualified": kpis.disqualified,
            "won": kpis.won,
            "lost": kpis.lost,
        }
        for stage, count in stages.items():
            self.kpi_stage.labels(stage, window).set(count)
        self.kpi_mql_to_sql.labels(window).set(_or_nan(kpis.mql_to_sql))
        self.kpi_sql_to_won.labels(window).set(_or_nan(kpis.sql_to_won))
        for clock, ratio in kpis.compliance.items():
            self.kpi_compliance.labels(clock, window).set(_or_nan(ratio))
        for clock, c in kpis.sla.items():
            outcomes = {
                "met": c.met,
                "breached": c.breached,
                "late": c.late,
                "expired": c.expired,
                "closed": c.closed,
            }
            for outcome, count in outcomes.items():
                self.kpi_clocks.labels(clock, outcome, window).set(count)
        for criterion, count in kpis.missing_bant.items():
            self.kpi_missing_bant.labels(criterion, window).set(count)
        for owner, count in kpis.breaches_by_owner.items():
            self.kpi_breaches_by_owner.labels(owner, window).set(count)
        for owner, o in bounded_owners(kpis.by_owner, known_owners).items():
            self.kpi_owner_handoffs.labels(owner, window).set(o.handoffs)
            self.kpi_owner_breach_rate.labels(owner, window).set(_or_nan(o.breach_rate))
            self.kpi_owner_time_to_contact.labels(owner, window).set(
                _or_nan(o.mean_time_to_first_contact)
            )
            self.kpi_owner_reassigned.labels(owner, window).set(o.reassigned_away)
        for queue, count in kpis.by_queue.items():
            self.kpi_queue_handoffs.labels(queue, window).set(count)
        for gauge, durations in (
            (self.kpi_time_to_contact, kpis.time_to_first_contact),
            (self.kpi_time_to_action, kpis.time_to_sales_action),
        ):
            gauge.labels("0.5", window).set(_or_nan(durations.median))
            gauge.labels("0.9", window).set(_or_nan(durations.p90))


TOP_SOURCES = 10


def top_values(rows: Sequence[ValueFigures], n: int = TOP_SOURCES) -> list[ValueFigures]:
    """The first `n` rows as they are (they come most revenue first), the rest summed as
    "other" (so the gauges' labels stay bounded and the totals stay whole)."""
    if len(rows) <= n:
        return list(rows)
    rest = rows[n:]

    def summed(key: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in rest:
            for cur, minor in getattr(r, key).items():
                total[cur] = total.get(cur, 0) + minor
        return total

    other = ValueFigures(
        "other",
        sum((r.mqls for r in rest), Fraction(0)),
        sum((r.sqls for r in rest), Fraction(0)),
        sum((r.opportunities for r in rest), Fraction(0)),
        sum((r.won for r in rest), Fraction(0)),
        summed("pipeline"),
        summed("revenue"),
    )
    return [*rows[:n], other]


def bounded_owners(
    by_owner: Mapping[str, OwnerKpis], known: frozenset[str]
) -> dict[str, OwnerKpis]:
    """Owners the rules know (and "-") as they are, everyone else summed as "other"."""
    out: dict[str, OwnerKpis] = {}
    for owner, o in by_owner.items():
        name = owner if owner in known or owner == "-" else "other"
        was = out.get(name, OwnerKpis())
        out[name] = OwnerKpis(
            was.handoffs + o.handoffs,
            was.met + o.met,
            was.breached + o.breached,
            was.contacted + o.contacted,
            was.contact_seconds + o.contact_seconds,
            was.reassigned_away + o.reassigned_away,
        )
    return out


# What an operator checks when a dependency does not answer.
DEPENDENCY_VARIABLE = {"redis": "LEADFLOW_REDIS_URL", "kafka": "LEADFLOW_KAFKA_BOOTSTRAP"}


def redis_refusal(error: BaseException | None) -> str | None:
    """What to fix when Redis answered but refused us (redis-py's AuthenticationError is a
    ConnectionError: without this it reads as "redis unavailable"); None for anything else."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        user, variable = REDIS_LOGIN["user"], REDIS_LOGIN["variable"]
        if isinstance(error, AuthenticationError | AuthorizationError):
            return f"redis refused the credentials for user {user}: check {variable}"
        if isinstance(error, NoPermissionError):
            return (
                f"redis denied a command to user {user} (its ACL): grant it leadflow's keys and "
                "commands (docs/operations.md)"
            )
        error = error.__cause__ or error.__context__
    return None


def dependency_hint(dependency: str, error: BaseException | None = None) -> str:
    """What an operator checks: the credentials if Redis refused them (`error`), else whether
    the dependency is reachable at its variable."""
    refusal = redis_refusal(error) if dependency == "redis" else None
    if refusal is not None:
        return refusal
    variable = DEPENDENCY_VARIABLE.get(dependency)
    if variable is None:
        return "check that Redis (LEADFLOW_REDIS_URL) and Kafka (LEADFLOW_KAFKA_BOOTSTRAP) answer"
    return f"check that {dependency} is reachable ({variable})"


@dataclass
class Down:
    since: float
    last_failure: float
    error: str
    hint: str


class DependencyHealth:
    """What the worker saw last of Redis and Kafka: a dependency is unavailable from its first
    failed call until a call succeeds again (or, when nothing tried it since, `forget_after`
    seconds after its last failure). /health reports it; `leadflow_dependency_up` shows it."""

    def __init__(
        self,
        gauge: Gauge | None = None,
        forget_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gauge = gauge
        self.forget_after = forget_after
        self.clock = clock
        self._down: dict[str, Down] = {}
        if gauge is not None:
            for dependency in DEPENDENCY_VARIABLE:
                gauge.labels(dependency).set(1)

    def failed(self, dependency: str, error: BaseException) -> None:
        if dependency not in DEPENDENCY_VARIABLE:
            return
        now = self.clock()
        text = scrub(f"{type(error).__name__}: {error}")[:300]
        if isinstance(error, TimeoutError) and not str(error):
            text = "TimeoutError: no answer in time"
        hint = dependency_hint(dependency, error)
        down = self._down.get(dependency)
        if down is None or now - down.last_failure > self.forget_after:
            self._down[dependency] = Down(now, now, text, hint)
        else:
            down.last_failure, down.error, down.hint = now, text, hint
        if self.gauge is not None:
            self.gauge.labels(dependency).set(0)

    def succeeded(self, dependency: str) -> None:
        if self._down.pop(dependency, None) is not None and self.gauge is not None:
            self.gauge.labels(dependency).set(1)

    def unavailable(self) -> dict[str, dict[str, object]]:
        """The dependencies down now: since how long, the last error, what to check."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for dependency, down in sorted(self._down.items()):
            if now - down.last_failure > self.forget_after:
                self.succeeded(dependency)  # nothing has tried it since: no longer known down
                continue
            out[dependency] = {
                "down_for_seconds": round(now - down.since, 1),
                "error": down.error,
                "hint": down.hint,
            }
        return out
