// The demo page: one live window on entity `asset`, kept by livequery.js.
// Infinite scroll reanchors the window (see "How this page works" in index.html).
import { LiveQueryClient, cursorOf } from "./livequery.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const hashParams = new URLSearchParams(location.hash.slice(1));
const MAX_WINDOW = Number(params.get("max")) || 500; // the entity's max_window (configs/tier.yaml)
const COLUMNS = ["name", "kind", "site", "temp", "owner"];
const HOT = 90;

const ui = {
  state: $("state"),
  counts: $("counts"),
  tokenForm: $("token-form"),
  token: $("token"),
  controls: $("controls"),
  windowText: $("window"),
  top: $("top"),
  scroller: $("scroller"),
  rows: $("rows"),
  more: $("more"),
};

const view = {
  client: null,
  sub: null,
  cursor: null, // the window starts strictly after this (null: the top)
  limit: 0,
  offset: 0, // rows slid past (approximate: writes above the cursor move it)
  busy: false, // a reanchor is in flight
  end: false, // the last complete window was shorter than its limit
  trs: new Map(), // id -> <tr>, reused across renders
  flashes: new Map(), // id -> op, to highlight at the next render
  scheduled: false,
};

function page() {
  return Number($("page").value);
}

function buildQuery() {
  const where = [];
  const kind = $("kind").value;
  const site = $("site").value;
  const minTemp = $("min-temp").value.trim();
  if (kind) where.push({ op: "eq", column: "kind", value: kind });
  if (site) where.push({ op: "eq", column: "site", value: site });
  if (minTemp !== "" && Number.isFinite(Number(minTemp))) {
    where.push({ op: "gte", column: "temp", value: Math.trunc(Number(minTemp)) });
  }
  return {
    entity: "asset",
    where,
    sort: [{ column: $("sort").value, desc: $("dir").value === "desc" }],
    limit: view.limit,
    cursor: view.cursor,
    mode: "maintained",
  };
}

// -- subscription -----------------------------------------------------------------

function open() {
  if (!view.client) return;
  const old = view.sub;
  view.cursor = null;
  view.limit = page();
  view.offset = 0;
  view.busy = false;
  view.end = false;
  view.flashes.clear();
  const sub = view.client.subscribe(buildQuery(), {
    transport: $("transport").value,
    onChange: (s, changes) => {
      if (s !== view.sub) return;
      for (const c of changes) {
        if (c.snapshot || !c.id) continue;
        if (c.op === "enter" || c.op === "match") view.flashes.set(c.id, "enter");
        else if (c.op === "move") view.flashes.set(c.id, "move");
        else if (c.op === "update") view.flashes.set(c.id, "update");
      }
      schedule();
    },
    onState: (s, state, detail) => {
      if (s !== view.sub) return;
      showState(state, detail);
      schedule();
    },
  });
  view.sub = sub;
  // Closed after the new one opened, so a WebSocket stays open across the switch.
  if (old) old.close().catch(() => {});
  showState(sub.state);
  schedule();
}

async function loadMore() {
  const sub = view.sub;
  if (!sub || view.busy || !sub.complete) return;
  const rows = sub.rows;
  if (rows.length < view.limit) {
    view.end = true; // the whole rest of the results is on screen
    schedule();
    return;
  }
  const step = page();
  let cursor = view.cursor;
  let limit = view.limit + step;
  let slid = 0;
  let shift = 0;
  if (limit > MAX_WINDOW) {
    // Slide: start after the last row of the first page; those rows drop off the top.
    slid = Math.min(step, rows.length - 1);
    cursor = cursorOf(sub.query, rows[slid - 1]);
    limit = view.limit;
    const first = view.trs.get(rows[0].id);
    const kept = view.trs.get(rows[slid].id);
    if (first && kept) shift = kept.offsetTop - first.offsetTop;
  }
  view.busy = true;
  schedule();
  try {
    await sub.reanchor(cursor, limit);
    if (sub !== view.sub) return;
    view.cursor = cursor;
    view.limit = limit;
    view.offset += slid;
    view.end = false;
    render();
    if (shift) ui.scroller.scrollTop -= shift; // keep the same rows under the eye
  } catch (e) {
    console.warn("reanchor failed", e);
  } finally {
    if (sub === view.sub) view.busy = false;
    schedule();
  }
}

async function backToTop() {
  const sub = view.sub;
  if (!sub || view.busy) return;
  view.busy = true;
  try {
    await sub.reanchor(null, page());
    if (sub !== view.sub) return;
    view.cursor = null;
    view.limit = page();
    view.offset = 0;
    view.end = false;
    ui.scroller.scrollTop = 0;
  } catch (e) {
    console.warn("reanchor failed", e);
  } finally {
    if (sub === view.sub) view.busy = false;
    schedule();
  }
}

function nearBottom() {
  const s = ui.scroller;
  return s.scrollTop + s.clientHeight >= s.scrollHeight - 60;
}

// -- rendering --------------------------------------------------------------------

function schedule() {
  if (view.scheduled) return;
  view.scheduled = true;
  requestAnimationFrame(() => {
    view.scheduled = false;
    render();
  });
}

