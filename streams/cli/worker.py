"""`leadflow worker`: one scoring worker, on the rules the live lead states were built with."""

from __future__ import annotations

import asyncio
import gc

from streams.cli.errors import user_errors
from streams.core.rules import load_rules


def worker_command() -> None:
    """Run a scoring worker (configured by LEADFLOW_* environment variables)."""
    # Faust and the Redis store load only when a worker runs, so `--help` stays quick.
    import faust

    from streams.bootstrap import (
        build_worker,
        check_input_partitions,
        checked_settings,
        live_generation,
        wait_for_services,
    )
    from streams.observability import (
        configure_logging,
        library_logging_config,
        log,
        quiet_repeats,
    )

    with user_errors():
        settings = checked_settings()
        rules = load_rules(settings.rules)
    configure_logging(settings.log_level, settings.log_format)
    log.info(
        "starting worker",
        kafka=settings.kafka_bootstrap,
        redis=str(settings.redis_url),  # without the password
        namespace=settings.namespace,
        engagement_topic=settings.engagement,
        rules=str(settings.rules),
        rules_version=rules.version,
        web=f"http://{settings.web_host}:{settings.web_port}",
        startup_timeout=settings.startup_within(service=True),
    )

    def waiting(line: str, reason: str) -> None:
        log.warning(line, error=reason)

    # Kafka and Redis may still be starting (a container beside its broker): wait for them,
    # one log line per attempt, then one error line naming the variable. No traceback.
    with user_errors():
        # ... and for its topics: created by `leadflow topics create`, and allowed by the ACLs.
        asyncio.run(
            wait_for_services(
                settings,
                waiting,
                kafka=True,
                redis=True,
                service=True,
                topics=settings.worker_topics,
            )
        )
        asyncio.run(check_input_partitions(settings))
        generation, rules = asyncio.run(live_generation(settings, rules))
    built = build_worker(settings, rules, generation)
    # aiokafka logs an error on every retry of a dead broker: one per kind every 30 s instead.
    quiet_repeats("aiokafka")
    # Every batch allocates hundreds of thousands of short-lived objects while the state cache
    # holds many long-lived ones: collecting less often, and never rescanning what exists at
    # start-up, cut the worker's CPU per event by 15-20 % (docs/benchmarks.md).
    gc.freeze()
    # Full collections stay possible (every 10th older one): cyclic garbage must not pile up.
    gc.set_threshold(100_000, 50, 10)
    worker = faust.Worker(
        built.app,
        loglevel="WARNING",
        quiet=True,
        redirect_stdouts=False,
        logging_config=library_logging_config("WARNING", settings.log_format),
    )
    # Faust's start-up spinner writes the cursor codes ESC[?25l / ESC[?25h even when stdout is
    # a pipe or a log file: a worker is a service, it never spins.
    worker.spinner = None
    worker.execute_from_commandline()
