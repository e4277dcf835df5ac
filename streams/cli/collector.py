"""`leadflow collector`: the HTTP endpoint that writes events into the engagement topic."""

from __future__ import annotations

from streams.cli.errors import user_errors
from streams.core.rules import load_rules


def collector_command() -> None:
    """Run the HTTP collector: POST /v1/events into the engagement topic (LEADFLOW_COLLECTOR_*)."""
    from streams.bootstrap import checked_settings
    from streams.collector import check_collector_settings, run_collector
    from streams.observability import configure_logging

    with user_errors():
        settings = checked_settings()
        rules = load_rules(settings.rules)
        check_collector_settings(settings)
    configure_logging(settings.log_level, settings.log_format)
    # Kafka not answering within LEADFLOW_STARTUP_TIMEOUT: one line naming the variable, exit 3.
    with user_errors():
        run_collector(settings, rules.event_types, rules)
