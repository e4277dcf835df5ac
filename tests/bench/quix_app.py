"""The Quix Streams peer of `ops/bench compare`: the bench scoring in one Quix Streams app.

An `Application` with its default state (RocksDB, with changelog topics) keeps, per lead (the
message key): one "lead" entry (fit points per attribute, engagement sum, handed off or not) and
one entry per event id seen. The first time fit + engagement reaches the threshold it emits one
handoff JSON to the output topic.

Run as its own process: `python -m tests.bench.quix_app`, configured by environment:
BENCH_BROKER, BENCH_INPUT, BENCH_OUTPUT, BENCH_GROUP, BENCH_RULES, BENCH_STATE_DIR.
"""

from __future__ import annotations

import os
from typing import Any

from quixstreams import Application, State

from tests.bench.peer_scoring import PlainRules, handoff, load_plain_rules


def score_event(rules: PlainRules, event: dict[str, Any], state: State) -> list[dict[str, Any]]:
    """Fold one event into the lead's state; return [handoff] the first time it qualifies."""
    seen_key = f"seen:{event['event_id']}"
    if state.exists(seen_key):
        return []
    state.set(seen_key, 1)
    lead = state.get("lead") or {"fit": {}, "engagement": 0.0, "mql": False}
    lead["fit"].update(rules.fit_updates(event.get("attributes")))
    lead["engagement"] += rules.event_points(event["type"])
    out = []
    fit = sum(lead["fit"].values())
    if not lead["mql"] and fit + lead["engagement"] >= rules.threshold:
        lead["mql"] = True
        out.append(handoff(event, fit, lead["engagement"]))
    state.set("lead", lead)
    return out


def build_app(env: dict[str, str]) -> Application:
    rules = load_plain_rules(env["BENCH_RULES"])
    app = Application(
        broker_address=env["BENCH_BROKER"],
        consumer_group=env["BENCH_GROUP"],
        auto_offset_reset="earliest",
        state_dir=env["BENCH_STATE_DIR"],
        loglevel="WARNING",
    )
    source = app.topic(env["BENCH_INPUT"], key_deserializer="str", value_deserializer="json")
    output = app.topic(env["BENCH_OUTPUT"], key_serializer="str", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(
        lambda event, state: score_event(rules, event, state), stateful=True, expand=True
    )
    sdf.to_topic(output)  # keyed by lead_id, the input key
    return app


def main() -> None:
    build_app(dict(os.environ)).run()


if __name__ == "__main__":
    main()
