"""One typed, frozen settings object, read from LEADFLOW_* environment variables."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas import catalog

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules" / "example.yaml"


# How long a command waits for Kafka and Redis at start-up when LEADFLOW_STARTUP_TIMEOUT is not
# set: a long-running process (worker, collector; often started beside its broker) waits longer
# than a one-shot command run by hand.
STARTUP_TIMEOUT_SERVICE = 60.0
STARTUP_TIMEOUT_COMMAND = 15.0

_SECRET_QUERY_KEYS = {"password", "pass", "pwd", "secret", "token"}


class SettingsError(ValueError):
    """Start-up configuration is unusable; the message names the LEADFLOW_* variable."""


def redact_url(url: str) -> str:
    """The URL without its password: redis://user:***@host:6379/0 (also `?password=...`)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        # Not parseable as a URL: hide everything between the scheme and the host.
        return re.sub(r"//[^/@]*@", "//***@", url)


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets a URL carries: its password and a `?password=...`."""
    try:
        parts = urlsplit(url)
        found = [parts.password or "", unquote(parts.password or "")]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY_KEYS]
    except ValueError:
        return ()
    return tuple(dict.fromkeys(s for s in found if s))


# Secrets of the settings loaded in this process: a last line of defence for text leadflow did
# not write itself (a library's error message) before it is printed or logged.
_KNOWN_SECRETS: set[str] = set()
# The Redis login of the settings loaded last in this process: the user, and the variable(s)
# that configure it; named when Redis refuses it (a password rotated or revoked mid-run).
REDIS_LOGIN = {"user": "default", "variable": "LEADFLOW_REDIS_URL"}
# Shorter values are not scrubbed from free text (they would mangle ordinary words).
MIN_SCRUBBED_SECRET = 4


def scrub(text: str) -> str:
    """`text` with every known secret (of settings loaded in this process) replaced by ***."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class SecretUrl(SecretStr):
    """A URL with credentials (LEADFLOW_REDIS_URL): printed, logged or put in an f-string it
    shows itself without the password; `get_secret_value()` is the real URL, for the client."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


class TokenScope(BaseModel):
    """What a collector token may do: `full` (server-side integrations: any event) or `tracker`
    (public, in a web page: anonymous events, identifies and the tracker's own types, from
    `origins` only, rate-limited per client IP; docs/tracker.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: Literal["full", "tracker"] = "full"
    origins: tuple[str, ...] = ()

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(o.strip().rstrip("/") for o in value if o.strip())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_", frozen=True, extra="ignore")

    # Where things are
    kafka_bootstrap: str = Field(
        default=catalog.DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers"
    )
    # A secret: str(), repr() and logs show it without its password (SecretUrl).
    redis_url: SecretUrl = Field(
        default=SecretUrl("redis://127.0.0.1:6379/0"),
        description=(
            "Redis (standalone, or any node of a Redis Cluster with LEADFLOW_REDIS_CLUSTER; "
            "`rediss://` for TLS; `redis://user:password@host:6379/0` with a password, or the "
            "password in LEADFLOW_REDIS_PASSWORD). A secret: every message and log line shows it "
            "without its password (`redis://user:***@host:6379/0`)"
        ),
    )
    # Redis credentials and TLS, apart from the URL (docs/operations.md, "Redis with a password
    # and TLS"); the URL then carries no credentials. The TLS files need a rediss:// URL.
    redis_username: str | None = Field(
        default=None, description="Redis ACL user (Redis 6+); unset: `default`"
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description=(
            "Redis password, a secret (never printed or logged, scrubbed from library messages). "
            "Set it here or in the URL, not both (start-up refuses that)"
        ),
    )
    redis_ssl_cafile: Path | None = Field(
        default=None,
        description=(
            "CA bundle that signed the Redis server's certificate (TLS; needs a `rediss://` URL)."
            " Unset: the system's CAs"
        ),
    )
    redis_ssl_certfile: Path | None = Field(
        default=None,
        description=(
            "client certificate, for a Redis that asks for one (`tls-auth-clients yes`); its key "
            "in LEADFLOW_REDIS_SSL_KEYFILE"
        ),
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None, description="the key of LEADFLOW_REDIS_SSL_CERTFILE"
    )
    # LEADFLOW_REDIS_URL is any node of a Redis Cluster (redis-py's cluster client finds the
    # others). The key layout is the same in both modes (docs/operations.md "Redis key layout").
    redis_cluster: bool = Field(
        default=False,
        description=(
            "LEADFLOW_REDIS_URL is a node of a Redis Cluster (or a managed equivalent with the "
            "cluster protocol): redis-py's cluster client finds the others. Same key layout as "
            'one Redis (see "Redis key layout")'
        ),
    )
    rules: Path = Field(default=DEFAULT_RULES, description="rules file")
    namespace: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]*$",
        description=(
            "prefix for topics (`ns.leads.engagement`), consumer group (`ns.leadflow-scoring`) "
            "and Redis keys (`ns:lf:...`)"
        ),
    )

    # Topics (names before the namespace prefix) and their layout
    engagement_topic: str = Field(
        default=catalog.ENGAGEMENT_TOPIC,
        description="engagement events topic name, before the namespace prefix",
    )
    anonymous_topic: str = Field(
        default=catalog.ANONYMOUS_TOPIC,
        description="anonymous visitors' events and identifies topic name, before the prefix",
    )
    handoff_topic: str = Field(
        default=catalog.HANDOFF_TOPIC,
        description="MQL handoffs topic name, before the namespace prefix",
    )
    deadletter_topic: str = Field(
        default=catalog.DEADLETTER_TOPIC,
        description="dead-letter topic name, before the namespace prefix",
    )
    activity_topic: str = Field(
        default=catalog.ACTIVITY_TOPIC,
        description="sales activity topic name, before the namespace prefix",
    )
    lifecycle_topic: str = Field(
        default=catalog.LIFECYCLE_TOPIC,
        description="lifecycle transitions topic name, before the namespace prefix",
    )
    alerts_topic: str = Field(
        default=catalog.ALERTS_TOPIC,
        description="SLA alerts topic name, before the namespace prefix",
    )
    notify_deadletter_topic: str = Field(
        default=catalog.NOTIFY_DEADLETTER_TOPIC,
        description="topic name before the prefix: records a webhook target did not take",
    )
    topic_partitions: int = Field(
        default=8,
        ge=1,
        description=(
            "partitions for `leadflow topics create`, and the partition count the Redis key "
            "layout follows: the input topics (engagement, handoff, activity) must have exactly "
            "this many (the worker checks at start-up)"
        ),
    )
    topic_replication: int = Field(
        default=1, ge=1, description="replication factor for `leadflow topics create`"
    )

    # Kafka security
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password, a secret (never printed or logged)"
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA bundle for SSL; must exist (checked at start-up); empty means not set",
    )
    kafka_session_timeout: float = Field(
        default=30.0,
        ge=6,
        description=(
            "seconds before a silent (crashed) worker's partitions move to the others (min 6)"
        ),
    )
    kafka_heartbeat_interval: float = Field(
        default=3.0,
        gt=0,
        description="seconds between consumer heartbeats (at most a third of the session timeout)",
    )

    # Processing
    batch_max: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description=(
            "most records per batch: an engagement batch is what has already been fetched, up to "
            "this, never a wait to fill one"
        ),
    )
    batch_within: float = Field(
        default=0.25,
        gt=0,
        description="longest wait of the sales consumer's fetch while nothing is buffered",
    )
    max_event_bytes: int = Field(
        default=65_536, ge=256, description="larger records are dead-lettered as `oversized`"
    )
    dedupe_ttl_days: int = Field(
        default=90,
        ge=1,
        description=(
            "how long event ids are remembered per lead (counted back from the lead's newest event)"
        ),
    )
    redis_retry_max_seconds: float = Field(
        default=30.0, gt=0, description="longest wait between retries of Redis/Kafka"
    )
    state_cache_leads: int = Field(
        default=20_000,
        ge=0,
        description=(
            "lead states a worker keeps in memory between batches (about 5.6 KB each, so ~110 MB "
            "at the default); a batch then reads only the version of an unchanged lead from "
            "Redis; 0 turns it off"
        ),
    )
    sla_sweep_interval: float = Field(
        default=0.25, gt=0, le=60, description="seconds between looks at due SLA deadlines"
    )
    sla_sweep_batch: int = Field(
        default=1000, ge=1, description="most due deadlines handled per look and partition"
    )
    kpi_refresh_interval: float = Field(
        default=30.0, gt=0, description="seconds between refreshes of the KPI gauges on /metrics"
    )

    # Start-up: how long to wait for Kafka and Redis before giving up (docs/operations.md)
    startup_timeout: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description=(
            "seconds a command waits for Kafka and Redis to answer at start-up, retrying with "
            "backoff (0.5 s doubling to 5 s) and logging one line per attempt, before it exits "
            "naming the variable to fix. Unset: 60 for `worker`, `collector`, `topics create` and"
            " `demo` (often started beside their broker), 15 for the one-shot commands; set, it "
            'applies to all; 0: one attempt. See "Starting"'
        ),
    )

    # Operations
    data_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "leadflow",
        description="Faust's working directory (no tables are kept there)",
    )
    web_host: str = Field(
        default="127.0.0.1", description="address of the worker's health and metrics endpoint"
    )
    web_port: int = Field(
        default=6066, ge=1, le=65535, description="port of the worker's health and metrics endpoint"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR"
    )
    log_format: Literal["json", "console"] = Field(
        default="json", description="json (one object per line) or console"
    )

    # HTTP collector (`leadflow collector`, docs/collector.md)
    collector_host: str = Field(
        default="127.0.0.1", description="address `leadflow collector` listens on"
    )
    collector_port: int = Field(
        default=8080, ge=1, le=65535, description="port `leadflow collector` listens on"
    )
    collector_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description=(
            'Tokens per source, a JSON object {"source-name": "token"}; a source may be '
            '{"token": "...", "scope": "tracker", "origins": [...]}: a public website token '
            "(docs/tracker.md)."
        ),
    )
    # Filled from LEADFLOW_COLLECTOR_TOKENS (the sources given as objects): never set alone.
    collector_token_scopes: dict[str, TokenScope] = Field(
        default_factory=dict, exclude=True, description="(from LEADFLOW_COLLECTOR_TOKENS)"
    )
    collector_tracker_rate_per_second: float = Field(
        default=2.0,
        gt=0,
        description="Events per second per client IP (truncated) for tracker-scoped tokens.",
    )
    collector_tracker_burst: int = Field(
        default=60, ge=1, description="Token bucket size per client IP for tracker tokens."
    )
    collector_trust_forwarded: bool = Field(
        default=False,
        description=(
            "Take the client IP from the last X-Forwarded-For hop (behind a load balancer that "
            "sets it); else the peer address."
        ),
    )
    collector_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="largest request body the collector accepts (413 beyond)",
    )
    collector_max_batch_events: int = Field(
        default=500, ge=1, description="most events in one collector request"
    )
    collector_rate_per_second: float = Field(
        default=200.0, gt=0, description="Events per second per source (token bucket)."
    )
    collector_burst: int = Field(default=1000, ge=1, description="Token bucket size per source.")
    collector_ack_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for Kafka's acknowledgement."
    )
    collector_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed by CORS (JSON list or comma-separated; * = any).",
    )

    # Webhook notifications (`leadflow notify`, docs/notify.md)
    notify_config: Path | None = Field(
        default=None,
        description=(
            "`leadflow notify`'s YAML file of webhook targets (required by it; must exist). See "
            "[notify.md](notify.md)"
        ),
    )
    notify_web_host: str = Field(
        default="127.0.0.1", description="`leadflow notify`'s health and metrics endpoint"
    )
    notify_web_port: int = Field(
        default=6067, ge=1, le=65535, description="`leadflow notify`'s health and metrics endpoint"
    )
    notify_dedupe_ttl_days: float = Field(
        default=7.0,
        gt=0,
        description="how long `leadflow notify` remembers a delivered (target, id) pair in Redis",
    )
    notify_start: Literal["latest", "earliest"] = Field(
        default="latest",
        description=(
            "where a new notify consumer group starts: `latest` (no pages about history) or "
            "`earliest`"
        ),
    )

    # Input offsets (docs/reliability.md, "Offsets live with the state")
    offsets_missing: Literal["stop", "earliest", "committed"] = Field(
        default="stop",
        description=(
            "a partition the group has consumed but whose offsets Redis does not hold (Redis "
            "emptied): `stop` it, replay it from the `earliest` retained offset, or trust the "
            "group's `committed` offset (only when Redis is known to match it); see "
            "reliability.md"
        ),
    )
    offsets_commit_interval: float = Field(
        default=1.0,
        gt=0,
        description=(
            "seconds between commits of the engagement offsets to Kafka (for lag tools; Redis "
            "holds the real ones), and between checks that Redis still holds the offsets this "
            "worker wrote (a Redis restored older is replayed even with no new records)"
        ),
    )

    # Fault injection for the chaos tests only: exit hard right after the Redis write of the Nth
    # batch that produced outputs, before they reach Kafka (0 = never).
    fault_crash_after_batches: int = Field(
        default=0,
        ge=0,
        description=(
            "chaos tests only: exit hard after the Redis write of the Nth batch with outputs, "
            "before Kafka"
        ),
    )
    # ... or half-way through the Kafka send of the Nth delivery (0 = never).
    fault_crash_during_delivery: int = Field(
        default=0,
        ge=0,
        description="chaos tests only: exit hard half-way through sending the Nth delivery",
    )

    @field_validator("rules")
    @classmethod
    def _rules_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"rules file {value} does not exist")
        return value

    @field_validator(
        "redis_username",
        "redis_password",
        "redis_ssl_cafile",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "notify_config",
        mode="before",
    )
    @classmethod
    def _unset_if_empty(cls, value: Any) -> Any:
        # An empty variable (LEADFLOW_REDIS_PASSWORD=) means "not set" (an empty file setting
        # would otherwise become Path("."), the current directory).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "redis_ssl_cafile",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
        "kafka_ssl_cafile",
        "notify_config",
    )
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _redis_security(self) -> Settings:
        url = self.redis_url.get_secret_value()
        try:
            parts = urlsplit(url)
            in_url = parts.username is not None or parts.password is not None
            in_url = in_url or any(
                k.lower() in _SECRET_QUERY_KEYS for k, _ in parse_qsl(parts.query)
            )
        except ValueError:
            raise ValueError(f"LEADFLOW_REDIS_URL: not a URL: {redact_url(url)}") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"LEADFLOW_REDIS_URL: {redact_url(url)} must start with redis:// or rediss:// (TLS)"
            )
        if in_url and (self.redis_username is not None or self.redis_password is not None):
            raise ValueError(
                "LEADFLOW_REDIS_USERNAME/LEADFLOW_REDIS_PASSWORD are set and LEADFLOW_REDIS_URL "
                "carries credentials too; keep them in one place (the variables)"
            )
        files = {
            "LEADFLOW_REDIS_SSL_CAFILE": self.redis_ssl_cafile,
            "LEADFLOW_REDIS_SSL_CERTFILE": self.redis_ssl_certfile,
            "LEADFLOW_REDIS_SSL_KEYFILE": self.redis_ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and parts.scheme != "rediss":
            raise ValueError(
                f"{', '.join(given)} set, but LEADFLOW_REDIS_URL ({redact_url(url)}) is not "
                "TLS; use rediss://"
            )
        if self.redis_ssl_keyfile is not None and self.redis_ssl_certfile is None:
            raise ValueError(
                "LEADFLOW_REDIS_SSL_KEYFILE is set without LEADFLOW_REDIS_SSL_CERTFILE"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        # Kafka's rule of thumb (and the consumer's documented constraint): a member must be
        # able to miss two heartbeats before its session times out, or a short pause costs it
        # its partitions (a rebalance for the whole group).
        if self.kafka_heartbeat_interval * 3 > self.kafka_session_timeout:
            raise ValueError(
                f"LEADFLOW_KAFKA_HEARTBEAT_INTERVAL ({self.kafka_heartbeat_interval:g} s) must be "
                "at most a third of LEADFLOW_KAFKA_SESSION_TIMEOUT "
                f"({self.kafka_session_timeout:g} s); lower the first or raise the second"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        # LEADFLOW_LOG_LEVEL=debug is as good as DEBUG.
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _kafka_bootstrap(cls, value: str) -> str:
        # host:port[,host:port...]: caught here (exit 2) rather than as a broker that "did not
        # answer" (exit 3) after the start-up wait.
        servers = [server.strip() for server in value.split(",")]
        for server in servers:
            host, colon, port = server.rpartition(":")
            if not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{server or '(empty)'!r} is not host:port (a comma-separated list of "
                    "host:port, e.g. 127.0.0.1:9092)"
                )
        return ",".join(servers)

    @field_validator("startup_timeout", mode="before")
    @classmethod
    def _startup_timeout(cls, value: Any) -> Any:
        # An empty variable (LEADFLOW_STARTUP_TIMEOUT=) means "not set": the default applies.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="before")
    @classmethod
    def _token_scopes(cls, data: Any) -> Any:
        """Sources given as {"token", "scope", "origins"} objects: the token stays in
        collector_tokens, the rest goes to collector_token_scopes."""
        if not isinstance(data, dict) or "collector_tokens" not in data:
            return data
        value = data["collector_tokens"]
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError:
                return data  # the field validator names the problem
        if not isinstance(value, dict):
            return data
        tokens: dict[str, Any] = {}
        scopes: dict[str, Any] = {}
        for source, given in value.items():
            if isinstance(given, dict):
                unknown = sorted(set(given) - {"token", "scope", "origins"})
                if unknown:
                    raise ValueError(
                        f"LEADFLOW_COLLECTOR_TOKENS: source {source!r}: unknown key "
                        f"{unknown[0]!r} (expected token, scope, origins)"
                    )
                if "token" not in given:
                    raise ValueError(f"LEADFLOW_COLLECTOR_TOKENS: source {source!r}: no 'token'")
                tokens[source] = given["token"]
                try:
                    scopes[source] = TokenScope(
                        scope=given.get("scope", "full"), origins=tuple(given.get("origins", ()))
                    )
                except ValidationError as exc:
                    problem = exc.errors()[0]
                    raise ValueError(
                        f"LEADFLOW_COLLECTOR_TOKENS: source {source!r}: "
                        f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                    ) from None
            else:
                tokens[source] = given
        return {**data, "collector_tokens": tokens, "collector_token_scopes": scopes}

    @field_validator("collector_tokens", mode="before")
    @classmethod
    def _collector_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError:
                raise ValueError(
                    'expected a JSON object {"source-name": "token"}, got invalid JSON'
                ) from None
            if not isinstance(value, dict):
                raise ValueError('expected a JSON object {"source-name": "token"}')
        if isinstance(value, dict):
            seen: set[str] = set()
            for source, token in value.items():
                secret = token.get_secret_value() if isinstance(token, SecretStr) else token
                if not isinstance(secret, str):
                    raise ValueError(f"token of source {source!r} must be a string")
                if not str(source).strip() or len(str(source)) > 256:
                    raise ValueError("source names must be 1 to 256 characters")
                if len(secret) < 16:
                    raise ValueError(f"token of source {source!r} is shorter than 16 characters")
                if secret in seen:
                    raise ValueError(f"source {source!r} reuses another source's token")
                seen.add(secret)
        return value

    @field_validator("collector_cors_origins", mode="before")
    @classmethod
    def _collector_cors_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return orjson.loads(text)
                except orjson.JSONDecodeError:
                    raise ValueError("expected a JSON list or comma-separated origins") from None
            return [part.strip().rstrip("/") for part in text.split(",") if part.strip()]
        return value

    def startup_within(self, service: bool) -> float:
        """Seconds to wait for Kafka and Redis at start-up: LEADFLOW_STARTUP_TIMEOUT, or the
        default of a long-running `service` (worker, collector) or of a one-shot command."""
        if self.startup_timeout is not None:
            return self.startup_timeout
        return STARTUP_TIMEOUT_SERVICE if service else STARTUP_TIMEOUT_COMMAND

    @property
    def redis_tls(self) -> bool:
        return self.redis_url.get_secret_value().startswith("rediss://")

    def redis_options(self) -> dict[str, Any]:
        """redis-py's connection options besides the URL: the credentials and TLS files of their
        own LEADFLOW_REDIS_* variables (the one place that turns them into client options)."""
        options: dict[str, Any] = {}
        if self.redis_username is not None:
            options["username"] = self.redis_username
        if self.redis_password is not None:
            options["password"] = self.redis_password.get_secret_value()
        if self.redis_tls:
            for key, path in (
                ("ssl_ca_certs", self.redis_ssl_cafile),
                ("ssl_certfile", self.redis_ssl_certfile),
                ("ssl_keyfile", self.redis_ssl_keyfile),
            ):
                if path is not None:
                    options[key] = str(path)
        return options

    @property
    def redis_user(self) -> str:
        """The Redis user logged in as: LEADFLOW_REDIS_USERNAME, the URL's, or `default`."""
        if self.redis_username is not None:
            return self.redis_username
        try:
            return urlsplit(self.redis_url.get_secret_value()).username or "default"
        except ValueError:
            return "default"

    @property
    def redis_credentials_variable(self) -> str:
        """Where the Redis credentials come from, to name in a refusal."""
        if self.redis_password is not None or self.redis_username is not None:
            return "LEADFLOW_REDIS_USERNAME / LEADFLOW_REDIS_PASSWORD"
        return "LEADFLOW_REDIS_URL"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values in these settings (the Redis password, the Kafka SASL password,
        collector tokens), for scrubbing text that might echo one."""
        found = list(url_secrets(self.redis_url.get_secret_value()))
        if self.redis_password is not None:
            found.append(self.redis_password.get_secret_value())
        if self.kafka_sasl_password is not None:
            found.append(self.kafka_sasl_password.get_secret_value())
        found += [t.get_secret_value() for t in self.collector_tokens.values()]
        return tuple(s for s in found if s)

    def topic(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def engagement(self) -> str:
        return self.topic(self.engagement_topic)

    @property
    def anonymous(self) -> str:
        return self.topic(self.anonymous_topic)

    @property
    def handoff(self) -> str:
        return self.topic(self.handoff_topic)

    @property
    def deadletter(self) -> str:
        return self.topic(self.deadletter_topic)

    @property
    def activity(self) -> str:
        return self.topic(self.activity_topic)

    @property
    def lifecycle(self) -> str:
        return self.topic(self.lifecycle_topic)

    @property
    def alerts(self) -> str:
        return self.topic(self.alerts_topic)

    @property
    def notify_deadletter(self) -> str:
        return self.topic(self.notify_deadletter_topic)

    @property
    def worker_topics(self) -> tuple[str, ...]:
        """The seven topics the worker reads or writes (it waits for them at start-up)."""
        return (
            self.engagement,
            self.anonymous,
            self.handoff,
            self.deadletter,
            self.activity,
            self.lifecycle,
            self.alerts,
        )

    @property
    def all_topics(self) -> tuple[str, ...]:
        """Every topic of the namespace (`leadflow topics create` creates them)."""
        return (*self.worker_topics, self.notify_deadletter)

    @property
    def notify_group(self) -> str:
        """Consumer group of `leadflow notify`."""
        return self.topic("leadflow-notify")

    @property
    def app_id(self) -> str:
        """Faust app id, also the consumer group."""
        return self.topic("leadflow-scoring")

    @property
    def identity_group(self) -> str:
        """Consumer group of the identity agent (leads.anonymous)."""
        return self.topic("leadflow-identity")

    @property
    def engagement_group(self) -> str:
        """Consumer group of the engagement hot path (the Faust app's own group, app_id,
        reads the sales side's topics)."""
        return self.topic("leadflow-engagement")

    @property
    def redis_prefix(self) -> str:
        return f"{self.namespace}:lf:" if self.namespace else "lf:"


def remember_secrets(values: Iterable[str]) -> None:
    """Scrub these values too from every printed and logged line (webhook secrets and URLs
    from LEADFLOW_NOTIFY_CONFIG, which is not a LEADFLOW_* variable)."""
    _KNOWN_SECRETS.update(s for s in values if len(s) >= MIN_SCRUBBED_SECRET)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus overrides); errors name the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"LEADFLOW_{'_'.join(str(p) for p in err['loc']).upper()}: "
            + str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]
            else str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
    _KNOWN_SECRETS.update(s for s in settings.secrets if len(s) >= MIN_SCRUBBED_SECRET)
    REDIS_LOGIN.update(user=settings.redis_user, variable=settings.redis_credentials_variable)
    return settings
