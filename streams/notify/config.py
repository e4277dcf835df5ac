"""The notify config file (LEADFLOW_NOTIFY_CONFIG): webhook targets, their formats, secrets,
filters and retry policy, validated with pydantic. A bad file stops `leadflow notify` at start-up
with one line naming the field (exit 2), like the rules file.

```yaml
defaults: {max_attempts: 8, timeout: 10, backoff_initial: 1, backoff_max: 60}
targets:
  - name: sales-slack
    url: https://hooks.slack.com/services/T000/B000/XXXX
    format: slack                    # slack | teams | json
    secret_env: LEADFLOW_SLACK_HMAC  # or secret: "...": X-Leadflow-Signature
    kinds: [mql_first_contact]       # handoff, lifecycle, alert, mql_first_contact, sql_follow_up
    severities: [breach]
    owners: [sato]
    queues: [enterprise]
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from streams.core.yamlfile import key_path, read_yaml_mapping

Format = Literal["slack", "teams", "json"]
# What a `kinds` filter may name: the record kinds, and `alert` for every SLA alert.
Kind = Literal["handoff", "lifecycle", "alert", "mql_first_contact", "sql_follow_up"]
Severity = Literal["warning", "breach"]


class NotifyConfigError(ValueError):
    """The notify config is unusable; the message names the file and the field."""


class RetryPolicy(BaseModel):
    """How often and how patiently a target is retried (all optional per target)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=8, ge=1, le=100)
    timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds per POST.")
    backoff_initial: float = Field(default=1.0, gt=0, le=3600)
    backoff_max: float = Field(default=60.0, gt=0, le=3600)
    retry_after_max: float = Field(
        default=600.0, gt=0, le=86_400, description="Longest Retry-After honoured (seconds)."
    )


class Target(BaseModel):
    """One webhook: where, in which format, signed with what, and which records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    url: SecretStr
    format: Format = "json"
    secret: SecretStr | None = None
    secret_env: str | None = Field(
        default=None, description="Name of an environment variable holding the secret."
    )
    kinds: tuple[Kind, ...] = ()
    severities: tuple[Severity, ...] = ()
    queues: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout: float | None = Field(default=None, gt=0, le=300)

    @model_validator(mode="after")
    def _check(self) -> Target:
        parts = urlsplit(self.url.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL")
        if self.secret is not None and self.secret_env is not None:
            raise ValueError("give secret or secret_env, not both")
        if self.secret_env is not None and not os.environ.get(self.secret_env):
            raise ValueError(f"secret_env: environment variable {self.secret_env} is not set")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters")
        return self

    @property
    def secret_value(self) -> bytes | None:
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        if self.secret_env is not None:
            return os.environ[self.secret_env].encode()
        return None

    @property
    def wants_lifecycle(self) -> bool:
        return "lifecycle" in self.kinds


class NotifyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    defaults: RetryPolicy = RetryPolicy()
    targets: tuple[Target, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> NotifyConfig:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique: {', '.join(dupes)}")
        return self

    def policy(self, target: Target) -> RetryPolicy:
        """The target's retry policy: the defaults with its own overrides."""
        changes = {
            k: v
            for k, v in (("max_attempts", target.max_attempts), ("timeout", target.timeout))
            if v is not None
        }
        return self.defaults.model_copy(update=changes)

    @property
    def wants_lifecycle(self) -> bool:
        """Whether leads.lifecycle is consumed at all: some target lists `lifecycle`."""
        return any(t.wants_lifecycle for t in self.targets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values never to print or log: each target's secret and URL (a Slack or Teams
        webhook URL is itself a credential)."""
        found: list[str] = []
        for t in self.targets:
            found.append(t.url.get_secret_value())
            secret = t.secret_value
            if secret is not None:
                found.append(secret.decode())
        return tuple(found)


def parse_notify_config(data: object, origin: str) -> NotifyConfig:
    """Validate parsed YAML; NotifyConfigError names the file and the first bad field."""
    try:
        return NotifyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = key_path(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        more = len(exc.errors()) - 1
        extra = f" (and {more} more)" if more else ""
        raise NotifyConfigError(
            f"{origin}: {where + ': ' if where else ''}{message}{extra}"
        ) from None


def load_notify_config(path: Path | str) -> NotifyConfig:
    """Read and validate the YAML notify config."""
    path = Path(path)
    data = read_yaml_mapping(path, "notify config", NotifyConfigError, "a mapping with 'targets'")
    return parse_notify_config(data, str(path))
