/* leadflow tracker (docs/tracker.md): page views of anonymous visitors, identify, track.
   Served by `leadflow collector` at GET /v1/tracker.js; no dependencies. */
(function (w, d, n) {
  "use strict";
  var CONFIG = __LEADFLOW_CONFIG__; // {pages: [[match, type]], cookieDays: N}
  var me = d.currentScript || d.querySelector("script[data-leadflow-token]");
  var stub = w.leadflow || {};
  var pending = stub.q || [];
  var token = me && me.getAttribute("data-leadflow-token");
  var endpoint = me && new URL("/v1/events?token=" + encodeURIComponent(token || ""), me.src).href;
  var askConsent = me && me.getAttribute("data-leadflow-consent") === "required";
  var AID = "lf_aid", OUT = "lf_optout", LEAD = "lf_lead";
  var queue = [], timer = null;

  function cookie(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function setCookie(name, value, days) {
    d.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + Math.round(days * 86400) +
      "; Path=/; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
  }
  function uuid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 3) | 8).toString(16);
    });
  }
  function hash(text) { // the lead is remembered as a hash only (docs/tracker.md)
    for (var h = 5381, i = 0; i < text.length; i++) h = ((h * 33) ^ text.charCodeAt(i)) >>> 0;
    return h.toString(36);
  }
  var dnt = n.doNotTrack === "1" || w.doNotTrack === "1" || n.globalPrivacyControl === true;
  var off = !token || dnt || cookie(OUT) === "1";
  // Consent given on an earlier page: the visitor's cookie exists only once consent was given.
  var consented = !askConsent || cookie(AID) !== null;

  function visitor() {
    var id = cookie(AID);
    if (!id) id = uuid();
    setCookie(AID, id, CONFIG.cookieDays); // refreshed on every page: a first-party cookie
    return id;
  }
  function event(fields) {
    fields.event_id = uuid();
    fields.anonymous_id = consented && !off ? visitor() : null; // no cookie before consent
    fields.occurred_at = new Date().toISOString();
    return fields;
  }
  function flush() {
    if (timer) { clearTimeout(timer); timer = null; }
    if (off || !consented || !queue.length) return;
    var body = JSON.stringify(queue.splice(0, 50));
    // text/plain: a simple request (no preflight); sendBeacon survives the page unloading.
    var blob = new Blob([body], {type: "text/plain"});
    if (!(n.sendBeacon && n.sendBeacon(endpoint, blob))) {
      fetch(endpoint, {method: "POST", body: body, keepalive: true, mode: "no-cors"});
    }
    if (queue.length) flush();
  }
  function push(fields, now) {
    if (off) return;
    queue.push(fields);
    if (!consented) return; // kept for this page only; sent if consent comes, else dropped
    if (now || queue.length >= 10) flush();
    else if (!timer) timer = setTimeout(flush, 2000);
  }
  function pageType(path) {
    for (var i = 0; i < CONFIG.pages.length; i++) {
      var rule = CONFIG.pages[i][0];
      var hit = rule.charAt(0) === "~" ? new RegExp(rule.slice(1)).test(path)
        : path === rule || path.indexOf(rule.replace(/\/$/, "") + "/") === 0;
      if (hit) return CONFIG.pages[i][1];
    }
    return "page_view";
  }
  var api = {
    page: function () {
      push(event({type: pageType(location.pathname), properties: {
        path: location.pathname, title: d.title, referrer: d.referrer || undefined}}));
    },
    track: function (type, properties) {
      push(event({type: String(type), properties: properties || undefined}));
    },
    identify: function (leadId) {
      if (off || !leadId) return;
      var known = cookie(LEAD);
      // Another lead on this browser (a shared computer): a new visitor id, so the earlier
      // visits stay with the first lead and this one starts clean.
      if (known && known !== hash(String(leadId)) && consented) setCookie(AID, uuid(), CONFIG.cookieDays);
      if (consented) setCookie(LEAD, hash(String(leadId)), CONFIG.cookieDays);
      push(event({type: "identify", lead_id: String(leadId)}), true);
    },
    consent: function (given) {
      if (given === false) {
        consented = false; queue = [];
        setCookie(AID, "", 0); setCookie(LEAD, "", 0);
        return;
      }
      consented = true;
      for (var i = 0; i < queue.length; i++) queue[i].anonymous_id = visitor();
      flush();
    },
    optOut: function () {
      if (!off) {
        if (consented) { queue.push(event({type: "opt_out"})); flush(); }
        setCookie(OUT, "1", 3650); setCookie(AID, "", 0); setCookie(LEAD, "", 0);
      }
      off = true; queue = [];
    },
    flush: flush
  };
  w.leadflow = api;
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") flush(); });
  w.addEventListener("pagehide", flush);
  if (!(me && me.getAttribute("data-leadflow-manual") === "true")) api.page();
  for (var i = 0; i < pending.length; i++) {
    var call = pending[i];
    if (api[call[0]]) api[call[0]].apply(null, call[1]);
  }
})(window, document, navigator);
