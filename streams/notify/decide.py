"""What `leadflow notify` decides, without I/O or a clock: which record is what (`Notice`),
which targets want it (`matches`), the body each format gets (`render`), its signature
(`signature`), and after a failed POST whether, and when, to try again (`after_failure`,
`retry_after_seconds`, `backoff`). The shell (streams.notify.service) does the HTTP, Redis and
Kafka around these.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.notify.config import Format, RetryPolicy, Target

Source = Literal["alert", "handoff", "lifecycle"]

SIGNATURE_HEADER = "X-Leadflow-Signature"
DELIVERY_HEADER = "X-Leadflow-Delivery"
TARGET_HEADER = "X-Leadflow-Target"
ATTEMPT_HEADER = "X-Leadflow-Attempt"

CLOCK_TITLES = {
    "mql_first_contact": "first contact",
    "sql_follow_up": "SQL follow-up",
}


class NotRecord(ValueError):
    """A record on a notified topic that is not the model of that topic."""


@dataclass(frozen=True)
class Notice:
    """One record to notify about: what it is, its id, the fields filters look at, and the
    record itself (the parsed model and the original bytes)."""

    source: Source
    kind: str  # handoff, lifecycle, mql_first_contact, sql_follow_up
    delivery_id: str
    lead_id: str
    severity: str | None
    owner: str | None
    queue: str | None
    model: SlaAlert | MqlHandoff | LifecycleTransition
    raw: bytes


def parse_notice(source: Source, value: bytes) -> Notice:
    """The notice of a record's value; NotRecord when it is not that topic's model.

    owner and queue are read from the record when it carries them (handoffs carry them once
    routing is built, issue 12 items 1-2; alerts carry `owner` today, `null` until sales
    recorded one); a record without them never matches an owners/queues filter."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise NotRecord(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NotRecord("not a JSON object")
    owner = data.get("owner") if isinstance(data.get("owner"), str) else None
    queue = data.get("queue") if isinstance(data.get("queue"), str) else None
    try:
        if source == "alert":
            alert = SlaAlert.model_validate(data)
            return Notice(
                source, alert.kind, alert.alert_id, alert.lead_id, alert.severity,
                owner, queue, alert, value,
            )  # fmt: skip
        if source == "handoff":
            handoff = MqlHandoff.model_validate(data)
            return Notice(
                source, "handoff", handoff.handoff_id, handoff.lead_id, None,
                owner, queue, handoff, value,
            )  # fmt: skip
        transition = LifecycleTransition.model_validate(data)
        return Notice(
            source, "lifecycle", transition.transition_id, transition.lead_id, None,
            owner, queue, transition, value,
        )  # fmt: skip
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise NotRecord(f"{where}: {err['msg']}") from None


def matches(target: Target, notice: Notice) -> bool:
    """Whether the target wants this notice. Every filter given must match; a filter on a field
    the record does not have (a handoff's severity, an owner not assigned yet) does not match.
    No `kinds`: handoffs and alerts (lifecycle only when listed)."""
    if target.kinds:
        wanted = set(target.kinds)
        if notice.kind not in wanted and not (notice.source == "alert" and "alert" in wanted):
            return False
    elif notice.source == "lifecycle":
        return False
    if target.severities and notice.severity not in target.severities:
        return False
    if target.owners and notice.owner not in target.owners:
        return False
    return not (target.queues and notice.queue not in target.queues)


