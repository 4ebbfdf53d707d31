// The live dashboard: reads /dashboard/events (server-sent events over fetch, so the
// bearer token can go in a header) and redraws on every snapshot. No framework, no build.
"use strict";

const TOKEN_KEY = "ledger-token";
const EVIDENCE_SHOWN = 5;
const RETRY_MS = 2000;
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
const params = new URLSearchParams(location.search);
let current = null;      // AbortController of the open stream
let retryTimer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function setStatus(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + kind;
}

// Rows keyed by `key`; a cell is text or a node. `numeric`: the right-aligned columns
// (default: the last). A row whose text changed flashes.
function table(body, rows, key, cells, numeric = null) {
  const before = new Map([...body.rows].map((r) => [r.dataset.key, r.dataset.value]));
  body.replaceChildren(...rows.map((row) => {
    const cs = cells(row);
    const nums = numeric || [cs.length - 1];
    const text = cs.map((c) => (c instanceof Node ? c.textContent : String(c)));
    const tr = el("tr", { "data-key": row[key], "data-value": text.join("|") });
    cs.forEach((c, i) => tr.append(el("td", nums.includes(i) ? { class: "num" } : {}, c)));
    if (before.size && before.get(tr.dataset.key) !== tr.dataset.value) tr.classList.add("changed");
    return tr;
  }));
}

// An epoch-ms time as a <time>, short (the exact instant in its datetime attribute).
function when(ms, timeStyle = "medium") {
  const d = new Date(ms);
  if (typeof ms !== "number" || Number.isNaN(d.getTime())) return el("span", {}, "–");
  return el("time", { datetime: d.toISOString(), title: d.toString() },
    d.toLocaleString([], { dateStyle: "short", timeStyle }));
}

function level(n, extra = "") {
  return el("span", { class: ("pill level " + extra).trim(), title: `gifter level ${n}` }, `Lv ${n}`);
}

// The viewer's name, their gifter level, and the stream's top gifter mark (from the
// row's badge: the server decides who carries it).
function viewer(r) {
  const cell = el("span", { class: "viewer" }, el("span", { class: "who" }, r.user_id));
  if (Number.isInteger(r.gifter_level)) cell.append(" ", level(r.gifter_level));
  if (r.badge === "top_gifter") {
    cell.append(" ", el("span", { class: "pill top", title: "a top gifter of this stream" }, "top gifter"));
  }
  return cell;
}

function drawGifters(s) {
  $("stream-name").textContent = s.stream_id || "–";
  table($("gifters"), s.gifters, "user_id", (r) => [r.rank, viewer(r), fmt.format(r.coins)]);
  $("gifters-empty").hidden = s.gifters.length > 0;
  $("gifters-empty").textContent = s.stream_id ? "No gifts on this stream yet." : "Choose a stream above.";
}

function drawCreators(s) {
  $("day").textContent = s.day;
  table($("creators"), s.creators, "creator_id", (r) => [r.rank, r.creator_id, fmt.format(r.diamonds)]);
  for (const tr of $("creators").rows) {
    tr.dataset.creator = tr.dataset.key;
    tr.title = "Chart this creator";
  }
}

