"""The local Redis Cluster that `ops/stack up redis-cluster` starts (issue 11 item 3): three
masters (no replicas) on 127.0.0.1:7000-7002 that share the 16384 slots and are found from one
node, as redis-py's cluster client sees them. Keys are spread over all three masters and each
lives on the master its slot names; keys with one hash tag share a slot, so a script may touch
them all.

When the cluster is not up these tests fail, never skip: CI runs the integration tests on it.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
# the nodes' ports: the same variable as ops/stack (spaces or commas); one master each
_PORTS = os.getenv("REDIS_CLUSTER_PORTS", "7000 7001 7002")
PORTS = [int(p) for p in _PORTS.replace(",", " ").split()]
MASTERS = len(PORTS)  # 3 unless REDIS_CLUSTER_PORTS says otherwise
SLOTS = 16384


@pytest.fixture
async def cluster() -> AsyncIterator[RedisCluster]:
    """A cluster client started from the first node; fail (never skip) if there is no cluster."""
    client = RedisCluster(host=HOST, port=PORTS[0], socket_timeout=5, socket_connect_timeout=3)
    problem = None
    try:
        await client.initialize()
    except (RedisClusterException, RedisError, OSError) as exc:
        problem = str(exc).rstrip(".")
    if problem is not None:
        await client.aclose()
        pytest.fail(
            f"no Redis Cluster at {HOST}:{PORTS[0]} ({problem}); "
            "start it with `ops/stack up redis-cluster`",
            pytrace=False,
        )
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"lf:tcluster{uuid.uuid4().hex[:10]}:"


async def test_three_masters_share_all_slots(cluster: RedisCluster) -> None:
    masters = cluster.get_primaries()
    assert sorted(n.port for n in masters) == sorted(PORTS), cluster.get_nodes()
    assert len(masters) == MASTERS and cluster.get_replicas() == []

    answer = await cluster.cluster_info(target_nodes=RedisCluster.ALL_NODES)
    infos = cast("dict[str, dict[str, str]]", answer)  # one per node (redis-py's hints say one)
    assert len(infos) == MASTERS, infos
    for name, info in infos.items():
        assert info["cluster_state"] == "ok", (name, info)
        assert int(info["cluster_slots_assigned"]) == SLOTS, (name, info)
        assert int(info["cluster_slots_ok"]) == SLOTS, (name, info)
        assert int(info["cluster_known_nodes"]) == MASTERS, (name, info)
        assert int(info["cluster_size"]) == MASTERS, (name, info)

    # every slot has exactly one master, and each master serves some
    slots = await cluster.cluster_slots(target_nodes=RedisCluster.RANDOM)
    ranges = cast("dict[tuple[int, int], dict[str, Any]]", slots)  # parsed into a dict
    owners: dict[int, int] = defaultdict(int)
    served = set()
    for (first, last), where in ranges.items():
        assert where["replicas"] == [], where
        served.add(where["primary"][1])
        for slot in range(first, last + 1):
            owners[slot] += 1
    assert sorted(owners) == list(range(SLOTS)) and set(owners.values()) == {1}
    assert served == set(PORTS)


async def test_keys_spread_over_all_masters(cluster: RedisCluster, prefix: str) -> None:
    keys = [f"{prefix}lead-{i}" for i in range(60)]
    by_port: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        assert cluster.keyslot(key) == key_slot(key.encode())
        node = cluster.get_node_from_key(key)
        assert node is not None and node.server_type == "primary", key
        by_port[int(node.port)].append(key)
    assert sorted(by_port) == sorted(PORTS), {p: len(k) for p, k in by_port.items()}

    try:
        for i, key in enumerate(keys):
            assert await cluster.set(key, f"v{i}")
        for i, key in enumerate(keys):
            assert await cluster.get(key) == f"v{i}".encode()

        # each key lives on the master of its slot; the others redirect with MOVED
        for port, owned in by_port.items():
            direct = aioredis.Redis(host=HOST, port=port, socket_timeout=5)
            try:
                sizes = await direct.dbsize()
                assert sizes >= len(owned), (port, sizes)
                for key in owned:
                    assert await direct.get(key) == f"v{keys.index(key)}".encode()
                other_port, other = next((p, ks[0]) for p, ks in by_port.items() if p != port)
                with pytest.raises(MovedError) as moved:
                    await direct.get(other)
                assert moved.value.slot_id == key_slot(other.encode())
                assert moved.value.port == other_port
            finally:
                await direct.aclose()
    finally:
        for key in keys:
            await cluster.delete(key)
    assert await cluster.exists(*keys[:1]) == 0


async def test_a_hash_tag_keeps_keys_on_one_slot(cluster: RedisCluster, prefix: str) -> None:
    tagged = [f"{prefix}{{p3}}:lead-{i}" for i in range(5)]
    assert len({cluster.keyslot(k) for k in tagged}) == 1
    script = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1]) end return #KEYS"
    try:
        # one script over many keys: fine within one slot ...
        assert await cluster.eval(script, len(tagged), *tagged, "x") == len(tagged)
        assert [await cluster.get(k) for k in tagged] == [b"x"] * len(tagged)
        # ... refused across slots (what issue 11 item 1's key layout avoids)
        spread = [f"{prefix}lead-{i}" for i in range(5)]
        assert len({cluster.keyslot(k) for k in spread}) > 1
        with pytest.raises((RedisClusterException, ResponseError), match=r"slot|CROSSSLOT"):
            await cluster.eval(script, len(spread), *spread, "x")
    finally:
        for key in tagged:
            await cluster.delete(key)
