"""What the collector exports on /metrics: requests, events accepted and rejected, produce time,
rate limiting and whether Kafka is up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CollectorMetrics:
    """Everything the collector exports on /metrics, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "leadflow_collector_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.events_accepted = Counter(
            "leadflow_collector_events_accepted",
            "Events acknowledged by Kafka and answered as accepted, by source.",
            ["source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "leadflow_collector_events_rejected",
            "Events not accepted, by reason (invalid_event, unknown_type, oversized, not_json, "
            "rate_limited, kafka_unavailable).",
            ["reason"],
            registry=r,
        )
        self.produce_seconds = Histogram(
            "leadflow_collector_produce_seconds",
            "Time from producing a request's events to Kafka acknowledging all of them.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rate_limited = Counter(
            "leadflow_collector_rate_limited",
            "Requests answered 429 because the source's rate was exceeded, by source.",
            ["source"],
            registry=r,
        )
        self.tracker_refused = Counter(
            "leadflow_collector_tracker_refused",
            "Tracker-token requests or events refused, by why: origin (not an allowed origin), "
            "scope (not a visitor's event of the tracker's types).",
            ["why"],
            registry=r,
        )
        self.kafka_up = Gauge(
            "leadflow_collector_kafka_up",
            "1 while the producer is connected and events are accepted, else 0.",
            registry=r,
        )