function hhmm(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function drawChart(s) {
  const svg = $("chart"), points = s.diamonds_per_minute;
  $("chart-creator").textContent = s.creator_id || "–";
  const top = Math.max(0, ...points.map((p) => p.diamonds));
  const max = Math.max(1, top);  // the scale; the label shows the real top
  const w = 600 / Math.max(1, points.length);
  svg.replaceChildren(...points.map((p, i) => {
    const h = (p.diamonds / max) * 190;
    const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    bar.setAttribute("x", i * w + 1);
    bar.setAttribute("width", Math.max(1, w - 2));
    bar.setAttribute("y", 200 - h);
    bar.setAttribute("height", h);
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = `${hhmm(p.start)}: ${fmt.format(p.diamonds)} diamonds`;
    bar.append(tip);
    return bar;
  }));
  $("chart-from").textContent = points.length ? hhmm(points[0].start) : "";
  $("chart-to").textContent = points.length ? hhmm(points[points.length - 1].start) : "";
  $("chart-max").textContent = points.length ? `max ${fmt.format(top)} / min` : "no creator yet";
}

// Evidence values named like times (window_start, first_ts, ...) are epoch ms: shown as times.
function detail(key, value) {
  if (typeof value === "number" && /(^|_)(start|end|ts)$/.test(key)) return new Date(value).toLocaleTimeString();
  return typeof value === "object" ? JSON.stringify(value) : value;
}

function drawAlerts(s) {
  $("alerts").replaceChildren(...s.alerts.map((a) => {
    const details = el("dl");
    for (const [k, v] of Object.entries(a.details || {})) {
      details.append(el("dt", {}, k), el("dd", {}, detail(k, v)));
    }
    const ids = a.event_ids || [];
    const more = ids.length > EVIDENCE_SHOWN ? ` and ${ids.length - EVIDENCE_SHOWN} more` : "";
    details.append(el("dt", {}, "events"), el("dd", {}, ids.slice(0, EVIDENCE_SHOWN).join(", ") + more));
    return el("li", { "data-rule": a.rule, "data-alert": a.alert_id },
      el("span", { class: `sev sev-${a.severity}` }, a.severity), " ",
      el("strong", {}, a.rule), ` ${a.subject_type} ${a.subject_id} `,
      el("span", { class: "muted" }, new Date(a.ts).toLocaleString()), details);
  }));
  $("alerts-empty").hidden = s.alerts.length > 0;
}

function drawLevelUps(s) {
  const ups = s.level_ups || [];  // newest first, as sent
  $("level-ups").replaceChildren(...ups.map((u) => el("li", { "data-badge": u.badge_id, "data-user": u.user_id },
    el("strong", { class: "who" }, u.user_id), " ", level(u.previous_level), " → ", level(u.level, "up"), " ",
    el("span", { class: "muted" }, when(u.ts)))));
  $("level-ups-empty").hidden = ups.length > 0;
}

function drawPromotions(s) {
  const promos = s.promotions || [];  // best first, as sent
  table($("promotions"), promos, "promo_id", (p) => [
    el("strong", {}, p.promo_id), `+${p.bonus_percent}%`, (p.packages || []).map((c) => fmt.format(c)).join(" · "),
    when(p.ends_ts, "short"), fmt.format(p.max_per_user)], [1, 4]);
  $("promotions-empty").hidden = promos.length > 0;
}

function drawFleet(f) {
  $("events-per-s").textContent = fmt.format(f.events_per_s);
  $("lag").textContent = fmt.format(f.lag);
  $("dead-letters").textContent = fmt.format(f.dead_letters_per_min);
  $("workers").textContent = f.workers.length;
  $("workers").title = f.workers.map((w) => `${w.worker}: ${w.partitions} partitions, ${w.events_per_s} ev/s, lag ${w.lag}`).join("\n");
}

function onEvent(type, data) {
  if (type === "snapshot") {
    const s = JSON.parse(data);
    drawFleet(s.fleet); drawGifters(s); drawCreators(s); drawLevelUps(s); drawPromotions(s); drawChart(s);
    drawAlerts(s);
    setStatus("live · " + new Date().toLocaleTimeString(), "live");
  } else if (type === "unavailable") {
    setStatus(JSON.parse(data).error, "down");
  }
}

// One server-sent event block: "event:", "data:" (possibly several) and comment lines.
function parseBlock(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length) onEvent(type, data.join("\n"));
}

async function connect() {
  clearTimeout(retryTimer);
  if (current) current.abort();
  const ctrl = (current = new AbortController());
  const query = new URLSearchParams();
  if ($("stream").value) query.set("stream", $("stream").value);
  if ($("creator").value) query.set("creator", $("creator").value);
  const headers = { Accept: "text/event-stream" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const res = await fetch("/dashboard/events?" + query, { headers, signal: ctrl.signal, cache: "no-store" });
    if (res.status === 401) {
      $("token-form").hidden = false;
      $("token-error").textContent = token ? "That token was refused." : "";
      setStatus("token needed", "down");
      return;
    }
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      setStatus(`error ${res.status}: ${body.error || res.statusText}`, "down");
      if (res.status < 500) return;  // a bad stream or creator id: retrying cannot help
    } else {
      $("token-form").hidden = true;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    }
  } catch (err) {
    if (ctrl.signal.aborted) return;
  }
  if (ctrl === current) {
    setStatus("reconnecting…", "down");
    retryTimer = setTimeout(connect, RETRY_MS);
  }
}

function choose(stream, creator) {
  $("stream").value = stream;
  $("creator").value = creator;
  const query = new URLSearchParams();
  if (stream) query.set("stream", stream);
  if (creator) query.set("creator", creator);
  history.replaceState(null, "", "?" + query);
  connect();
}

$("choose").addEventListener("submit", (e) => {
  e.preventDefault();
  choose($("stream").value.trim(), $("creator").value.trim());
});
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  connect();
});
$("creators").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-creator]");
  if (tr) choose($("stream").value, tr.dataset.creator);
});
choose(params.get("stream") || "", params.get("creator") || "");
