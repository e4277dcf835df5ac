"""No secret leaves leadflow (issue 10, item 4): every `leadflow` command, run as a real process
against the secured services (redis-secure: TLS + ACL user + password; kafka-secure: SASL_SSL
SCRAM-SHA-512 + ACLs), with the real passwords as the needles. Neither the Redis password (in
LEADFLOW_REDIS_PASSWORD, or inside LEADFLOW_REDIS_URL), nor a Kafka SASL password, nor a
collector token may appear in anything a user or an operator gets to see: stdout, stderr, the
worker's and the collector's JSON logs, HTTP answers (/health, /metrics, explain, the collector's
errors), files written (report charts and their PNG metadata, backtest output, the importer's
rejects), records put on Kafka (dead-letter headers), nor in the one line a refused password or a
service that is down ends with, which must name the variable to fix instead.

What "appears" means: any 12 characters in a row of a secret (a truncated or split secret counts).
A failure message shows where, with the secret replaced by <SECRET n>: never the secret itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from PIL import Image
from redis.exceptions import RedisError

from streams.settings import SecretUrl, Settings, load_settings
from tests.harness import (
    BANT_PASS,
    ROOT,
    TEST_RULES,
    WorkerProcess,
    activity,
    eventually,
    free_port,
    namespace_keys,
    produce,
    qualifying,
    read_topic,
)
from tests.secured import KAFKA_SECURE_PREFIX, SecureRedis, up_secure_kafka, up_secure_redis

pytestmark = pytest.mark.integration

# A secret "appears" when this many characters of it in a row do.
WINDOW = 12
# Commands run side by side (2 cores: enough to overlap their waits on the network).
PARALLEL = 4
IMPORT_FILE = ROOT / "tests" / "data" / "imports" / "marketo_activities.csv"
LEADS = ("leak-1", "leak-2", "leak-3")


class Env(dict[str, str]):
    """A child's environment; shown without its values (a failing test's traceback prints
    its arguments: the secrets must not get into the test log either)."""

    def __repr__(self) -> str:
        return f"Env({len(self)} variables)"


@dataclass(frozen=True)
class Secured:
    """The secured services and every secret a test process knows of them."""

    redis: SecureRedis
    kafka: dict[str, str] = field(repr=False)  # the worker principal's LEADFLOW_* variables
    admin: dict[str, str] = field(repr=False)  # the admin's (may create topics)
    collector_token: str = field(repr=False)
    wrong: str = field(repr=False)  # a wrong password, as distinctive

    @property
    def needles(self) -> tuple[str, ...]:
        return (
            self.redis.password,
            self.kafka["LEADFLOW_KAFKA_SASL_PASSWORD"],
            self.admin["LEADFLOW_KAFKA_SASL_PASSWORD"],
            self.collector_token,
            self.wrong,
        )

    def env(
        self, namespace: str, *, redis_url: bool = False, admin: bool = False, **extra: str
    ) -> Env:
        """A `leadflow` child's environment: this checkout, only these LEADFLOW_* variables.
        The Redis credentials in their own variables, or (redis_url) inside the URL."""
        env = Env({k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["COLUMNS"] = "200"
        redis = self.redis.url_variables() if redis_url else self.redis.variables()
        env.update({f"LEADFLOW_{k}": v for k, v in redis.items()})
        kafka = self.admin if admin else self.kafka
        env.update({k: v for k, v in kafka.items() if k != "LEADFLOW_NAMESPACE"})
        env.update(
            {
                "LEADFLOW_NAMESPACE": namespace,
                "LEADFLOW_RULES": str(TEST_RULES),
                "LEADFLOW_LOG_FORMAT": "json",
                "LEADFLOW_STARTUP_TIMEOUT": "20",
                "LEADFLOW_COLLECTOR_TOKENS": orjson.dumps({"web": self.collector_token}).decode(),
            }
        )
        env.update(extra)
        return env

    def settings(self, env: Env) -> Settings:
        """The settings a child with `env` runs with (for reading its topics here)."""
        return load_settings(
            **{k.removeprefix("LEADFLOW_").lower(): v for k, v in env.items() if "LEADFLOW_" in k}
        )


@pytest.fixture(scope="module")
def secured() -> Secured:
    redis = up_secure_redis()
    kafka = up_secure_kafka()
    secured = Secured(
        redis,
        kafka["leadflow"],
        kafka["admin"],
        collector_token=f"C0llectorT0ken{uuid.uuid4().hex}",
        wrong=f"Wr0ngPassw0rd{uuid.uuid4().hex}",
    )
    SECRETS[:] = secured.needles
    return secured


def namespace() -> str:
    return f"{KAFKA_SECURE_PREFIX}.leak{uuid.uuid4().hex[:8]}"


# -- what was seen, and whether a secret is in it -------------------------------------------

# The secrets of this module's fixture: never in an assertion message either.
SECRETS: list[str] = []


def windows(secret: str) -> list[str]:
    return [secret[j : j + WINDOW] for j in range(len(secret) - WINDOW + 1)]


def redact(text: str) -> str:
    """`text` with every piece of a known secret shown as <SECRET n>."""
    for i, secret in enumerate(SECRETS):
        for piece in windows(secret):
            text = text.replace(piece, f"<SECRET {i}>")
    return text


class Seen:
    """Everything a user or operator got to see, by where; `assert_clean` looks for secrets."""

    def __init__(self, needles: Iterable[str]) -> None:
        self.needles = tuple(needles)
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        self.texts.append((where, text))

    def run(self, run: Run) -> None:
        self.add(f"{run.label}: stdout", run.stdout)
        self.add(f"{run.label}: stderr", run.stderr)

    def files(self, root: Path) -> int:
        """Every file under `root` (raw bytes; a PNG's text chunks decoded too)."""
        count = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            count += 1
            self.add(f"file {path.relative_to(root)}", path.read_bytes())
            if path.suffix == ".png":
                with Image.open(path) as image:
                    self.add(f"file {path.relative_to(root)} (PNG text)", repr(image.info))
        return count

    def leaks(self, text: str) -> list[int]:
        return [
            i for i, secret in enumerate(self.needles) if any(p in text for p in windows(secret))
        ]

    def assert_clean(self) -> None:
        found = [(where, text) for where, text in self.texts if self.leaks(text)]
        if found:
            pytest.fail(
                "secrets shown:\n"
                + "\n".join(
                    f"--- {where} (secret {self.leaks(text)}):\n{redact(text)[-3000:]}"
                    for where, text in found
                ),
                pytrace=False,
            )


# -- running commands ------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    args: list[str]
    env: Env
    timeout: float = 60
    code: int | None = None
    stdout: str = ""
    stderr: str = ""

    def __call__(self) -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", *self.args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
        )
        self.code, self.stdout, self.stderr = done.returncode, done.stdout, done.stderr
        return self

    @property
    def output(self) -> str:
        text = f"$ leadflow {' '.join(self.args)} -> {self.code}\n{self.stdout}{self.stderr}"
        return redact(text)

    def ok(self) -> Run:
        assert self.code == 0, self.output
        assert "Traceback" not in self.output, self.output
        return self

    def error_line(self) -> str:
        """It failed with exactly one `error:` line and no traceback; that line."""
        assert self.code not in (0, None), self.output
        assert "Traceback" not in self.output and "╭─" not in self.output, self.output
        errors = [line for line in redact(self.stderr).splitlines() if line.startswith("error:")]
        assert len(errors) == 1, self.output
        return errors[0]


