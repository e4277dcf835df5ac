"""`leadflow notify`: SLA alerts, MQL handoffs (and optionally lifecycle changes) delivered to
webhooks (Slack, Teams, JSON), with signatures, retries, a dead-letter topic and no duplicate
POST after a restart or a rebalance (docs/notify.md).

config.py reads the YAML targets, decide.py is pure (filters, bodies, signature, retry
schedule), metrics.py is /metrics, service.py the shell (Kafka, HTTP, Redis markers).
"""

from streams.notify.config import (
    NotifyConfig,
    NotifyConfigError,
    RetryPolicy,
    Target,
    load_notify_config,
    parse_notify_config,
)

__all__ = [
    "NotifyConfig",
    "NotifyConfigError",
    "RetryPolicy",
    "Target",
    "load_notify_config",
    "parse_notify_config",
]
