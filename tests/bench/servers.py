"""The shared servers of a bench run: their pids (for CPU) and cleaning up after a run."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import PackageNotFoundError, version

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka import client_options
from streams.settings import Settings
from tests.harness import ROOT


async def redis_pid(settings: Settings) -> int | None:
    """redis-server's pid, from INFO (only meaningful when it runs on this machine)."""
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    pid = int(info.get("process_id", 0))
    return pid if _is_local(pid, "redis") else None


def broker_pid() -> int | None:
    """The local Kafka broker's pid, from `ops/stack status kafka` (None if not local)."""
    try:
        out = subprocess.run(
            [str(ROOT / "ops" / "stack"), "status", "kafka"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"kafka\s+running\s+pid=(\d+)", out)
    return int(found.group(1)) if found and _is_local(int(found.group(1)), "") else None


async def versions(settings: Settings) -> dict[str, str]:
    """Versions of what runs in the comparison, for the record."""
    out = {}
    for package in ("quixstreams", "faust-streaming", "aiokafka", "confluent-kafka", "redis"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        out["redis-server"] = str((await client.info("server"))["redis_version"])
    finally:
        await client.aclose()
    return out


def code_state() -> dict[str, object]:
    """The commit measured and the leadflow files that differed from it (shared tree)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "streams", "schemas").splitlines()
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted": changed}


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _is_local(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read()
    except OSError:
        return False


async def cleanup(settings: Settings) -> None:
    """Delete the run's topics (every name containing the namespace) and Redis keys."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if settings.namespace in t]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.namespace}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()