async def run_all(runs: list[Run], seen: Seen) -> list[Run]:
    """Run side by side (PARALLEL at a time), off the event loop; all are `seen`."""

    def go() -> list[Run]:
        with ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(lambda r: r(), runs))

    done = await asyncio.to_thread(go)
    for run in done:
        seen.run(run)
    return done


@dataclass
class Service:
    """A long-running `leadflow` process (collector, demo), stdout and stderr into files."""

    label: str
    args: list[str]
    env: Env
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Service:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def stdout(self) -> Path:
        return self.directory / f"{self.label}.stdout"

    @property
    def stderr(self) -> Path:
        return self.directory / f"{self.label}.stderr"

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                redact(f"{self.label} exited with {self.proc.returncode}:\n{self.tail()}")
            )
        return True

    def tail(self) -> str:
        out = self.stdout.read_text(errors="replace")[-3000:]
        return redact(out + self.stderr.read_text(errors="replace")[-3000:])

    def interrupt(self) -> None:
        """Ctrl-C if it still runs (the demo then stops its own worker), kill if that fails."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, within: float = 40) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.label} did not stop within {within:g} s") from None


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One HTTP exchange: the status and everything answered (headers and body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, f"{resp.headers}\n{resp.read().decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"{exc.headers}\n{exc.read().decode(errors='replace')}"


def answers(url: str) -> bool:
    try:
        return http("GET", url)[0] == 200
    except OSError:
        return False


def events_file(path: Path, leads: Iterable[str]) -> Path:
    """Qualifying events (stamped now) for `leads`, and one broken line (dead-lettered)."""
    now = datetime.now(UTC)
    lines = [value for lead in leads for _, value in qualifying(lead, now)]
    lines.append(b'{"event_id": "broken-1", "lead_id": "leak-1", "type": 42}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


async def delete_keys(secured: Secured, *namespaces: str) -> None:
    """The namespaces' Redis keys, as the ACL user (it may SCAN and DEL its own keys)."""
    settings = secured.redis.settings()
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), **settings.redis_options()
    )
    try:
        for ns in namespaces:
            keys = await namespace_keys(client, settings.model_copy(update={"namespace": ns}))
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


