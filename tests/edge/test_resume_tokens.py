"""Resume tokens prove possession: only the tenant a sub id was minted for can resume it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import redis.asyncio as aioredis
from edge_helpers import SSE, Edge, by_name, sse, token, truth
from support import unique, wait_for
from support.serving import served
from websockets.asyncio.client import connect

from raycluster import connect as connect_gateway
from raycluster.edge import create_app
from raycluster.edge.tokens import ResumeTokens


async def _last_token(edge: Edge, tenant: str) -> tuple[str, str]:
    """Subscribe as `tenant`, read its window, hang up: (sub id, last resume token)."""
    async with edge.http(tenant) as c, sse(c, by_name(3)) as s:
        assert isinstance(s, SSE)
        sid = (await s.next()).data["sub"]
        last = (await s.window())[-1].id
    assert last is not None
    await wait_for(lambda: sid not in edge.hub.subs, 10, what="the first stream to end")
    return sid, last


def _refused(edge: Edge) -> int:
    return edge.hub.counters["resume_refused"]


async def test_another_tenants_token_starts_a_fresh_sub(edge: Edge) -> None:
    alice, mallory = unique("alice"), unique("mallory")
    await edge.rows(alice).seed(6)
    await edge.rows(mallory).seed(6)
    sid, last = await _last_token(edge, alice)
    sub_id, epoch, seq, mac = last.split(".")
    assert sub_id == sid and len(mac) >= 22  # >= 128 bits
    forged = [
        last,  # alice's own token, replayed by mallory
        f"{sid}.{epoch}.{seq}",  # the old format
        f"{sid}.{epoch}.{seq}.{'A' * len(mac)}",
        f"{sid}.{int(epoch) + 1}.{seq}.{mac}",  # another epoch
    ]
    before = _refused(edge)
    async with edge.http(mallory) as c:
        for bad in forged:
            async with sse(c, by_name(3), {"last-event-id": bad}) as s:
                assert isinstance(s, SSE)
                first = await s.next()
                assert first.data["resumed"] is False and first.data["sub"] != sid, bad
                assert (await edge.registry.get(sid)) is None  # never registered as mallory's
    assert _refused(edge) == before + len(forged)
    # over WebSocket too
    headers = {"authorization": f"Bearer {token(mallory)}"}
    async with connect(edge.ws_url, additional_headers=headers) as ws:
        msg = {"op": "subscribe", "id": "a", "query": by_name(3).model_dump(mode="json")}
        await ws.send(json.dumps({**msg, "resume": last}))
        m: dict[str, Any] = {}
        while m.get("type") != "subscribed":
            m = json.loads(await ws.recv())
        assert m["resumed"] is False and m["sub"] != sid
    assert (await edge.registry.get(sid)) is None
    async with edge.http() as c:
        text = (await c.get("/metrics")).text
    assert f"raycluster_edge_resume_refused_total {before + len(forged) + 1}" in text


async def test_own_token_resumes_and_the_secret_is_shared_through_redis(edge: Edge) -> None:
    alice = unique("alice")
    await edge.rows(alice).seed(6)
    sid, last = await _last_token(edge, alice)
    async with edge.http(alice) as c, sse(c, by_name(3), {"last-event-id": last}) as s:
        assert isinstance(s, SSE)
        assert (await s.next()).data == {"sub": sid, "resumed": True}
        reg = await edge.registry.get(sid)
        assert reg is not None and reg.tenant == alice
    # the secret lives in the tier's Redis, so a second edge verifies the first's tokens
    url = edge.settings.redis.redis_url
    assert url is not None
    key = edge.settings.redis.keys.edge_resume_secret()
    client = aioredis.Redis.from_url(url)
    try:
        secret = await client.get(key)
    finally:
        await client.aclose()
    assert secret
    proof = ResumeTokens(secret).verify(alice, last)
    assert proof is not None and proof.sub_id == sid
    assert ResumeTokens(secret).verify(unique("other"), last) is None
    gw = await connect_gateway(url, edge.settings)
    try:
        other = create_app(gw, edge.settings)
        assert (await other.state.service.tokens()).verify(alice, last) == proof
    finally:
        await gw.aclose()


async def test_a_token_used_on_a_second_edge_by_another_tenant(edge: Edge) -> None:
    """Two edges on one Redis: mallory replays alice's live token on the other edge."""
    alice, mallory = unique("alice"), unique("mallory")
    w = edge.rows(alice)
    await w.seed(6)
    url = edge.settings.redis.redis_url
    assert url is not None
    gw2 = await connect_gateway(url, edge.settings)
    try:
        app2 = create_app(gw2, edge.settings)
        async with (
            served(app2) as port2,
            edge.http(alice) as a,
            sse(a, by_name(3)) as s,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port2}",
                headers={"authorization": f"Bearer {token(mallory)}"},
                timeout=20,
            ) as m,
        ):
            assert isinstance(s, SSE)
            sid = (await s.next()).data["sub"]
            last = (await s.window())[-1].id
            async with sse(m, by_name(3), {"last-event-id": last}) as stolen:
                assert isinstance(stolen, SSE)
                first = await stolen.next()
                assert first.data["resumed"] is False and first.data["sub"] != sid
                reg = await edge.registry.get(sid)
                assert reg is not None
                assert (reg.tenant, reg.gateway_id) == (alice, edge.gateway.id)
                # alice's stream is still hers and live
                await w.put("a001", name="n000a", kind="pump", temp=7)
                await s.until(lambda: truth(w.rows, 3))
                assert app2.state.hub.counters["resume_refused"] == 1
    finally:
        await gw2.aclose()
