"""Routing at handoff: queues by attributes, weighted round robin, capacity, away, escalation.

Expected owners and counts are worked out by hand from docs/routing.md (the shares a weighting
promises, the days a capacity resets), not by running the rotation a second way."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from streams.core.routing import QueueLedger, queue_for, route, routing_day
from streams.core.rules import RoutingRule, RulesError, parse_rules

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DAY = date(2026, 12, 1)


def routing_of(section: dict[str, Any]) -> RoutingRule:
    rules = parse_rules({"mql": {"threshold": 100}, "routing": section})
    assert rules.routing is not None
    return rules.routing


ISSUE_EXAMPLE = {
    "queues": [
        {
            "name": "enterprise",
            "when": [{"field": "company_size", "between": [1000, 10_000_000]}],
            "members": [
                {"owner": "sato", "weight": 2, "capacity_per_day": 20},
                {"owner": "suzuki"},
                {"owner": "tanaka"},
            ],
            "escalate_to": "enterprise-lead",
        },
        {
            "name": "default",
            "members": [{"owner": "abe"}, {"owner": "ito"}],
            "escalate_to": "is-manager",
        },
    ],
    "away": [
        {"owner": "ito", "from": "2026-12-24T00:00:00+09:00", "until": "2027-01-04T00:00:00+09:00"}
    ],
    "reassign_after_breach": True,
}


def give(routing: RoutingRule, queue_name: str, n: int, at: datetime = AT) -> list[str | None]:
    queue = next(q for q in routing.queues if q.name == queue_name)
    ledger = QueueLedger()
    owners = []
    for _ in range(n):
        decision, ledger = route(routing, queue, ledger, at, routing_day(at, "UTC"))
        owners.append(decision.owner)
    return owners


def test_weights_2_1_1_stay_within_one_lead_of_the_share_at_every_count() -> None:
    routing = routing_of(
        {
            "queues": [
                {
                    "name": "q",
                    "members": [{"owner": "a", "weight": 2}, {"owner": "b"}, {"owner": "c"}],
                }
            ]
        }
    )
    owners = give(routing, "q", 400)
    share = {"a": 0.5, "b": 0.25, "c": 0.25}
    counts = dict.fromkeys(share, 0)
    for n, owner in enumerate(owners, start=1):
        assert owner is not None
        counts[owner] += 1
        assert all(abs(counts[o] - share[o] * n) <= 1 for o in share), (n, counts)
    assert counts == {"a": 200, "b": 100, "c": 100}


def test_the_first_matching_queue_takes_the_lead() -> None:
    routing = routing_of(ISSUE_EXAMPLE)
    big = queue_for(routing, {"company_size": "5,000"})
    small = queue_for(routing, {"company_size": 40})
    unknown = queue_for(routing, {})
    assert (big and big.name, small and small.name, unknown and unknown.name) == (
        "enterprise",
        "default",
        "default",
    )


def test_no_matching_queue_leaves_the_lead_unrouted() -> None:
    routing = routing_of(
        {
            "queues": [
                {
                    "name": "jp",
                    "when": [{"field": "country", "in": ["JP"]}],
                    "members": [{"owner": "sato"}],
                }
            ]
        }
    )
    queue = queue_for(routing, {"country": "DE"})
    decision, ledger = route(routing, queue, QueueLedger(), AT, DAY)
    assert (decision.owner, decision.queue, decision.reason) == (None, None, "no_queue")
    assert ledger == QueueLedger()


def test_a_member_at_capacity_is_skipped_until_the_next_day() -> None:
    routing = routing_of(
        {
            "queues": [
                {"name": "q", "members": [{"owner": "a", "capacity_per_day": 2}, {"owner": "b"}]}
            ]
        }
    )
    queue = routing.queues[0]
    ledger = QueueLedger()
    owners = []
    for i in range(6):
        decision, ledger = route(routing, queue, ledger, AT + timedelta(minutes=i), DAY)
        owners.append(decision.owner)
    # a, b, a (now 2: full), then b only.
    assert owners == ["a", "b", "a", "b", "b", "b"]
    assert decision.passed_over == ("a",)
    # The next day a is back in the rotation: the next two leads go one each (not both to b).
    tomorrow = AT + timedelta(days=1)
    first, ledger = route(routing, queue, ledger, tomorrow, DAY + timedelta(days=1))
    second, _ = route(routing, queue, ledger, tomorrow, DAY + timedelta(days=1))
    assert {first.owner, second.owner} == {"a", "b"}


def test_an_away_member_gets_nothing_while_away() -> None:
    routing = routing_of(ISSUE_EXAMPLE)
    holidays = datetime(2026, 12, 28, 10, 0, tzinfo=UTC)
    assert set(give(routing, "default", 6, holidays)) == {"abe"}
    # Back at 2027-01-04 00:00 +09:00 (exclusive end): the rotation includes ito again.
    back = datetime(2027, 1, 3, 15, 0, tzinfo=UTC)
    assert set(give(routing, "default", 2, back)) == {"abe", "ito"}


def test_nobody_available_escalates_with_reason_no_capacity() -> None:
    routing = routing_of(
        {
            "queues": [
                {
                    "name": "q",
                    "members": [{"owner": "a", "capacity_per_day": 1}, {"owner": "b"}],
                    "escalate_to": "manager",
                }
            ],
            "away": [
                {"owner": "b", "from": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00Z"}
            ],
        }
    )
    queue = routing.queues[0]
    first, ledger = route(routing, queue, QueueLedger(), AT, DAY)
    assert first.owner == "a"
    second, after = route(routing, queue, ledger, AT, DAY)
    assert (second.owner, second.queue, second.reason) == ("manager", "q", "no_capacity")
    assert second.passed_over == ("a", "b")
    assert after == ledger  # an escalation is nobody's turn


def test_capacity_counts_by_day_in_the_reporting_time_zone() -> None:
    late_evening_utc = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)  # 01:00 on the 2nd in Tokyo
    assert routing_day(late_evening_utc, "Asia/Tokyo") == date(2026, 12, 2)
    assert routing_day(late_evening_utc, "UTC") == date(2026, 12, 1)


def test_a_member_removed_from_the_rules_is_forgotten() -> None:
    before = routing_of({"queues": [{"name": "q", "members": [{"owner": "a"}, {"owner": "b"}]}]})
    ledger = QueueLedger()
    for _ in range(3):
        _, ledger = route(before, before.queues[0], ledger, AT, DAY)
    after = routing_of({"queues": [{"name": "q", "members": [{"owner": "b"}, {"owner": "c"}]}]})
    decision, ledger = route(after, after.queues[0], ledger, AT, DAY)
    assert decision.owner in {"b", "c"} and set(ledger.credit) == {"b", "c"}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"queues": []}, r"routing\.queues: Tuple should have at least 1 item"),
        (
            {"queues": [{"name": "q", "members": []}]},
            r"routing\.queues\[0\]\.members: Tuple should have at least 1 item",
        ),
        (
            {"queues": [{"name": "q", "members": [{"owner": "a"}, {"owner": "a"}]}]},
            "lists a more than once",
        ),
        (
            {
                "queues": [
                    {"name": "q", "members": [{"owner": "a"}]},
                    {"name": "q", "members": [{"owner": "b"}]},
                ]
            },
            "q used twice",
        ),
        (
            {"queues": [{"name": "q", "members": [{"owner": "a", "weight": 0}]}]},
            r"routing\.queues\[0\]\.members\[0\]\.weight: Input should be greater than or equal",
        ),
        (
            {
                "queues": [{"name": "q", "members": [{"owner": "a"}]}],
                "away": [
                    {
                        "owner": "sato",
                        "from": "2026-12-01T00:00:00Z",
                        "until": "2026-12-02T00:00:00Z",
                    }
                ],
            },
            "sato is not a member of any queue",
        ),
        (
            {
                "queues": [{"name": "q", "members": [{"owner": "a"}]}],
                "away": [
                    {"owner": "a", "from": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}
                ],
            },
            "until must be after from",
        ),
        (
            {
                "queues": [
                    {"name": "q", "when": [{"field": "country"}], "members": [{"owner": "a"}]}
                ]
            },
            "needs exactly one of",
        ),
    ],
)
def test_routing_mistakes_name_what_is_wrong(section: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules({"mql": {"threshold": 100}, "routing": section})


def test_rules_without_routing_keep_their_version() -> None:
    plain = parse_rules({"mql": {"threshold": 100}})
    routed = parse_rules({"mql": {"threshold": 100}, "routing": ISSUE_EXAMPLE})
    # The content hash of a rules file without routing is what it was before routing existed.
    assert plain.version == parse_rules({"mql": {"threshold": 100}}).version
    assert routed.version != plain.version
    assert "routing" not in plain.model_dump(exclude_none=True)


def test_explain_shows_who_was_passed_over_and_why_the_owner_was_chosen() -> None:
    from streams.cli.render_explain import routing_line
    from streams.core.explain import explain
    from streams.core.lead import LeadState
    from streams.core.routing import Routing

    rules = parse_rules({"mql": {"threshold": 100}, "routing": ISSUE_EXAMPLE})
    state = LeadState("lead-1", stage="mql", handoff_id="ho-1", qualified_at=AT, owner="manager")
    escalated = Routing("is-manager", "default", "no_capacity", ("abe", "ito"))
    e = explain(state, rules, AT, escalated)
    assert e.routing is not None
    assert (e.routing.owner, e.routing.queue, e.routing.reason) == (
        "is-manager",
        "default",
        "no_capacity",
    )
    assert e.routing.passed_over == ["abe", "ito"]
    assert routing_line(e) == (
        "[dim]routed: queue default: is-manager (everyone in the queue away or at capacity: "
        "escalated); passed over abe, ito[/]"
    )
    assert explain(state, rules, AT).routing is None