# -- bodies ----------------------------------------------------------------------------------


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def summary(notice: Notice) -> tuple[str, str, list[tuple[str, str]]]:
    """(title, one-line text, facts) of a notice: what every human-readable format shows."""
    m = notice.model
    if isinstance(m, SlaAlert):
        clock = CLOCK_TITLES.get(m.kind, m.kind)
        title = f"SLA {m.severity}: {clock}"
        verb = "is due" if m.severity == "warning" else "was due"
        text = (
            f"Lead {m.lead_id}: {clock} {verb} {_when(m.due_at)} (owner {m.owner or 'unassigned'})"
        )
        facts = [
            ("Lead", m.lead_id),
            ("Owner", m.owner or "unassigned"),
            ("Due", _when(m.due_at)),
            ("Severity", m.severity),
        ]
        if m.escalated_to:
            facts.append(("Escalated to", m.escalated_to))
        if notice.queue:
            facts.append(("Queue", notice.queue))
        return title, text, facts
    if isinstance(m, MqlHandoff):
        title = f"New MQL: {m.lead_id}"
        reasons = "; ".join(f"{r.rule} {r.points:+.0f}" for r in m.reasons[:3])
        text = (
            f"Lead {m.lead_id} qualified with score {m.score:.0f} (threshold {m.threshold:g}); "
            f"contact by {_when(m.first_contact_due_at)}"
        )
        facts = [
            ("Lead", m.lead_id),
            (
                "Score",
                f"{m.score:.0f} (fit {m.fit_score:.0f}, engagement {m.engagement_score:.0f})",
            ),
            ("Contact by", _when(m.first_contact_due_at)),
        ]
        if notice.owner:
            facts.append(("Owner", notice.owner))
        if notice.queue:
            facts.append(("Queue", notice.queue))
        if reasons:
            facts.append(("Why", reasons))
        return title, text, facts
    if m.kind == "reassigned":
        who = f"{m.from_owner or 'unassigned'} → {m.to_owner or 'unassigned'}"
        text = f"Lead {m.lead_id} reassigned from {who.replace(' → ', ' to ')}"
        if m.reason:
            text += f" ({m.reason})"
        return f"Lead {m.lead_id} reassigned", text, [("Lead", m.lead_id), ("Owner", who)]
    title = f"Lead {m.lead_id}: {m.from_stage} → {m.to_stage}"
    text = f"Lead {m.lead_id} moved from {m.from_stage} to {m.to_stage}"
    if m.reason:
        text += f" ({m.reason})"
    facts = [("Lead", m.lead_id), ("Stage", f"{m.from_stage} → {m.to_stage}")]
    if m.missing_bant:
        facts.append(("Missing BANT", ", ".join(m.missing_bant)))
    return title, text, facts


def slack_body(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the notification's fallback) and blocks."""
    title, text, facts = summary(notice)
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"leadflow {notice.kind} `{notice.delivery_id}`"}
                ],
            },
        ],
    }


THEME = {"breach": "D32F2F", "warning": "F9A825"}


def teams_body(notice: Notice) -> dict[str, Any]:
    """A Microsoft Teams connector MessageCard (incoming webhook)."""
    title, text, facts = summary(notice)
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": text,
        "themeColor": THEME.get(notice.severity or "", "0076D7"),
        "title": title,
        "text": text,
        "sections": [
            {
                "facts": [{"name": k, "value": v} for k, v in facts],
                "text": f"leadflow {notice.kind} {notice.delivery_id}",
            }
        ],
    }


def render(fmt: Format, notice: Notice) -> bytes:
    """The POST body: `json` is the record's original bytes, as is."""
    if fmt == "json":
        return notice.raw
    body = slack_body(notice) if fmt == "slack" else teams_body(notice)
    return orjson.dumps(body)


def signature(secret: bytes, body: bytes) -> str:
    """The X-Leadflow-Signature value: `sha256=` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def request_headers(
    target: Target, notice: Notice, body: bytes, attempt: int, user_agent: str
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        DELIVERY_HEADER: notice.delivery_id,
        TARGET_HEADER: target.name,
        ATTEMPT_HEADER: str(attempt),
    }
    secret = target.secret_value
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return headers


# -- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one POST attempt came to: an HTTP status, or `timeout` / `connection_error`."""

    status: int | None = None
    error: Literal["timeout", "connection_error"] | None = None
    retry_after: str | None = None  # the Retry-After header, as sent

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def reason(self) -> str:
        """The failure as a bounded metric label: http_<status>, timeout, connection_error."""
        return f"http_{self.status}" if self.status is not None else str(self.error)


@dataclass(frozen=True)
class Next:
    """After a failed attempt: `retry` after `delay` seconds, or give up (`deadletter`)."""

    action: Literal["retry", "deadletter"]
    delay: float = 0.0
    reason: str = ""  # for a dead letter: attempts_exhausted or not_retryable


def retryable(outcome: Outcome) -> bool:
    """5xx, 408, 429, timeouts and connection errors are; any other 4xx (or 3xx) is not."""
    if outcome.status is None:
        return True
    return outcome.status >= 500 or outcome.status in (408, 429)


def backoff(attempt: int, policy: RetryPolicy) -> float:
    """Seconds before attempt `attempt + 1`: backoff_initial doubling, at most backoff_max."""
    return float(min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1)))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) as seconds from `now` (never
    negative); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def after_failure(outcome: Outcome, attempt: int, policy: RetryPolicy, now: datetime) -> Next:
    """What to do after failed attempt number `attempt` (1-based): a non-retryable answer is
    dead-lettered at once, the last allowed attempt too; otherwise wait the backoff, or the
    Retry-After the receiver asked for (at most retry_after_max) when it sent one."""
    if not retryable(outcome):
        return Next("deadletter", reason="not_retryable")
    if attempt >= policy.max_attempts:
        return Next("deadletter", reason="attempts_exhausted")
    delay = backoff(attempt, policy)
    asked = retry_after_seconds(outcome.retry_after, now)
    if asked is not None:
        delay = min(asked, policy.retry_after_max)
    return Next("retry", delay=delay)
