"""What `leadflow notify` exports on /metrics, per target (bounded: targets come from the
config file, reasons are http_<status>, timeout, connection_error)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.delivered = Counter(
            "leadflow_notify_delivered",
            "Records delivered (a 2xx answer), by target.",
            ["target"],
            registry=r,
        )
        self.failed_attempts = Counter(
            "leadflow_notify_failed_attempts",
            "POST attempts that failed, by target and reason (http_<status>, timeout, "
            "connection_error).",
            ["target", "reason"],
            registry=r,
        )
        self.deadlettered = Counter(
            "leadflow_notify_deadlettered",
            "Records sent to notify.deadletter, by target and reason (attempts_exhausted, "
            "not_retryable).",
            ["target", "reason"],
            registry=r,
        )
        self.skipped = Counter(
            "leadflow_notify_skipped",
            "Records not POSTed: already_settled (delivered or dead-lettered before a restart "
            "or rebalance), by target.",
            ["target", "reason"],
            registry=r,
        )
        self.invalid = Counter(
            "leadflow_notify_invalid_records",
            "Records on a notified topic that are not its model (logged, committed, not sent).",
            ["topic"],
            registry=r,
        )
        self.latency = Histogram(
            "leadflow_notify_request_seconds",
            "Time of one POST attempt until its answer (or failure), by target.",
            ["target"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.in_flight = Gauge(
            "leadflow_notify_in_flight",
            "Records being delivered (including waits between retries).",
            registry=r,
        )
