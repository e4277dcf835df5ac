"""Routing in the scoring shell: the handoffs a batch decided get their owner before the batch
is written (docs/routing.md). The decision is the core's (streams/core/routing.py); the
rotation and each decision are kept by the routing ledger (streams/store/routing_ledger.py),
so a batch folded again after a conflict routes each handoff as it did the first time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from schemas.engagement import AttributeValue
from schemas.handoff import MqlHandoff
from streams.core.kpi import day_of, routed_counts
from streams.core.lead import LeadState
from streams.core.routing import QueueLedger, Routing, queue_for, route, routing_day
from streams.core.rules import Rules
from streams.pipeline.batch import BatchChanges
from streams.store.routing_ledger import RoutingLedger


async def route_handoffs(decided: BatchChanges, rules: Rules, ledger: RoutingLedger) -> None:
    """Give every handoff of the batch an owner: its output, its outbox entry and the lead's
    state (owner) change together, before the batch's one write."""
    if rules.routing is None:
        return
    changed = {after.lead_id: i for i, (_, after) in enumerate(decided.changes)}
    for n, output in enumerate(decided.outputs):
        if not isinstance(output, MqlHandoff) or output.lead_id not in changed:
            continue
        if output.routing_reason is not None:
            continue  # routed by an earlier try of this step (a Redis outage in between)
        at = changed[output.lead_id]
        before, after = decided.changes[at]
        decision = await _decide(
            output, {k: a.value for k, a in after.attributes.items()}, rules, ledger
        )
        routed = output.model_copy(
            update={
                "owner": decision.owner,
                "queue": decision.queue,
                "routing_reason": decision.reason,
            }
        )
        decided.outputs[n] = routed
        value = routed.model_dump_json().encode()
        decided.outbox = [
            replace(e, value=value) if e.output_id == output.handoff_id else e
            for e in decided.outbox
        ]
        if decision.owner is not None:
            decided.changes[at] = (before, replace(after, owner=decision.owner))
        day = day_of(output.qualified_at, rules)
        decided.counts += routed_counts(day, decision.owner, decision.queue)


async def recorded_routing(ledger: RoutingLedger, state: LeadState, rules: Rules) -> Routing | None:
    """The routing decision of the lead's latest handoff, for explain (None without one)."""
    if rules.routing is None or state.handoff_id is None or state.qualified_at is None:
        return None
    day = routing_day(state.qualified_at, rules.reporting.timezone)
    return await ledger.recorded(state.handoff_id, day)


async def _decide(
    handoff: MqlHandoff,
    attributes: Mapping[str, AttributeValue],
    rules: Rules,
    ledger: RoutingLedger,
) -> Routing:
    routing = rules.routing
    assert routing is not None
    day = routing_day(handoff.qualified_at, rules.reporting.timezone)
    queue = queue_for(routing, attributes)
    if queue is None:
        return route(routing, None, QueueLedger(), handoff.qualified_at, day)[0]

    def choose(rotation: QueueLedger) -> tuple[Routing, QueueLedger]:
        return route(routing, queue, rotation, handoff.qualified_at, day)

    return await ledger.decide(handoff.handoff_id, queue.name, day, choose)
