"""The HTTP collector: trackers POST engagement events; Kafka has them before the answer.

`leadflow collector` runs this as its own process (docs/collector.md). The decisions are pure:
body.py turns a body into events and validates each like the worker does; access.py checks
tokens, rate limits and CORS. gate.py is the way into Kafka, metrics.py what /metrics shows,
and http.py the aiohttp handlers doing the I/O around the decisions.
"""

from streams.collector.access import (
    CORS_ALLOW_HEADERS,
    TOKEN_HEADER,
    RateLimiter,
    TokenBucket,
    authenticate,
    check_collector_settings,
    cors_allowed,
    cors_headers,
    presented_token,
    retry_after,
    token_digests,
)
from streams.collector.body import (
    HTTP_LOCATION,
    JSON_TYPES,
    NDJSON_TYPES,
    NOT_JSON,
    Body,
    BodyError,
    BodyFormat,
    Checked,
    Item,
    body_format,
    check_event,
    field_of,
    parse_body,
    summarize,
)
from streams.collector.gate import WATCH_INTERVAL, KafkaGate, KafkaState, TopicMissing
from streams.collector.http import EVENTS_PATH, RETRY_AFTER_UNAVAILABLE, Collector, run_collector
from streams.collector.metrics import CollectorMetrics
from streams.kafka import KafkaUnavailable

__all__ = [
    "CORS_ALLOW_HEADERS",
    "EVENTS_PATH",
    "HTTP_LOCATION",
    "JSON_TYPES",
    "NDJSON_TYPES",
    "NOT_JSON",
    "RETRY_AFTER_UNAVAILABLE",
    "TOKEN_HEADER",
    "WATCH_INTERVAL",
    "Body",
    "BodyError",
    "BodyFormat",
    "Checked",
    "Collector",
    "CollectorMetrics",
    "Item",
    "KafkaGate",
    "KafkaState",
    "KafkaUnavailable",
    "RateLimiter",
    "TokenBucket",
    "TopicMissing",
    "authenticate",
    "body_format",
    "check_collector_settings",
    "check_event",
    "cors_allowed",
    "cors_headers",
    "field_of",
    "parse_body",
    "presented_token",
    "retry_after",
    "run_collector",
    "summarize",
    "token_digests",
]
