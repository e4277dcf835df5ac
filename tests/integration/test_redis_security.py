"""Redis with an ACL user, a password and TLS, against the real secured server that
`ops/stack up redis-secure` starts (TLS only, the user `default` off): the right credentials and
CA read and write, in-process and through real `leadflow` commands; a wrong password, a
plaintext client and an untrusted certificate are refused with one line naming the variable to
fix (no traceback, no password); the ACL user cannot touch keys outside leadflow's pattern nor
run dangerous commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

from streams.bootstrap import live_generation, open_store
from streams.core.lead import LeadState
from streams.core.rules import load_rules
from streams.settings import Settings
from streams.store import StoredLead
from tests.harness import ROOT, TEST_RULES, namespace_keys
from tests.secured import SecureRedis, up_secure_redis

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "Wr0ng-Passw0rd-4242"


@pytest.fixture(scope="session")
def secure_redis() -> SecureRedis:
    """Start (or reuse) the secured Redis with ops/stack; fail, never skip, if it cannot run."""
    return up_secure_redis()


@pytest.fixture
async def secure_settings(secure_redis: SecureRedis) -> AsyncIterator[Settings]:
    """A fresh namespace on the secured Redis; its keys are deleted afterwards (as the ACL user:
    it may SCAN and DEL its own keys)."""
    settings = secure_redis.settings()
    yield settings
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), **settings.redis_options()
    )
    try:
        keys = await namespace_keys(client, settings)
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def leadflow(
    args: list[str], namespace: str, variables: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A real `leadflow` process of this checkout with only the given LEADFLOW_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update({"LEADFLOW_NAMESPACE": namespace, "LEADFLOW_RULES": str(TEST_RULES)})
    env.update({"LEADFLOW_STARTUP_TIMEOUT": "5", "COLUMNS": "400"})
    env.update({f"LEADFLOW_{k}": v for k, v in variables.items()})
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_error_line(done: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """The command failed with exactly one `error:` line, no traceback and no secret."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    for secret in secrets:
        assert secret not in output, "a password was printed"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


async def test_the_right_credentials_read_and_write(
    secure_redis: SecureRedis, secure_settings: Settings
) -> None:
    # The worker's own start: record the rules of the live generation, then write a lead.
    number, rules = await live_generation(secure_settings, load_rules(secure_settings.rules))
    store = open_store(secure_settings)
    try:
        assert (await store.active_generation()).rules_version == rules.version
        live = store.at_generation(number)
        state = LeadState(lead_id="lead-secure-1")
        partition = live.keys.partition("lead-secure-1")
        await live.commit(partition, [(StoredLead(0, LeadState(lead_id="lead-secure-1")), state)])
        assert await live.read_lead("lead-secure-1") == state
    finally:
        await store.close()

    report = leadflow(["report"], secure_settings.namespace, secure_redis.variables())
    assert report.returncode == 0, report.stdout + report.stderr
    assert secure_redis.password not in report.stdout + report.stderr
    explained = leadflow(
        ["explain", "lead-secure-1", "--json"], secure_settings.namespace, secure_redis.variables()
    )
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert '"lead_id": "lead-secure-1"' in explained.stdout
    assert secure_redis.password not in explained.stdout + explained.stderr


def test_a_wrong_password_is_refused(secure_redis: SecureRedis) -> None:
    done = leadflow(["report"], "tsecwrong", secure_redis.variables(REDIS_PASSWORD=WRONG_PASSWORD))
    line = one_error_line(done, WRONG_PASSWORD, secure_redis.password)
    assert done.returncode == 2
    assert "LEADFLOW_REDIS_PASSWORD" in line and "refused" in line, line


def test_a_plaintext_client_is_refused(secure_redis: SecureRedis) -> None:
    plain = secure_redis.variables(
        REDIS_URL=f"redis://127.0.0.1:{secure_redis.port}/0",
        REDIS_SSL_CAFILE="",
        REDIS_SSL_CERTFILE="",
        REDIS_SSL_KEYFILE="",
    )
    done = leadflow(["report"], "tsecplain", plain)
    line = one_error_line(done, secure_redis.password)
    assert "TLS" in line and "rediss://" in line and "LEADFLOW_REDIS_URL" in line, line


def test_an_untrusted_certificate_and_a_missing_ca_file_name_the_variable(
    secure_redis: SecureRedis, tmp_path: Path
) -> None:
    untrusted = leadflow(["report"], "tsecca", secure_redis.variables(REDIS_SSL_CAFILE=""))
    line = one_error_line(untrusted, secure_redis.password)
    assert "LEADFLOW_REDIS_SSL_CAFILE" in line and "not trusted" in line, line

    missing = tmp_path / "no-such-ca.crt"
    done = leadflow(["report"], "tsecca", secure_redis.variables(REDIS_SSL_CAFILE=str(missing)))
    line = one_error_line(done, secure_redis.password)
    assert done.returncode == 2
    assert "LEADFLOW_REDIS_SSL_CAFILE" in line and str(missing) in line, line


async def test_the_acl_user_keeps_to_leadflow_keys(secure_redis: SecureRedis) -> None:
    settings = secure_redis.settings()
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), **settings.redis_options()
    )
    try:
        with pytest.raises(NoPermissionError):
            await client.set("not-leadflow:key", "x")
        with pytest.raises(NoPermissionError):
            await client.get("session:42")
        with pytest.raises(NoPermissionError):
            await client.flushall()
        with pytest.raises(NoPermissionError):
            await client.config_get("requirepass")
        key = f"{settings.redis_prefix}acl-probe"
        assert await client.set(key, "ok", ex=60)
        assert await client.get(key) == b"ok"
        await client.delete(key)
    finally:
        await client.aclose()

    # The user `default` (no credentials) is off.
    anonymous = aioredis.Redis.from_url(
        secure_redis.url, ssl_ca_certs=str(secure_redis.tls / "ca.crt"), socket_timeout=5
    )
    try:
        with pytest.raises((AuthenticationError, ConnectionError)) as refused:
            await anonymous.set(f"{settings.redis_prefix}x", "1")
        assert "NOAUTH" in str(refused.value) or "auth" in str(refused.value).lower()
    finally:
        await anonymous.aclose()
