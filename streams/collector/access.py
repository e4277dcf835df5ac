"""Who may send events, how fast, and from which web pages: tokens, rate limits, CORS (pure).

Time is passed in, so the rate limit is decided without a clock of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from schemas.anonymous import AnonymousEvent, IdentifyEvent
from streams.collector.body import Checked
from streams.settings import Settings, SettingsError, TokenScope

TOKEN_HEADER = "X-Leadflow-Token"

# -- authentication ------------------------------------------------------------------------


def check_collector_settings(settings: Settings) -> None:
    """What the collector needs beyond what Settings validates; raises SettingsError."""
    if not settings.collector_tokens:
        raise SettingsError(
            "invalid configuration: LEADFLOW_COLLECTOR_TOKENS: no tokens configured; set a JSON "
            'object {"source-name": "token"} (tokens of at least 16 characters)'
        )
    check_tracker_tokens(settings)


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


# -- tracker tokens ------------------------------------------------------------------------

# How much of a client address is kept: the network, never the host (docs/tracker.md).
IPV4_KEPT_BITS = 24
IPV6_KEPT_BITS = 48


def truncate_ip(address: str | None) -> str:
    """The client address without its host part (203.0.113.77 -> 203.0.113.0, an IPv6 address
    to its /48): what the collector logs and keys rate limits by; the full address is never
    kept. Not an address (a Unix socket, nothing): "unknown"."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = IPV4_KEPT_BITS if ip.version == 4 else IPV6_KEPT_BITS
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False).network_address)


def client_address(peer: str | None, forwarded_for: str | None, trust_forwarded: bool) -> str:
    """The client's truncated address: the last X-Forwarded-For hop when the collector runs
    behind a load balancer that sets it (LEADFLOW_COLLECTOR_TRUST_FORWARDED), else the peer."""
    if trust_forwarded and forwarded_for and forwarded_for.strip():
        return truncate_ip(forwarded_for.split(",")[-1])
    return truncate_ip(peer)


def tracker_origins(scope: TokenScope, cors: Sequence[str]) -> tuple[str, ...]:
    """The origins a tracker token is accepted from: its own `origins`, else the CORS list."""
    return scope.origins or tuple(o.rstrip("/") for o in cors)


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """A tracker request must come from a page of an allowed origin (browsers always send
    Origin on a cross-origin POST, sendBeacon included); no Origin: refused."""
    return cors_allowed(origin, allowed)


def tracker_problem(checked: Checked, tracker_types: frozenset[str]) -> tuple[str, str] | None:
    """Why a tracker-scoped token may not send this accepted event: (field, message), or None.
    A tracker token is public: it sends only visitors' events and identifies, of the
    tracker's own types, never an event of a named lead."""
    event = checked.event
    if isinstance(event, IdentifyEvent):
        return None
    if isinstance(event, AnonymousEvent):
        if event.type in tracker_types:
            return None
        return (
            "type",
            f"type: {event.type!r} is not one of the tracker's types "
            f"({', '.join(sorted(tracker_types))}); a tracker token sends only those "
            "(rules: tracker.pages, tracker.events)",
        )
    return (
        "lead_id",
        "lead_id: a tracker token sends only anonymous events (anonymous_id, no lead_id) and "
        "identifies (type identify); use a server-side token for a known lead's events",
    )


def check_tracker_tokens(settings: Settings) -> None:
    """Every tracker token needs origins to be accepted from; raises SettingsError."""
    for source, scope in settings.collector_token_scopes.items():
        if scope.scope == "tracker" and not tracker_origins(scope, settings.collector_cors_origins):
            raise SettingsError(
                f"invalid configuration: LEADFLOW_COLLECTOR_TOKENS: source {source!r} is a "
                'tracker token without origins; give it "origins": ["https://www.example.com"] '
                "or set LEADFLOW_COLLECTOR_CORS_ORIGINS"
            )
