"""Start-up, as an operator meets it: real `leadflow` processes started before Kafka or Redis
answer. They wait with one line per attempt, then either go on when the dependency comes up or
end with one line naming the variable to fix; no traceback, and no secret in anything printed.

Waits poll what a user could observe (the process's output, /health); nothing sleeps blindly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from streams.kafka import client_options
from streams.settings import SecretUrl, Settings
from tests.harness import ROOT, WorkerProcess, eventually, free_port, read_topic

pytestmark = pytest.mark.integration

REDIS_SECRET = "S3cretXYZ"
KAFKA_SECRET = "KafkaS3cret77"
COLLECTOR_TOKEN = "collector-token-T0ken-0123456789"
SECRETS = (REDIS_SECRET, KAFKA_SECRET, COLLECTOR_TOKEN)
IMPORT_FILE = ROOT / "tests" / "data" / "imports" / "marketo_activities.csv"


def leadflow_env(**variables: str) -> dict[str, str]:
    """The environment of a `leadflow` child: this checkout's code, only the given LEADFLOW_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LEADFLOW_LOG_FORMAT"] = "json"
    env.update({f"LEADFLOW_{k}": v for k, v in variables.items()})
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`leadflow ARGS` with stdout and stderr into `log` (read while it runs)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )


def text_of(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def output_contains(proc: subprocess.Popen[bytes], log: Path, text: str) -> None:
    async def seen() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}:\n{text_of(log)}")
        return text in text_of(log)

    await eventually(seen, 30, repr(text), every=0.05)


def finish(proc: subprocess.Popen[bytes], within: float = 60) -> int:
    try:
        return proc.wait(timeout=within)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret!r} printed:\n{text}"


# -- nothing answers: wait, then one line naming the variable --------------------------------


def unreachable_env(kafka_port: int, redis_port: int, **extra: str) -> dict[str, str]:
    return leadflow_env(
        KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
        REDIS_URL=f"redis://default:{REDIS_SECRET}@127.0.0.1:{redis_port}/0",
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="leadflow",
        KAFKA_SASL_PASSWORD=KAFKA_SECRET,
        COLLECTOR_TOKENS=orjson.dumps({"web": COLLECTOR_TOKEN}).decode(),
        COLLECTOR_PORT=str(free_port()),
        WEB_PORT=str(free_port()),
        STARTUP_TIMEOUT="3",
        **extra,
    )


# (command line, the dependency it waits for, the exit code)
COMMANDS: list[tuple[list[str], str, int]] = [
    (["worker"], "Kafka", 3),
    (["collector"], "Kafka", 3),
    (["report"], "Redis", 3),
    (["explain", "lead-1"], "Redis", 3),
    (["produce", "EVENTS"], "Kafka", 3),
    (["topics", "create"], "Kafka", 3),
    (["handoffs"], "Kafka", 3),
    (["rescore", "--rules", str(ROOT / "rules" / "example.yaml"), "--yes"], "Kafka", 3),
    (["import", "IMPORT", "--profile", "marketo"], "Kafka", 3),
]


