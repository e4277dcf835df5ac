"""The scoring the peers of `ops/bench compare` implement, written as their users would.

The bench rules (tests/bench/rules.yaml) are plain points: no caps, no decay. A peer therefore
needs, per lead: the event ids seen (dedupe), the fit points of the latest value of each
attribute a fit rule looks at, the sum of engagement points, and whether the lead has been
handed off. It qualifies once, the first time fit + engagement reaches the threshold.

This module reads the YAML itself (a peer does not use leadflow's rules engine) and refuses
anything it cannot score exactly. It imports nothing from leadflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Redis Lua for the naive Faust peer: one call per event does dedupe, fit, engagement and the
# MQL check. KEYS: lead hash, seen set. ARGV: event_id, engagement points, threshold, then
# pairs of (attribute, fit points of its new value).
SCORE_LUA = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], 'fit:' .. ARGV[i], ARGV[i + 1]) end
local engagement = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'engagement', ARGV[2]))
if redis.call('HEXISTS', KEYS[1], 'mql') == 1 then return 0 end
local fields = redis.call('HGETALL', KEYS[1])
local fit = 0
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 4) == 'fit:' then fit = fit + tonumber(fields[i + 1]) end
end
if fit + engagement >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'mql', ARGV[1])
  return {tostring(fit), tostring(engagement)}
end
return 0
"""


@dataclass(frozen=True)
class FitIn:
    field: str
    values: frozenset[str]
    points: float


@dataclass(frozen=True)
class PlainRules:
    threshold: float
    points: dict[str, float]
    fit: tuple[FitIn, ...]

    def event_points(self, event_type: str) -> float:
        return self.points.get(event_type, 0.0)

    def fit_updates(self, attributes: dict[str, Any] | None) -> dict[str, float]:
        """Fit points of each attribute this event sets that a fit rule looks at."""
        if not attributes:
            return {}
        out: dict[str, float] = {}
        for rule in self.fit:
            if rule.field in attributes:
                value = attributes[rule.field]
                hit = value is not None and str(value).strip().casefold() in rule.values
                out[rule.field] = out.get(rule.field, 0.0) + (rule.points if hit else 0.0)
        return out


def load_plain_rules(path: Path | str) -> PlainRules:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if data.get("decay") or set(data["mql"]) != {"threshold"}:
        raise ValueError("the peers score plain points and a threshold only")
    points: dict[str, float] = {}
    for event_type, rule in (data.get("engagement") or {}).items():
        if not isinstance(rule, int | float):
            raise ValueError(f"engagement.{event_type}: the peers score plain points only")
        points[event_type] = float(rule)
    fit = []
    for rule in data.get("fit") or ():
        if set(rule) - {"name", "field", "in", "points"}:
            raise ValueError(f"fit rule {rule}: the peers know `in` rules only")
        values = frozenset(str(v).strip().casefold() for v in rule["in"])
        fit.append(FitIn(rule["field"], values, float(rule["points"])))
    return PlainRules(float(data["mql"]["threshold"]), points, tuple(fit))


def handoff(event: dict[str, Any], fit: float, engagement: float) -> dict[str, Any]:
    """The peers' handoff record: enough to compare lead ids and measure latency."""
    return {
        "lead_id": event["lead_id"],
        "triggering_event_id": event["event_id"],
        "qualified_at": event["occurred_at"],
        "score": fit + engagement,
        "fit_score": fit,
        "engagement_score": engagement,
    }
