"""`leadflow topics create`: every leadflow topic, created idempotently."""

from __future__ import annotations

import asyncio

from streams.cli.errors import require_services, user_errors
from streams.cli.output import out
from streams.settings import load_settings


def topics_create() -> None:
    """Create all topics idempotently with the configured partition count (default 8)."""
    from streams.kafka import create_topics

    with user_errors():
        settings = load_settings()
        # A set-up step, often run right after the broker starts: the longer default wait.
        require_services(settings, kafka=True, service=True)
        outcomes = asyncio.run(create_topics(settings))
    for o in outcomes:
        out.print(o.sentence(), soft_wrap=True, highlight=False)
