"""tracker.js: the website tracker the collector serves at GET /v1/tracker.js (docs/tracker.md).

The script is a static file beside this module; the rules' page-type rules (`tracker.pages`)
and the cookie's lifetime are written into it when the collector starts, so a page needs no
configuration besides its public tracker token.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib.resources import files

import orjson

from streams.core.rules import Rules

TRACKER_PATH = "/v1/tracker.js"
PLACEHOLDER = "__LEADFLOW_CONFIG__"
# The visitor's cookie lives this long after the last page view (browsers cap cookies set from
# script at 400 days; Safari at 7 days). Visits older than identity.retention are forgotten
# anyway: the cookie only lets a returning visitor be the same visitor.
COOKIE_DAYS = 395
GZIPPED_LIMIT = 5 * 1024


@dataclass(frozen=True, slots=True)
class TrackerScript:
    body: bytes
    etag: str

    @property
    def gzipped_size(self) -> int:
        return len(gzip.compress(self.body, 9))


def tracker_script(rules: Rules) -> TrackerScript:
    """tracker.js with this rules file's page types written in."""
    pages = [[p.match, p.type] for p in rules.tracker.pages] if rules.tracker else []
    config = orjson.dumps({"pages": pages, "cookieDays": COOKIE_DAYS}).decode()
    # Inside a <script>: "</" must not end it (a page rule such as "</script>").
    config = config.replace("</", "<\\/")
    source = files("streams.collector").joinpath("tracker.js").read_text(encoding="utf-8")
    body = source.replace(PLACEHOLDER, config).encode("utf-8")
    return TrackerScript(body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
