// The head-end dashboard: reads the JSON API, re-reads it whenever the server's event stream
// says the store changed, and polls instead while that stream is down.
"use strict";

const POLL_MS = Number(document.body.dataset.pollMs) || 5000;
const PAGE_SIZE = 50;
const FEED_SIZE = 20;
const PRIORITIES = ["alarm", "ack", "ondemand", "bulk"]; // the gateway's names, most urgent first
const LOG_TICKS = [0.01, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 3600, 14400, 86400];

const state = {
  offset: 0,
  metersTotal: 0,
  selected: null, // the meter shown in the detail panel
  lastMessageId: null, // highest message id in the feeds, for ?after_id=
  lastEventId: null,
  messages: [],
  events: [],
  now: Date.now() / 1000, // server time of the last answer: ages are computed against it
};

// ---- small helpers ---------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function cell(child, className) {
  const td = el("td", null, className);
  td.append(child);
  return td;
}

function fill(tbody, rows, emptyText, columns) {
  if (rows.length === 0) {
    const td = el("td", emptyText, "muted");
    td.colSpan = columns;
    rows = [row([td])];
  }
  tbody.replaceChildren(...rows);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("login");  // the session ended (expired, or the head-end restarted)
    throw new Error("logged out");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const fixed3 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 3, maximumFractionDigits: 3 });

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 100) return integer.format(value);
  return value.toFixed(value >= 10 ? 1 : 2);
}

