"""`create_app`: the edge's Starlette application (SSE, WebSocket, side routes, health).

The wire contract is `raycluster/edge/PROTOCOL.md`. Guarantees:

* the tenant comes from the token only (401 / 403 otherwise);
* bad input is a 422 naming the field, a limit a 429, another tenant's or an
  unknown subscription a 404;
* per connection, memory is bounded (`edge.buffer` frames per subscription,
  then a `reset` + the current window instead of the backlog) and a client
  that does not read for `edge.send_timeout_s` is disconnected with a reason;
* a disconnect unsubscribes everything the connection held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from raycluster._connect import RemoteGateway
from raycluster._tasks import cancel_and_wait
from raycluster.config import TierSettings
from raycluster.errors import ClosedError, InvalidQuery, RayclusterError, UnavailableError
from raycluster.livequery import Cursor, LiveQuery

from ._hub import Conn, EdgeSub, Hub, delta_json, parse_token, resume_token
from .auth import AuthError, authenticate
from .settings import EdgeSettings

__all__ = ("create_app",)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_WS_CLOSE = {401: 4401, 403: 4403, 429: 4429}


class _Reanchor(BaseModel):
    cursor: Cursor | None = None
    limit: int


class _Failure(RayclusterError):
    """A request refused with an HTTP status and a protocol error body."""

    def __init__(self, status: int, error: str, detail: Any) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{status} {error}: {detail}")

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


def _loc(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".") if p]


def _invalid(exc: Exception) -> _Failure:
    """422 naming the field(s) of a pydantic or `InvalidQuery` error."""
    if isinstance(exc, InvalidQuery):
        return _Failure(422, "invalid", [{"loc": _loc(exc.field), "msg": exc.reason}])
    detail: list[dict[str, Any]] = []
    if isinstance(exc, ValidationError):
        for e in exc.errors(include_url=False):
            loc: list[str | int] = list(e["loc"])
            inner = (e.get("ctx") or {}).get("error")
            msg = e["msg"]
            if isinstance(inner, InvalidQuery):
                loc += _loc(inner.field)
                msg = inner.reason
            detail.append({"loc": loc, "msg": msg})
    else:
        detail.append({"loc": [], "msg": str(exc)})
    return _Failure(422, "invalid", detail)


class _Edge:
    """The routes, over one `Hub`."""

    def __init__(self, gateway: RemoteGateway, settings: TierSettings) -> None:
        self.gateway = gateway
        self.settings: EdgeSettings = settings.edge
        self.hub = Hub(self.settings)

    # -- helpers -------------------------------------------------------------------

    def tenant(self, conn: HTTPConnection) -> str:
        auth = conn.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        token = token or conn.query_params.get("access_token")
        try:
            return authenticate(token, self.settings.tokens, self.settings.hmac_secret)
        except AuthError as e:
            self.hub.counters[f"auth_failures_{e.status}"] += 1
            raise _Failure(e.status, e.error, e.detail) from e

    def query(self, raw: Any) -> LiveQuery:
        """A validated query that fits the entity and the edge's `max_window`."""
        try:
            q = LiveQuery.model_validate(raw)
            self.gateway.gateway.check_query(q)
        except (ValidationError, InvalidQuery) as e:
            raise _invalid(e) from e
        if q.limit > self.settings.max_window:
            raise _invalid(
                InvalidQuery(
                    "limit", q.limit, f"above the edge's max_window {self.settings.max_window}"
                )
            )
        return q

    async def subscribe(
        self, conn: Conn, query: LiveQuery, resume: str | None
    ) -> tuple[EdgeSub, bool]:
        """Subscribe for `conn` (limits, resume); the sub is queued with its first window."""
        hub = self.hub
        if not hub.reserve(conn.tenant):
            raise _Failure(429, "limit", "too many subscriptions for this tenant")
        try:
            parsed = parse_token(resume)
            sub_id: str | None = None
            seq = 0
            if parsed is not None and await hub.take_over(conn.tenant, parsed[0]):
                sub_id, seq = parsed[0], parsed[2] + 1
            try:
                sub = await self._subscribe(conn.tenant, query, sub_id)
            except InvalidQuery as e:
                if sub_id is None or e.field != "sub_id":
                    raise
                sub_id, seq = None, 0  # still held by the gateway: start afresh
                sub = await self._subscribe(conn.tenant, query, None)
        except InvalidQuery as e:
            hub.release(conn.tenant)
            raise _invalid(e) from e
        except BaseException:
            hub.release(conn.tenant)
            raise
        esub = EdgeSub(hub, conn, sub, seq)
        hub.adopt(esub)
        if conn.ending is not None:  # the connection went away meanwhile
            await esub.close()
            raise _Failure(404, "not_found", "connection closed")
        return esub, sub_id is not None

    async def _subscribe(self, tenant: str, query: LiveQuery, sub_id: str | None) -> Any:
        try:
            return await asyncio.wait_for(
                self.gateway.subscribe(tenant, query, sub_id=sub_id),
                self.settings.request_timeout_s,
            )
        except (UnavailableError, TimeoutError) as e:
            raise _Failure(503, "unavailable", str(e) or "no shard answered") from e

    async def reanchor(self, esub: EdgeSub, raw: Any) -> tuple[int, int]:
        """Move `esub`'s window; returns (rows, the edge seq of its last frame queued)."""
        try:
            body = _Reanchor.model_validate(raw)
        except ValidationError as e:
            raise _invalid(e) from e
        if body.limit > self.settings.max_window:
            raise _invalid(InvalidQuery("limit", body.limit, "above the edge's max_window"))
        try:
            await asyncio.wait_for(
                esub.sub.reanchor(body.cursor, body.limit), self.settings.request_timeout_s
            )
        except (ValidationError, InvalidQuery) as e:
            raise _invalid(e) from e
        except ClosedError as e:
            raise _Failure(404, "not_found", "no such subscription") from e
        except (UnavailableError, TimeoutError) as e:
            raise _Failure(503, "unavailable", str(e) or "no shard answered") from e
        esub.take(esub.sub.drain())  # the new window is queued on the stream now
        return len(esub.sub.rows), esub.seq - 1

    # -- SSE -----------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        try:
            tenant = self.tenant(request)
            raw = await _json_body(request)
            query = self.query(raw)
            conn = self.hub.open_conn(tenant, "sse")
            if conn is None:
                raise _Failure(429, "limit", "too many connections for this tenant")
            try:
                esub, resumed = await self.subscribe(
                    conn, query, request.headers.get("last-event-id")
                )
            except BaseException:
                await self.hub.close_conn(conn)
                raise
        except _Failure as f:
            return f.response()
        conn.subs[esub.id] = esub
        esub.start()
        return _SSEResponse(self, conn, esub, resumed)

    def side(self, request: Request) -> EdgeSub:
        """The subscription a side request names, if it is the token's tenant's."""
        tenant = self.tenant(request)
        esub = self.hub.find(tenant, request.path_params["sub"])
        if esub is None:
            raise _Failure(404, "not_found", "no such subscription")
        return esub

    async def reanchor_route(self, request: Request) -> Response:
        try:
            esub = self.side(request)
            raw = await _json_body(request)
            rows, seq = await self.reanchor(esub, raw)
        except _Failure as f:
            return f.response()
        return JSONResponse({"sub": esub.id, "rows": rows, "seq": seq})

    async def resync_route(self, request: Request) -> Response:
        try:
            esub = self.side(request)
        except _Failure as f:
            return f.response()
        await self.gateway.gateway.resync(esub.id)
        return Response(status_code=202)

    async def delete_route(self, request: Request) -> Response:
        try:
            esub = self.side(request)
        except _Failure as f:
            return f.response()
        esub.conn.subs.pop(esub.id, None)
        esub.conn.end("unsubscribed")
        await esub.close()
        return Response(status_code=204)

    # -- WebSocket -----------------------------------------------------------------

    async def ws(self, ws: WebSocket) -> None:
        try:
            tenant = self.tenant(ws)
            conn = self.hub.open_conn(tenant, "ws")
            if conn is None:
                raise _Failure(429, "limit", "too many connections for this tenant")
        except _Failure as f:
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                await ws.send_denial_response(f.response())
            else:
                await ws.accept()
                await ws.close(_WS_CLOSE.get(f.status, 4400), str(f.detail)[:120])
            return
        try:
            await ws.accept()
            reader = asyncio.create_task(self._ws_reader(ws, conn), name="edge-ws-reader")
            writer = asyncio.create_task(self._ws_writer(ws, conn), name="edge-ws-writer")
            _, pending = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            conn.end("closed")
            await cancel_and_wait(pending)  # (their errors are logged there)
            for t in {reader, writer} - pending:
                if not t.cancelled() and t.exception() is not None:
                    log.error("edge websocket task failed", exc_info=t.exception())
        finally:
            await self.hub.close_conn(conn)

    async def _ws_reader(self, ws: WebSocket, conn: Conn) -> None:
        while True:
            try:
                text = await ws.receive_text()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                return
            try:
                msg = json.loads(text)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError:
                conn.reply(_ws_error(None, _Failure(422, "invalid", "not a JSON object")))
                continue
            cid = msg.get("id")
            try:
                if not isinstance(cid, str) or not cid:
                    raise _invalid(InvalidQuery("id", cid, "must be a non-empty string"))
                await self._ws_op(conn, cid, msg)
            except _Failure as f:
                conn.reply(_ws_error(cid if isinstance(cid, str) else None, f))

    async def _ws_op(self, conn: Conn, cid: str, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "subscribe":
            if cid in conn.subs:
                raise _invalid(InvalidQuery("id", cid, "already used on this connection"))
            query = self.query(msg.get("query"))
            if len(conn.subs) >= self.settings.max_subscriptions_per_connection:
                raise _Failure(429, "limit", "too many subscriptions on this connection")
            resume = msg.get("resume")
            new, resumed = await self.subscribe(
                conn, query, resume if isinstance(resume, str) else None
            )
            conn.subs[cid] = new
            new.mark({"type": "subscribed", "id": cid, "sub": new.id, "resumed": resumed})
            new.start()
            return
        esub = conn.subs.get(cid)
        if esub is None or esub.ended:
            raise _Failure(404, "not_found", f"no subscription {cid!r} on this connection")
        if op == "reanchor":
            rows, _ = await self.reanchor(
                esub, {k: v for k, v in msg.items() if k not in ("op", "id")}
            )
            esub.mark({"type": "reanchored", "id": cid, "rows": rows})
        elif op == "resync":
            await self.gateway.gateway.resync(esub.id)
        elif op == "unsubscribe":
            del conn.subs[cid]
            await esub.close()
            conn.reply({"type": "unsubscribed", "id": cid})
        else:
            raise _invalid(InvalidQuery("op", op, "unknown op"))

    async def _ws_writer(self, ws: WebSocket, conn: Conn) -> None:
        timeout = self.settings.send_timeout_s
        counters = self.hub.counters
        while True:
            conn.wake.clear()
            messages = list(conn.control)
            conn.control.clear()
            frames = 0
            for cid, esub in list(conn.subs.items()):
                out = esub.out
                sid = esub.id
                while out:
                    item = out.popleft()
                    if isinstance(item, dict):
                        messages.append(item)
                        continue
                    seq, epoch, d = item
                    frames += 1
                    messages.append(
                        {"type": "frame", "id": cid, "seq": seq, "epoch": epoch,
                         "delta": delta_json(d), "token": resume_token(sid, epoch, seq)}
                    )  # fmt: skip
            try:
                for m in messages:
                    await asyncio.wait_for(ws.send_text(_dumps(m)), timeout)
            except TimeoutError:
                counters["slow_consumer_disconnects"] += 1
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(4408, "slow_consumer"), 1)
                return
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the client went away
            counters["frames_sent"] += frames
            if conn.ending is not None:
                code, reason = (1001, "shutdown") if conn.ending == "shutdown" else (1000, "")
                if conn.ending == "shutdown":
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(code, reason), 1)
                return
            if not conn.wake.is_set():
                await conn.wake.wait()

    # -- health, metrics, static ---------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        gw = self.gateway.gateway
        try:
            gateways, shards = await asyncio.wait_for(
                asyncio.gather(gw.deps.members.live_gateways(), gw.deps.members.live_shards()), 5
            )
        except Exception as e:
            return JSONResponse({"ok": False, "detail": f"redis: {e}"}, status_code=503)
        ok = gw.id in gateways and bool(shards) and not self.hub.closing
        body = {"ok": ok, "gateway": gw.id, "gateway_live": gw.id in gateways, "shards": shards}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        hub = self.hub
        c = hub.counters
        lines = [
            "# HELP raycluster_edge_connections Open client connections.",
            "# TYPE raycluster_edge_connections gauge",
        ]
        for kind in ("sse", "ws"):
            n = sum(1 for x in hub.conns if x.kind == kind)
            lines.append(f'raycluster_edge_connections{{transport="{kind}"}} {n}')
        lines += [
            "# HELP raycluster_edge_connections_opened_total Connections accepted.",
            "# TYPE raycluster_edge_connections_opened_total counter",
        ]
        for kind in ("sse", "ws"):
            n = c[f"connections_opened_{kind}"]
            lines.append(f'raycluster_edge_connections_opened_total{{transport="{kind}"}} {n}')
        simple = [
            ("subscriptions", "gauge", "Open subscriptions.", len(hub.subs)),
            ("frames_sent_total", "counter", "Frames written to clients.", c["frames_sent"]),
            ("slow_consumer_resets_total", "counter",
             "Backlogs replaced by a reset and the current window.", c["slow_consumer_resets"]),
            ("frames_replaced_total", "counter",
             "Queued frames dropped in favour of such a reset.", c["frames_replaced"]),
            ("slow_consumer_disconnects_total", "counter",
             "Clients disconnected for not reading.", c["slow_consumer_disconnects"]),
        ]  # fmt: skip
        for name, kind, text, value in simple:
            lines += [
                f"# HELP raycluster_edge_{name} {text}",
                f"# TYPE raycluster_edge_{name} {kind}",
                f"raycluster_edge_{name} {value}",
            ]
        lines += [
            "# HELP raycluster_edge_auth_failures_total Requests refused by auth.",
            "# TYPE raycluster_edge_auth_failures_total counter",
        ]
        for status in (401, 403):
            lines.append(
                f'raycluster_edge_auth_failures_total{{status="{status}"}} '
                f"{c[f'auth_failures_{status}']}"
            )
        gs = self.gateway.status()
        for key, value in gs.items():
            if isinstance(value, int) and key != "subscriptions":
                name = f"raycluster_gateway_{key}_total"
                lines += [f"# TYPE {name} counter", f"{name} {value}"]
        lines += [
            "# TYPE raycluster_gateway_subscriptions gauge",
            f"raycluster_gateway_subscriptions {gs.get('subscriptions', 0)}",
        ]
        return Response(
            "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def index(self, request: Request) -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse({"error": "not_found", "detail": "no index.html"}, 404)
        return FileResponse(page)


def _ws_error(cid: str | None, f: _Failure) -> dict[str, Any]:
    return {"type": "error", "id": cid, "status": f.status, "error": f.error, "detail": f.detail}


class _SSEResponse(Response):
    """A `text/event-stream` of one subscription; the body pump and a disconnect listener race."""

    def __init__(self, edge: _Edge, conn: Conn, esub: EdgeSub, resumed: bool) -> None:
        super().__init__(media_type="text/event-stream")
        self.edge = edge
        self.conn = conn
        self.esub = esub
        self.resumed = resumed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.edge.hub
        try:
            pump = asyncio.create_task(self._stream(send), name="edge-sse")
            listen = asyncio.create_task(_until_disconnect(receive), name="edge-sse-listen")
            _, pending = await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
            await cancel_and_wait(pending)
            for t in (pump, listen):  # the one that ended first: an OSError is a gone client
                if t in pending or t.cancelled() or isinstance(t.exception(), OSError):
                    continue
                t.result()
        finally:
            await hub.close_conn(self.conn)

    async def _stream(self, send: Send) -> None:
        s = self.edge.settings
        esub, conn = self.esub, self.conn
        counters = self.edge.hub.counters
        sid = esub.id
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        first = _event("subscribed", None, {"sub": sid, "resumed": self.resumed})
        chunks: list[str] = [first]
        try:
            while True:
                conn.wake.clear()
                out = esub.out
                n = 0
                while out:
                    item = out.popleft()
                    if isinstance(item, dict):
                        continue
                    seq, epoch, d = item
                    data = {"sub": sid, "seq": seq, "epoch": epoch, "delta": delta_json(d)}
                    chunks.append(_event(d.op.value, resume_token(sid, epoch, seq), data))
                    n += 1
                if chunks:
                    body = "".join(chunks).encode()
                    chunks = []
                    await asyncio.wait_for(_body(send, body), s.send_timeout_s)
                    counters["frames_sent"] += n
                    continue
                if conn.ending is not None or esub.ended:
                    reason = conn.ending or "unsubscribed"
                    if reason in ("shutdown", "replaced"):
                        err = _event("error", None, {"reason": reason, "detail": _why(reason)})
                        await asyncio.wait_for(_body(send, err.encode()), s.send_timeout_s)
                    break
                try:
                    await asyncio.wait_for(conn.wake.wait(), s.keepalive_s)
                except TimeoutError:
                    chunks.append(": keepalive\n\n")
        except TimeoutError:
            counters["slow_consumer_disconnects"] += 1
            err = _event(
                "error", None, {"reason": "slow_consumer", "detail": _why("slow_consumer")}
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_body(send, err.encode()), 1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(send({"type": "http.response.body", "body": b""}), 1)


def _why(reason: str) -> str:
    return {
        "shutdown": "the edge is shutting down; reconnect with your last event id",
        "replaced": "a newer connection resumed this subscription",
        "slow_consumer": "the client did not read for too long",
    }.get(reason, reason)


async def _body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def _event(name: str, event_id: str | None, data: dict[str, Any]) -> str:
    head = f"event: {name}\n" if event_id is None else f"event: {name}\nid: {event_id}\n"
    return f"{head}data: {_dumps(data)}\n\n"


def create_app(gateway: RemoteGateway, settings: TierSettings) -> Starlette:
    """The edge application over a started external gateway.

    `app.state.hub` holds the connections; `app.state.hub.shutdown()` asks
    every stream to end with reason `shutdown` (the server calls it on SIGTERM).
    """
    edge = _Edge(gateway, settings)
    routes = [
        Route("/", edge.index, methods=["GET"]),
        Route("/healthz", edge.healthz, methods=["GET"]),
        Route("/metrics", edge.metrics, methods=["GET"]),
        Route("/v1/live", edge.live, methods=["POST"]),
        Route("/v1/live/{sub}/reanchor", edge.reanchor_route, methods=["POST"]),
        Route("/v1/live/{sub}/resync", edge.resync_route, methods=["POST"]),
        Route("/v1/live/{sub}", edge.delete_route, methods=["DELETE"]),
        WebSocketRoute("/v1/live/ws", edge.ws),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.hub = edge.hub
    return app


async def _json_body(request: Request) -> Any:
    """The request's JSON body, or a 422 naming no field (the body as a whole)."""
    try:
        return await request.json()
    except ValueError as e:
        raise _Failure(422, "invalid", [{"loc": [], "msg": "body is not JSON"}]) from e
