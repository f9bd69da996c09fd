"""`EdgeClient`: a Python client of the edge over SSE or WebSocket (docs/edge-protocol.md).

`subscribe` returns the same `raycluster.client.Subscription` the tier
returns: `rows` kept current, async iteration of frames, `reanchor`, `close`.
Frames are fenced like the gateway fences them (`raycluster.client.fence`):
older epochs are dropped, a `seq` gap asks for a resync and drops frames
until the next `reset`. A dropped connection is re-established with the last
resume token (bounded exponential backoff); the server answers with a fresh
`reset` and the current window, so `rows` is never stale and never has a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from raycluster._resources import AsyncResource
from raycluster._tasks import Backoff, TaskSet, checkpoint, logged
from raycluster.client import Subscription
from raycluster.client.fence import Fence
from raycluster.errors import ClosedError, InvalidQuery, RayclusterError, UnavailableError
from raycluster.livequery import Cursor, LiveDelta, LiveQuery
from raycluster.wire import GatewayDelta

__all__ = ("EdgeClient", "EdgeRequestError")

log = logging.getLogger(__name__)

Transport = Literal["sse", "ws"]
DropHook = Callable[[GatewayDelta], bool]


class EdgeRequestError(RayclusterError):
    """Raised when the edge refuses a request (401, 403, 429, ...): carries its answer."""

    def __init__(self, status: int, error: str, detail: Any) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"edge answered {status} {error}: {detail}")


def _raise_for(status: int, body: Any, under: str | None = None) -> None:
    """Translate an error answer into the package's exceptions.

    `under`: the message field the request's query sits in (WS `subscribe`);
    a 422's field is then named relative to the query, as over SSE.
    """
    error = body.get("error", "") if isinstance(body, dict) else ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if status == 422 and isinstance(detail, list) and detail:
        first = detail[0]
        path = list(first.get("loc", []))
        if under is not None and path[:1] == [under]:
            path = path[1:]
        loc = ".".join(str(p) for p in path)
        raise InvalidQuery(loc or "query", None, str(first.get("msg", "")))
    if status == 404:
        raise ClosedError(f"edge: {detail}")
    if status == 503:
        raise UnavailableError(f"edge: {detail}")
    raise EdgeRequestError(status, error, detail)


async def _reconnecting(
    c: EdgeClient, closing: Callable[[], bool], attempt: Callable[[], Awaitable[bool | None]]
) -> None:
    """Run `attempt` until `closing()` or it returns None (give up); wait with backoff
    between attempts, from the minimum again after one that connected (True)."""
    backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s)
    while not closing():
        checkpoint()
        ran = await attempt()
        if ran is None or closing():
            return
        if ran:
            backoff.reset()
        c.reconnects += 1
        await backoff.sleep()


class _Stream:
    """What both transports share: fencing, delivering, resync on a gap."""

    def __init__(self, client: EdgeClient, query: LiveQuery) -> None:
        self.client = client
        self.sub = Subscription("", "", query, self, buffer=client.buffer)
        self.fence = Fence()
        self.token: str | None = None
        self.applied = asyncio.Event()  # set whenever a frame was applied
        self.tasks = TaskSet("edge client")  # its connection's runner, resync requests

    def frame(self, seq: int, epoch: int, delta: dict[str, Any], token: str | None) -> None:
        d = LiveDelta.model_validate(delta)
        f = GatewayDelta.model_construct(sub_id=self.sub.id, seq=seq, epoch=epoch, delta=d)
        hook = self.client.drop_hook
        if hook is not None and hook(f):
            return  # a test simulating a lost frame
        verdict = self.fence.check(seq, epoch, d.op == "reset")
        if verdict == "gap":
            if not self.tasks.closed:
                self.tasks.spawn(self.resync(self.sub.id), "edge-client-resync")
            return
        if verdict == "stale":
            return
        if token:
            self.token = token
        self.sub.deliver([f])
        self.applied.set()

    async def applied_through(self, seq: int) -> None:
        """Wait until the frame numbered `seq` of this stream has been applied.

        Gives up quietly if the stream restarts meanwhile (a reconnect starts
        with a complete window of the current query anyway).
        """
        fence, epoch = self.fence, self.fence.epoch
        deadline = asyncio.get_running_loop().time() + self.client.timeout_s
        while fence.next_seq <= seq and fence.epoch >= epoch >= 0:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self.applied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.applied.wait(), remaining)

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        raise NotImplementedError

    async def unsubscribe(self, sub_id: str) -> None:
        raise NotImplementedError

    async def resync(self, sub_id: str) -> None:
        raise NotImplementedError

    async def stop_tasks(self) -> None:
        await self.tasks.aclose()


class _SSE(_Stream):
    """One subscription over one SSE stream, reconnected with its resume token."""

    def __init__(self, client: EdgeClient, query: LiveQuery) -> None:
        super().__init__(client, query)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False

    async def open(self) -> Subscription:
        first = self.sub.next_reset()
        self.tasks.spawn(self._run(), "edge-client-sse")
        try:
            await self.ready
            await first
        except BaseException:
            await self._stop()
            raise
        return self.sub

    async def _run(self) -> None:
        try:
            await _reconnecting(self.client, lambda: self.closing, self._attempt)
        finally:
            self.sub.mark_closed("the edge stream ended")

    async def _attempt(self) -> bool | None:
        try:
            await self._once()
            return True
        except (httpx.HTTPError, OSError, UnavailableError) as e:
            if not self.ready.done():  # 503 or unreachable: retried once it ran
                err = e if isinstance(e, UnavailableError) else None
                self.ready.set_exception(err or UnavailableError(f"edge: {e}"))
                return None
            return False
        except RayclusterError as e:
            if not self.ready.done():
                self.ready.set_exception(e)
            return None  # refused (auth, validation): reconnecting cannot help

    async def _once(self) -> None:
        c = self.client
        headers = {"last-event-id": self.token} if self.token else {}
        body = self.sub.query.model_dump(mode="json", exclude_none=True)
        async with c.http.stream("POST", "/v1/live", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                _raise_for(resp.status_code, json.loads(raw) if raw else {})
            self.fence.clear()
            event, data, token = "", "", ""
            async for line in resp.aiter_lines():
                if line:
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                    elif line.startswith("id:"):
                        token = line[3:].strip()
                    continue
                if event and data and self._event(event, json.loads(data), token):
                    return
                event, data, token = "", "", ""

    def _event(self, event: str, data: dict[str, Any], token: str) -> bool:
        """Handle one event; True if the server ended the stream on purpose."""
        if event == "subscribed":
            self.sub.id = data["sub"]
            if not self.ready.done():
                self.ready.set_result(None)
            return False
        if event == "error":
            if data.get("reason") == "replaced":
                self.closing = True
            return True
        seq, epoch = data["seq"], data["epoch"]
        self.frame(seq, epoch, data["delta"], token or None)
        return False

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        body = {"cursor": cursor.model_dump(mode="json") if cursor else None, "limit": limit}
        r = await self.client.http.post(f"/v1/live/{sub_id}/reanchor", json=body)
        if r.status_code != 200:
            _raise_for(r.status_code, r.json())
        # The answer names the new window's last frame on the stream: a reset
        # that arrived before it (a resync of the old window) must not count.
        seq = r.json().get("seq")
        if isinstance(seq, int):
            await self.applied_through(seq)

    async def resync(self, sub_id: str) -> None:
        r = await self.client.http.post(f"/v1/live/{sub_id}/resync")
        if r.status_code != 202:
            _raise_for(r.status_code, r.json())

    async def unsubscribe(self, sub_id: str) -> None:
        self.closing = True
        with contextlib.suppress(httpx.HTTPError):
            await self.client.http.delete(f"/v1/live/{sub_id}")
        await self._stop()

    async def _stop(self) -> None:
        self.closing = True
        self.client._sse.discard(self)
        await self.stop_tasks()


class _WSSub(_Stream):
    """One subscription multiplexed on the client's WebSocket."""

    def __init__(self, client: EdgeClient, conn: _WS, cid: str, query: LiveQuery) -> None:
        super().__init__(client, query)
        self.conn = conn
        self.cid = cid

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        msg = {"op": "reanchor", "id": self.cid, "limit": limit}
        msg["cursor"] = cursor.model_dump(mode="json") if cursor else None
        await self.conn.request(self.cid, msg)

    async def resync(self, sub_id: str) -> None:
        await self.conn.send({"op": "resync", "id": self.cid})

    async def unsubscribe(self, sub_id: str) -> None:
        self.conn.subs.pop(self.cid, None)
        with logged(f"edge client: unsubscribing {sub_id}"):
            await asyncio.wait_for(
                self.conn.request(self.cid, {"op": "unsubscribe", "id": self.cid}), 10
            )
        await self.stop_tasks()