@pytest.mark.parametrize(
    ("args", "dependency", "code"), COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS]
)
def test_unreachable_dependency_waits_then_names_the_variable_without_a_secret(
    args: list[str], dependency: str, code: int, tmp_path: Path
) -> None:
    args = [_file(a, tmp_path) for a in args]
    kafka_port, redis_port = free_port(), free_port()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT,
        env=unreachable_env(kafka_port, redis_port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    shown = {
        "Kafka": f"127.0.0.1:{kafka_port}",
        "Redis": f"redis://default:***@127.0.0.1:{redis_port}/0",
    }[dependency]
    for attempt in (1, 2):
        assert f"waiting for {dependency} at {shown} (attempt {attempt}, next in" in output
    last = done.stderr.strip().splitlines()[-1]
    variable = {"Kafka": "LEADFLOW_KAFKA_BOOTSTRAP", "Redis": "LEADFLOW_REDIS_URL"}[dependency]
    assert last.startswith("error: ") and variable in last, output
    assert "Traceback" not in output
    assert_no_secret(output)


def _file(arg: str, tmp_path: Path) -> str:
    """The command's input file in tmp_path (the import writes FILE.rejected.csv beside it)."""
    if arg == "IMPORT":
        copy = tmp_path / IMPORT_FILE.name
        copy.write_bytes(IMPORT_FILE.read_bytes())
        return str(copy)
    if arg == "EVENTS":
        events = tmp_path / "events.ndjson"
        events.write_bytes(b'{"event_id": "e-1", "lead_id": "lead-1"}\n')
        return str(events)
    return arg


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`leadflow worker` to its end (a failed start-up), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_waits_for_redis_and_names_its_variable(settings: Settings, tmp_path: Path) -> None:
    redis_port = free_port()
    env = leadflow_env(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        REDIS_URL=f"redis://default:{REDIS_SECRET}@127.0.0.1:{redis_port}/0",
        NAMESPACE=settings.namespace,
        RULES=str(settings.rules),
        WEB_PORT=str(free_port()),
        STARTUP_TIMEOUT="3",
    )
    done = run_worker(env)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert f"waiting for Redis at redis://default:***@127.0.0.1:{redis_port}/0 (attempt 2" in output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Redis at") and "LEADFLOW_REDIS_URL" in last
    assert "Traceback" not in output
    assert_no_secret(output)


def test_worker_waits_for_its_topics_then_says_how_to_create_them(
    settings: Settings, tmp_path: Path
) -> None:
    # Kafka and Redis answer, but nobody ran `leadflow topics create` for this namespace.
    namespace = f"{settings.namespace}x"
    env = leadflow_env(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        REDIS_URL=settings.redis_url.get_secret_value(),
        NAMESPACE=namespace,
        RULES=str(settings.rules),
        WEB_PORT=str(free_port()),
        STARTUP_TIMEOUT="3",
    )
    done = run_worker(env)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert f"waiting for Kafka topics at {settings.kafka_bootstrap} (attempt 2" in output
    assert f"{namespace}.leads.engagement" in output  # the reason names what is missing
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Kafka topics at"), output
    assert "leadflow topics create" in last and "LEADFLOW_NAMESPACE" in last
    assert "Traceback" not in output


# -- the dependency comes up during the wait: the command goes on -----------------------------


@contextmanager
def private_redis(port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on `port` that requires REDIS_SECRET (never the shared one)."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--requirepass", REDIS_SECRET, "--dir", str(directory)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_report_goes_on_when_redis_comes_up_and_never_shows_the_password(
    tmp_path: Path, services: None
) -> None:
    port = free_port()
    log = tmp_path / "report.log"
    env = leadflow_env(
        REDIS_URL=f"redis://default:{REDIS_SECRET}@127.0.0.1:{port}/0",
        NAMESPACE=f"startup-{port}",
        STARTUP_TIMEOUT="60",
    )
    proc = spawn(["report"], env, log)
    await output_contains(proc, log, f"127.0.0.1:{port}/0 (attempt 2, next in")
    with private_redis(port, tmp_path):
        code = await asyncio.to_thread(finish, proc)
    output = text_of(log)
    assert code == 0, output
    # The report's own "no data" hint names where it looked: without the password.
    assert f"redis://default:***@127.0.0.1:{port}/0" in " ".join(output.split())
    assert "Traceback" not in output
    assert_no_secret(output)


@asynccontextmanager
async def late_port_to(target: tuple[str, int], port: int) -> AsyncIterator[None]:
    """Open `port` now, forwarding every connection to `target` (a dependency that was not
    listening yet)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_produce_goes_on_when_kafka_comes_up(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    events = tmp_path / "events.ndjson"
    events.write_bytes(b'{"event_id": "e-1", "lead_id": "lead-1"}\n')
    log = tmp_path / "produce.log"
    env = leadflow_env(
        KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        NAMESPACE=settings.namespace,
        STARTUP_TIMEOUT="60",
    )
    proc = spawn(["produce", str(events)], env, log)
    await output_contains(proc, log, f"waiting for Kafka at 127.0.0.1:{port} (attempt 2")
    host, _, real_port = settings.kafka_bootstrap.partition(",")[0].rpartition(":")
    async with late_port_to((host, int(real_port)), port):
        code = await asyncio.to_thread(finish, proc)
    output = text_of(log)
    assert code == 0, output
    assert f"sent 1 records to {settings.engagement}" in output
    assert "Traceback" not in output
    assert [r.key for r in await read_topic(settings, settings.engagement)] == [b"lead-1"]


async def test_worker_goes_on_when_redis_comes_up(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://default:{REDIS_SECRET}@127.0.0.1:{port}/0"
    on_private = settings.model_copy(update={"redis_url": SecretUrl(url)})
    worker = WorkerProcess(
        on_private, tmp_path / "worker.log", extra_env={"LEADFLOW_STARTUP_TIMEOUT": "60"}
    )
    workers.append(worker.start())
    assert worker.proc is not None
    await output_contains(worker.proc, worker.log_path, f"127.0.0.1:{port}/0 (attempt 2, next in")
    with private_redis(port, tmp_path):
        await worker.wait_ready()
        worker.stop()
    output = text_of(worker.log_path)
    assert "Traceback" not in output
    assert_no_secret(output)


# -- /health: not ready until the engagement partitions are assigned --------------------------


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"{worker.url}/health", timeout=2) as resp:
            return resp.status, dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(orjson.loads(exc.read()))
    except OSError:
        return None


class HeldRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A group member that does not let a rebalance finish until `release` is set: the new
    worker's join waits, deterministically, with no partitions."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.asked.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def test_health_is_503_until_engagement_partitions_are_assigned(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    held = HeldRebalance()
    holder = AIOKafkaConsumer(
        **client_options(settings),
        group_id=settings.engagement_group,
        enable_auto_commit=False,
        session_timeout_ms=30_000,
        heartbeat_interval_ms=500,
    )
    holder.subscribe([settings.engagement], listener=held)
    await holder.start()
    try:

        async def holds_partitions() -> bool:
            await holder.getmany(timeout_ms=100)
            return bool(holder.assignment())

        await eventually(holds_partitions, 60, "the holder to own the engagement partitions")
        # Keep the holder's coordinator serviced while it blocks the next rebalance.
        polling = asyncio.create_task(_poll_forever(holder))

        worker = WorkerProcess(settings, tmp_path / "worker.log")
        workers.append(worker.start())

        async def answers() -> bool:
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
            return await asyncio.to_thread(health, worker) is not None

        await eventually(answers, 90, "the worker's /health to answer")
        await asyncio.wait_for(held.asked.wait(), 60)  # the worker's join is pending
        answer = await asyncio.to_thread(health, worker)
        assert answer is not None
        status, body = answer
        assert status == 503, body
        assert body["status"] == "starting" and body["assigned_partitions"] == []
        assert "no engagement partitions assigned" in body["not_ready"]
        assert body["redis"] is True

        held.release.set()

        async def ready() -> bool:
            answer = await asyncio.to_thread(health, worker)
            return answer is not None and answer[0] == 200

        await eventually(ready, 60, "/health 200 once partitions are assigned")
        answer = await asyncio.to_thread(health, worker)
        assert answer is not None
        status, body = answer
        assert body["status"] == "ok" and body["assigned_partitions"]
        assert "not_ready" not in body
        polling.cancel()
    finally:
        held.release.set()
        await holder.stop()


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=200)
