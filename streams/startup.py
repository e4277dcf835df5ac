"""Waiting for a dependency (Kafka, Redis) at start-up: one line per attempt, exponential
backoff, and after LEADFLOW_STARTUP_TIMEOUT one error naming the variable to fix.

A container started before its broker, or a command run while `ops/stack up` is still starting,
waits instead of failing with a traceback; a dependency that never comes ends in one line.
The probes live with their adapters (streams.kafka.topics, streams.bootstrap); this module only
knows how to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streams.settings import scrub

# First wait between attempts, and the longest: a dependency that comes up is seen within
# seconds, and a slow one is not hammered.
FIRST_DELAY = 0.5
MAX_DELAY = 5.0
# Longest a single attempt may take (a host that drops packets never refuses).
ATTEMPT_TIMEOUT = 5.0

# Told each failed attempt: the line to show, and why the attempt failed.
Say = Callable[[str, str], None]


class ServiceUnavailable(TimeoutError):
    """A dependency did not answer within the start-up timeout; the message names the variable
    to fix and how (a TimeoutError: the CLI ends with exit code 3 and this one line)."""


class Misconfigured(Exception):
    """A probe found that the client is set up wrongly for the dependency (e.g. plaintext to a
    TLS-only server); the message says what to change. Waiting would not help."""


class ServiceRefused(ValueError):
    """A dependency answered but refused us (wrong credentials): waiting would not help; the
    message names the variable to fix."""


@dataclass(frozen=True)
class Dependency:
    """Something to wait for: `probe` returns once it answers and raises otherwise."""

    name: str  # "Kafka", "Redis"
    address: str  # as shown to the user: never with a password
    variable: str  # the LEADFLOW_* variable that points at it
    probe: Callable[[], Awaitable[object]]
    # Errors that mean "it answered, and said no": stop waiting at once.
    refusals: tuple[type[BaseException], ...] = ()
    # The variable(s) holding the credentials, named when they are refused (default: variable).
    credentials: str = ""
    # What to do when it never becomes ready (default: start it, or point `variable` at it).
    advice: str = ""

    def unavailable(self, within: float, attempts: int, reason: str) -> ServiceUnavailable:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}; last: {reason}"
        if self.advice:
            return ServiceUnavailable(
                f"{self.name} at {self.address} not ready within {within:g} s ({tries}); "
                f"{self.advice}"
            )
        return ServiceUnavailable(
            f"{self.name} at {self.address} did not answer within {within:g} s ({tries}); start "
            f"it (`ops/stack up` for the local one) or set {self.variable} to where it runs"
        )


def describe(exc: BaseException) -> str:
    """A short, secret-free reason for a failed attempt."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return scrub(" ".join(text.split()))[:200]


def attempt_line(dep: Dependency, attempt: int, wait: float) -> str:
    return f"waiting for {dep.name} at {dep.address} (attempt {attempt}, next in {wait:g} s)"


async def wait_until_reachable(dep: Dependency, deadline: float, within: float, say: Say) -> None:
    """Probe `dep` until it answers; between attempts tell `say` and back off (0.5 s doubling up
    to 5 s). After the loop time `deadline`, raise ServiceUnavailable naming the variable; a
    refusal (wrong credentials) raises ServiceRefused at once. At least one attempt is made."""
    loop = asyncio.get_running_loop()
    delay = FIRST_DELAY
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - loop.time()
        try:
            await asyncio.wait_for(dep.probe(), timeout=max(min(ATTEMPT_TIMEOUT, remaining), 1.0))
            return
        except ServiceRefused:
            raise  # already says which variable to fix
        except Misconfigured as exc:
            raise ServiceRefused(f"{dep.name} at {dep.address}: {scrub(str(exc))}") from None
        except dep.refusals as exc:
            raise ServiceRefused(
                f"{dep.name} at {dep.address} refused the connection ({describe(exc)}); "
                f"check the credentials in {dep.credentials or dep.variable}"
            ) from None
        except Exception as exc:
            reason = describe(exc)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise dep.unavailable(within, attempt, reason)
        wait = round(min(delay, remaining), 1) or 0.1
        say(attempt_line(dep, attempt, wait), reason)
        await asyncio.sleep(wait)
        delay = min(delay * 2, MAX_DELAY)


async def wait_for_all(deps: list[Dependency], within: float, say: Say) -> None:
    """Wait for each dependency in turn, all within `within` seconds from now."""
    deadline = asyncio.get_running_loop().time() + within
    for dep in deps:
        await wait_until_reachable(dep, deadline, within, say)


# How long the look for a TLS-only server behind a failed plaintext connection may take.
TLS_SNIFF_TIMEOUT = 3.0


async def speaks_tls(host: str, port: int) -> bool:
    """Whether the server at host:port completes a TLS handshake (certificate not checked): a
    plaintext client refused by it is then told to use TLS, not that the server is down."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), TLS_SNIFF_TIMEOUT
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
