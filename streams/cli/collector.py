"""`leadflow collector`: the HTTP endpoint that writes events into the engagement topic."""

from __future__ import annotations

import asyncio

from streams.cli.errors import user_errors
from streams.core.rules import load_rules


def collector_command() -> None:
    """Run the HTTP collector: POST /v1/events into the engagement topic (LEADFLOW_COLLECTOR_*)."""
    from streams.bootstrap import checked_settings, wait_for_services
    from streams.collector import check_collector_settings, run_collector
    from streams.observability import configure_logging, log

    with user_errors():
        settings = checked_settings()
        event_types = load_rules(settings.rules).event_types
        check_collector_settings(settings)
    configure_logging(settings.log_level, settings.log_format)

    def waiting(line: str, reason: str) -> None:
        log.warning(line, error=reason)

    # Kafka not answering, or the engagement topic missing (`leadflow topics create`), within
    # LEADFLOW_STARTUP_TIMEOUT: one line naming what to do, exit 3; never serve a topic that
    # does not exist.
    with user_errors():
        asyncio.run(
            wait_for_services(
                settings, waiting, kafka=True, service=True, topics=[settings.engagement]
            )
        )
        run_collector(settings, event_types)