# -- every command, working ------------------------------------------------------------------


async def test_every_command_against_the_secured_services_shows_no_secret(
    secured: Secured, tmp_path: Path
) -> None:
    seen = Seen(secured.needles)
    ns, demo_ns = namespace(), namespace()
    env = secured.env(ns)
    files = tmp_path / "written"
    files.mkdir()
    started: list[Service] = []
    try:
        await every_command(secured, seen, ns, demo_ns, env, tmp_path, files, started)
    finally:
        for service in started:
            service.interrupt()  # if a failure left it running
        await delete_keys(secured, ns, demo_ns)
    assert seen.files(files) >= 6  # reports, charts, backtest, the importer's rejects, ...
    seen.assert_clean()


async def every_command(
    secured: Secured,
    seen: Seen,
    ns: str,
    demo_ns: str,
    env: Env,
    tmp_path: Path,
    files: Path,
    started: list[Service],
) -> None:
    settings = secured.settings(env)
    url_env = secured.env(ns, redis_url=True)
    events = events_file(tmp_path / "events.ndjson", LEADS)
    imported = files / IMPORT_FILE.name  # the importer writes FILE.rejected.csv beside it
    imported.write_bytes(IMPORT_FILE.read_bytes())
    sample = files / "sample.ndjson"

    # The demo, in the background all along: it creates its topics (the admin principal may),
    # starts its own worker and plays sales. Its Redis password is inside LEADFLOW_REDIS_URL.
    demo_events = events_file(tmp_path / "demo-events.ndjson", ("demo-1", "demo-2"))
    demo_port = free_port()
    demo = Service(
        "demo",
        ["demo", "--sample", str(demo_events), "--rate", "1000"],
        secured.env(
            demo_ns,
            redis_url=True,
            admin=True,
            LEADFLOW_WEB_PORT=str(demo_port),
            LEADFLOW_DEMO_LOG=str(tmp_path / "demo-worker.log"),
        ),
        tmp_path,
    ).start()
    started.append(demo)

    # Set-up and the commands that need no service: the admin creates the topics.
    admin = secured.env(ns, admin=True)
    first = await run_all(
        [
            Run("topics create (admin)", ["topics", "create"], admin),
            Run("help", ["--help"], env),
            Run("rules check", ["rules", "check"], env),
            Run("schemas", ["schemas", "generate", "--check"], env),
            Run("sample", ["sample", "generate", "--out", str(sample), "--events", "300"], env),
        ],
        seen,
    )
    for run in first:
        run.ok()
    assert f"{ns}.leads.engagement: created" in first[0].output, first[0].output

    # The worker and the collector, while commands produce, import and check topics.
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        extra_env={k: v for k, v in env.items() if k != "LEADFLOW_WEB_PORT"},
    ).start()
    collector_port = free_port()
    collector = Service(
        "collector",
        ["collector"],
        {**env, "LEADFLOW_COLLECTOR_PORT": str(collector_port)},
        tmp_path,
    ).start()
    started.append(collector)
    outcomes = files / "outcomes.csv"
    outcomes.write_text("lead_id,outcome,occurred_at\nL0001,opportunity,2030-01-01T00:00:00Z\n")
    backtest = ["backtest", "--events", str(sample), "--outcomes", str(outcomes)]
    backtest += ["--rules", str(TEST_RULES)]
    try:
        second = await run_all(
            [
                Run("produce", ["produce", str(events)], env),
                Run("import", ["import", str(imported), "--profile", "marketo"], env),
                Run("topics create (worker principal)", ["topics", "create"], env),
                Run("backtest", [*backtest, "--chart", str(files / "backtest.png")], env),
                Run("backtest --json", [*backtest, "--json"], env),
            ],
            seen,
        )
        for run in second:
            run.ok()
        (files / "backtest.json").write_text(second[4].stdout)
        assert f"{ns}.leads.engagement: exists" in second[2].output, second[2].output

        await worker.wait_ready(within=90)
        collector_health = f"http://127.0.0.1:{collector_port}/health"

        async def collector_up() -> bool:
            return collector.alive() and await asyncio.to_thread(answers, collector_health)

        await eventually(collector_up, 60, "the collector's /health")
        await post_to_collector(collector_port, secured.collector_token, seen)

        async def scored() -> bool:
            assert worker.proc is not None and worker.proc.poll() is None, redact(worker.tail())
            return await asyncio.to_thread(worker.scored) >= 3 * len(LEADS)

        await eventually(scored, 60, "the worker to score the produced events")
        handoffs = await run_all(
            [Run("handoffs", ["handoffs", "--limit", str(len(LEADS)), "--idle", "30"], env)], seen
        )
        assert all(lead in handoffs[0].output for lead in LEADS), handoffs[0].output
        # Sales calls one of them (the worker's sales agent), for a report with a contact.
        now = datetime.now(UTC)
        await produce(
            settings,
            [
                activity("leak-1", "call", "contacted", now, owner="sato"),
                activity("leak-1", "bant", "bant_assessed", now, bant=BANT_PASS),
            ],
            topic=settings.activity,
        )
        for path in ("/health", "/metrics", "/leads/leak-1/explain", "/leads/nobody/explain"):
            status, answer = await asyncio.to_thread(http, "GET", f"{worker.url}{path}")
            assert status in (200, 404), redact(answer)
            seen.add(f"worker GET {path}", answer)

        charts = files / "charts"
        reads = await run_all(
            [
                Run("explain", ["explain", "leak-1"], env),
                Run("explain --json", ["explain", "leak-1", "--json"], env),
                Run("explain unknown", ["explain", "nobody"], env),
                Run("report", ["report", "--period", "day"], env),
                Run("report --json", ["report", "--json"], env),
                Run("report --charts", ["report", "--charts", str(charts)], env),
                Run("report (password in the URL)", ["report", "--json"], url_env),
                Run("explain (password in the URL)", ["explain", "leak-1"], url_env),
            ],
            seen,
        )
        for run in reads[:2] + reads[3:]:
            run.ok()
        assert '"lead_id": "leak-1"' in reads[1].output, reads[1].output
        assert (charts / "funnel.png").is_file() and (charts / "trend.png").is_file()
        (files / "report.json").write_text(reads[4].stdout)
    finally:
        worker.stop()
        collector_code = collector.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, redact(worker.tail())
    assert collector_code == 0, collector.tail()
    seen.add("worker log (stdout + stderr)", worker.log_path.read_bytes())
    seen.add("collector stdout", collector.stdout.read_bytes())
    seen.add("collector stderr", collector.stderr.read_bytes())

    # Rebuild under other rules (no worker running: the switch is immediate).
    rescore = ["rescore", "--yes", "--rules"]
    for run in [
        Run("rescore", [*rescore, str(ROOT / "rules" / "example.yaml")], env),
        Run("rescore (password in the URL)", [*rescore, str(TEST_RULES)], url_env),
    ]:
        (await run_all([run], seen))[0].ok()

    # What went onto Kafka: the dead-letter headers carry error messages.
    for topic in (settings.deadletter, settings.engagement, settings.handoff):
        for record in await read_topic(settings, topic):
            seen.add(f"kafka {topic}", repr(record))

    # The demo: its /health and /metrics while it runs, then what it printed and logged.
    demo_url = f"http://127.0.0.1:{demo_port}"
    if demo.proc is not None and demo.proc.poll() is None and answers(f"{demo_url}/health"):
        for path in ("/health", "/metrics"):
            seen.add(
                f"demo worker GET {path}",
                (await asyncio.to_thread(http, "GET", demo_url + path))[1],
            )
    code = await asyncio.to_thread(demo.proc.wait, 120) if demo.proc else None
    demo_out = demo.stdout.read_text(errors="replace")
    assert code == 0, demo.tail()
    assert "MQL demo-1" in redact(demo_out) and "events played" in redact(demo_out), demo.tail()
    seen.add("demo stdout", demo_out)
    seen.add("demo stderr", demo.stderr.read_bytes())
    seen.add("demo worker log", (tmp_path / "demo-worker.log").read_bytes())


