"""Hostile clients against two edges on one Redis, with shard failovers (issue 9).

A tier of its own: two shards and two edges (each its own external gateway
and uvicorn server) on a private key prefix. Every row carries its tenant in
`blob`, so a frame that crossed tenants shows at once. One tenant tries every
way in to another's subscription (resume tokens taken from the victim's
stream, forged tokens, side routes, WebSocket resume) on both edges; then the
victim's owner shard dies and a new one takes over (the rebuild reads the
registry). No frame of one tenant ever reaches another, and the honest
subscriptions end exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from edge_helpers import ASSET, SECRET, SSE, Event, by_name, sse, token
from support import free_port, unique, wait_for

from raycluster import connect
from raycluster._connect import RemoteGateway
from raycluster._wiring import Closers, redis_shard
from raycluster.cluster import Shard, owner, partition_of
from raycluster.config import TierSettings
from raycluster.edge import create_app
from raycluster.redis import LocalRedis, RedisRegistry, Writer

pytestmark = pytest.mark.timeout(240)


@dataclass
class _Server:
    base: str
    port: int
    gateway: RemoteGateway
    server: uvicorn.Server
    task: asyncio.Task[None]


@dataclass
class Tier:
    """Two edges, restartable shards, a writer that remembers every tenant's rows."""

    url: str
    settings: TierSettings
    writer: Writer
    registry: RedisRegistry
    edges: list[_Server] = field(default_factory=list)
    shards: dict[str, tuple[Shard, Closers, asyncio.Task[None]]] = field(default_factory=dict)
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def start_shard(self, shard_id: str) -> None:
        shard, closers = redis_shard(shard_id, self.url, self.settings)
        self.shards[shard_id] = (shard, closers, asyncio.create_task(shard.run()))

    async def crash_shard(self, shard_id: str) -> None:
        """Cancel a shard without leaving the live set: its heartbeat has to expire."""
        _, closers, task = self.shards.pop(shard_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await closers.aclose()

    async def put(self, tenant: str, agg_id: str, name: str, kind: str = "pump") -> None:
        row = {"name": name, "kind": kind, "temp": len(name), "blob": tenant}
        await self.writer.upsert(tenant, "asset", agg_id, row)
        self.rows.setdefault(tenant, {})[agg_id] = row

    def truth(self, tenant: str, limit: int) -> list[str]:
        rows = self.rows.get(tenant, {})
        keys = sorted((r["name"], i) for i, r in rows.items() if r["kind"] == "pump")
        return [i for _, i in keys[:limit]]


@pytest.fixture
async def tier(redis_server: LocalRedis) -> AsyncIterator[Tier]:
    url = redis_server.url
    settings = TierSettings.load(
        redis={"heartbeat_ttl_s": 1.5, "key_prefix": unique("hostile"), "redis_url": url},
        shard={"heartbeat_interval_s": 0.3, "ownership_interval_s": 0.2},
        gateway={"attempt_timeout_s": 1.0},
        entities=[ASSET.model_dump()],
        edge={"hmac_secret": SECRET, "keepalive_s": 0.5},
    )
    t = Tier(
        url,
        settings,
        Writer.from_url(url, entities=settings.entities, settings=settings.redis),
        RedisRegistry.from_url(url, settings=settings.redis),
    )
    for i in range(2):
        t.start_shard(f"shard-{i}")
    try:
        for _ in range(2):
            gateway = await connect(url, settings)
            port = free_port()
            app = create_app(gateway, settings)
            server = uvicorn.Server(
                uvicorn.Config(
                    app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
                )
            )
            task = asyncio.create_task(server.serve())
            t.edges.append(_Server(f"http://127.0.0.1:{port}", port, gateway, server, task))
            await wait_for(lambda s=server: s.started, 10, what="uvicorn")  # type: ignore[misc]
        yield t
    finally:
        for e in t.edges:
            e.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(e.task, 15)
            await e.gateway.aclose()
        for sid in list(t.shards):
            await t.crash_shard(sid)
        await t.writer.aclose()
        await t.registry.aclose()


def client(e: _Server, tenant: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=e.base, headers={"authorization": f"Bearer {token(tenant)}"}, timeout=20
    )


class Watch:
    """Reads an SSE stream in the background; every frame's row must be `tenant`'s."""

    def __init__(self, stream: SSE, tenant: str) -> None:
        self.stream = stream
        self.tenant = tenant
        self.foreign: list[Event] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(TimeoutError, StopAsyncIteration, httpx.HTTPError):
            while True:
                ev = await self.stream.next(timeout_s=60)
                row = ev.data.get("delta", {}).get("row") if isinstance(ev.data, dict) else None
                if row is not None and row.get("blob") != self.tenant:
                    self.foreign.append(ev)

    async def stop(self) -> None:
        """End the stream, and with it the reader.

        Closing the response ends the reader's read (an `httpx.ReadError` it ignores);
        the cancel alone could be lost inside the read (seen on Python 3.11: the reader
        went on reading keepalives until the test's timeout)."""
        await self.stream.resp.aclose()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await self.task


async def test_no_frame_crosses_tenants_under_attack_and_failover(tier: Tier) -> None:
    victim, attacker = unique("victim"), unique("attacker")
    for i in range(12):
        await tier.put(victim, f"v{i:02}", f"v{i:02}")
        await tier.put(attacker, f"x{i:02}", f"x{i:02}")
    e1, e2 = tier.edges
    q = by_name(limit=5)
    async with contextlib.AsyncExitStack() as stack:
        v_http = await stack.enter_async_context(client(e1, victim))
        a1 = await stack.enter_async_context(client(e1, attacker))
        a2 = await stack.enter_async_context(client(e2, attacker))

        v = await stack.enter_async_context(sse(v_http, q))
        assert isinstance(v, SSE)
        sub = (await v.next()).data["sub"]
        window = await v.window()
        victim_token = window[-1].id
        assert victim_token and sub in victim_token
        watches = [Watch(v, victim)]

        # 1. Resume with the victim's own token, on the edge that does not hold it and on
        #    the one that does: a fresh subscription of the attacker's, never the victim's.
        for http in (a2, a1):
            s = await stack.enter_async_context(
                sse(http, q, headers={"last-event-id": victim_token})
            )
            assert isinstance(s, SSE)
            first = await s.next()
            assert first.data["resumed"] is False and first.data["sub"] != sub
            watches.append(Watch(s, attacker))
        # 2. Forged tokens naming the victim's sub id.
        for forged in (f"{sub}.1.1", f"{sub}.9.99.AAAAAAAAAAAAAAAAAAAAAA", sub):
            s = await stack.enter_async_context(sse(a2, q, headers={"last-event-id": forged}))
            assert isinstance(s, SSE)
            first = await s.next()
            assert first.data["resumed"] is False and first.data["sub"] != sub
            watches.append(Watch(s, attacker))
        # 3. Side routes on the victim's sub id, on both edges.
        for http in (a1, a2):
            body = {"cursor": None, "limit": 3}
            assert (await http.post(f"/v1/live/{sub}/reanchor", json=body)).status_code == 404
            assert (await http.post(f"/v1/live/{sub}/resync")).status_code == 404
            assert (await http.delete(f"/v1/live/{sub}")).status_code == 404
        # 4. WebSocket resume with the victim's token.
        ws = await stack.enter_async_context(
            websockets.connect(
                f"ws://127.0.0.1:{e2.port}/v1/live/ws?access_token={token(attacker)}"
            )
        )
        sub_msg = {"op": "subscribe", "id": "w", "query": q.model_dump(mode="json")}
        await ws.send(json.dumps({**sub_msg, "resume": victim_token}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "subscribed" and reply["resumed"] is False
        assert reply["sub"] != sub

        reg = await tier.registry.get(sub)
        assert reg is not None and reg.tenant == victim
        assert reg.gateway_id == e1.gateway.id

        # The victim's owner dies; its successor rebuilds from the registry.
        dead = owner(partition_of(victim, "asset"), sorted(tier.shards))
        await tier.crash_shard(dead)
        tier.start_shard("shard-new")
        for i in range(12):
            await tier.put(victim, f"v{i:02}", f"w{(i * 7) % 12:02}")
            await tier.put(attacker, f"x{i:02}", f"a{(i * 5) % 12:02}")
        await wait_for(
            lambda: v.rows.complete and v.rows.ids == tier.truth(victim, 5),
            30,
            what=lambda: f"the victim's window {v.rows.ids} != {tier.truth(victim, 5)}",
        )
        ws_rows: list[Any] = []
        with contextlib.suppress(TimeoutError):
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 2))
                if m.get("type") == "frame" and "row" in m["delta"]:
                    ws_rows.append(m["delta"]["row"])
        reg = await tier.registry.get(sub)
        assert reg is not None and reg.tenant == victim and reg.gateway_id == e1.gateway.id
        for w in watches:  # (stopping a watch ends its stream)
            await w.stop()
        assert [w.foreign for w in watches] == [[] for _ in watches]
        assert all(r["blob"] == attacker for r in ws_rows)
