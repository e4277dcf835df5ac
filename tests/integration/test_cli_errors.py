"""One error path for every command (issue 16): every `leadflow` command, run as a real process,
under each failure that applies to it: a bad URL, a service down, a missing topic, a missing
file. Each must end with its exit code (2: input or configuration, 3: a service or its topics not
there) and exactly one `error:` line naming what to fix, the last line on stderr; before it only
`waiting for ...` lines or a service's JSON log lines; never a traceback or an "Unclosed" client.

The processes run in parallel (a few at a time) once per module; each case is its own test.
LEADFLOW_STARTUP_TIMEOUT is 0 or 1, so nothing waits long.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.handoff import MqlHandoff
from streams.settings import Settings
from tests.harness import ROOT, free_port, leadflow_cli, produce

pytestmark = pytest.mark.integration

RULES = str(ROOT / "rules" / "example.yaml")
IMPORT = str(ROOT / "tests" / "data" / "imports" / "marketo_activities.csv")
CLOSED = free_port()  # nothing listens here: Kafka and Redis "down"


@dataclass(frozen=True)
class Case:
    failure: str
    args: tuple[str, ...]
    code: int
    needles: tuple[str, ...]  # each must be in the error line
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.failure}: {' '.join(self.args[:2])}"


# Every command of `leadflow --help`, with arguments that would otherwise work.
COMMANDS: dict[str, tuple[str, ...]] = {
    "worker": ("worker",),
    "collector": ("collector",),
    "notify": ("notify",),
    "produce": ("produce", RULES),  # any existing file: the failure comes first
    "import": ("import", IMPORT, "--profile", "marketo"),
    "handoffs": ("handoffs", "--idle", "1"),
    "explain": ("explain", "lead-1"),
    "demo": ("demo",),
    "report": ("report",),
    "rescore": ("rescore", "--rules", RULES, "--yes"),
    "migrate": ("migrate", "--yes"),
    "topics create": ("topics", "create"),
    "rules check": ("rules", "check"),  # LEADFLOW_RULES
    "tail": ("tail", "deadletter", "--limit", "1"),
    "sales record": ("sales", "record", "won", "lead-1"),
}
# The collector listens at once and answers 503 (reason topic_missing) while the topic is not
# there, and exits 3 once LEADFLOW_STARTUP_TIMEOUT passed without it (docs/collector.md).
KAFKA_COMMANDS = (
    "worker",
    "collector",
    "notify",
    "produce",
    "import",
    "handoffs",
    "rescore",
    "tail",
    "sales record",
)


def cases() -> list[Case]:
    found: list[Case] = []
    for args in COMMANDS.values():
        found.append(
            Case("bad redis url", args, 2, ("LEADFLOW_REDIS_URL",), {"REDIS_URL": "notaurl"})
        )
        found.append(
            Case(
                "bad kafka bootstrap",
                args,
                2,
                ("LEADFLOW_KAFKA_BOOTSTRAP", "not host:port"),
                {"KAFKA_BOOTSTRAP": "notahost:"},
            )
        )
    down = {"KAFKA_BOOTSTRAP": f"127.0.0.1:{CLOSED}", "REDIS_URL": f"redis://127.0.0.1:{CLOSED}/0"}
    for name, args in COMMANDS.items():
        if name != "rules check":
            found.append(
                Case("service down", args, 3, (f"127.0.0.1:{CLOSED}", "ops/stack up"), down)
            )
    for name in KAFKA_COMMANDS:
        found.append(
            Case(
                "missing topic",
                COMMANDS[name],
                3,
                ("leadflow topics create", "LEADFLOW_NAMESPACE"),
                {"NAMESPACE": f"missing-{uuid.uuid4().hex[:8]}", "STARTUP_TIMEOUT": "1"},
            )
        )
    missing = [
        (("produce", "nope.ndjson"), ("nope.ndjson", "'PATH'"), {}),
        (("import", "nope.csv", "--profile", "marketo"), ("nope.csv", "'PATH'"), {}),
        (("rescore", "--rules", "nope.yaml", "--yes"), ("nope.yaml",), {}),
        (("rules", "check", "nope.yaml"), ("nope.yaml",), {}),
        (
            ("backtest", "--events", "nope.ndjson", "--outcomes", "x", "--rules", "nope.yaml"),
            ("nope",),
            {},
        ),
        (("worker",), ("LEADFLOW_RULES", "nope.yaml"), {"RULES": "nope.yaml"}),
        (("report",), ("LEADFLOW_RULES", "nope.yaml"), {"RULES": "nope.yaml"}),
        (("notify",), ("LEADFLOW_NOTIFY_CONFIG", "nope.yaml"), {"NOTIFY_CONFIG": "nope.yaml"}),
        (("demo", "--sample", "nope.ndjson"), ("nope.ndjson",), {}),
        (("sample", "generate", "--out", "/nonexistent/dir/s.ndjson"), ("--out",), {}),
        (("schemas", "generate", "--bogus"), ("--bogus",), {}),
    ]
    for args, needles, env in missing:
        found.append(Case("missing file", args, 2, needles, env))
    # An unknown topic *name* is a usage error (2), unlike a topic not created yet (3).
    found.append(Case("unknown name", ("tail", "nope"), 2, ("TOPIC", "unknown topic 'nope'")))
    return found


CASES = cases()


def run_case(case: Case, notify_config: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Where the stack is (ops/test may run it on other ports); each case overrides what it breaks.
    for name in ("LEADFLOW_KAFKA_BOOTSTRAP", "LEADFLOW_REDIS_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(
        {
            "LEADFLOW_LOG_FORMAT": "json",
            "LEADFLOW_STARTUP_TIMEOUT": "0",
            "LEADFLOW_NAMESPACE": f"errors-{uuid.uuid4().hex[:8]}",
            "LEADFLOW_COLLECTOR_TOKENS": '{"web": "token-0123456789abcdef"}',
            "LEADFLOW_NOTIFY_CONFIG": str(notify_config),
            "LEADFLOW_WEB_PORT": str(free_port()),
            "LEADFLOW_COLLECTOR_PORT": str(free_port()),
            "LEADFLOW_NOTIFY_WEB_PORT": str(free_port()),
            "COLUMNS": "80",  # errors must stay one line even in a narrow terminal
        }
    )
    env.update({f"LEADFLOW_{k}": v for k, v in case.env.items()})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *case.args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def outcomes(
    services: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, tuple[subprocess.CompletedProcess[str], float]]:
    """Every selected case (`-k tail` runs only those), run once, 4 at a time (2 cores; most of
    a case is Python starting)."""
    selected = [
        case
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and isinstance(
            case := getattr(item, "callspec", None) and item.callspec.params.get("case"), Case
        )
    ]
    config = tmp_path_factory.mktemp("notify") / "notify.yaml"
    config.write_text("targets:\n  - name: ops\n    url: http://127.0.0.1:9/hook\n")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda c: run_case(c, config), selected)
        return {case.id: result for case, result in zip(selected, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_command_fails_with_one_line(
    case: Case, outcomes: dict[str, tuple[subprocess.CompletedProcess[str], float]]
) -> None:
    done, seconds = outcomes[case.id]
    output = f"exit {done.returncode} after {seconds:.1f} s\n{done.stdout}\n---\n{done.stderr}"
    assert done.returncode == case.code, output
    for text in (done.stdout, done.stderr):
        assert "Traceback" not in text and "Unclosed" not in text, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    for line in lines[:-1]:
        assert line.startswith(("waiting for ", "{")), output  # a service's JSON log line
    for needle in case.needles:
        assert needle in errors[0], output
    # LEADFLOW_STARTUP_TIMEOUT is 0 or 1: nobody waits the default 15 or 60 s.
    assert seconds < 30, output


# -- the options of issue 16 -----------------------------------------------------------------


def handoff(i: int) -> tuple[bytes, bytes]:
    at = datetime(2026, 1, 5, 9, tzinfo=UTC)
    h = MqlHandoff(
        handoff_id=f"ho-{i}",
        lead_id=f"lead-{i}",
        qualified_at=at,
        score=100,
        fit_score=40,
        engagement_score=60,
        threshold=100,
        rules_version="v1",
        triggering_event_id=f"e-{i}",
        reasons=[],
        first_contact_due_at=at + timedelta(hours=24),
    )
    return h.lead_id.encode(), h.model_dump_json().encode()


async def test_handoffs_honours_limit_and_idle(settings: Settings) -> None:
    await produce(settings, [handoff(i) for i in range(5)], topic=settings.handoff)

    # In a pipe: a TSV header, one row per handoff; the summary line on stderr.
    limited = leadflow_cli(settings, "handoffs", "--limit", "2", "--idle", "5")
    assert limited.returncode == 0, limited.stderr
    header, *rows = limited.stdout.splitlines()
    assert header.startswith("qualified_at\t") and len(rows) == 2, limited.stdout
    assert f"2 handoffs on {settings.handoff}" in limited.stderr

    started = time.monotonic()
    idle = leadflow_cli(settings, "handoffs", "--idle", "1")
    assert idle.returncode == 0, idle.stderr
    assert len(idle.stdout.splitlines()) == 1 + 5
    assert f"5 handoffs on {settings.handoff}" in idle.stderr
    assert time.monotonic() - started < 20


def test_log_level_is_case_insensitive(settings: Settings) -> None:
    done = leadflow_cli(settings, "rules", "check", LEADFLOW_LOG_LEVEL="debug")
    assert done.returncode == 0, done.stderr


def test_topics_create_names_a_partition_count_that_differs(settings: Settings) -> None:
    # The fixture created the topics with the configured count; ask for another.
    done = leadflow_cli(settings, "topics", "create", LEADFLOW_TOPIC_PARTITIONS="3")
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(settings.engagement))
    assert line == (
        f"{settings.engagement} exists with {settings.topic_partitions} partitions "
        "(LEADFLOW_TOPIC_PARTITIONS says 3); kept"
    )
