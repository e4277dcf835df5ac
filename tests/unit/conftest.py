"""Fixtures shared by the unit tests: paths into the repository and the example rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.core.rules import Rules, load_rules

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def example_rules_path(repo_root: Path) -> Path:
    return repo_root / "rules" / "example.yaml"


@pytest.fixture(scope="session")
def example_rules(example_rules_path: Path) -> Rules:
    return load_rules(example_rules_path)
