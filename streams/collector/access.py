"""Who may send events, how fast, and from which web pages: tokens, rate limits, CORS (pure).

Time is passed in, so the rate limit is decided without a clock of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from streams.settings import Settings, SettingsError

TOKEN_HEADER = "X-Leadflow-Token"

# -- authentication ------------------------------------------------------------------------


def check_collector_settings(settings: Settings) -> None:
    """What the collector needs beyond what Settings validates; raises SettingsError."""
    if not settings.collector_tokens:
        raise SettingsError(
            "invalid configuration: LEADFLOW_COLLECTOR_TOKENS: no tokens configured; set a JSON "
            'object {"source-name": "token"} (tokens of at least 16 characters)'
        )


def presented_token(authorization: str | None, x_token: str | None) -> str | None:
    """The token a request presents: `Authorization: Bearer <token>` or `X-Leadflow-Token`."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if x_token and x_token.strip():
        return x_token.strip()
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_digests(tokens: Mapping[str, SecretStr]) -> dict[str, bytes]:
    """source -> SHA-256 of its token: equal-length values for the constant-time comparison."""
    return {source: _digest(token.get_secret_value()) for source, token in tokens.items()}


def authenticate(presented: str, digests: Mapping[str, bytes]) -> str | None:
    """The source whose token was presented, or None.

    Compares with hmac.compare_digest against every configured token, without stopping at a
    match, so the time taken says nothing about which token (or how much of one) matched.
    """
    candidate = _digest(presented)
    match: str | None = None
    for source, digest in digests.items():
        if hmac.compare_digest(candidate, digest):
            match = source
    return match


# -- rate limiting -------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """`rate` events per second with bursts up to `burst` events.

    A request of n events needs min(n, burst) tokens in the bucket and then takes n: a batch
    larger than the burst is let through when the bucket is full, and the debt is paid back
    before the next request, so the long-run rate holds either way.
    """

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, n: int, now: float) -> float:
        """Take n tokens at time `now` (seconds). 0.0 = allowed; otherwise the seconds until a
        request of this size would be (nothing is taken then)."""
        if self.updated is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now if self.updated is None else max(now, self.updated)
        need = min(float(n), float(self.burst))
        if self.tokens + 1e-9 >= need:  # float refills: 0.1 s x 10/s is 1 token
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per authenticated source."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, source: str, n: int, now: float) -> float:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst)
        return bucket.take(n, now)


def retry_after(seconds: float) -> str:
    """Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# -- CORS ----------------------------------------------------------------------------------

CORS_ALLOW_HEADERS = f"Authorization, Content-Type, {TOKEN_HEADER}"


def cors_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    if not origin or not allowed:
        return False
    return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}


def cors_headers(origin: str | None, allowed: Sequence[str], preflight: bool) -> dict[str, str]:
    """CORS response headers for a request from `origin`; empty when it is not allowed (or
    CORS is off). No credentials: trackers authenticate with a header, not cookies."""
    if not cors_allowed(origin, allowed):
        return {}
    assert origin is not None
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
    else:
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return headers
