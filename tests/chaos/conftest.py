"""Chaos tests use the same real-stack fixtures as the integration tests."""

from tests.integration.conftest import (  # noqa: F401 - re-exported fixtures
    pytest_runtest_makereport,
    services,
    settings,
    workers,
)
