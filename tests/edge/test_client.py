"""`EdgeClient` over SSE and WebSocket: rows exact, reanchor, a forced gap, reconnect + resume."""

from __future__ import annotations

import pytest
from edge_helpers import Edge, by_name, token, truth
from support import unique, wait_for

from raycluster.cluster import GatewayDelta
from raycluster.edge import EdgeClient
from raycluster.edge.client import EdgeRequestError
from raycluster.errors import InvalidQuery
from raycluster.livequery import Cursor


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_client_rows_reanchor_gap_close(edge: Edge, transport: str) -> None:
    tenant = unique(f"cl{transport}")
    w = edge.rows(tenant)
    await w.seed(30)
    async with EdgeClient(edge.base, token(tenant)) as client:
        sub = await client.subscribe(by_name(5), transport=transport)  # type: ignore[arg-type]
        assert sub.rows.complete and sub.rows.ids == truth(w.rows, 5)
        await w.put("x1", name="n0001", kind="pump", temp=3)
        await wait_for(lambda: sub.rows.ids == truth(w.rows, 5), what="x1 to enter")
        # reanchor: the new window is there when it returns
        last = truth(w.rows, 5)[-1]
        after = w.rows[last]["name"]
        rows = await sub.reanchor(Cursor(values=[after, last]), 4)
        assert [r["name"] for r in rows] == [w.rows[i]["name"] for i in truth(w.rows, 4, after)]
        assert sub.rows.ids == truth(w.rows, 4, after=after)
        # lose one frame on purpose: the fence sees the gap, resyncs, rows end exact
        dropped: list[GatewayDelta] = []

        def drop_one(f: GatewayDelta) -> bool:
            if not dropped and f.delta.op != "reset":
                dropped.append(f)
                return True
            return False

        client.drop_hook = drop_one
        resets = sub.rows.resets
        target = truth(w.rows, 4, after)[0]
        await w.put(target, name=w.rows[target]["name"], kind="pump", temp=999)  # an update
        await w.put("x2", name=after + "0", kind="pump", temp=4)  # an enter at 0
        await wait_for(lambda: bool(dropped), what="a frame to drop")
        await wait_for(
            lambda: sub.rows.resets > resets and sub.rows.ids == truth(w.rows, 4, after),
            what=lambda: f"resync: {sub.rows.ids} vs {truth(w.rows, 4, after)}",
        )
        assert sub.rows.rows[[*sub.rows.ids].index(target)]["temp"] == 999
        client.drop_hook = None
        sid = sub.id
        assert await edge.registry.get(sid) is not None
        await sub.close()
        await wait_for(lambda: sid not in edge.hub.subs, 5, what="the edge to drop it")
        assert await edge.registry.get(sid) is None


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_client_reconnects_with_resume_token(edge: Edge, transport: str) -> None:
    tenant = unique(f"rc{transport}")
    w = edge.rows(tenant)
    await w.seed(12)
    async with EdgeClient(edge.base, token(tenant), reconnect_min_s=0.05) as client:
        sub = await client.subscribe(by_name(3), transport=transport)  # type: ignore[arg-type]
        sid = sub.id
        # the server drops the connection (as a restart or a network cut would)
        edge.hub.find(tenant, sid).conn.end("shutdown")  # type: ignore[union-attr]
        await w.put("y", name="n0000", kind="pump", temp=1)  # while away, maybe
        await wait_for(lambda: client.reconnects >= 1, 10, what="a reconnect")
        await wait_for(lambda: sub.rows.ids == truth(w.rows, 3) and sub.rows.complete, 10)
        assert sub.id == sid and edge.hub.find(tenant, sid) is not None
        await w.delete("y")
        await wait_for(lambda: sub.rows.ids == truth(w.rows, 3), 10, what="live after resume")


async def test_client_errors(edge: Edge) -> None:
    async with EdgeClient(edge.base, "bad-token") as client:
        for transport in ("sse", "ws"):
            with pytest.raises(EdgeRequestError) as e:
                await client.subscribe(by_name(2), transport=transport)  # type: ignore[arg-type]
            assert e.value.status == 401
    async with EdgeClient(edge.base, token(unique("ce"))) as client:
        bad = by_name(2).model_copy(update={"limit": 10_000})
        for transport in ("sse", "ws"):
            with pytest.raises(InvalidQuery) as iq:
                await client.subscribe(bad, transport=transport)  # type: ignore[arg-type]
            assert iq.value.field == "limit"
