"""`leadflow explain LEAD`: read one lead from Redis and say why it has its score."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape

from schemas.explain import LeadExplanation
from streams.cli.errors import fail, require_services, user_errors
from streams.cli.output import console
from streams.cli.render_explain import print_explanation
from streams.core.explain import explain, lead_id_problem
from streams.core.rules import load_rules
from streams.settings import Settings


def explain_command(
    lead_id: Annotated[str, typer.Argument(help="The lead to explain")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON")] = False,
) -> None:
    """Why a lead has its score: every contribution, recent events, deadlines, stage history.

    Reads the lead straight from Redis (LEADFLOW_REDIS_URL, LEADFLOW_NAMESPACE) and explains it
    under the rules of the live lead states (those of LEADFLOW_RULES unless a rescore changed
    them); no worker needs to run.
    """
    from redis.exceptions import RedisError

    from streams.bootstrap import checked_settings

    with user_errors():
        settings = checked_settings()
    problem = lead_id_problem(lead_id)
    if problem is not None:
        raise fail(problem, 2)
    lead_id = lead_id.strip()
    with user_errors():
        require_services(settings, redis=True)
    try:
        with user_errors():
            explanation = asyncio.run(fetch_explanation(settings, lead_id))
    except (RedisError, OSError) as exc:
        raise fail(
            f"cannot read Redis at {settings.redis_url} (LEADFLOW_REDIS_URL): {exc}", 3
        ) from None
    if explanation is None:
        namespace = settings.namespace or "(default, no namespace)"
        raise fail(
            f"lead {lead_id!r} is not known in namespace {namespace}; set LEADFLOW_NAMESPACE "
            "to the namespace of the worker that scored it",
            1,
        )
    if as_json:
        sys.stdout.write(explanation.model_dump_json(indent=2) + "\n")
    else:
        print_explanation(explanation)


async def fetch_explanation(settings: Settings, lead_id: str) -> LeadExplanation | None:
    """Read the lead from the live key space; explain it under that key space's rules."""
    from streams.bootstrap import LiveRules, check_layout, open_store
    from streams.pipeline.routing import recorded_routing
    from streams.store.routing_ledger import RoutingLedger

    rules = LiveRules(load_rules(settings.rules))
    store = open_store(settings)
    try:
        await check_layout(store, settings)
        live = await store.active_generation()
        state = await store.at_generation(live.number).read_lead(lead_id)
        ledger = RoutingLedger(store.redis, store.keys.prefix)
        routing = await recorded_routing(ledger, state, rules.of(live)) if state else None
    finally:
        await store.close()
    if state is None:
        return None
    if rules.differs(live):
        console.print(
            f"[yellow]note:[/] explained under the live rules {live.rules_version}, "
            f"not the rules file {escape(str(settings.rules))} ({rules.rules_file.version})"
        )
    return explain(state, rules.of(live), datetime.now(UTC), routing)
