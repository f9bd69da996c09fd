// livequery.js: a dependency-free browser client of the raycluster edge protocol
// (docs/edge-protocol.md). ES module; also published as `globalThis.raycluster`.
//
//   import { LiveQueryClient } from "/static/livequery.js";
//   const client = new LiveQueryClient(location.origin, token);
//   const sub = client.subscribe(
//     { entity: "asset", sort: [{ column: "name" }], limit: 50 },
//     { transport: "sse", onChange: (sub, changes) => render(sub.rows) },
//   );
//   await sub.ready;                     // the first complete window
//   await sub.reanchor(cursor, 100);     // the new window, once it has arrived
//   await sub.close();
//
// Guarantees: `sub.rows` is changed only by applying frames exactly as the
// Python `LiveList` does; frames are fenced by (epoch, seq) exactly as the
// gateway fences them (an older epoch or a repeated seq is dropped, a gap asks
// the server for a resync and nothing is applied until its `reset`); a lost
// connection is re-opened with the last resume token and the current query
// (cursor and limit of the last reanchor), and the server answers with a
// `reset` plus the complete current window. Bad tokens, expired tokens and
// invalid queries are not retried: the subscription fails (`state` "failed").

const OPS = new Set(["reset", "enter", "leave", "move", "update", "match", "unmatch"]);
const FATAL_HTTP = new Set([400, 401, 403, 404, 413, 422]);
const FATAL_WS = new Set([4401, 4403]);
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10000;
const RESYNC_RETRY_MS = 3000; // ask again if the reset a resync asked for has not come

/** A frame that does not fit the list (the Python `DesyncError`). */
export class DesyncError extends Error {}

