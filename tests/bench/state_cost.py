"""What one lead's state costs in the core and the codec, in process (no Kafka, no Redis).

`python -m tests.bench.state_cost [--events N] [--leads N]`: replays `leadflow sample`'s
history (seed 5) through `streams.core.lead.replay` under rules/example.yaml, then encodes and
decodes every lead's state as the store does. Prints CPU microseconds per event (fold) and per
lead (encode, decode), and stored bytes per lead: the best of several rounds. Run it on two
checkouts (PYTHONPATH=...) to compare them; docs/benchmarks.md, "Attribution and order-free
caps", has the figures.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from schemas.engagement import EngagementEvent
from streams.core.lead import replay
from streams.core.rules import load_rules
from streams.jobs.sample import generate
from streams.store.codec import decode_lead, encode_lead


def best(run: Callable[[], object], rounds: int) -> float:
    """The least CPU seconds of `rounds` runs (the others were disturbed by something)."""
    times = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.state_cost", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rules = load_rules("rules/example.yaml")
    events = []
    for record in generate(leads=args.leads, events=args.events, seed=5):
        try:
            event = EngagementEvent.model_validate_json(record.value)
        except ValueError:
            continue  # the sample's deliberately broken records
        if event.type in rules.event_types:
            events.append(event)
    states = list(replay(events, rules).leads.values())
    fold = best(lambda: replay(events, rules), max(args.rounds // 2, 1))
    encode = best(lambda: [encode_lead(s) for s in states], args.rounds)
    stored = [encode_lead(s) for s in states]
    decode = best(lambda: [decode_lead(b) for b in stored], args.rounds)
    print(
        f"{len(events):,} events, {len(states):,} leads: fold {fold * 1e6 / len(events):.1f} "
        f"us/event, encode {encode * 1e6 / len(states):.1f} us/lead, decode "
        f"{decode * 1e6 / len(states):.1f} us/lead, {sum(map(len, stored)) / len(stored):.0f} "
        "bytes/lead"
    )


if __name__ == "__main__":
    main()
