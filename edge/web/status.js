// The node's status page: polls /api/status (this node, nothing else) every POLL_MS and draws what it says,
// the bandwidth graph as SVG made here. No library, nothing from the internet. window.hearthStatus exposes the
// page's state to tests.
"use strict";
(function () {
  const POLL_MS = 2000;
  const SERIES = ["served_lan", "served_wan", "fetched_lan", "fetched_wan"];
  const LABELS = { served_lan: "served, LAN", served_wan: "served, WAN", fetched_lan: "fetched, LAN",
                   fetched_wan: "fetched, WAN" };
  const SVG = "http://www.w3.org/2000/svg";
  const state = { doc: null, errors: [], updates: 0, paths: {}, csrf: null };
  window.hearthStatus = state;
  const $ = (id) => document.getElementById(id);

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
    for (const [u, f] of units) if (Math.abs(n) >= f) return (n / f).toFixed(1).replace(/\.0$/, "") + " " + u;
    return n.toLocaleString("en") + " B";
  }
  function rate(n) {
    if (!n) return "0 B/s";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB/s";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB/s";
    return Math.round(n) + " B/s";
  }
  function duration(s) {
    s = Math.round(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + (s % 60) + " s";
    return s + " s";
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function fill(parent, children) {
    parent.replaceChildren(...children);
  }
  function pairs(dl, rows) {
    const out = [];
    for (const [k, v] of rows) { out.push(el("dt", k)); out.push(el("dd", v)); }
    fill(dl, out);
  }

  function renderNode(doc) {
    const n = doc.node;
    $("name").textContent = n.name;
    const h = $("health");
    h.textContent = n.health.state;
    h.className = "badge " + n.health.state;
    pairs($("node"), [["name", n.name], ["id", n.id], ["version", n.version], ["slot", n.slot || "– (not an image)"],
      ["up", duration(n.uptime)], ["health", n.health.state], ["admission", n.admission],
      ["serving", n.endpoint || "–"]]);
    fill($("problems"), n.health.problems.map((p) => el("li", p)));
  }

  function renderNeighbours(doc) {
    const rows = doc.neighbours.map((p) => {
      const tr = el("tr");
      tr.dataset.node = p.node;
      for (const v of [p.node.slice(0, 16) + "…", p.link.toUpperCase(), p.address || "–", p.score.toFixed(3),
        p.rtt_ms === null ? "–" : p.rtt_ms + " ms", p.throughput === null ? "–" : rate(p.throughput),
        p.rejected ? "rejected: " + p.rejected : Math.round(p.uptime * 100) + "%"]) tr.appendChild(el("td", v));
      tr.firstChild.title = p.node;
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr"), td = el("td", "no neighbours yet");
      td.colSpan = 7;
      tr.appendChild(td);
      rows.push(tr);
    }
    fill(document.querySelector("#neighbours tbody"), rows);
  }

  function renderStorage(doc) {
    const s = doc.storage;
    pairs($("storage"), [["pinned", bytes(s.pinned_bytes)], ["cache", bytes(s.cached_bytes)],
      ["lent to neighbours", bytes(s.lent_bytes) + " in " + s.lent_pieces + " piece(s), of a share of " +
        bytes(s.share)],
      ["protected pins", s.protected.length ? s.protected.map((p) => p.cid.slice(0, 14) + "… " + p.k + "+" + p.m +
        " on " + p.holders + ": " + (p.healthy === null ? "not audited yet" : p.healthy + " of " + p.pieces +
        " pieces healthy")).join("; ") : "none"], ["blocks", s.blocks.toLocaleString("en")],
      ["in all", bytes(s.bytes)], ["pins", String(s.pins)],
      ["quota", s.quota === null ? "none" : bytes(s.quota) + " (from " + s.quota_from + ")"],
      ["disk free", bytes(s.disk_free) + " of " + bytes(s.disk_size)],
      ["quarantined", String(s.quarantined)]]);
    const st = $("storage");
    st.dataset.pinned = s.pinned_bytes;
    st.dataset.cached = s.cached_bytes;
    st.dataset.blocks = s.blocks;
    st.dataset.bytes = s.bytes;
  }

  function renderFetches(doc) {
    const items = [];
    for (const f of doc.fetches) {
      const div = el("div");
      let text = f.root.slice(0, 20) + "…: " + bytes(f.done);
      if (f.total) text += " of " + bytes(f.total) + " (" + f.percent + "%)";
      if (f.rate) text += ", " + rate(f.rate);
      if (f.eta !== null && f.eta !== undefined) text += ", " + duration(f.eta) + " left";
      div.appendChild(el("div", text));
      const bar = el("div", undefined, "bar"), inner = el("div");
      inner.style.width = (f.percent || 0) + "%";
      bar.appendChild(inner);
      div.appendChild(bar);
      items.push(div);
    }
    if (!items.length) items.push(el("p", "no fetch running"));
    fill($("fetches"), items);
    const jobs = [el("p", "transcodes running: " + doc.jobs.transcodes + " of " + doc.jobs.slots + " slot(s)")];
    for (const h of doc.jobs.here) {
      const since = h.started ? ", for " + duration(Date.now() / 1000 - h.started) : "";
      jobs.push(el("div", (h.what || "a transcode") + since));
    }
    for (const j of doc.jobs.neighbours) {
      jobs.push(el("div", (j.role === "for" ? "for " : "on ") + String(j.peer).slice(0, 12) + "…: " + j.state + ", " +
        duration(j.done) + (j.total ? " of " + duration(j.total) + " (" + j.percent + "%)" : "")));
      const bar = el("div", undefined, "bar"), inner = el("div");
      inner.style.width = (j.percent || 0) + "%";
      bar.appendChild(inner);
      jobs.push(bar);
    }
    fill($("jobs"), jobs);
  }

  function renderStreams(doc) {
    const items = doc.streams.map((s) => {
      const li = el("li"), a = el("a", s.name);
      a.href = s.url;
      li.appendChild(a);
      li.appendChild(document.createTextNode(" " + s.kind + (s.duration ? ", " + duration(s.duration) : "")));
      return li;
    });
    if (!items.length) items.push(el("li", "none yet: hearth media import FILE"));
    fill($("streams"), items);
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // per-minute bytes of each series as rates (bytes a second), oldest left, newest right
  function renderGraph(doc) {
    const bw = doc.bandwidth, h = bw.history, rows = h.rows;
    const now = bw.now;
    fill($("now"), [el("span", "now: " + SERIES.map((k) => LABELS[k] + " " + rate(now[k])).join(" · "))]);
    const caps = bw.caps || {}, bo = bw.backoff, share = bw.schedule_share;
    const cap = (k) => caps[k] ? rate(caps[k]) : "none";
    let limits = "caps in force: upload WAN " + cap("up_wan") + ", LAN " + cap("up_lan") + " · download WAN " +
      cap("down_wan") + ", LAN " + cap("down_lan");
    if (share) limits += " · schedule " + Math.round(share.fraction * 100) + "%" +
      (bw.clock_synchronised ? "" : " (clock not set: most conservative)");
    if (bo) limits += " · back-off " + (bo.active ? "ACTIVE at " + rate(bo.rate) : "idle") + " (" + bo.signal +
      ", " + bo.events + " since start)";
    $("limits-now").textContent = limits;
    const g = $("graph");
    const W = Math.max(200, Math.round(g.clientWidth || 720)), H = 200, top = 14, bottom = 184;
    g.setAttribute("viewBox", "0 0 " + W + " " + H);   // drawn at the size shown: text is not stretched
    const parts = [svg("line", { x1: 0, y1: bottom, x2: W, y2: bottom, class: "axis" })];
    // the household's back-offs (the governor's recent events: start, seconds or null while on) as shading
    if (rows.length && bo && bo.recent) {
      const t0 = rows[0][0], spanS = rows.length * h.step, tx = (t) => (t - t0) / spanS * W;
      for (const [start, secs] of bo.recent) {
        const x0 = Math.max(0, tx(start)), x1 = Math.min(W, tx(secs === null ? t0 + spanS : start + secs));
        if (x1 > x0 - 1) parts.push(svg("rect", { x: x0, y: top, width: Math.max(1, x1 - x0), height: bottom - top,
          class: "backoff" }));
      }
    }
    let max = 1;
    for (const r of rows) for (let i = 1; i <= SERIES.length; i++) max = Math.max(max, r[i] / h.step);
    // each minute is a step as wide as its share of the graph, so even the first minute is a visible line
    const x = (i) => i / Math.max(1, rows.length) * W;
    const y = (v) => bottom - v / h.step / max * (bottom - top);
    SERIES.forEach((name, k) => {
      const d = rows.map((r, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(r[k + 1]).toFixed(1) +
        " L" + x(i + 1).toFixed(1) + " " + y(r[k + 1]).toFixed(1)).join(" ");
      state.paths[name] = d;
      if (d) parts.push(svg("path", { d: d, class: "series-" + name }));
    });
    parts.push(svg("text", { x: 4, y: 11 }, rate(max) + " (a minute's average)"));
    if (rows.length) {
      const t = (s) => new Date(s * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      parts.push(svg("text", { x: 4, y: H - 3 }, t(rows[0][0])));
      parts.push(svg("text", { x: W - 4, y: H - 3, "text-anchor": "end" }, t(rows[rows.length - 1][0])));
    }
    fill(g, parts);
    fill($("legend"), SERIES.map((k) => { const s = el("span"); s.appendChild(el("i", "", k));
      s.appendChild(document.createTextNode(LABELS[k])); return s; }));
  }

  const HELP = { upload_limit: "upload to WAN (e.g. 2.5M; 0: none)", lan_upload_limit: "upload to LAN",
                 download_limit: "download from WAN", lan_download_limit: "download from LAN",
                 wan_floor: "WAN floor while backed off", wear_budget: "SD writes a day (e.g. 2G; 0: none)",
                 limit_schedule: "schedule (one entry a line, e.g. 01:00-07:00 100%)" };
  let shown = {};   // the settings as last put in the form (only what the user changes is sent)
  function renderAdmin(doc) {
    const a = doc.admin || { enabled: false };
    state.csrf = a.csrf || null;
    $("admin-off").hidden = a.enabled;
    $("login").hidden = !a.enabled || a.session;
    $("limits").hidden = !a.enabled || !a.session;
    if (!a.session || !a.settings || $("fields").contains(document.activeElement) || state.dirty) return;
    const rows = [];
    shown = {};
    for (const [name, value] of Object.entries(a.settings)) {
      const label = el("label"), list = Array.isArray(value);
      label.appendChild(el("span", HELP[name] || name));
      const input = el(list ? "textarea" : "input");
      input.name = name;
      input.value = list ? value.join("\n") : String(value);
      shown[name] = input.value;
      label.appendChild(input);
      rows.push(label);
    }
    fill($("fields"), rows);
  }

  // the day's history is sent once; later polls send the minutes from the last one the page has on
  function mergeHistory(doc) {
    const h = doc.bandwidth.history, old = state.doc && state.doc.bandwidth.history;
    // a poll gives a minute or two; more means the clock was set (every row's time moved): take them whole
    if (!h.whole && old && h.rows.length <= 3) {
      const first = h.rows.length ? h.rows[0][0] : Infinity;
      h.rows = old.rows.filter((r) => r[0] < first - 30).concat(h.rows).slice(-1440);
    }
  }

  function render(doc) {
    mergeHistory(doc);
    state.doc = doc;
    for (const fn of [renderNode, renderGraph, renderNeighbours, renderStorage, renderFetches, renderStreams,
      renderAdmin]) {
      try { fn(doc); } catch (err) { state.errors.push(fn.name + ": " + err.message); }
    }
    state.updates++;
    $("updated").textContent = new Date().toLocaleTimeString();
  }

  let timer = null;
  function poll() {
    clearTimeout(timer);
    const rows = state.doc ? state.doc.bandwidth.history.rows : [];
    const url = rows.length ? "/api/status?since=" + rows[rows.length - 1][0] : "/api/status";
    return fetch(url, { cache: "no-store", credentials: "same-origin" })
      .then((r) => { if (!r.ok) throw new Error("the node answered " + r.status); return r.json(); })
      .then(render)
      .catch((err) => {
        state.errors.push("poll: " + err.message);
        $("updated").textContent = "cannot reach the node (" + err.message + ")";
      })
      .finally(() => { timer = setTimeout(poll, POLL_MS); });
  }

  function post(path, body, headers) {
    return fetch(path, { method: "POST", credentials: "same-origin", cache: "no-store",
      headers: Object.assign({ "content-type": "application/json" }, headers || {}), body: JSON.stringify(body) })
      .then((r) => r.text().then((text) => ({ ok: r.ok, status: r.status, text: text })));
  }
  function say(text) { $("admin-msg").textContent = text; }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    say("checking…");
    post("/api/admin/login", { password: $("password").value }).then((r) => {
      $("password").value = "";
      state.lastLogin = r.status;
      say(r.ok ? "logged in" : r.text.trim());
      return poll();
    }).catch((err) => say("the node did not answer: " + err.message));
  });
  $("fields").addEventListener("input", () => { state.dirty = true; });
  $("limits").addEventListener("submit", (e) => {
    e.preventDefault();
    const changes = {};
    for (const input of $("fields").querySelectorAll("input, textarea")) {
      if (input.value === shown[input.name]) continue;
      changes[input.name] = input.tagName === "TEXTAREA"
        ? input.value.split("\n").map((l) => l.trim()).filter((l) => l) : input.value.trim();
    }
    if (!Object.keys(changes).length) { say("nothing changed"); return; }
    post("/api/admin/limits", { settings: changes }, { "x-csrf-token": state.csrf || "" }).then((r) => {
      state.lastChange = r.status;
      if (r.ok) {
        state.dirty = false;
        const done = JSON.parse(r.text);
        say(["saved"].concat(done.notes).join("; "));
      } else say(r.text.trim());
      return poll();
    }).catch((err) => say("the node did not answer: " + err.message));
  });
  $("logout").addEventListener("click", () => {
    post("/api/admin/logout", {}, { "x-csrf-token": state.csrf || "" }).then(() => { say("logged out"); poll(); });
  });

  poll();
})();
