"""The secured services of `ops/stack` for the integration tests: redis-secure (TLS only, an ACL
user with a password, the user `default` off) and kafka-secure (SASL_SSL, SCRAM-SHA-512, ACLs;
the worker principal may use only topics and groups under `secure.`).

`ops/stack up SERVICE` is idempotent: it reuses a running one. A service that cannot start fails
the test (never a skip: CI must not pass on tests that did not run).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.harness import ROOT, fresh_settings

STACK_DIR = Path(os.environ.get("LEADFLOW_STACK_DIR") or ROOT / "ops" / ".run")
# The kafka-secure worker principal's prefix (KAFKA_SECURE_NAMESPACE): its topics and groups.
KAFKA_SECURE_PREFIX = "secure"


def stack_up(service: str, within: float) -> None:
    """`ops/stack up SERVICE` (reuses a running one); fail the test if it cannot run."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "ops" / "stack"), "up", service],
            capture_output=True,
            text=True,
            timeout=within,
            env={**os.environ, "LEADFLOW_STACK_DIR": str(STACK_DIR)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`ops/stack up {service}` did not finish within {within:g} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"`ops/stack up {service}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )


@dataclass(frozen=True)
class SecureRedis:
    url: str  # rediss://127.0.0.1:PORT/0
    port: int
    user: str
    password: str
    tls: Path  # ca.crt, client.crt, client.key

    def variables(self, **overrides: str) -> dict[str, str]:
        """The LEADFLOW_* variables (without the prefix) of a client that does it right."""
        return {
            "REDIS_URL": self.url,
            "REDIS_USERNAME": self.user,
            "REDIS_PASSWORD": self.password,
            "REDIS_SSL_CAFILE": str(self.tls / "ca.crt"),
            "REDIS_SSL_CERTFILE": str(self.tls / "client.crt"),
            "REDIS_SSL_KEYFILE": str(self.tls / "client.key"),
            **overrides,
        }

    def url_variables(self, password: str | None = None, **overrides: str) -> dict[str, str]:
        """The same client with its credentials inside LEADFLOW_REDIS_URL instead."""
        secret = self.password if password is None else password
        return {
            **self.variables(REDIS_USERNAME="", REDIS_PASSWORD=""),
            "REDIS_URL": f"rediss://{self.user}:{secret}@127.0.0.1:{self.port}/0",
            **overrides,
        }

    def settings(self, **overrides: str) -> Settings:
        return fresh_settings(**{k.lower(): v for k, v in self.variables(**overrides).items()})


def up_secure_redis() -> SecureRedis:
    stack_up("redis-secure", 90)
    stack = STACK_DIR / "redis-secure"
    user = os.environ.get("REDIS_SECURE_USER", "leadflow")
    port = int(os.environ.get("REDIS_TLS_PORT", "16380"))
    password = (stack / f"{user}.password").read_text()
    return SecureRedis(f"rediss://127.0.0.1:{port}/0", port, user, password, stack / "tls")


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def up_secure_kafka() -> dict[str, dict[str, str]]:
    """The LEADFLOW_* client settings of the admin and of the worker principal (`leadflow`)."""
    stack_up("kafka-secure", 180)
    return {
        who: read_env(STACK_DIR / "kafka-secure" / f"{who}.env") for who in ("admin", "leadflow")
    }