class _WS:
    """The client's one WebSocket: requests, demultiplexing, reconnect + resume."""

    def __init__(self, client: EdgeClient) -> None:
        self.client = client
        self.subs: dict[str, _WSSub] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ws: ClientConnection | None = None
        self.runner: asyncio.Task[None] | None = None
        self.tasks = TaskSet("edge client websocket")
        self.connected = asyncio.Event()
        self.closing = False
        self.failure: BaseException | None = None
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.runner = self.tasks.spawn(self._run(), "edge-client-ws")
        waiter = self.tasks.spawn(self.connected.wait(), "edge-client-ws-connected")
        await asyncio.wait({waiter, self.runner}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not self.connected.is_set():
            await self.aclose()
            raise self.failure or UnavailableError("edge: websocket closed")

    async def _connect(self) -> ClientConnection:
        c = self.client
        url = c.base_url.replace("http", "ws", 1).rstrip("/") + "/v1/live/ws"
        try:
            return await ws_connect(url, additional_headers={"authorization": f"Bearer {c.token}"})
        except InvalidStatus as e:
            status = e.response.status_code
            try:
                body = json.loads(e.response.body or b"{}")
            except ValueError:
                body = {}
            _raise_for(status, body)
            raise  # unreachable: _raise_for always raises

    async def _run(self) -> None:
        try:
            await _reconnecting(self.client, lambda: self.closing, self._attempt)
        finally:
            for s in self.subs.values():
                s.sub.mark_closed("the edge websocket closed")
            for f in self.waiting.values():
                if not f.done():
                    f.set_exception(ClosedError("edge websocket closed"))

    async def _attempt(self) -> bool | None:
        try:
            self.ws = await self._connect()
        except (OSError, TimeoutError, ConnectionClosed) as e:
            if not self.connected.is_set():
                self.failure = UnavailableError(f"edge: {e}")
                return None
            return False
        except RayclusterError as e:
            self.failure = e
            return None
        again = self.connected.is_set()
        self.connected.set()
        if again:
            await self._resubscribe()
        await self._read(self.ws)
        return True

    async def _resubscribe(self) -> None:
        for s in list(self.subs.values()):
            s.fence.clear()
            msg: dict[str, Any] = {"op": "subscribe", "id": s.cid}
            msg["query"] = s.sub.query.model_dump(mode="json", exclude_none=True)
            if s.token:
                msg["resume"] = s.token
            await self.send(msg)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                m = json.loads(raw)
                kind, cid = m.get("type"), m.get("id")
                s = self.subs.get(cid) if isinstance(cid, str) else None
                if kind == "frame":
                    if s is not None:
                        s.frame(m["seq"], m["epoch"], m["delta"], m.get("token"))
                    continue
                if kind == "subscribed" and s is not None:
                    s.sub.id = m["sub"]
                fut = self.waiting.pop(cid, None) if isinstance(cid, str) else None
                if fut is not None and not fut.done():
                    fut.set_result(m)
        except ConnectionClosed:
            return

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws is None:
            raise ClosedError("edge websocket not connected")
        await self.ws.send(json.dumps(msg))

    async def request(self, cid: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Send `msg` and wait for the server's answer about `cid`."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[cid] = fut
        await self.send(msg)
        answer = await asyncio.wait_for(fut, self.client.timeout_s)
        if answer.get("type") == "error":
            under = "query" if msg.get("op") == "subscribe" else None
            _raise_for(int(answer.get("status", 500)), answer, under)
        return answer

    async def subscribe(self, query: LiveQuery) -> Subscription:
        cid = f"s{next(self._ids)}"
        s = _WSSub(self.client, self, cid, query)
        self.subs[cid] = s
        first = s.sub.next_reset()
        try:
            msg = {"op": "subscribe", "id": cid, "query": query.model_dump(mode="json")}
            await self.request(cid, msg)
            await asyncio.wait_for(first, self.client.timeout_s)
        except BaseException:
            self.subs.pop(cid, None)
            first.cancel()
            raise
        return s.sub

    async def aclose(self) -> None:
        self.closing = True
        if self.ws is not None:
            with logged("edge client: closing the websocket"):
                await asyncio.wait_for(self.ws.close(), 5)
        await self.tasks.aclose()
        for s in list(self.subs.values()):
            await s.stop_tasks()


class EdgeClient(AsyncResource):
    """A client of one edge for one token (one tenant).

    SSE: one HTTP stream per subscription. WS: one WebSocket per client,
    every subscription multiplexed on it. `drop_hook` (tests only) sees each
    frame before the fence; returning True drops it, as if it were lost.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        timeout_s: float = 30.0,
        buffer: int = 10_000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self.buffer = buffer
        self.reconnects = 0
        self.drop_hook: DropHook | None = None
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, read=None),
        )
        self._sse: set[_SSE] = set()
        self._ws: _WS | None = None
        self._ws_lock = asyncio.Lock()

    async def subscribe(self, query: LiveQuery, transport: Transport = "sse") -> Subscription:
        """Subscribe; returns once the first window has arrived (`rows` complete).

        Raises `InvalidQuery` (422, naming the field), `EdgeRequestError`
        (401/403/429), `UnavailableError` (edge or tier unreachable).
        """
        if transport == "sse":
            s = _SSE(self, query)
            sub = await s.open()
            self._sse.add(s)
            return sub
        async with self._ws_lock:
            if self._ws is None or self._ws.runner is None or self._ws.runner.done():
                ws = _WS(self)
                await ws.start()
                self._ws = ws
        return await self._ws.subscribe(query)

    async def aclose(self) -> None:
        """Close every subscription and connection."""
        for s in list(self._sse):
            with logged(f"edge client: closing {s.sub.id}"):
                await s.sub.close()
            await s._stop()
        self._sse.clear()
        if self._ws is not None:
            for w in list(self._ws.subs.values()):
                with logged(f"edge client: closing {w.sub.id}"):
                    await asyncio.wait_for(w.sub.close(), 5)
            await self._ws.aclose()
            self._ws = None
        await self.http.aclose()
