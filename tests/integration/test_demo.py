"""The README's main job: `leadflow demo` plays the bundled sample and shows every handoff."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.resources import files

import pytest

from streams.core.rules import load_rules
from streams.sample import SampleRecord
from streams.settings import Settings
from tests.harness import free_port
from tests.oracle import expected_outcome

pytestmark = pytest.mark.integration


def test_demo_shows_the_handoffs_the_core_predicts(settings: Settings, tmp_path) -> None:
    sample = files("streams").joinpath("data/engagement-sample.ndjson").read_bytes()
    records = [SampleRecord(None, line, True) for line in sample.splitlines() if line.strip()]
    expected = expected_outcome(records, load_rules(settings.rules), settings)

    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
        "LEADFLOW_WEB_PORT": str(free_port()),
        "LEADFLOW_DEMO_LOG": str(tmp_path / "worker.log"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--rate", "2000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shown = re.findall(r"^MQL (\S+)", done.stdout, flags=re.M)
    assert sorted(shown) == sorted(h.lead_id for h in expected.handoffs.values())
    summary = re.search(
        r"(\d+) events played, (\d+) leads handed off.*?(\d+) bad records", done.stdout, re.S
    )
    assert summary is not None, done.stdout[-2000:]
    assert int(summary.group(1)) == len(records)
    assert int(summary.group(2)) == len(expected.handoffs)
    assert int(summary.group(3)) == len(expected.invalid)
