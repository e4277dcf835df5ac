"""tracker.js in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): an anonymous visitor browses the pricing pages of a local test site, then submits a
form that identifies it; the lead's handoff, on the real broker, and its score in Redis include
the pricing views made before the form. Also: nothing is sent before consent or under Do Not
Track, and optOut() sends opt_out and stops.

Chromium that cannot start fails the test (never skips it): `ops/test` installs it with
`ops/browser install`.
"""

from __future__ import annotations

import shutil
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.settings import Settings
from tests.harness import ROOT, WorkerProcess, eventually, free_port, read_topic
from tests.integration.collector.test_collector import CollectorProcess, metrics

pytestmark = pytest.mark.integration

RULES = ROOT / "tests" / "data" / "tracker-rules.yaml"
TRACKER_TOKEN = "public-tracker-token-0123456789"
SERVER_TOKEN = "server-side-token-0123456789abc"
LEAD = "lead-web-1"
# The flags this machine's closed network needs (no update checks, no QUIC, no sync).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
# Counts what the tracker hands to the browser to send, before any page script runs.
SPY = """
window.__beacons = [];
const send = navigator.sendBeacon.bind(navigator);
navigator.sendBeacon = (url, body) => {
  body.text().then((text) => window.__beacons.push(text));
  return send(url, body);
};
"""


@dataclass
class Site:
    """A local web site with the tracker embedded; its form handler sends the lead event to the
    collector server-side (with the visitor's cookie, so the event also identifies it)."""

    port: int
    collector: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, title: str, body: str = "", consent: bool = False) -> bytes:
        attributes = ' data-leadflow-consent="required"' if consent else ""
        return f"""<!doctype html><html><head><title>{title}</title>
<script>window.leadflow=window.leadflow||{{q:[]}};["identify","track","consent","optOut","page",
"flush"].forEach(function(m){{leadflow[m]=leadflow[m]||function(){{leadflow.q.push([m,arguments])}}}});
</script>
<script async src="{self.collector}/v1/tracker.js"
  data-leadflow-token="{TRACKER_TOKEN}"{attributes}></script></head>
<body><h1 id="title">{title}</h1>{body}</body></html>""".encode()

    def serve(self) -> Iterator[None]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/contact":
                    html = site.page("Contact", FORM)
                elif path == "/consent":
                    html = site.page("Consent", consent=True)
                else:
                    html = site.page(f"Page {path}")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(html)

            def do_POST(self) -> None:
                # The site's backend: the lead from its CRM, the visitor from its own cookie.
                cookies = dict(
                    c.strip().split("=", 1)
                    for c in (self.headers.get("Cookie") or "").split(";")
                    if "=" in c
                )
                form = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                event = {
                    "event_id": "form-" + form["email"],
                    "lead_id": LEAD,
                    "anonymous_id": cookies.get("lf_aid"),
                    "type": "form_submit",
                    "occurred_at": form["at"],
                    "attributes": {"industry": "software", "email": form["email"]},
                }
                request = urllib.request.Request(
                    f"{site.collector}/v1/events",
                    data=orjson.dumps(event),
                    headers={
                        "Authorization": f"Bearer {SERVER_TOKEN}",
                        "Content-Type": "application/json",
                    },
                )
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status = answer.status
                self.send_response(200 if status == 202 else 502)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(orjson.dumps({"lead_id": LEAD}))

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


FORM = """
<form id="form"><input id="email" name="email"><button id="send" type="submit">Send</button></form>
<p id="done"></p>
<script>
document.getElementById("form").addEventListener("submit", function (e) {
  e.preventDefault();
  var email = document.getElementById("email").value;
  fetch("/submit", {method: "POST", credentials: "same-origin",
    body: JSON.stringify({email: email, at: new Date().toISOString()})})
    .then(function (r) { return r.json(); })
    .then(function (answer) {
      leadflow.identify(answer.lead_id);
      document.getElementById("done").textContent = "thanks";
    });
});
</script>
"""


