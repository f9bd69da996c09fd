"""Clients that go away, however they do it, leave nothing behind.

Raw sockets against the real edge: after each kind of disconnect, `/metrics`
shows no connection or subscription, the hub holds no slot for the tenant,
and Redis holds no registration of its subscriptions (`reg:<sub>`, nor in
the gateway's index set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct

import httpx
from edge_helpers import SEND_TIMEOUT_S, Edge, by_name, token
from support import unique, wait_for
from websockets.asyncio.client import connect

BLOB = "x" * 16_000


def _request(tenant: str, body: bytes, declared: int | None = None) -> bytes:
    head = (
        f"POST /v1/live HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token(tenant)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared or len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _open_sse(
    edge: Edge, tenant: str, limit: int = 3
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A raw SSE stream; returns once the `subscribed` event named its sub id."""
    r, w = await asyncio.open_connection("127.0.0.1", edge.port)
    w.write(_request(tenant, json.dumps(by_name(limit).model_dump(mode="json")).encode()))
    await w.drain()
    seen = b""
    async with asyncio.timeout(10):
        while (m := re.search(rb'"sub":"([0-9a-f]+)"', seen)) is None:
            chunk = await r.read(4096)
            assert chunk, seen
            seen += chunk
    return r, w, m.group(1).decode()


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed client or a middlebox does."""
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def _nothing_left(edge: Edge, tenant: str, sids: list[str], timeout_s: float) -> None:
    """Wait (bounded) until the tenant holds nothing on the edge, in /metrics, or in Redis."""
    hub = edge.hub
    await wait_for(
        lambda: hub.tenant_conns[tenant] == 0 and hub.tenant_subs[tenant] == 0,
        timeout_s,
        what=lambda: (
            f"the edge to free {tenant}: conns {hub.tenant_conns[tenant]}, "
            f"subs {hub.tenant_subs[tenant]}"
        ),
    )
    keys = edge.settings.redis.keys
    client = edge.registry._client

    async def unregistered() -> bool:
        regs = [await client.exists(keys.registration(s)) for s in sids]
        held = await client.smembers(keys.gateway_regs(edge.gateway.id))
        return not any(regs) and not {s.encode() for s in sids} & held

    await wait_for(unregistered, timeout_s, what="their registrations to go")
    async with httpx.AsyncClient(base_url=edge.base) as c:
        text = (await c.get("/metrics")).text
    assert 'raycluster_edge_connections{transport="sse"} 0' in text, text
    assert 'raycluster_edge_connections{transport="ws"} 0' in text, text
    assert "raycluster_edge_subscriptions 0" in text, text


async def _churn(edge: Edge, tenant: str, stop: asyncio.Event) -> None:
    """Keep the tenant's rows changing, so frames are in flight when clients vanish."""
    w = edge.rows(tenant)
    i = 0
    while not stop.is_set():
        await w.put(f"a{i % 9:03}", name=f"n{i % 9:03}", kind="pump", temp=i)
        i += 1
        await asyncio.sleep(0)


async def test_sse_clients_that_close_or_reset_mid_stream(edge: Edge) -> None:
    tenant = unique("hangup")
    await edge.rows(tenant).seed(9)
    stop = asyncio.Event()
    writer = asyncio.create_task(_churn(edge, tenant, stop))
    try:
        sids = []
        for round_ in range(12):  # limit: CONNECTIONS_PER_TENANT per round
            streams = [await _open_sse(edge, tenant) for _ in range(3)]
            sids += [sid for _, _, sid in streams]
            await asyncio.sleep(0.02 * (round_ % 4))  # frames flowing while they go
            for k, (_, w, _) in enumerate(streams):
                if k % 2:
                    _reset(w)
                else:
                    w.close()
            await _nothing_left(edge, tenant, sids, 10)
    finally:
        stop.set()
        await writer


async def test_sse_client_that_never_reads(edge: Edge) -> None:
    tenant = unique("deaf")
    rows = edge.rows(tenant)
    for i in range(30):
        await rows.put(f"a{i:03}", name=f"n{i:03}", kind="pump", temp=i, blob=BLOB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", edge.port))
    try:
        body = json.dumps(by_name(30).model_dump(mode="json")).encode()
        await loop.sock_sendall(sock, _request(tenant, body))
        await wait_for(lambda: edge.hub.tenant_subs[tenant] == 1, 10, what="the subscription")
        sids = [s.id for s in edge.hub.subs.values() if s.conn.tenant == tenant]
        stop = asyncio.Event()

        async def flood() -> None:  # more than every socket buffer on the way holds
            r = 0
            while not stop.is_set():
                r += 1
                for i in range(30):
                    await rows.put(f"a{i:03}", name=f"n{i:03}", kind="pump", temp=r, blob=BLOB)

        flooding = asyncio.create_task(flood())
        try:
            # never read: the edge gives up after send_timeout_s and frees everything
            await _nothing_left(edge, tenant, sids, SEND_TIMEOUT_S + 20)
        finally:
            stop.set()
            await flooding
    finally:
        sock.close()


async def test_half_a_request_then_close(edge: Edge) -> None:
    tenant = unique("half")
    await edge.rows(tenant).seed(3)
    body = json.dumps(by_name(3).model_dump(mode="json")).encode()
    for cut in (0, len(body) // 2):
        _, w = await asyncio.open_connection("127.0.0.1", edge.port)
        w.write(_request(tenant, body[:cut], declared=len(body)))
        await w.drain()
        await asyncio.sleep(0.1)
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
    # the edge never subscribed for it and holds no slot
    await _nothing_left(edge, tenant, [], 5)
    assert edge.hub.counters["connections_opened_sse"] >= 0
    # the tenant is not locked out: a whole request still works
    _, w, sid = await _open_sse(edge, tenant)
    w.close()
    await _nothing_left(edge, tenant, [sid], 10)


async def test_ws_client_that_resets_the_connection(edge: Edge) -> None:
    tenant = unique("wsgone")
    await edge.rows(tenant).seed(9)
    stop = asyncio.Event()
    writer = asyncio.create_task(_churn(edge, tenant, stop))
    try:
        headers = {"authorization": f"Bearer {token(tenant)}"}
        ws = await connect(edge.ws_url, additional_headers=headers)
        sids = []
        for cid in ("a", "b"):
            q = by_name(3).model_dump(mode="json")
            await ws.send(json.dumps({"op": "subscribe", "id": cid, "query": q}))
        while len(sids) < 2:
            m = json.loads(await ws.recv())
            if m["type"] == "subscribed":
                sids.append(m["sub"])
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # no close frame, an RST
        await _nothing_left(edge, tenant, sids, 10)
    finally:
        stop.set()
        await writer