function age(ts) {
  const s = Math.max(0, state.now - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function meterTime(ts) {
  // Meter clocks may run fast (simulated fleets): show their date and time as they say it.
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString("en-GB");
}

// A cell with a JSON value cut short; the whole of it shows on hover.
function jsonCell(value, max) {
  if (value === null || value === undefined) return el("td", "");
  const text = JSON.stringify(value);
  const td = el("td", text.length > max ? text.slice(0, max - 1) + "…" : text, "mono small json");
  td.title = text;
  return td;
}

// Registers are scaled integers: Wh, dV, litres (see device_agents/agent/flows.py).
function latestRead(registers) {
  const parts = [];
  if (registers["1.8.0"] !== undefined) parts.push(`${fixed3.format(registers["1.8.0"] / 1000)} kWh in`);
  if (registers["2.8.0"]) parts.push(`${fixed3.format(registers["2.8.0"] / 1000)} kWh out`);
  if (registers["32.7.0"] !== undefined) parts.push(`${(registers["32.7.0"] / 10).toFixed(1)} V`);
  if (registers.vb !== undefined) parts.push(`${fixed3.format(registers.vb / 1000)} m³ (base)`);
  else if (registers.vm !== undefined) parts.push(`${fixed3.format(registers.vm / 1000)} m³`);
  return parts.join(" · ") || "–";
}

function switchText(sw) {
  if (sw === 1) return el("span", "connected", "good");
  if (sw === 0) return el("span", "disconnected", "bad");
  return el("span", "–", "muted");
}

function statusBadge(status) {
  return el("span", status, `badge ${status}`);
}

// ---- rendering -------------------------------------------------------------------------

function renderOverview(o) {
  state.now = o.now;
  state.metersTotal = o.meters.total;
  $("meters-online").textContent = integer.format(o.meters.online);
  $("meters-total").textContent = integer.format(o.meters.total);
  // Registered at the gateways (their reports) may run ahead of heard from (the MDMS's).
  const registered = o.meters.registered;
  $("meters-registered").textContent = registered === null || registered === undefined
    ? "" : `${integer.format(registered)} registered at the gateways`;
  const families = Object.entries(o.messages);
  const total = families.reduce((sum, [, n]) => sum + n, 0);
  $("messages-total").textContent = integer.format(total);
  $("messages-by-family").textContent = families.map(([f, n]) => `${f} ${integer.format(n)}`).join(" · ");
  $("alarms").textContent = integer.format(o.alarms);
  $("alerts").textContent = `+ ${integer.format(o.alerts)} alerts`;
  $("commands-pending").textContent = integer.format(o.commands.pending);
  $("commands-answered").textContent = integer.format(o.commands.answered);
  $("commands-failed").textContent = integer.format(o.commands.failed);
  $("commands-timed-out").textContent = integer.format(o.commands["timed-out"]);
  renderOutbox(o.gateways, o.outbox);
}

// The server adds the gateways' reports up (queued and shed, in all and per priority).
function renderOutbox(gateways, totals) {
  const daps = Object.keys(gateways);
  const depth = {}; // priority -> [depth per dap]
  for (const p of PRIORITIES) depth[p] = daps.map((dap) => gateways[dap].queued[p] || 0);
  $("outbox-total").textContent = daps.length ? integer.format(totals.queued) : "–";
  $("outbox-shed").textContent = daps.length ? integer.format(totals.shed) : "–";
  $("outbox-shed-by").textContent = PRIORITIES.filter((p) => totals.shed_by_priority[p])
    .map((p) => `${p} ${integer.format(totals.shed_by_priority[p])}`).join(" · ");
  if (!window.Plotly) return;
  const colors = ["#c0392b", "#e67e22", "#2e86c1", "#95a5a6"];
  const traces = PRIORITIES.map((p, i) => ({
    type: "bar", name: `P${i} ${p}`, x: daps, y: depth[p], marker: { color: colors[i] },
  }));
  Plotly.react($("outbox-chart"), traces, {
    barmode: "stack", height: 260, margin: { l: 45, r: 10, t: 10, b: 40 },
    legend: { orientation: "h", y: -0.2, traceorder: "normal" }, yaxis: { title: { text: "messages" }, rangemode: "tozero" },
    xaxis: { type: "category" },
  }, { displayModeBar: false, responsive: true });
}

function renderLatency(families) {
  const names = Object.keys(families);
  const rows = names.map((f) => {
    const s = families[f];
    const within = s.budget_s === null ? "–" : `${(100 * s.within_budget / s.count).toFixed(1)} %`;
    const late = s.budget_s !== null && s.p95 > s.budget_s;
    return row([f, integer.format(s.count), seconds(s.p50), el("td", seconds(s.p95), late ? "bad" : ""),
      seconds(s.p99), seconds(s.max), seconds(s.budget_s), within]);
  });
  fill($("latency").tBodies[0], rows, "no messages yet", 8);
  if (!window.Plotly) return;
  const trace = (key, color) => ({
    type: "bar", name: key, x: names, y: names.map((f) => Math.max(families[f][key], 0.001)),
    marker: { color },
  });
  const budget = {
    type: "scatter", mode: "markers", name: "budget", x: names,
    y: names.map((f) => families[f].budget_s),
    marker: { symbol: "line-ew", size: 46, line: { width: 3, color: "#c0392b" } },
    hovertemplate: "budget %{y} s<extra></extra>",
  };
  Plotly.react($("latency-chart"), [trace("p50", "#85c1e9"), trace("p95", "#2e86c1"),
    trace("p99", "#1b4f72"), budget], {
    barmode: "group", height: 280, margin: { l: 55, r: 10, t: 10, b: 40 },
    legend: { orientation: "h", y: -0.18 },
    yaxis: { type: "log", title: { text: "seconds (log)" }, tickvals: LOG_TICKS, ticktext: LOG_TICKS.map(String) },
  }, { displayModeBar: false, responsive: true });
}

function renderMeters(meters) {
  const rows = meters.map((m) => {
    const tr = row([
      el("td", m.meter, "mono"),
      m.dap,
      cell(el("span", m.online ? "online" : "offline", m.online ? "dot online" : "dot offline")),
      cell(switchText(m.switch)),
      el("td", latestRead(m.registers), "read"),
      meterTime(m.read_at),
      age(m.last_seen),
      integer.format(m.messages),
      el("td", integer.format(m.alarms), m.alarms ? "bad" : ""),
    ]);
    tr.dataset.meter = m.meter;
    if (m.meter === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => selectMeter(m.meter));
    return tr;
  });
  fill($("meters").tBodies[0], rows, "no meter has reported yet", 9);
  const last = state.offset + meters.length;
  $("page").textContent = meters.length
    ? `${state.offset + 1}–${last} of ${state.metersTotal} heard from` : "";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.metersTotal;
}

function renderCommands(tbody, commands, withMeter) {
  const rows = commands.map((c) => {
    const answer = c.answered_at === null ? "–" : seconds(c.answered_at - c.issued_at);
    const cells = withMeter
      ? [el("td", c.id, "mono"), el("td", c.meter, "mono"), c.name, c.issued_by,
        cell(statusBadge(c.status)), answer, jsonCell(c.result, 40)]
      : [c.name, cell(statusBadge(c.status)), jsonCell(c.result, 40)];
    const tr = row(cells);
    tr.dataset.command = c.id;
    return tr;
  });
  fill(tbody, rows, "no commands", withMeter ? 7 : 3);
}

function merge(feed, fresh) {
  // Fresh messages come newest first; keep the newest FEED_SIZE, no duplicates.
  const seen = new Set(fresh.map((m) => m.id));
  return fresh.concat(feed.filter((m) => !seen.has(m.id))).slice(0, FEED_SIZE);
}

function renderEvents() {
  const items = state.events.map((m) => {
    const c = m.content;
    const li = el("li", null, m.ptype === "alarm" ? "alarm" : "");
    li.append(el("span", clock(m.received_at), "muted"), " ", el("b", m.meter, "mono"), " ",
      el("span", m.flow), " ", el("span", c.ev || "", "mono small"));
    if (c.e) li.append(" ", el("span", `error ${c.e}${c.cmd ? " in " + c.cmd : ""}`, "bad small"));
    if (c.ref !== undefined) li.append(" ", el("span", `re ${c.ref}`, "muted small"));
    return li;
  });
  if (items.length === 0) items.push(el("li", "no events", "muted"));
  $("events").replaceChildren(...items);
}

function renderMessages() {
  const rows = state.messages.map((m) => {
    const late = m.budget_s !== null && m.latency > m.budget_s;
    return row([String(m.id), el("td", m.meter, "mono"), m.family, m.flow, m.ptype, String(m.size),
      el("td", seconds(m.latency), late ? "bad" : ""), clock(m.received_at)]);
  });
  fill($("messages").tBodies[0], rows, "no messages yet", 8);
}

function renderDetail(m) {
  const panel = $("meter-detail");
  if (!m) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  $("detail-name").textContent = m.meter;
  $("detail-summary").textContent = `${m.online ? "online" : "offline"} on ${m.dap} · ` +
    `switch ${m.switch === 1 ? "connected" : m.switch === 0 ? "disconnected" : "unknown"} · ` +
    `${latestRead(m.registers)} · first heard ${age(m.first_seen)}, last ${age(m.last_seen)}`;
  fill($("detail-messages").tBodies[0], m.recent.map((r) => row([String(r.seq ?? "–"), r.flow,
    r.ptype, meterTime(r.meter_ts), seconds(r.latency), jsonCell(r.content, 48)])),
  "no messages", 6);
  renderCommands($("detail-commands").tBodies[0], m.commands, false);
}

// ---- loading ---------------------------------------------------------------------------

function feedQuery(after, extra) {
  const params = new URLSearchParams({ limit: String(FEED_SIZE), ...extra });
  if (after !== null) params.set("after_id", String(after));
  return `api/messages?${params}`;
}

async function load() {
  const [overview, meters, latency, commands, messages, events, detail] = await Promise.all([
    getJSON("api/overview"),
    getJSON(`api/meters?limit=${PAGE_SIZE}&offset=${state.offset}`),
    getJSON("api/latency"),
    getJSON("api/commands?limit=15"),
    getJSON(feedQuery(state.lastMessageId, {})),
    getJSON(feedQuery(state.lastEventId, { family: "event" })),
    state.selected ? getJSON(`api/meters/${encodeURIComponent(state.selected)}`).catch(() => null) : null,
  ]);
  renderOverview(overview);
  renderMeters(meters.meters);
  renderLatency(latency.families);
  renderCommands($("commands").tBodies[0], commands.commands, true);
  state.messages = merge(state.messages, messages.messages);
  state.events = merge(state.events, events.messages);
  if (state.messages.length) state.lastMessageId = Math.max(state.lastMessageId ?? 0, state.messages[0].id);
  if (state.events.length) state.lastEventId = Math.max(state.lastEventId ?? 0, state.events[0].id);
  renderMessages();
  renderEvents();
  renderDetail(detail && detail.meter);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
  document.body.dataset.version = String(overview.version);
}

// One refresh at a time; changes that arrive meanwhile cause exactly one more.
let refreshing = false;
let again = false;

async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    do {
      again = false;
      await load();
    } while (again);
    document.body.classList.remove("failing");
  } catch (error) {
    document.body.classList.add("failing");
    $("updated").textContent = `update failed: ${error.message}`;
  } finally {
    refreshing = false;
  }
}

// ---- live updates ----------------------------------------------------------------------

let pollTimer = null;

function setLive(mode) {
  const live = $("live");
  live.dataset.mode = mode;
  live.textContent = mode === "live" ? "live" : mode === "polling" ? `polling every ${POLL_MS / 1000} s` : mode;
}

function startPolling() {
  if (pollTimer === null) pollTimer = setInterval(refresh, POLL_MS);
  setLive("polling");
}

function stopPolling() {
  if (pollTimer !== null) clearInterval(pollTimer);
  pollTimer = null;
}

function follow() {
  if (!window.EventSource) {
    startPolling();
    return;
  }
  const source = new EventSource("api/stream");
  source.addEventListener("change", refresh);
  source.addEventListener("open", () => {
    stopPolling();
    setLive("live");
  });
  // The browser retries a dropped stream by itself (and gives up on a refused one); poll
  // until it is back.
  source.addEventListener("error", startPolling);
}

function selectMeter(meter) {
  state.selected = meter;
  refresh();
}

$("detail-close").addEventListener("click", () => selectMeter(null));
$("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  refresh();
});
$("next").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  refresh();
});

refresh();
follow();
