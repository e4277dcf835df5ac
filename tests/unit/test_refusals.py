"""Redis refusing the credentials is named as such, not as an outage (issue 10, item 4): redis-py's
AuthenticationError is a ConnectionError, so without this the worker logs "redis unavailable"."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from streams.observability import DependencyHealth, Metrics, dependency_hint, redis_refusal
from streams.pipeline.retry import Ticks, Unavailable
from tests.harness import fresh_settings

pytestmark = pytest.mark.unit

VARIABLES = "LEADFLOW_REDIS_USERNAME / LEADFLOW_REDIS_PASSWORD"


def test_the_redis_user_comes_from_its_variable_the_url_or_is_default() -> None:
    named = fresh_settings(redis_username="leadflow", redis_password="x" * 8)
    assert named.redis_user == "leadflow"
    assert fresh_settings(redis_url="redis://app:pw@127.0.0.1:6379/0").redis_user == "app"
    assert fresh_settings(redis_url="redis://:pw@127.0.0.1:6379/0").redis_user == "default"


def test_a_refusal_names_the_user_and_the_variable_of_the_settings_loaded() -> None:
    fresh_settings(redis_username="leadflow", redis_password="S3cretS3cret")
    refused = AuthenticationError("invalid username-password pair or user is disabled.")
    expected = f"redis refused the credentials for user leadflow: check {VARIABLES}"
    assert redis_refusal(refused) == expected
    assert dependency_hint("redis", refused) == expected
    # ... also behind the wrapper a background tick raises
    try:
        raise Unavailable("redis", refused) from refused
    except Unavailable as wrapped:
        assert redis_refusal(wrapped) == expected

    fresh_settings(redis_url="redis://app:S3cretS3cret@127.0.0.1:6379/0")
    assert redis_refusal(refused) == (
        "redis refused the credentials for user app: check LEADFLOW_REDIS_URL"
    )
    assert "ACL" in str(redis_refusal(NoPermissionError("NOPERM")))


@pytest.mark.parametrize("error", [RedisConnectionError("Connection refused"), OSError("x")])
def test_an_outage_is_still_an_outage(error: Exception) -> None:
    assert redis_refusal(error) is None
    assert dependency_hint("redis", error) == "check that redis is reachable (LEADFLOW_REDIS_URL)"


def test_a_tick_and_health_name_the_refusal() -> None:
    fresh_settings(redis_username="leadflow", redis_password="S3cretS3cret")
    metrics = Metrics()
    ticks = Ticks("sweep_deadlines", metrics, dependency="redis")
    with capture_logs() as logs:
        ticks.failed(Unavailable("redis", AuthenticationError("invalid password")))
    assert logs[0]["event"].startswith("sweep_deadlines: redis refused the credentials for user")
    assert "unavailable" not in logs[0]["event"]
    health = DependencyHealth()
    health.failed("redis", AuthenticationError("invalid password"))
    assert "refused the credentials" in str(health.unavailable()["redis"]["hint"])
