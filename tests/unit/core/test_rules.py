"""The rules file: loading, its content version, errors that name the field, fit matching."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.engagement import KNOWN_EVENT_TYPES, AttributeValue
from streams.core.rules import FitRule, Rules, RulesError, load_rules, parse_rules

pytestmark = pytest.mark.unit


def rules_with(**sections: Any) -> dict[str, Any]:
    """A minimal valid rules mapping with some sections replaced or added."""
    return {"mql": {"threshold": 100}, **sections}


# --- the example file and its version ---------------------------------------------------------


def test_example_rules_load(example_rules: Rules, example_rules_path: Path) -> None:
    raw = yaml.safe_load(example_rules_path.read_text(encoding="utf-8"))
    assert example_rules.mql.threshold == raw["mql"]["threshold"]
    assert example_rules.mql.min_fit == raw["mql"]["min_fit"]
    assert set(example_rules.engagement) == set(raw["engagement"])
    assert len(example_rules.fit) == len(raw["fit"])
    assert example_rules.decay is not None
    assert example_rules.decay.half_life == timedelta(days=30)
    assert example_rules.sla.mql_first_contact == timedelta(hours=24)
    assert example_rules.sla.sql_follow_up == timedelta(hours=48)
    # Every type the example scores is accepted on the topic, as are the contract's types.
    assert set(example_rules.engagement) <= example_rules.event_types
    assert example_rules.event_types >= KNOWN_EVENT_TYPES


def test_version_is_stable_for_the_same_content(example_rules_path: Path, tmp_path: Path) -> None:
    first = load_rules(example_rules_path)
    again = load_rules(example_rules_path)
    assert first.version == again.version
    assert len(first.version) == 12
    # Comments and key order are not content.
    data = yaml.safe_load(example_rules_path.read_text(encoding="utf-8"))
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["engagement"] = dict(reversed(list(data["engagement"].items())))
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump(reordered, sort_keys=False), encoding="utf-8")
    assert load_rules(copy).version == first.version


def test_version_changes_with_the_threshold(example_rules_path: Path, tmp_path: Path) -> None:
    original = load_rules(example_rules_path)
    text = example_rules_path.read_text(encoding="utf-8")
    needle = f"threshold: {original.mql.threshold:g}"
    assert needle in text
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        text.replace(needle, f"threshold: {original.mql.threshold + 1:g}"), encoding="utf-8"
    )
    reloaded = load_rules(changed)
    assert reloaded.mql.threshold == original.mql.threshold + 1
    assert reloaded.version != original.version


def test_version_changes_with_a_duration() -> None:
    day = parse_rules(rules_with(sla={"mql_first_contact": "24h"}))
    same = parse_rules(rules_with(sla={"mql_first_contact": "1d"}))
    two_days = parse_rules(rules_with(sla={"mql_first_contact": "48h"}))
    assert day.version == same.version
    assert day.version != two_days.version


def test_engagement_shorthand_means_points() -> None:
    short = parse_rules(rules_with(engagement={"email_open": 5}))
    long = parse_rules(rules_with(engagement={"email_open": {"points": 5}}))
    rule = short.points_for("email_open")
    assert rule is not None
    assert rule.points == 5
    assert rule.cap_per_day is None
    assert short == long
    assert short.version == long.version


def test_engagement_rules_may_add_their_own_types() -> None:
    rules = parse_rules(rules_with(engagement={"trade_show_visit": 30}))
    assert "trade_show_visit" in rules.event_types
    assert rules.points_for("page_view") is None


def test_numbers_are_durations_in_seconds() -> None:
    rules = parse_rules(rules_with(sla={"mql_first_contact": 90}))
    assert rules.sla.mql_first_contact == timedelta(seconds=90)


# --- errors name the field ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"mql": {"threshold": -1}}, "mql.threshold", id="negative-threshold"),
        pytest.param({"mql": {"threshold": 0}}, "mql.threshold", id="zero-threshold"),
        pytest.param({"mql": {"threshold": "lots"}}, "mql.threshold", id="threshold-not-number"),
        pytest.param({"engagement": {}}, "mql", id="mql-missing"),
        pytest.param(rules_with(fit=[{"field": "industry", "points": 5}]), "fit[0]", id="no-cond"),
        pytest.param(
            rules_with(
                fit=[{"field": "industry", "points": 5, "in": ["software"], "equals": "retail"}]
            ),
            "fit[0]",
            id="two-conditions",
        ),
        pytest.param(
            rules_with(
                fit=[
                    {"field": "industry", "points": 5, "in": ["software"]},
                    {"field": "company_size", "points": 5, "between": [5000, 100]},
                ]
            ),
            "fit[1]",
            id="between-lo-above-hi",
        ),
        pytest.param(
            rules_with(fit=[{"field": "company_size", "points": 5, "between": [None, None]}]),
            "fit[0]",
            id="between-no-bounds",
        ),
        pytest.param(
            rules_with(fit=[{"field": "", "points": 5, "equals": "x"}]),
            "fit[0].field",
            id="empty-field-name",
        ),
        pytest.param(
            rules_with(sla={"mql_first_contact": "24x"}),
            "sla.mql_first_contact",
            id="bad-sla-duration",
        ),
        pytest.param(
            rules_with(sla={"sql_follow_up": "0s"}), "sla.sql_follow_up", id="zero-sla-duration"
        ),
        pytest.param(rules_with(decay={"half_life": "soon"}), "decay.half_life", id="bad-decay"),
        pytest.param(rules_with(scoring={"x": 1}), "scoring", id="unknown-top-level-key"),
        pytest.param({"mql": {"threshold": 1, "treshold": 2}}, "mql.treshold", id="typo-in-mql"),
        pytest.param(
            rules_with(engagement={"opt_out": {"points": -50, "cap_per_day": 10}}),
            "engagement.opt_out",
            id="cap-on-negative-points",
        ),
        pytest.param(
            rules_with(engagement={"email_open": {"points": 5, "cap_per_day": -1}}),
            "engagement.email_open.cap_per_day",
            id="negative-cap",
        ),
        pytest.param(
            rules_with(engagement={"email_open": "five"}),
            "engagement.email_open",
            id="points-not-number",
        ),
        pytest.param(rules_with(reasons_limit=0), "reasons_limit", id="reasons-limit-zero"),
    ],
)
def test_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(data, origin="my-rules.yaml")
    message = str(info.value)
    assert message.startswith("my-rules.yaml: ")
    assert f"{field}:" in message


def test_every_bad_field_is_reported_at_once() -> None:
    data = {
        "mql": {"threshold": -1},
        "sla": {"mql_first_contact": "24x"},
        "bogus": True,
    }
    with pytest.raises(RulesError) as info:
        parse_rules(data)
    message = str(info.value)
    for field in ("mql.threshold", "sla.mql_first_contact", "bogus"):
        assert field in message


def test_cap_on_negative_points_says_why() -> None:
    with pytest.raises(RulesError, match="cap_per_day only applies to positive points"):
        parse_rules(rules_with(engagement={"opt_out": {"points": -50, "cap_per_day": 10}}))


def test_between_lo_above_hi_says_which_bounds() -> None:
    with pytest.raises(RulesError, match=r"lower bound 5000(\.0)? is above upper bound 100(\.0)?"):
        parse_rules(rules_with(fit=[{"field": "size", "points": 1, "between": [5000, 100]}]))


def test_load_rules_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        pytest.param("mql: {threshold: 100\n", "not valid YAML", id="unclosed-mapping"),
        pytest.param("mql:\n  threshold: 100\n fit: []\n", "not valid YAML", id="bad-indent"),
        pytest.param("", "expected a mapping", id="empty-file"),
        pytest.param("- mql\n- fit\n", "expected a mapping", id="a-list"),
    ],
)
def test_load_rules_unusable_yaml_names_the_path(tmp_path: Path, text: str, hint: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(path) in str(info.value)
    assert hint in str(info.value)


def test_load_rules_field_error_names_path_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("mql:\n  threshold: -5\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}: mql.threshold:")


# --- fit matching --------------------------------------------------------------------------------


def fit(**condition: Any) -> FitRule:
    return FitRule.model_validate({"field": "x", "points": 10, **condition})


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        # in: case-insensitive, whitespace-tolerant, numbers compare by value
        ({"in": ["software", "manufacturing"]}, "software", True),
        ({"in": ["software", "manufacturing"]}, "Software", True),
        ({"in": ["Software"]}, "  SOFTWARE ", True),
        ({"in": ["software"]}, "soft", False),
        ({"in": ["software"]}, "retail", False),
        ({"in": [100, 200]}, 100, True),
        ({"in": [100, 200]}, 100.0, True),
        ({"in": [100, 200]}, "200", True),
        ({"in": [100, 200]}, 150, False),
        # equals
        ({"equals": "JP"}, "jp", True),
        ({"equals": "JP"}, "US", False),
        ({"equals": 42}, 42, True),
        ({"equals": 42}, 43, False),
        # between: inclusive, open bounds, numeric strings
        ({"between": [100, 5000]}, 100, True),
        ({"between": [100, 5000]}, 5000, True),
        ({"between": [100, 5000]}, 99, False),
        ({"between": [100, 5000]}, 5001, False),
        ({"between": [100, 5000]}, 99.99, False),
        ({"between": [100, 5000]}, "1,200", True),
        ({"between": [100, 5000]}, " 300 ", True),
        ({"between": [100, 5000]}, "12,000", False),
        ({"between": [100, 5000]}, "lots", False),
        ({"between": [5001, None]}, 5001, True),
        ({"between": [5001, None]}, 10**9, True),
        ({"between": [5001, None]}, 5000, False),
        ({"between": [None, 50]}, -3, True),
        ({"between": [None, 50]}, 50, True),
        ({"between": [None, 50]}, 51, False),
        # contains: case-insensitive substring, any of the parts
        ({"contains": ["director"]}, "IT Director", True),
        ({"contains": ["director"]}, "Director of Marketing", True),
        ({"contains": ["director", "vp"]}, "VP of Sales", True),
        ({"contains": ["director", "vp"]}, "Engineer", False),
        ({"contains": ["12"]}, 3120, True),
        # bool values
        ({"equals": True}, True, True),
        ({"equals": True}, False, False),
        ({"equals": False}, False, True),
        ({"equals": False}, True, False),
        ({"in": [True]}, True, True),
        ({"in": [True]}, 1, False),
        ({"between": [0, 10]}, True, False),
        # None never matches
        ({"in": ["software"]}, None, False),
        ({"equals": "JP"}, None, False),
        ({"between": [None, 50]}, None, False),
        ({"contains": ["none"]}, None, False),
    ],
)
def test_fit_matching(condition: dict[str, Any], value: AttributeValue, expected: bool) -> None:
    assert fit(**condition).matches(value) is expected


@pytest.mark.parametrize(
    ("rule", "description"),
    [
        ({"name": "Target industry", "in": ["a"]}, "Target industry"),
        ({"in": ["software", "retail"]}, "x in [software, retail]"),
        ({"contains": ["vp", "director"]}, "x contains [vp, director]"),
        ({"between": [100, 5000]}, "x between 100 and 5000"),
        ({"between": [5001, None]}, "x >= 5001"),
        ({"between": [None, 50]}, "x <= 50"),
        ({"equals": "JP"}, "x = JP"),
    ],
)
def test_fit_rule_description(rule: dict[str, Any], description: str) -> None:
    assert fit(**rule).describe() == description


def test_a_changed_copy_of_the_rules_has_its_own_version(example_rules_path: Path) -> None:
    rules = load_rules(example_rules_path)
    original = rules.version  # cached from here on
    lowered = rules.model_copy(update={"mql": rules.mql.model_copy(update={"threshold": 50})})
    assert lowered.version != original
    assert lowered.version == parse_rules(lowered.model_dump(mode="json", by_alias=True)).version
    assert rules.model_copy().version == original


@pytest.mark.parametrize(
    ("tracker", "problem"),
    [
        ({"pages": [{"match": "pricing", "type": "pricing_page_view"}]}, "tracker.pages[0].match"),
        ({"pages": [{"match": "~(", "type": "pricing_page_view"}]}, "not a regular expression"),
        ({"pages": [{"match": "/pricing", "type": "pricng_view"}]}, "tracker.pages[0].type"),
        ({"events": ["webnar"]}, "tracker.events[0]"),
    ],
)
def test_tracker_rules_name_the_bad_key(tracker: dict[str, object], problem: str) -> None:
    with pytest.raises(RulesError) as bad:
        parse_rules({"mql": {"threshold": 10}, "tracker": tracker})
    assert problem in str(bad.value)
