"""How a command ends when a service is missing: one line naming the variable, never a secret."""

from __future__ import annotations

import pytest
import typer
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.cli import errors
from streams.cli.errors import user_errors
from streams.settings import load_settings
from streams.startup import ServiceRefused, ServiceUnavailable

pytestmark = pytest.mark.unit


def ended(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as info, user_errors():
        raise exc
    return info.value.exit_code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "code", "variable"),
    [
        (
            ServiceUnavailable("Kafka at h:1 did not answer ... LEADFLOW_KAFKA_BOOTSTRAP"),
            3,
            "KAFKA",
        ),
        (
            ServiceRefused("Redis refused ... check the credentials in LEADFLOW_REDIS_URL"),
            2,
            "REDIS",
        ),
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:2."), 3, "REDIS"),
        (KafkaConnectionError("Unable to bootstrap"), 3, "KAFKA"),
    ],
)
def test_service_errors_end_in_one_line_naming_the_variable(
    exc: Exception,
    code: int,
    variable: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(errors.console, "width", 60)  # narrower than the line: still one line
    exit_code, err = ended(exc, capsys)
    assert exit_code == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    prefix = {"KAFKA": "LEADFLOW_KAFKA_BOOTSTRAP", "REDIS": "LEADFLOW_REDIS_URL"}[variable]
    assert prefix in lines[0]


def test_other_errors_are_not_swallowed() -> None:
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug")


def test_an_error_never_shows_a_known_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADFLOW_REDIS_URL", "redis://default:Pa55word-42@127.0.0.1:2/0")
    load_settings()
    _, err = ended(RedisConnectionError("AUTH Pa55word-42 failed"), capsys)
    assert "Pa55word-42" not in err and "AUTH *** failed" in err
