"""The WebSocket transport: `GET /v1/live/ws`, many subscriptions on one socket.

Each socket runs its reader and its writer in one task group: whichever ends
first (the client closed, the server ends the connection, the client stopped
reading) cancels the other, and every subscription the socket held is
unsubscribed. The reader answers every message: an error is an error frame
from the same table as HTTP (`errors.failure`) and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from raycluster._tasks import race

from ._hub import Conn, delta_json
from ._json import parse_json
from ._service import EdgeService
from .auth import AuthError
from .errors import EdgeError, Invalid, LimitExceeded, NotFound, TooLarge, failure, ws_error

__all__ = ("OPS", "websocket")

OPS = frozenset({"subscribe", "reanchor", "resync", "unsubscribe"})
_CLOSE = {401: 4401, 403: 4403, 429: 4429}
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_TEARDOWN_S = 1.0


async def websocket(svc: EdgeService, ws: WebSocket) -> None:
    """Serve one socket until either side ends it; then unsubscribe all it held."""
    try:
        tenant = svc.tenant(ws)
        conn = svc.hub.open_conn(tenant, "ws")
        if conn is None:
            raise LimitExceeded("too many connections for this tenant")
    except (AuthError, EdgeError) as e:
        f = failure(e)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(f.response())
        else:
            await ws.accept()
            await ws.close(_CLOSE.get(f.status, 4400), str(f.detail)[:120])
        return
    try:
        await ws.accept()
        await race(_reader(svc, ws, conn), _writer(svc, ws, conn))
    except* (OSError, WebSocketDisconnect):
        pass  # the client went away
    finally:
        await svc.hub.close_conn(conn)


async def _reader(svc: EdgeService, ws: WebSocket, conn: Conn) -> None:
    s = svc.settings
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        msg: Any = None
        try:
            if text is None:
                raise Invalid([{"loc": [], "msg": "binary messages are not accepted"}])
            if len(text) > s.max_body_bytes or len(text.encode()) > s.max_body_bytes:
                raise TooLarge(f"message over {s.max_body_bytes} bytes")
            msg = parse_json(text, s.max_json_depth)
            if not isinstance(msg, dict):
                raise Invalid([{"loc": [], "msg": "not a JSON object"}])
            await _op(svc, conn, msg)
        except Exception as e:
            cid = msg.get("id") if isinstance(msg, dict) else None
            conn.reply(ws_error(cid if isinstance(cid, str) else None, e))


async def _op(svc: EdgeService, conn: Conn, msg: dict[str, Any]) -> None:
    op, cid = msg.get("op"), msg.get("id")
    if op not in OPS:
        raise Invalid(
            [{"loc": ["op"], "msg": f"unknown op {str(op)[:40]!r}; one of {sorted(OPS)}"}]
        )
    if not isinstance(cid, str) or not cid:
        raise Invalid([{"loc": ["id"], "msg": "must be a non-empty string"}])
    if op == "subscribe":
        if cid in conn.subs:
            raise Invalid([{"loc": ["id"], "msg": "already used on this connection"}])
        try:
            query = svc.query(msg.get("query"))
        except Exception as e:
            raise _under("query", e) from e
        if len(conn.subs) >= svc.settings.max_subscriptions_per_connection:
            raise LimitExceeded("too many subscriptions on this connection")
        resume = msg.get("resume")
        new, resumed = await svc.subscribe(conn, query, resume if isinstance(resume, str) else None)
        conn.subs[cid] = new
        new.mark({"type": "subscribed", "id": cid, "sub": new.id, "resumed": resumed})
        new.start()
        return
    esub = conn.subs.get(cid)
    if esub is None or esub.ended:
        raise NotFound(f"no subscription {cid[:40]!r} on this connection")
    if op == "reanchor":
        rows, _ = await svc.reanchor(esub, {k: v for k, v in msg.items() if k not in ("op", "id")})
        esub.mark({"type": "reanchored", "id": cid, "rows": rows})
    elif op == "resync":
        await svc.gateway.gateway.resync(esub.id)
    else:
        del conn.subs[cid]
        await esub.close()
        conn.reply({"type": "unsubscribed", "id": cid})


def _under(field: str, exc: Exception) -> Exception:
    """`exc` with its 422 `loc`s under `field` (the query is nested in the WS message)."""
    f = failure(exc)
    if isinstance(f.detail, list) and f.status == 422:
        return Invalid([{**d, "loc": [field, *d["loc"]]} for d in f.detail])
    return exc


async def _writer(svc: EdgeService, ws: WebSocket, conn: Conn) -> None:
    timeout = svc.settings.send_timeout_s
    counters = svc.hub.counters
    while True:
        conn.wake.clear()
        messages = list(conn.control)
        conn.control.clear()
        frames = 0
        for cid, esub in list(conn.subs.items()):
            out = esub.out
            while out:
                item = out.popleft()
                if isinstance(item, dict):
                    messages.append(item)
                    continue
                seq, epoch, d = item
                frames += 1
                messages.append(
                    {"type": "frame", "id": cid, "seq": seq, "epoch": epoch,
                     "delta": delta_json(d), "token": esub.token(epoch, seq)}
                )  # fmt: skip
        try:
            for m in messages:
                async with asyncio.timeout(timeout):
                    await ws.send_text(_dumps(m))
        except TimeoutError:
            counters["slow_consumer_disconnects"] += 1
            await _close(ws, 4408, "slow_consumer")
            return
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away
        counters["frames_sent"] += frames
        if conn.ending is not None:
            if conn.ending == "shutdown":
                await _close(ws, 1001, "shutdown")
            return
        if not conn.wake.is_set():
            await conn.wake.wait()


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
        async with asyncio.timeout(_TEARDOWN_S):
            await ws.close(code, reason)
