"""`leadflow notify`: deliver SLA alerts and MQL handoffs to webhooks (docs/notify.md)."""

from __future__ import annotations

import asyncio

from streams.cli.errors import user_errors


def notify_command() -> None:
    """Deliver SLA alerts and MQL handoffs (and, when a target asks, lifecycle changes) to the
    webhooks of LEADFLOW_NOTIFY_CONFIG: Slack, Teams or JSON, signed, retried, dead-lettered to
    notify.deadletter, never POSTed twice after a restart. /health and /metrics on
    LEADFLOW_NOTIFY_WEB_HOST:LEADFLOW_NOTIFY_WEB_PORT."""
    from streams.bootstrap import wait_for_services
    from streams.notify import NotifyConfigError, load_notify_config
    from streams.notify.service import serve
    from streams.observability import configure_logging, log
    from streams.settings import SettingsError, load_settings, remember_secrets

    with user_errors(NotifyConfigError):
        settings = load_settings()
        if settings.notify_config is None:
            raise SettingsError(
                "LEADFLOW_NOTIFY_CONFIG is not set: point it at the YAML file of webhook "
                "targets (docs/notify.md)"
            )
        config = load_notify_config(settings.notify_config)
    remember_secrets(config.secrets)
    configure_logging(settings.log_level, settings.log_format)
    topics = [settings.alerts, settings.handoff, settings.notify_deadletter]
    if config.wants_lifecycle:
        topics.append(settings.lifecycle)
    log.info(
        "starting notify",
        kafka=settings.kafka_bootstrap,
        redis=str(settings.redis_url),  # without the password
        namespace=settings.namespace,
        config=str(settings.notify_config),
        targets=[{"name": t.name, "format": t.format} for t in config.targets],  # never the URL
        web=f"http://{settings.notify_web_host}:{settings.notify_web_port}",
    )

    def waiting(line: str, reason: str) -> None:
        log.warning(line, error=reason)

    with user_errors():
        asyncio.run(
            wait_for_services(
                settings, waiting, kafka=True, redis=True, service=True, topics=topics
            )
        )
        asyncio.run(serve(settings, config))
