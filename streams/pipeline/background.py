"""The worker's timers, Faust-free: the outbox sweep, the SLA sweep and the KPI gauges.

Each tick runs through its own `Ticks` guard (streams/pipeline/retry.py): one attempt per Redis
or Kafka call, and a tick that meets an outage is logged and skipped, never raised into Faust
(an exception out of a Faust timer crashes the whole worker). Nothing is lost by skipping: the
outbox entries, the due reminders and the KPI counters stay in Redis for the next tick, and an
alert written by a sweep whose Kafka send failed is in the outbox for the outbox sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from streams.core.attribution import MODELS, ValueFigures, figures
from streams.core.funnel import SERIES, days_between, total
from streams.observability import Metrics
from streams.pipeline.retry import Ticks
from streams.pipeline.sales import SalesService
from streams.pipeline.scoring import ScoringService
from streams.store import LeadStore

KPI_WINDOWS = (("7d", 7), ("28d", 28))


class BackgroundTasks:
    """The bodies of the worker's timers; `app.py` calls one method per tick."""

    def __init__(
        self,
        service: ScoringService,
        sales: SalesService,
        store: LeadStore,
        metrics: Metrics,
        engagement_partitions: Callable[[], list[int]],
        sales_partitions: Callable[[], list[int]],
        sweepable_partitions: Callable[[], list[int]] | None = None,
        today: Callable[[str], date] | None = None,
    ) -> None:
        self.service = service
        self.sales = sales
        self.store = store
        self.metrics = metrics
        self.engagement_partitions = engagement_partitions
        self.sales_partitions = sales_partitions
        # The sales partitions whose deadlines may be judged (read up to their end); all owned
        # ones when not given (tests of the ticks alone).
        self.sweepable_partitions = sweepable_partitions or sales_partitions
        self.today = today or (lambda tz: datetime.now(ZoneInfo(tz)).date())
        self.outbox_ticks = Ticks("deliver_outbox", metrics)
        self.sweep_ticks = Ticks("sweep_deadlines", metrics)
        self.kpi_ticks = Ticks("refresh_kpis", metrics)

    async def deliver_outbox(self) -> bool:
        """Outputs whose Kafka write did not complete before a crash, a rebalance or an
        outage; a rescore's switch. True if the tick completed."""
        return await self.outbox_ticks(self._deliver_outbox)

    async def sweep_deadlines(self) -> bool:
        """Alerts for the due reminders of this worker's sales partitions."""
        return await self.sweep_ticks(self._sweep_deadlines)

    async def refresh_kpis(self) -> bool:
        """The KPI gauges (7 and 28 days) from the counters in Redis."""
        return await self.kpi_ticks(self._refresh_kpis)

    async def _deliver_outbox(self) -> None:
        await self.service.check_generation()
        await self.sales.check_generation()
        await self.service.flush_outbox(self.engagement_partitions())
        await self.sales.flush_outbox(self.sales_partitions())
        self.metrics.open_deadlines.set(await self.sales.open_deadlines(self.sales_partitions()))

    async def _sweep_deadlines(self) -> None:
        # Every worker sweeps the partitions it owns (no leader: Faust skips leader timers
        # during rebalances), once it has read them up to where they ended when it got them;
        # the version check on the lead makes each alert happen once.
        await self.sales.sweep(self.sweepable_partitions())

    async def _refresh_kpis(self) -> None:
        today = self.today(self.service.rules.reporting.timezone)
        for window, length in KPI_WINDOWS:
            start = today - timedelta(days=length - 1)
            days = days_between(start, today)
            read = partial(self.store.read_kpis, days, SERIES.values())
            counts, durations = await self.service.retrying("redis", read)
            routing = self.service.rules.routing
            known = routing.owners if routing is not None else frozenset()
            self.metrics.observe_kpis(window, total(counts, durations, start, today), known)
            by_model: dict[str, list[ValueFigures]] = {
                model: figures(counts, days, model, "source") for model in MODELS
            }
            self.metrics.observe_attribution(window, by_model)