async def post_to_collector(port: int, token: str, seen: Seen) -> None:
    """Good and bad requests to the collector; every answer is seen."""
    url = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {token}"}
    json = {"Content-Type": "application/json"}
    good = {
        "event_id": "c-1",
        "lead_id": "leak-c",
        "type": "download",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    requests: list[tuple[str, bytes, dict[str, str], int]] = [
        ("good event", orjson.dumps(good), {**bearer, **json}, 202),
        ("not JSON", b'{"event_id": "c-2", "lead_id"', {**bearer, **json}, 400),
        ("bad event", orjson.dumps({**good, "occurred_at": "yesterday"}), {**bearer, **json}, 400),
        (
            "wrong token",
            orjson.dumps(good),
            {"Authorization": "Bearer nope-nope-nope", **json},
            403,
        ),
        ("no token", orjson.dumps(good), json, 401),
        ("media type", b"x", {**bearer, "Content-Type": "text/csv"}, 415),
    ]
    for what, body, headers, expected in requests:
        status, answer = await asyncio.to_thread(http, "POST", f"{url}/v1/events", body, headers)
        assert status == expected, redact(f"{what}: {status} {answer}")
        seen.add(f"collector POST ({what})", answer)
    for path in ("/health", "/metrics"):
        seen.add(f"collector GET {path}", (await asyncio.to_thread(http, "GET", url + path))[1])


# -- refused and unreachable: one line naming the fix, no secret ----------------------------


async def test_refusals_and_outages_name_the_variable_to_fix_without_a_secret(
    secured: Secured, tmp_path: Path
) -> None:
    seen = Seen(secured.needles)
    ns = namespace()  # no topics: nothing gets that far
    closed = free_port()
    events = events_file(tmp_path / "events.ndjson", ["leak-1"])
    imported = tmp_path / IMPORT_FILE.name
    imported.write_bytes(IMPORT_FILE.read_bytes())
    rescore = ["rescore", "--rules", str(ROOT / "rules" / "example.yaml"), "--yes"]
    import_ = ["import", str(imported), "--profile", "marketo"]
    quick = {"LEADFLOW_STARTUP_TIMEOUT": "1", "LEADFLOW_WEB_PORT": str(free_port())}
    quick["LEADFLOW_COLLECTOR_PORT"] = str(free_port())

    def env(**extra: str) -> Env:
        return secured.env(ns, **quick, **extra)

    def url_env(**extra: str) -> Env:
        return secured.env(ns, redis_url=True, **quick, **extra)

    wrong_redis = env(LEADFLOW_REDIS_PASSWORD=secured.wrong)
    wrong_redis_url = url_env(
        LEADFLOW_REDIS_URL=secured.redis.url_variables(password=secured.wrong)["REDIS_URL"]
    )
    wrong_kafka = env(LEADFLOW_KAFKA_SASL_PASSWORD=secured.wrong)
    redis_down = env(LEADFLOW_REDIS_URL=f"rediss://127.0.0.1:{closed}/0")
    redis_down_url = url_env(
        LEADFLOW_REDIS_URL=f"rediss://{secured.redis.user}:{secured.redis.password}"
        f"@127.0.0.1:{closed}/0"
    )
    kafka_down = env(LEADFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{closed}")
    redis_url, bootstrap = "LEADFLOW_REDIS_URL", "LEADFLOW_KAFKA_BOOTSTRAP"
    redis_password = ("refused", "LEADFLOW_REDIS_USERNAME / LEADFLOW_REDIS_PASSWORD")
    redis_url_password = ("refused", redis_url)
    sasl = ("refused", "LEADFLOW_KAFKA_SASL_PASSWORD")
    # (label, command, environment, exit code, what the error line must name)
    cases: list[tuple[str, list[str], Env, int, tuple[str, ...]]] = [
        ("redis password refused", ["report"], wrong_redis, 2, redis_password),
        ("redis password refused", ["explain", "x"], wrong_redis, 2, redis_password),
        ("redis password refused", ["worker"], wrong_redis, 2, redis_password),
        ("redis password refused", rescore, wrong_redis, 2, redis_password),
        ("redis URL password refused", ["report"], wrong_redis_url, 2, redis_url_password),
        ("redis URL password refused", ["worker"], wrong_redis_url, 2, redis_url_password),
        ("kafka password refused", ["produce", str(events)], wrong_kafka, 2, sasl),
        ("kafka password refused", ["handoffs"], wrong_kafka, 2, sasl),
        ("kafka password refused", ["topics", "create"], wrong_kafka, 2, sasl),
        ("kafka password refused", ["collector"], wrong_kafka, 2, sasl),
        ("kafka password refused", import_, wrong_kafka, 2, sasl),
        ("kafka password refused", rescore, wrong_kafka, 2, sasl),
        ("topics denied", ["topics", "create"], env(), 2, ("denied", "LEADFLOW_NAMESPACE")),
        ("redis down", ["report"], redis_down, 3, (redis_url,)),
        ("redis down", ["explain", "x"], redis_down, 3, (redis_url,)),
        ("redis down (URL)", ["report"], redis_down_url, 3, (redis_url, ":***@")),
        ("redis down (URL)", ["worker"], redis_down_url, 3, (redis_url, ":***@")),
        ("kafka down", ["produce", str(events)], kafka_down, 3, (bootstrap,)),
        ("kafka down", ["handoffs"], kafka_down, 3, (bootstrap,)),
        ("kafka down", ["collector"], kafka_down, 3, (bootstrap,)),
        ("kafka down", ["topics", "create"], kafka_down, 3, (bootstrap,)),
        ("kafka down", import_, kafka_down, 3, (bootstrap,)),
    ]  # fmt: skip
    runs = await run_all([Run(label, args, e, timeout=45) for label, args, e, _, _ in cases], seen)
    problems = []
    for run, (_, _, _, code, names) in zip(runs, cases, strict=True):
        try:
            line = run.error_line()
            assert run.code == code, f"exit code {run.code}, expected {code}"
            assert all(name in line for name in names), f"{names} not all in the error line"
        except AssertionError as exc:
            tail = "\n".join(run.output.splitlines()[-6:])
            problems.append(f"{run.label}: {str(exc).splitlines()[0][:200]}\n{tail}")
    seen.files(tmp_path)
    seen.assert_clean()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# -- a password revoked while the worker runs ------------------------------------------------


@contextmanager
def redis_with_password(port: int, password: str, directory: Path) -> Iterator[aioredis.Redis]:
    """A throwaway redis-server on `port` that requires `password` (never a shared one), and an
    admin client of it."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--requirepass", password, "--dir", str(directory)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield aioredis.Redis(port=port, password=password, socket_timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_a_redis_password_revoked_mid_run_is_named_as_refused_not_unavailable(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    old, new = f"Old{uuid.uuid4().hex}", f"New{uuid.uuid4().hex}"
    port = free_port()
    refused = (
        "redis refused the credentials for user default: check "
        "LEADFLOW_REDIS_USERNAME / LEADFLOW_REDIS_PASSWORD"
    )
    on_private = settings.model_copy(update={"redis_url": SecretUrl(f"redis://127.0.0.1:{port}/0")})
    with redis_with_password(port, old, tmp_path) as admin:

        async def answers() -> bool:
            try:
                return bool(await admin.ping())
            except (OSError, RedisError):
                return False

        await eventually(answers, 30, "the private redis-server")
        worker = WorkerProcess(
            on_private, tmp_path / "worker.log", extra_env={"LEADFLOW_REDIS_PASSWORD": old}
        )
        workers.append(worker.start())
        await worker.wait_ready()

        # Revoked: a new password, every client (but this one) disconnected.
        await admin.config_set("requirepass", new)
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
        await produce(settings, qualifying("revoked-1", datetime.now(UTC)))

        def log_lines() -> list[dict[str, object]]:
            text = worker.log_path.read_text(errors="replace")
            return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]

        async def named() -> bool:
            events = [str(line.get("event")) for line in log_lines()]
            return any(e.startswith(refused) and e.endswith("; retrying") for e in events) and any(
                refused in e and "next tick" in e for e in events
            )

        await eventually(named, 60, "the worker to log the refusal (batch and ticks)")
        status, answer = await asyncio.to_thread(http, "GET", f"{worker.url}/health")
        body = orjson.loads(answer.splitlines()[-1])  # the JSON body, after the headers
        assert status == 503 and body["unavailable"]["redis"]["hint"] == refused, answer

        # A command started now stops at once, naming the variable (no waiting).
        report = await run_all(
            [
                Run(
                    "report",
                    ["report"],
                    Env(
                        {
                            **os.environ,
                            "PYTHONPATH": str(ROOT),
                            "LEADFLOW_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                            "LEADFLOW_REDIS_PASSWORD": old,
                            "LEADFLOW_NAMESPACE": settings.namespace,
                        }
                    ),
                )
            ],
            Seen(()),
        )
        line = report[0].error_line()
        assert report[0].code == 2 and "refused" in line and "LEADFLOW_REDIS_PASSWORD" in line

        # Restored: the worker goes on by itself.
        await admin.config_set("requirepass", old)
        await eventually(
            lambda: asyncio.to_thread(lambda: worker.scored() >= 3), 60, "scoring after restore"
        )
        await admin.aclose()
        worker.stop()
    lines = log_lines()
    refusals = [line for line in lines if "AuthenticationError" in str(line)]
    assert refusals, worker.tail()
    # Never "unavailable" for a refusal, and neither password in the log.
    assert not [line for line in refusals if "unavailable" in str(line.get("event"))], refusals
    text = worker.log_path.read_text() + report[0].stdout + report[0].stderr
    assert old not in text and new not in text
