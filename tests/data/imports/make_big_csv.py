"""Write a large, realistic Marketo bulk activity extract for `leadflow import` test runs.

    .venv/bin/python tests/data/imports/make_big_csv.py --rows 1000000 --out /tmp/marketo-1m.csv

The file is written row by row (this script's memory does not grow either). The mix follows a
typical activity log: mostly e-mail sends/deliveries (skipped by the marketo profile), web visits
(one in ten of the pricing page), opens, clicks, form fills, data value changes and a few
unsubscribes; about one row in 200 repeats an earlier activity (a duplicate within the file) and
one in 1,000 is broken (bad date, missing lead id or broken attributes JSON). Deterministic for
a given --seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HEADER = [
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
]
PAGES = ["/", "/features", "/blog/lead-scoring", "/customers", "/about", "/docs/api"]
FIELDS = [("Job Title", "VP Sales"), ("Industry", "Software"), ("Number of Employees", "450")]
# (activity type id, weight)
MIX = [(6, 25), (7, 20), (1, 22), (10, 15), (11, 6), (2, 6), (13, 4), (9, 1), (34, 1)]


def row_for(rng: random.Random, n: int, leads: int, start: datetime) -> list[str]:
    lead = str(100_000 + rng.randrange(leads))
    at = (start + timedelta(seconds=n * 3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
    campaign, value_id, value = "", "", ""
    attrs: dict[str, object] = {}
    if kind == 1:
        page = "/pricing" if rng.random() < 0.1 else rng.choice(PAGES)
        value_id = str(PAGES.index(page) + 10) if page in PAGES else "99"
        value = f"www.example.com{page}"
        attrs = {"Webpage URL": page, "Client IP Address": "203.0.113.7", "User Agent": "Mozilla"}
    elif kind in (6, 7, 10, 11, 9):
        campaign, value_id, value = "3001", "77", "Monthly Newsletter"
        if kind == 11:
            attrs = {"Link": "https://www.example.com/customers"}
        elif kind == 10:
            attrs = {"Device": "Mobile", "Platform": "iOS"}
    elif kind == 2:
        campaign, value_id, value = "2001", "55", "FORM - Contact Us"
        attrs = {"Webpage ID": 12, "Client IP Address": "203.0.113.7"}
    elif kind == 13:
        field, new = rng.choice(FIELDS)
        value = field
        attrs = {"New Value": new, "Old Value": "", "Reason": "Form fill-out", "Source": "Web"}
    else:
        value = "Opportunity 9"
    return [str(50_000_000 + n), lead, at, str(kind), campaign, value_id, value, json.dumps(attrs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    previous: list[str] | None = None
    with args.out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for n in range(args.rows):
            if previous is not None and n % 200 == 199:
                writer.writerow(previous)  # the same activity again (a duplicate)
                continue
            row = row_for(rng, n, args.leads, start)
            if n % 1000 == 500:
                broken = (n // 1000) % 3
                if broken == 0:
                    row[2] = "2024-13-45T99:00:00Z"
                elif broken == 1:
                    row[1] = ""
                else:
                    row[7] = '{"Webpage URL": /pricing'
            writer.writerow(row)
            previous = row
    print(f"wrote {args.rows:,} rows to {args.out}")


if __name__ == "__main__":
    main()
