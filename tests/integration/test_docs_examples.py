"""The shell examples in README.md and docs/*.md are run (issue 16): docs that cannot drift.

An example is run when its fenced block comes right after an HTML comment starting
`<!-- docs-test` (the comment does not show on GitHub):

- ```console: a line starting `$ ` is a command; the lines after it, up to the next command, are
  its output, checked loosely: each must match a whole line of the command's stdout or stderr
  (leading and trailing blanks ignored, any run of blanks matches any other, `...` matches any
  text); a line that is only `...` stands for any lines and is not checked.
- ```bash / ```sh: every line is a command (bash drops the `# ...` comments).

A command ends with exit code 0 unless it says `# exit N` at its end. Each block runs in a fresh
LEADFLOW_NAMESPACE (its topics are dropped afterwards), in a temporary directory where `rules`
is the repository's rules directory (files the examples write land there), with `leadflow` on
PATH meaning this checkout, under `bash -o pipefail`; the connection variables (LEADFLOW_KAFKA_*,
LEADFLOW_REDIS_*) are the test run's, every other LEADFLOW_* variable is unset, so the defaults
the docs describe apply. `export LEADFLOW_NAMESPACE=X` in a block is the test's namespace (X in
the expected output stands for it).

Every other shell example (a block with the info string bash, sh, shell or console, or without
one whose first line is a command) must be in NOT_RUN with the reason it cannot run here: a new
example is either run or says why not. `test_the_examples_are_counted` prints the count.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import ROOT, drop_topics, fresh_settings

pytestmark = pytest.mark.integration

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- docs-test"
SHELL = ("bash", "sh", "shell", "console")
COMMAND = re.compile(r"^(\$ |leadflow\b|ops/|\.venv/|python\b|curl\b|kafka-|export\b|docker\b|apt)")
EXIT = re.compile(r"#\s*exit (\d+)\b")

# Shell examples not run, by (file, first line of the block): why they cannot run here.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "ops/demo"): "starts the stack and a worker (minutes); `ops/test` is the suite",
    (
        "docs/backtest.md",
        "leadflow backtest --events HISTORY.ndjson --outcomes OUTCOMES.csv --rules RULES.yaml \\",
    ): "a synopsis with placeholders",
    (
        "docs/backtest.md",
        "python -m tests.history --out-dir /tmp/bt --leads 3000 --seed 7",
    ): "a generated 3,000-lead history and its backtest: tens of seconds, writes /tmp/bt",
    (
        "docs/backtest.md",
        "leadflow backtest --events /tmp/bt/events.ndjson --outcomes /tmp/bt/outcomes.csv \\",
    ): "needs the history of the example before it (/tmp/bt)",
    ("docs/benchmarks.md", "ops/bench scale"): "benchmarks: minutes, several workers",
    (
        "docs/benchmarks.md",
        'PYTHONPATH=<checkout> .venv/bin/python -c "import gc,sys; gc.freeze(); \\',
    ): "a benchmark of two checkouts (placeholders), about a minute each",
    ("docs/collector.md", "export LEADFLOW_COLLECTOR_TOKENS"): "starts `leadflow collector`, a "
    "server that runs until stopped (tests/integration/collector/ runs it)",
    ("docs/collector.md", "TOKEN=..."): "needs a running collector and its token",
    ("docs/explain.md", "$ curl -s localhost:6066"): "needs a running worker that scored lead-42",
    ("docs/explain.md", "leadflow explain LEAD_ID [--json]"): "a synopsis with placeholders",
    ("docs/explain.md", "$ LEADFLOW_NAMESPACE=prod leadflow explain lead-42"): "a lead scored "
    "in production (tests/integration/test_explain.py checks the command on a worker's lead)",
    ("docs/importer.md", "leadflow import activities.csv --profile marketo"): "the user's own "
    "export files (tests/integration/importer/ imports the bundled ones)",
    ("docs/kpis.md", "leadflow report [--days N | --since YYYY-MM-DD] [--until YYYY-MM-DD]"): (
        "a synopsis with placeholders"
    ),
    (
        "docs/kpis.md",
        "leadflow report --by source|campaign "
        "[--model first_touch|last_touch|linear|position_based]",
    ): "a synopsis with placeholders (tests/integration/jobs/test_attribution_report.py runs it)",
    ("docs/notify.md", "leadflow topics create"): "starts `leadflow notify`, a service that "
    "runs until stopped, with the user's webhook targets",
    ("docs/notify.md", "python -m pytest tests/unit/test_notify.py"): "runs tests (recursion)",
    ("docs/operations-local-stack.md", "ops/stack up"): "starts and stops the shared local "
    "stack the other tests use",
    ("docs/operations-local-stack.md", "$ ops/stack up redis-cluster"): "the shared stack",
    ("docs/operations-local-stack.md", "ops/stack up redis-cluster && .venv/bin/pytest"): (
        "the shared stack, and runs tests"
    ),
    ("docs/operations-local-stack.md", "$ ops/stack up kafka-secure"): "the shared stack",
    ("docs/operations-local-stack.md", "ops/stack up kafka-secure && .venv/bin/pytest"): (
        "the shared stack, and runs tests"
    ),
    ("docs/operations-local-stack.md", "apt-get install"): "installs system packages",
    ("docs/operations.md", "leadflow migrate --yes"): "rewrites the Redis keys of a namespace "
    "(tests/integration/test_migrate.py runs it)",
    ("docs/operations.md", "leadflow topics create     # once per namespace; idempotent"): (
        "starts the services (worker, collector, notify) that run until stopped"
    ),
    ("docs/operations.md", "leadflow tail alerts --follow"): "reads until Ctrl-C",
    ("docs/operations.md", "kafka-acls.sh --bootstrap-server kafka-1:9094"): "a secured "
    "production cluster's admin tools",
    ("docs/reliability.md", "ops/chaos fuzz"): "long runs (minutes)",
    ("docs/rescore.md", "leadflow rescore --rules rules/tuned.yaml"): "a tuned rules file and "
    "a namespace with scored leads (tests/integration/test_rescore.py runs it)",
    ("docs/contract-asyncapi.md", "leadflow schemas generate          # writes"): "writes "
    "schemas/ in the checkout (its `--check`, in the block after it, is run)",
    ("docs/importer.md", ".venv/bin/python tests/data/imports/make_big_csv.py"): "a "
    "million-row file and its import: a benchmark (minutes)",
    ("docs/operations.md", "LEADFLOW_REDIS_URL=rediss://redis.internal:6380/0"): "settings for "
    "a production Redis with TLS: variables, not commands",
    ("docs/rescore.md", "kafka-configs.sh --alter --entity-type topics"): "Kafka's admin tools, "
    "changing a topic's retention",
}


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)  # console output lines to find
    code: int = 0


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: list[str]
    marked: bool

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def id(self) -> str:
        return f"{self.name}:{self.line}"

    @property
    def first(self) -> str:
        return next((t.strip() for t in self.text if t.strip()), "")

    def is_shell(self) -> bool:
        return self.info in SHELL or (self.info == "" and bool(COMMAND.match(self.first)))

    def commands(self) -> list[Command]:
        found: list[Command] = []
        if self.info == "console":
            for text in self.text:
                if text.startswith("$ "):
                    found.append(Command(text[2:]))
                elif found and text.strip():
                    found[-1].expected.append(text)
        else:
            joined = "\n".join(self.text).replace("\\\n", " ")
            found = [Command(t) for t in joined.splitlines() if t.strip()]
        for command in found:
            code = EXIT.search(command.line)
            command.code = int(code.group(1)) if code else 0
        return found


def blocks() -> list[Block]:
    found: list[Block] = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```(\S*)\s*$", lines[i])
            if fence is None:
                i += 1
                continue
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            start, text = i, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                text.append(lines[i])
                i += 1
            i += 1
            found.append(
                Block(path, start + 1, fence.group(1), text, before.strip().startswith(MARK))
            )
    return found


BLOCKS = blocks()
RUN = [b for b in BLOCKS if b.marked]


def loose(expected: str, namespace: str, doc_namespace: str | None) -> re.Pattern[str]:
    """`...` is any text, blanks any blanks, the doc's namespace the test's."""
    if doc_namespace:
        expected = expected.replace(doc_namespace, namespace)
    parts = [
        r"\s+".join(re.escape(word) for word in piece.split())
        for piece in expected.strip().split("...")
    ]
    return re.compile(".*".join(parts))


def environment(namespace: str, bin_dir: Path) -> dict[str, str]:
    keep = ("LEADFLOW_KAFKA_", "LEADFLOW_REDIS_")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_") or k.startswith(keep)
    }
    env.pop("COLUMNS", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LEADFLOW_NAMESPACE"] = namespace
    return env


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`leadflow` on PATH: this checkout's CLI with this Python."""
    path = tmp_path_factory.mktemp("bin")
    script = path / "leadflow"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m streams.cli "$@"\n')
    script.chmod(0o755)
    return path


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_example_runs(block: Block, services: None, bin_dir: Path, tmp_path: Path) -> None:
    namespace = f"docs-{uuid.uuid4().hex[:8]}"
    env = environment(namespace, bin_dir)
    (tmp_path / "rules").symlink_to(ROOT / "rules")
    doc_namespace: str | None = None
    started = time.monotonic()
    try:
        for command in block.commands():
            exported = re.match(r"export LEADFLOW_NAMESPACE=(\S+)$", command.line.strip())
            if exported:
                doc_namespace = exported.group(1)
                continue
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command.line],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            said = f"{block.id}: $ {command.line}\nexit {done.returncode}\n{done.stdout}\n---\n"
            said += done.stderr
            assert done.returncode == command.code, said
            assert "Traceback" not in done.stdout + done.stderr, said
            lines = [ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines()]
            for expected in command.expected:
                if expected.strip() == "...":
                    continue
                pattern = loose(expected, namespace, doc_namespace)
                assert any(pattern.fullmatch(ln) for ln in lines), f"{expected!r} not in\n{said}"
    finally:
        asyncio.run(drop_topics(fresh_settings(namespace)))
    assert time.monotonic() - started < 45, f"{block.id} is not quick"


def test_every_shell_example_is_run_or_says_why_not() -> None:
    shell = [b for b in BLOCKS if b.is_shell()]
    unmarked = {(b.name, b.first): b for b in shell if not b.marked}

    def listed(key: tuple[str, str]) -> bool:
        return any(key[0] == f and key[1].startswith(first) for f, first in NOT_RUN)

    missing = [f"{b.id}: {b.first}" for key, b in unmarked.items() if not listed(key)]
    assert not missing, "shell examples neither run (<!-- docs-test -->) nor in NOT_RUN:\n" + (
        "\n".join(missing)
    )
    stale = [
        key
        for key in NOT_RUN
        if not any(f == key[0] and first.startswith(key[1]) for f, first in unmarked)
    ]
    assert not stale, f"NOT_RUN names examples that are gone or now run: {stale}"


def test_the_examples_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    shell = [b for b in BLOCKS if b.is_shell()]
    run = [b for b in shell if b.marked]
    commands = sum(len(b.commands()) for b in run)
    assert run and all(b.info in SHELL for b in run)
    with capsys.disabled():
        print(
            f"\ndocs examples: {len(shell)} shell blocks, {len(run)} run ({commands} commands), "
            f"{len(shell) - len(run)} not run (NOT_RUN says why)"
        )