def chromium(profile: Path) -> Any:
    """A headless Chromium from Debian's packages; fails the test, naming the fix, if it cannot
    start."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(
            "chromium/chromedriver not on PATH: run `ops/browser install` (Debian's chromium and "
            "chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    try:
        browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    except Exception as exc:
        pytest.fail(f"headless Chromium did not start: {exc}", pytrace=False)
    browser.set_page_load_timeout(30)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SPY})
    return browser


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def collector(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[CollectorProcess, Site]]:
    """A real `leadflow collector` with a tracker token for the test site, and the site."""
    site = Site(free_port(), "")
    tokens = {
        "website": {"token": TRACKER_TOKEN, "scope": "tracker", "origins": [site.origin]},
        "crm": SERVER_TOKEN,
    }
    env = {"LEADFLOW_RULES": str(RULES), "LEADFLOW_COLLECTOR_TOKENS": orjson.dumps(tokens).decode()}
    process = CollectorProcess(settings, tmp_path / "collector.log", env).start()
    site.collector = process.url
    served = site.serve()
    next(served)
    try:
        yield process, site
    finally:
        next(served, None)
        process.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- collector log ---\n{process.tail()}")


async def test_pricing_views_before_the_form_are_in_the_leads_handoff(
    settings: Settings,
    collector: tuple[CollectorProcess, Site],
    http: aiohttp.ClientSession,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    process, site = collector
    on_rules = settings.model_copy(update={"rules": RULES})
    worker = WorkerProcess(on_rules, tmp_path / "worker.log")
    workers.append(worker.start())
    await process.wait_ready(http)
    await worker.wait_ready()

    browser = chromium(tmp_path / "profile")
    try:
        # An anonymous visitor: three pricing pages (each page's view leaves with sendBeacon
        # when the page is left), a page of another type, then the contact form.
        for path in ("/pricing", "/pricing/teams", "/blog/post", "/pricing"):
            browser.get(site.origin + path)
            await eventually(
                lambda: _true(
                    browser.execute_script(
                        "return window.leadflow && !!leadflow.flush && !leadflow.q"
                    )
                ),
                10,
                f"tracker.js to load on {path}",
            )
        browser.get(site.origin + "/contact")
        visitor = browser.get_cookie("lf_aid")
        assert visitor is not None, "no first-party visitor cookie"
        browser.find_element("id", "email").send_keys("ada@example.com")
        browser.find_element("id", "send").click()
        await eventually(
            lambda: _true(browser.find_element("id", "done").text == "thanks"),
            15,
            "the form to be sent",
        )
        sent = browser.execute_script("leadflow.flush(); return window.__beacons")
        assert any('"type":"identify"' in s for s in sent), sent
    finally:
        browser.quit()

    async def handed_off() -> bool:
        return any(r.key == LEAD.encode() for r in await read_topic(settings, settings.handoff))

    await eventually(handed_off, 60, f"the handoff of {LEAD}")
    (handoff,) = [
        MqlHandoff.model_validate_json(r.value or b"")
        for r in await read_topic(settings, settings.handoff)
        if r.key == LEAD.encode()
    ]
    reasons = {r.rule: r for r in handoff.reasons}
    # 3 pricing views (30 each) made before the form, the form (10) and fit (20): 120.
    assert reasons["pricing_page_view"].events == 3, handoff.reasons
    assert handoff.score == 120 and handoff.fit_score == 20
    store = open_store(settings)
    try:
        state = await store.read_lead(LEAD)
    finally:
        await store.close()
    assert state is not None and state.stage == "mql"
    assert state.engagement["pricing_page_view"].events == 3
    # What reached Kafka from the browser: the visitor's events under its cookie id, no IP.
    anonymous = [
        orjson.loads(r.value or b"") for r in await read_topic(settings, settings.anonymous)
    ]
    assert {a["anonymous_id"] for a in anonymous} == {visitor["value"]}
    assert all("ip" not in str(a).lower() for a in anonymous)


async def test_nothing_is_sent_before_consent_nor_under_do_not_track_and_opt_out_stops(
    collector: tuple[CollectorProcess, Site], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    process, site = collector
    await process.wait_ready(http)
    browser = chromium(tmp_path / "profile")
    try:
        loaded = "return window.leadflow && !!leadflow.flush && !leadflow.q"
        # The site asks for consent: no cookie, nothing handed to the browser to send.
        browser.get(site.origin + "/consent")
        await eventually(lambda: _true(browser.execute_script(loaded)), 10, "tracker.js")
        browser.execute_script(
            "leadflow.track('page_view'); leadflow.identify('lead-x'); leadflow.flush()"
        )
        assert browser.execute_script("return window.__beacons") == []
        assert browser.get_cookie("lf_aid") is None
        # Consent given: the page's view (and what was tracked) leaves, with a visitor cookie.
        browser.execute_script("leadflow.consent(true)")
        sent = [orjson.loads(s) for s in browser.execute_script("return window.__beacons")]
        assert [e["type"] for batch in sent for e in batch][:2] == ["page_view", "page_view"]
        assert browser.get_cookie("lf_aid") is not None
        # optOut: one opt_out, then nothing, on this page or the next.
        browser.execute_script("window.__beacons = []; leadflow.optOut()")
        (out,) = [orjson.loads(s) for s in browser.execute_script("return window.__beacons")]
        assert [e["type"] for e in out] == ["opt_out"]
        browser.execute_script("leadflow.track('page_view'); leadflow.flush()")
        browser.get(site.origin + "/pricing")
        await eventually(lambda: _true(browser.execute_script(loaded)), 10, "tracker.js")
        browser.execute_script("leadflow.flush()")
        assert browser.execute_script("return window.__beacons") == []
        assert browser.get_cookie("lf_aid") is None and browser.get_cookie("lf_optout") is not None
        # Do Not Track (and Global Privacy Control): nothing at all.
        browser.delete_all_cookies()
        browser.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {"source": "Object.defineProperty(navigator, 'doNotTrack', {get: () => '1'});"},
        )
        browser.get(site.origin + "/pricing")
        await eventually(lambda: _true(browser.execute_script(loaded)), 10, "tracker.js")
        browser.execute_script("leadflow.identify('lead-y'); leadflow.flush()")
        assert browser.execute_script("return window.__beacons") == []
        assert browser.get_cookie("lf_aid") is None
    finally:
        browser.quit()

    async def opt_out_arrived() -> bool:
        values = await _metrics(http, process)
        return (
            values.get(("leadflow_collector_events_accepted_total", (("source", "website"),)), 0)
            >= 3
        )

    await eventually(
        opt_out_arrived, 20, "the consented page views and the opt_out at the collector"
    )


async def _true(value: Any) -> bool:
    return bool(value)


async def _metrics(session: aiohttp.ClientSession, process: CollectorProcess) -> dict[Any, float]:
    return await metrics(session, process)
