"""The Faust peers of `ops/bench compare`: per-event agents, as most Faust apps are written.

BENCH_FAUST_MODE=score (the naive peer): for every event, parse the JSON, make one Redis Lua
call (peer_scoring.SCORE_LUA) that dedupes, updates fit and engagement and checks the
threshold, and send the handoff JSON when the lead qualifies.

BENCH_FAUST_MODE=parse (the floor): for every event, parse the JSON and nothing else. What this
costs is Faust's per-event machinery plus json.loads.

Run as its own process: `python -m tests.bench.faust_naive worker -l warn`, configured by
environment: BENCH_BROKER, BENCH_INPUT, BENCH_OUTPUT, BENCH_GROUP, BENCH_RULES, BENCH_REDIS_URL,
BENCH_REDIS_PREFIX, BENCH_STATE_DIR, BENCH_FAUST_MODE.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import faust
import redis.asyncio as aioredis

from tests.bench.peer_scoring import SCORE_LUA, handoff, load_plain_rules

ENV = os.environ


def new_app() -> faust.App:
    return faust.App(
        ENV["BENCH_GROUP"],
        broker=f"kafka://{ENV['BENCH_BROKER']}",
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        store="memory://",
        datadir=ENV["BENCH_STATE_DIR"],
        web_enabled=False,
    )


app = new_app()
source = app.topic(ENV["BENCH_INPUT"], value_serializer="raw", key_serializer="raw")
output = app.topic(ENV["BENCH_OUTPUT"], value_serializer="raw", key_serializer="raw")


async def score_stream(events: AsyncIterator[bytes]) -> None:
    rules = load_plain_rules(ENV["BENCH_RULES"])
    client = aioredis.Redis.from_url(ENV["BENCH_REDIS_URL"])
    script = client.register_script(SCORE_LUA)
    prefix = ENV["BENCH_REDIS_PREFIX"]
    async for raw in events:
        event: dict[str, Any] = json.loads(raw)
        lead = event["lead_id"]
        args: list[Any] = [event["event_id"], rules.event_points(event["type"]), rules.threshold]
        for name, points in rules.fit_updates(event.get("attributes")).items():
            args += [name, points]
        result = await script(keys=[f"{prefix}lead:{lead}", f"{prefix}seen:{lead}"], args=args)
        if result:
            fit, engagement = float(result[0]), float(result[1])
            body = json.dumps(handoff(event, fit, engagement)).encode()
            await output.send(key=lead.encode(), value=body)


async def parse_stream(events: AsyncIterator[bytes]) -> None:
    async for raw in events:
        json.loads(raw)


if ENV["BENCH_FAUST_MODE"] == "score":
    app.agent(source, name="score")(score_stream)
else:
    app.agent(source, name="parse")(parse_stream)


if __name__ == "__main__":
    app.main()
