"""The SSE transport: `POST /v1/live` streams one subscription as `text/event-stream`.

Each stream runs its body pump and a disconnect listener in one task group
(as Starlette's `StreamingResponse` does): a client that goes away ends the
pump, a pump that ends (unsubscribed, shutdown, slow consumer) ends the
listener, and either way the connection's subscription is unsubscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from raycluster._tasks import race

from ._hub import Conn, EdgeSub, delta_json
from ._json import read_json
from ._service import EdgeService
from .errors import LimitExceeded

__all__ = ("SSEResponse", "live")

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_TEARDOWN_S = 1.0  # what a last message to a stalled client may take


async def live(svc: EdgeService, request: Request) -> Response:
    """`POST /v1/live`: validate, subscribe (or resume), then stream."""
    tenant = svc.tenant(request)
    query = svc.query(await read_json(request, svc.settings))
    conn = svc.hub.open_conn(tenant, "sse")
    if conn is None:
        raise LimitExceeded("too many connections for this tenant")
    try:
        esub, resumed = await svc.subscribe(conn, query, request.headers.get("last-event-id"))
    except BaseException:
        await svc.hub.close_conn(conn)
        raise
    conn.subs[esub.id] = esub
    esub.start()
    return SSEResponse(svc, conn, esub, resumed)


class SSEResponse(Response):
    """A `text/event-stream` of one subscription; its pump and disconnect listener race."""

    def __init__(self, svc: EdgeService, conn: Conn, esub: EdgeSub, resumed: bool) -> None:
        super().__init__(media_type="text/event-stream")
        self.svc = svc
        self.conn = conn
        self.esub = esub
        self.resumed = resumed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await race(self._stream(send), _until_disconnect(receive))
        except* OSError:
            pass  # the client went away mid-send
        finally:
            await self.svc.hub.close_conn(self.conn)

    async def _stream(self, send: Send) -> None:
        s = self.svc.settings
        esub, conn = self.esub, self.conn
        counters = self.svc.hub.counters
        sid = esub.id
        chunks: list[str] = [_event("subscribed", None, {"sub": sid, "resumed": self.resumed})]
        try:
            async with asyncio.timeout(s.send_timeout_s):
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
                    chunks.append(_event(d.op.value, esub.token(epoch, seq), data))
                    n += 1
                if chunks:
                    body = "".join(chunks).encode()
                    chunks = []
                    async with asyncio.timeout(s.send_timeout_s):
                        await _body(send, body)
                    counters["frames_sent"] += n
                    continue
                if conn.ending is not None or esub.ended:
                    reason = conn.ending or "unsubscribed"
                    if reason in ("shutdown", "replaced"):
                        err = _event("error", None, {"reason": reason, "detail": _why(reason)})
                        async with asyncio.timeout(s.send_timeout_s):
                            await _body(send, err.encode())
                    break
                try:
                    async with asyncio.timeout(s.keepalive_s):
                        await conn.wake.wait()
                except TimeoutError:
                    chunks.append(": keepalive\n\n")
        except TimeoutError:
            counters["slow_consumer_disconnects"] += 1
            err = _event(
                "error", None, {"reason": "slow_consumer", "detail": _why("slow_consumer")}
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TEARDOWN_S):
                    await _body(send, err.encode())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_TEARDOWN_S):
                await send({"type": "http.response.body", "body": b""})


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