/** An error answer of the edge: `status` (HTTP or WS close code), `error`, `detail`. */
export class LiveQueryError extends Error {
  constructor(status, error, detail) {
    super(`${status} ${error}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.error = error;
    this.detail = detail;
  }
}

/**
 * A list kept by applying LiveDelta frames in order (mirror of
 * raycluster/client/livelist.py). Items are `{id, version, row}`. A frame that
 * does not fit throws `DesyncError` and leaves the list unchanged.
 */
export class LiveList {
  constructor() {
    this.items = [];
    this.resets = 0;
    this.expected = 0; // enters still owed by the last reset
  }

  get length() {
    return this.items.length;
  }

  get ids() {
    return this.items.map((i) => i.id);
  }

  /** False while the enters announced by the last reset are still arriving. */
  get complete() {
    return this.expected === 0;
  }

  apply(d) {
    const items = this.items;
    const op = d.op;
    if (op === "reset") {
      items.length = 0;
      this.resets += 1;
      this.expected = d.count || 0;
      return;
    }
    const id = d.agg_id || "";
    const item = () => ({ id, version: d.version || 0, row: d.row || {} });
    if (op === "enter") {
      const i = this._index(d.new_index, items.length + 1);
      items.splice(i, 0, item());
      if (this.expected) this.expected -= 1;
    } else if (op === "leave") {
      items.splice(this._at(d.old_index, id), 1);
    } else if (op === "move") {
      const i = this._at(d.old_index, id);
      const j = this._index(d.new_index, items.length);
      items.splice(i, 1);
      items.splice(j, 0, item());
    } else if (op === "update" && d.new_index != null) {
      items[this._at(d.new_index, id)] = item();
    } else if (op === "match" || op === "update") {
      // A match of a member, or an update of a non-member, means a frame was lost.
      const pos = this._find(id);
      if ((pos === -1) === (op === "update")) {
        const held = pos !== -1 ? "holds" : "does not hold";
        throw new DesyncError(`${op} of ${id}, which the list ${held}`);
      }
      if (pos === -1) items.push(item());
      else items[pos] = item();
    } else if (op === "unmatch") {
      const pos = this._find(id);
      if (pos === -1) throw new DesyncError(`unmatch of ${id}, which the list does not hold`);
      items.splice(pos, 1);
    } else {
      throw new DesyncError(`unknown op ${op}`);
    }
  }

  _index(i, bound) {
    if (i == null || !(i >= 0 && i < bound)) {
      throw new DesyncError(`index ${i} outside a list of ${this.items.length}`);
    }
    return i;
  }

  _at(i, id) {
    i = this._index(i, this.items.length);
    if (this.items[i].id !== id) {
      throw new DesyncError(`expected ${id} at ${i}, found ${this.items[i].id}`);
    }
    return i;
  }

  _find(id) {
    return this.items.findIndex((it) => it.id === id);
  }
}

/** The keyset cursor of an item under `query`'s sort: sort values, then the id. */
export function cursorOf(query, item) {
  const values = (query.sort || []).map((k) => (item.row[k.column] ?? null));
  values.push(item.id);
  return { values };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function newStats() {
  return {
    frames: 0, // frames applied
    ops: Object.fromEntries([...OPS].map((o) => [o, 0])),
    stale: 0, // dropped by the fence (older epoch, repeated seq, or during a gap)
    gaps: 0, // seq gaps seen (each asks for a resync)
    desyncs: 0, // frames that did not fit the list (each asks for a resync)
    resyncs: 0, // resync requests sent
    reconnects: 0, // streams re-opened with a resume token
    keepalives: 0,
  };
}

/**
 * One live query of a `LiveQueryClient`. Read `rows` (array of
 * `{id, version, row}`, in window order; do not mutate), `state`
 * ("connecting" | "live" | "reconnecting" | "closed" | "failed"), `stats`,
 * `sub` (the server's subscription id), `query` (with the cursor and limit of
 * the last reanchor), `error` (the last error), `ready` (a promise of the
 * first complete window).
 */
export class LiveSubscription {
  constructor(client, id, query, opts) {
    this.client = client;
    this.id = id; // the client's own name for it (WS `id`)
    this.query = { ...query };
    this.transport = opts.transport || "sse";
    this.onChange = opts.onChange || null;
    this.onState = opts.onState || null;
    this.list = new LiveList();
    this.state = "connecting";
    this.stats = newStats();
    this.sub = null;
    this.resumed = false;
    this.token = null; // last resume token
    this.error = null;
    this.closed = false;
    this._fence = { epoch: -1, next: 0, gap: false, resetSeq: -1, resyncAt: 0 };
    this._waiters = []; // {since, resolve, reject}: resolved by the next complete window
    this.ready = new Promise((resolve, reject) => {
      this._ready = { resolve, reject };
    });
    this.ready.catch(() => {}); // a failure is also reported through `state` / `error`
  }

  /** The rows held now, in window order. */
  get rows() {
    return this.list.items;
  }

  /** True once the rows announced by the last reset have all arrived. */
  get complete() {
    return this.list.complete && this.list.resets > 0;
  }

  /**
   * Move the window: start strictly after `cursor` (null: the top), `limit`
   * rows. Resolves with the new rows once the new window has arrived.
   */
  async reanchor(cursor, limit) {
    if (this.closed) throw new LiveQueryError(0, "closed", "subscription is closed");
    const since = this.list.resets;
    // SSE answers with the seq of the new window's last frame: a resync of the
    // old window arriving just before it must not end the wait.
    const seq = await this.client._transport(this.transport).reanchor(this, cursor ?? null, limit);
    this.query = { ...this.query, cursor: cursor ?? null, limit };
    await this._windowAfter(since, seq);
    return this.rows;
  }

  /** Ask for a fresh reset and the current window. */
  resync() {
    if (this.closed) return;
    this._fence.resyncAt = Date.now();
    this.stats.resyncs += 1;
    this.client._transport(this.transport).resync(this).catch((e) => {
      this.error = e;
    });
  }

  /** End the subscription (idempotent). */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this._setState("closed");
    this._failWaiters(new LiveQueryError(0, "closed", "subscription closed"));
    await this.client._transport(this.transport).close(this);
  }

  // -- transport side ---------------------------------------------------------

  _subscribed(sub, resumed) {
    this.sub = sub;
    this.resumed = !!resumed;
    // A new stream: its first frame is a reset, whatever the old stream's epoch was.
    this._fence = { epoch: -1, next: 0, gap: false, resetSeq: -1, resyncAt: 0 };
  }

  /** Fence one frame, apply it if accepted; returns a change record or null. */
  _frame(seq, epoch, delta, token) {
    if (token) this.token = token;
    const f = this._fence;
    const op = delta.op;
    if (op === "reset") {
      if (epoch < f.epoch) {
        this.stats.stale += 1;
        return null;
      }
      f.epoch = epoch;
      f.next = seq + 1;
      f.gap = false;
      f.resetSeq = seq;
    } else if (epoch === f.epoch && seq === f.next && !f.gap) {
      f.next = seq + 1;
    } else if (
      op === "enter" && !f.gap && epoch === f.epoch && seq === f.resetSeq && this.list.expected > 0
    ) {
      // A window rebuilt from a client-side buffer (Subscription._synthetic_reset)
      // repeats the reset's seq on every one of its enters.
    } else {
      if (epoch < f.epoch || (epoch === f.epoch && seq < f.next) || f.gap) {
        this.stats.stale += 1;
        if (f.gap && Date.now() - f.resyncAt > RESYNC_RETRY_MS) this.resync();
        return null;
      }
      // A frame is missing (or a new owner's reset was lost): resync.
      f.gap = true;
      this.stats.gaps += 1;
      this.resync();
      return null;
    }
    const snapshot = op === "enter" && this.list.expected > 0;
    try {
      this.list.apply(delta);
    } catch (e) {
      if (!(e instanceof DesyncError)) throw e;
      // Cannot happen with a correct stream; recover rather than show a wrong list.
      this.stats.desyncs += 1;
      f.gap = true;
      this.resync();
      return null;
    }
    this.stats.frames += 1;
    this.stats.ops[op] = (this.stats.ops[op] || 0) + 1;
    if (this.list.complete && this.list.resets > 0) this._windowComplete();
    if (op === "reset" || snapshot) return { op, id: null, snapshot: true };
    return { op, id: delta.agg_id, index: delta.new_index ?? delta.old_index ?? null };
  }

  /** Tell the page what changed (one call per batch of frames). */
  _changed(changes) {
    if (!changes.length || !this.onChange) return;
    try {
      this.onChange(this, changes);
    } catch (e) {
      console.error("onChange failed", e);
    }
  }

  _windowComplete() {
    if (this.state !== "live") this._setState("live");
    this._ready.resolve(this);
    const resets = this.list.resets;
    const still = [];
    for (const w of this._waiters) {
      const through = w.seq == null || w.fence !== this._fence || this._fence.next > w.seq;
      if (resets > w.since && through) w.resolve();
      else still.push(w);
    }
    this._waiters = still;
  }

  _windowAfter(since, seq = null) {
    const fence = this._fence; // a new stream (reconnect) starts a new fence
    if (this.list.resets > since && this.list.complete && (seq == null || fence.next > seq)) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) =>
      this._waiters.push({ since, seq, fence, resolve, reject }),
    );
  }

  _failWaiters(err) {
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.reject(err);
  }

  _fail(err) {
    this.error = err;
    this.closed = true;
    this._setState("failed", err);
    this._ready.reject(err);
    this._failWaiters(err);
  }

  _setState(state, detail) {
    if (this.state === state && detail === undefined) return;
    this.state = state;
    if (this.onState) {
      try {
        this.onState(this, state, detail);
      } catch (e) {
        console.error("onState failed", e);
      }
    }
  }
}

async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    // not JSON: keep the status alone
  }
  return new LiveQueryError(resp.status, body?.error || "http", body?.detail ?? resp.statusText);
}

/** SSE over `fetch` (EventSource can neither POST nor send headers). */
class SseTransport {
  constructor(client) {
    this.client = client;
  }

  open(s) {
    s._abort = null;
    this._run(s).catch((e) => s._fail(e));
  }

  _headers(extra) {
    return { Authorization: `Bearer ${this.client.token}`, ...extra };
  }

  _url(path) {
    return `${this.client.baseUrl}${path}`;
  }

  async _run(s) {
    let backoff = RETRY_MIN_MS;
    let first = true;
    while (!s.closed) {
      const ctrl = new AbortController();
      s._abort = ctrl;
      let reason = null;
      try {
        const headers = this._headers({
          "Content-Type": "application/json",
          Accept: "text/event-stream",
        });
        if (s.token) headers["Last-Event-ID"] = s.token;
        if (!first) s.stats.reconnects += 1;
        first = false;
        const resp = await fetch(this._url("/v1/live"), {
          method: "POST",
          headers,
          body: JSON.stringify(s.query),
          signal: ctrl.signal,
          cache: "no-store",
        });
        if (!resp.ok) {
          const err = await errorOf(resp);
          if (FATAL_HTTP.has(resp.status)) {
            s._fail(err);
            return;
          }
          throw err;
        }
        reason = await this._read(s, resp.body, () => {
          backoff = RETRY_MIN_MS;
        });
        if (reason === "replaced") {
          // Another connection resumed this subscription with its token: it is theirs now.
          s._fail(s.error);
          return;
        }
      } catch (e) {
        if (s.closed) return;
        s.error = e;
      }
      if (s.closed) return;
      s._setState("reconnecting", reason);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, RETRY_MAX_MS);
    }
  }

  /** Read one event stream to its end; the reason the server gave for ending it. */
  async _read(s, body, onSubscribed) {
    const reader = body.getReader();
    s._reader = reader;
    const decoder = new TextDecoder();
    let buf = "";
    let ev = { event: "", data: [], id: null };
    let reason = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done || s.closed) break;
      buf += decoder.decode(value, { stream: true });
      const changes = [];
      let start = 0;
      for (;;) {
        const m = /\r\n|\r|\n/g;
        m.lastIndex = start;
        const hit = m.exec(buf);
        // A lone "\r" at the end may be half of "\r\n": wait for the next chunk.
        if (!hit || (hit[0] === "\r" && hit.index === buf.length - 1)) break;
        const line = buf.slice(start, hit.index);
        start = hit.index + hit[0].length;
        if (line === "") {
          if (ev.data.length || ev.event) {
            const r = this._dispatch(s, ev, changes, onSubscribed);
            if (r) reason = r;
          }
          ev = { event: "", data: [], id: null };
        } else if (line[0] === ":") {
          s.stats.keepalives += 1;
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val[0] === " ") val = val.slice(1);
          if (field === "event") ev.event = val;
          else if (field === "data") ev.data.push(val);
          else if (field === "id") ev.id = val;
        }
      }
      buf = buf.slice(start);
      s._changed(changes);
    }
    return reason;
  }

  _dispatch(s, ev, changes, onSubscribed) {
    const name = ev.event || "message";
    let data;
    try {
      data = JSON.parse(ev.data.join("\n"));
    } catch (_) {
      return null;
    }
    if (name === "subscribed") {
      s._subscribed(data.sub, data.resumed);
      onSubscribed();
    } else if (OPS.has(name)) {
      const c = s._frame(data.seq, data.epoch, data.delta, ev.id);
      if (c) changes.push(c);
    } else if (name === "error") {
      s.error = new LiveQueryError(0, data.reason, data.detail);
      return data.reason;
    }
    return null;
  }

  async _post(s, path, body, method = "POST") {
    if (!s.sub) throw new LiveQueryError(0, "not_subscribed", "no subscription yet");
    const resp = await fetch(this._url(`/v1/live/${encodeURIComponent(s.sub)}${path}`), {
      method,
      headers: this._headers(body ? { "Content-Type": "application/json" } : {}),
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
    if (!resp.ok) throw await errorOf(resp);
    return resp;
  }

  async reanchor(s, cursor, limit) {
    await s.ready;
    const resp = await this._post(s, "/reanchor", { cursor, limit });
    const answer = await resp.json();
    return typeof answer.seq === "number" ? answer.seq : null;
  }

  async resync(s) {
    await this._post(s, "/resync", null);
  }

  async close(s) {
    try {
      if (s.sub) await this._post(s, "", null, "DELETE");
    } catch (_) {
      // the server also unsubscribes when the stream goes away
    } finally {
      if (s._abort) s._abort.abort();
    }
  }
}

/** One WebSocket per client, multiplexing its subscriptions by `id`. */
class WsTransport {
  constructor(client) {
    this.client = client;
    this.subs = new Map();
    this.ws = null;
    this.open_ = false;
    this.backoff = RETRY_MIN_MS;
    this.pending = new Map(); // id -> [{resolve, reject}] reanchors awaiting "reanchored"
    this.everOpened = false;
  }

  open(s) {
    this.subs.set(s.id, s);
    if (this.ws && this.open_) this._subscribe(s);
    else this._connect();
  }

  _connect() {
    if (this.ws) return;
    const base = new URL(this.client.baseUrl, globalThis.location?.href);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    base.pathname = `${base.pathname.replace(/\/$/, "")}/v1/live/ws`;
    base.search = `access_token=${encodeURIComponent(this.client.token)}`;
    const ws = new WebSocket(base.toString());
    this.ws = ws;
    ws.onopen = () => {
      this.open_ = true;
      if (this.everOpened) for (const s of this.subs.values()) s.stats.reconnects += 1;
      this.everOpened = true;
      for (const s of this.subs.values()) this._subscribe(s);
    };
    ws.onmessage = (e) => this._message(e.data);
    ws.onclose = (e) => this._closed(e.code, e.reason);
    ws.onerror = () => {}; // onclose follows with the code
  }

  _send(msg) {
    if (this.ws && this.open_) this.ws.send(JSON.stringify(msg));
    else throw new LiveQueryError(0, "disconnected", "the socket is not open");
  }

  _subscribe(s) {
    const msg = { op: "subscribe", id: s.id, query: s.query };
    if (s.token) msg.resume = s.token;
    this._send(msg);
  }

  _message(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch (_) {
      return;
    }
    const s = m.id != null ? this.subs.get(m.id) : null;
    if (m.type === "frame") {
      if (!s) return;
      const c = s._frame(m.seq, m.epoch, m.delta, m.token);
      if (c) s._changed([c]);
    } else if (m.type === "subscribed") {
      if (!s) return;
      this.backoff = RETRY_MIN_MS;
      s._wait = 0;
      s._subscribed(m.sub, m.resumed);
    } else if (m.type === "reanchored") {
      const q = this.pending.get(m.id);
      if (q && q.length) q.shift().resolve();
    } else if (m.type === "error") {
      const err = new LiveQueryError(m.status, m.error, m.detail);
      if (!s) {
        console.warn("edge error", err);
        return;
      }
      const q = this.pending.get(m.id);
      if (q && q.length) q.shift().reject(err);
      else if (s.complete) s.error = err;
      else if (m.status === 429 || m.status === 503) this._retry(s, err);
      else this._drop(s, err);
    }
  }

  _retry(s, err) {
    // A limit or no shard yet: subscribe again later, on this socket if it is still open.
    s.error = err;
    s._setState("reconnecting", err);
    s._wait = Math.min((s._wait || RETRY_MIN_MS) * 2, RETRY_MAX_MS);
    setTimeout(() => {
      if (!s.closed && this.subs.get(s.id) === s && this.open_) this._subscribe(s);
    }, s._wait);
  }

  _drop(s, err) {
    this.subs.delete(s.id);
    s._fail(err);
  }

  _closed(code, reason) {
    this.ws = null;
    this.open_ = false;
    const err = new LiveQueryError(code, reason || "closed", `socket closed (${code})`);
    for (const q of this.pending.values()) for (const p of q) p.reject(err);
    this.pending.clear();
    if (FATAL_WS.has(code)) {
      for (const s of [...this.subs.values()]) this._drop(s, err);
      return;
    }
    if (!this.subs.size) return;
    for (const s of this.subs.values()) {
      s.error = err;
      s._setState("reconnecting", code);
    }
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, RETRY_MAX_MS);
    setTimeout(() => {
      if (this.subs.size) this._connect();
    }, wait);
  }

  reanchor(s, cursor, limit) {
    return new Promise((resolve, reject) => {
      const q = this.pending.get(s.id) || [];
      q.push({ resolve, reject });
      this.pending.set(s.id, q);
      try {
        this._send({ op: "reanchor", id: s.id, cursor, limit });
      } catch (e) {
        q.pop();
        reject(e);
      }
    });
  }

  async resync(s) {
    this._send({ op: "resync", id: s.id });
  }

  async close(s) {
    this.subs.delete(s.id);
    try {
      this._send({ op: "unsubscribe", id: s.id });
    } catch (_) {
      // not connected: nothing to end on the server
    }
    if (!this.subs.size && this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.open_ = false;
      ws.onclose = null;
      ws.close(1000, "done");
    }
  }
}

/**
 * A client of one edge server (`baseUrl`, e.g. `location.origin`) for one
 * token. `subscribe(query, {transport: "sse"|"ws", onChange, onState})`
 * returns a `LiveSubscription` at once; `await sub.ready` for its first window.
 * `onChange(sub, changes)` is called after each batch of frames, `changes`
 * listing `{op, id, index}` of live changes (`{op, snapshot: true}` for
 * window rows delivered by a reset).
 */
export class LiveQueryClient {
  constructor(baseUrl, token) {
    this.baseUrl = String(baseUrl || "").replace(/\/$/, "");
    this.token = token;
    this._n = 0;
    this._transports = {};
  }

  subscribe(query, opts = {}) {
    const transport = opts.transport || "sse";
    if (transport !== "sse" && transport !== "ws") {
      throw new LiveQueryError(0, "invalid", `unknown transport ${transport}`);
    }
    this._n += 1;
    const s = new LiveSubscription(this, `s${this._n}`, query, { ...opts, transport });
    this._transport(transport).open(s);
    return s;
  }

  _transport(name) {
    if (!this._transports[name]) {
      this._transports[name] = name === "ws" ? new WsTransport(this) : new SseTransport(this);
    }
    return this._transports[name];
  }
}

globalThis.raycluster = {
  LiveQueryClient,
  LiveSubscription,
  LiveList,
  LiveQueryError,
  DesyncError,
  cursorOf,
};