function cell(td, value, col) {
  const isNull = value === null || value === undefined;
  const text = isNull ? "—" : String(value);
  if (td.textContent !== text) td.textContent = text;
  td.classList.toggle("null", isNull);
  if (col === "temp") td.classList.toggle("hot", !isNull && value >= HOT);
}

function makeRow() {
  const tr = document.createElement("tr");
  const classes = ["pos", "id", ...COLUMNS, "ver"];
  for (const c of classes) {
    const td = document.createElement("td");
    td.className = c === "temp" || c === "ver" || c === "pos" ? `${c} num` : c;
    tr.appendChild(td);
  }
  return tr;
}

function render() {
  const sub = view.sub;
  const items = sub ? sub.rows : [];
  const tbody = ui.rows;
  const seen = new Set();
  let prev = null;
  items.forEach((it, i) => {
    let tr = view.trs.get(it.id);
    if (!tr) {
      tr = makeRow();
      tr.dataset.id = it.id;
      view.trs.set(it.id, tr);
    }
    // Keyed on the text, not the index: a slide moves view.offset after the
    // new window may already have rendered, with every row at the same index.
    const pos = String(view.offset + i + 1);
    if (tr.cells[0].textContent !== pos) tr.cells[0].textContent = pos;
    if (tr.dataset.version !== String(it.version)) {
      tr.dataset.version = String(it.version);
      tr.cells[1].textContent = it.id;
      COLUMNS.forEach((c, k) => cell(tr.cells[2 + k], it.row[c], c));
      tr.cells[2 + COLUMNS.length].textContent = String(it.version);
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
    seen.add(it.id);
  });
  for (const [id, tr] of view.trs) {
    if (!seen.has(id)) {
      tr.remove();
      view.trs.delete(id);
    }
  }
  for (const [id, op] of view.flashes) {
    const tr = view.trs.get(id);
    if (!tr) continue;
    tr.classList.remove("flash-enter", "flash-update", "flash-move");
    void tr.offsetWidth; // restart the animation
    tr.classList.add(`flash-${op}`);
  }
  view.flashes.clear();
  renderStatus();
  // A full window that does not fill the screen cannot be scrolled: extend it now.
  if (sub && sub.complete && !view.busy && items.length === view.limit && nearBottom()) {
    loadMore();
  }
}

function renderStatus() {
  const sub = view.sub;
  const s = sub ? sub.stats : null;
  if (s) {
    const o = s.ops;
    ui.counts.textContent =
      `${sub.transport.toUpperCase()} · frames ${s.frames} · enter ${o.enter} · leave ${o.leave}` +
      ` · move ${o.move} · update ${o.update} · resets ${o.reset} · gaps ${s.gaps}` +
      ` · reconnects ${s.reconnects}`;
    ui.counts.dataset.frames = String(s.frames);
  }
  const n = sub ? sub.rows.length : 0;
  const start = view.cursor
    ? `after (${view.cursor.values.map((v) => JSON.stringify(v)).join(", ")})`
    : "at the top";
  ui.windowText.textContent = `window ${start} · limit ${view.limit} · ${n} rows held`;
  ui.windowText.dataset.limit = String(view.limit);
  ui.windowText.dataset.cursor = JSON.stringify(view.cursor);
  ui.top.hidden = view.cursor === null;
  ui.scroller.dataset.busy = String(view.busy);
  if (!sub) ui.more.textContent = "";
  else if (sub.state === "failed") ui.more.textContent = `error: ${sub.error?.message ?? "failed"}`;
  else if (view.busy) ui.more.textContent = "loading more…";
  else if (sub.complete && n < view.limit) ui.more.textContent = "end of results (live)";
  else if (sub.complete) ui.more.textContent = "scroll down to extend the window";
  else ui.more.textContent = "loading…";
}

function showState(state, detail) {
  ui.state.textContent = detail && state !== "live" ? `${state} (${detailText(detail)})` : state;
  ui.state.dataset.state = state;
  if (state === "failed" && detail && (detail.status === 401 || detail.status === 403 ||
      detail.status === 4401 || detail.status === 4403)) {
    ui.tokenForm.hidden = false;
  }
}

function detailText(d) {
  if (d && typeof d === "object" && "status" in d) return `${d.status} ${d.error}`;
  return String(d);
}

// -- wiring -----------------------------------------------------------------------

function connect(token) {
  view.client = new LiveQueryClient(location.origin, token);
  ui.tokenForm.hidden = true;
  open();
}

let debounce = 0;
ui.controls.addEventListener("input", (e) => {
  clearTimeout(debounce);
  debounce = setTimeout(open, e.target.id === "min-temp" ? 300 : 0);
});
ui.controls.addEventListener("submit", (e) => e.preventDefault());
ui.scroller.addEventListener("scroll", () => {
  if (nearBottom()) loadMore();
});
ui.top.addEventListener("click", backToTop);
ui.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = ui.token.value.trim();
  if (t) connect(t);
});

const initial = hashParams.get("token") || params.get("access_token");
if (initial) connect(initial);
else ui.tokenForm.hidden = false;
schedule();

// For the console (and tests): the current subscription and view.
globalThis.lqDemo = {
  get sub() {
    return view.sub;
  },
  view,
  loadMore,
};
