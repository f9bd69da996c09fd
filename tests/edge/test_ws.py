"""The WebSocket transport: multiplexed subscriptions, ops, errors, auth, limits, disconnect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from edge_helpers import PER_CONNECTION, Edge, by_name, token, truth
from support import unique, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from raycluster.client import LiveList
from raycluster.edge import sign_token
from raycluster.livequery import LiveDelta


class WS:
    """A raw protocol client: per id, the applied rows and the messages seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.rows: dict[str, LiveList] = {}
        self.seen: list[dict[str, Any]] = []

    async def send(self, **msg: Any) -> None:
        await self.ws.send(json.dumps(msg))

    async def until(self, pred: Any, timeout_s: float = 10) -> dict[str, Any]:
        """Read (applying frames) until a message satisfies `pred`."""
        async with asyncio.timeout(timeout_s):
            while True:
                m = json.loads(await self.ws.recv())
                self.seen.append(m)
                if m["type"] == "frame":
                    self.rows.setdefault(m["id"], LiveList()).apply(
                        LiveDelta.model_validate(m["delta"])
                    )
                if pred(m):
                    return m

    async def exact(self, cid: str, want: Any, timeout_s: float = 10) -> None:
        def ok(_: Any) -> bool:
            r = self.rows.get(cid)
            return r is not None and r.complete and r.ids == want()

        if not ok(None):
            await self.until(ok, timeout_s)


async def test_ws_subscribe_reanchor_unsubscribe(edge: Edge) -> None:
    tenant = unique("ws")
    w = edge.rows(tenant)
    await w.seed(20)
    headers = {"authorization": f"Bearer {token(tenant)}"}
    async with connect(edge.ws_url, additional_headers=headers) as raw:
        ws = WS(raw)
        await ws.send(op="subscribe", id="a", query=by_name(3).model_dump(mode="json"))
        await ws.send(op="subscribe", id="b", query=by_name(6).model_dump(mode="json"))
        sub_a = await ws.until(lambda m: m["type"] == "subscribed" and m["id"] == "a")
        await ws.exact("a", lambda: truth(w.rows, 3))
        await ws.exact("b", lambda: truth(w.rows, 6))
        await w.put("x", name="n0005", kind="pump", temp=0)
        await ws.exact("a", lambda: truth(w.rows, 3))
        await ws.exact("b", lambda: truth(w.rows, 6))
        frames = [m for m in ws.seen if m["type"] == "frame" and m["id"] == "a"]
        seqs = [m["seq"] for m in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        want = f"{sub_a['sub']}.{frames[-1]['epoch']}.{frames[-1]['seq']}"
        assert frames[-1]["token"].rsplit(".", 1)[0] == want
        # reanchor a: reply comes after its new window
        last = truth(w.rows, 3)[-1]
        cursor = {"values": [w.rows[last]["name"], last]}
        await ws.send(op="reanchor", id="a", cursor=cursor, limit=4)
        reply = await ws.until(lambda m: m["type"] in ("reanchored", "error") and m["id"] == "a")
        assert reply == {"type": "reanchored", "id": "a", "rows": 4}
        assert ws.rows["a"].ids == truth(w.rows, 4, after=w.rows[last]["name"])
        # errors name the field
        await ws.send(op="reanchor", id="a", cursor=None, limit=0)
        err = await ws.until(lambda m: m["type"] == "error")
        assert err["status"] == 422 and err["detail"][0]["loc"][-1] == "limit"
        await ws.send(op="resync", id="zz")
        err = await ws.until(lambda m: m["type"] == "error")
        assert err["status"] == 404 and err["id"] == "zz"
        # resync gives a fresh reset + window
        resets = ws.rows["b"].resets
        await ws.send(op="resync", id="b")
        await ws.until(lambda m: ws.rows["b"].resets > resets and ws.rows["b"].complete)
        assert ws.rows["b"].ids == truth(w.rows, 6)
        # unsubscribe removes the registration
        await ws.send(op="unsubscribe", id="a")
        await ws.until(lambda m: m == {"type": "unsubscribed", "id": "a"})
        assert await edge.registry.get(sub_a["sub"]) is None
        sub_b = next(m for m in ws.seen if m["type"] == "subscribed" and m["id"] == "b")["sub"]
        assert await edge.registry.get(sub_b) is not None
    # closing the socket unsubscribes the rest
    await wait_for(lambda: sub_b not in edge.hub.subs, 5, what="the edge to drop b")

    async def gone() -> bool:
        return await edge.registry.get(sub_b) is None

    await wait_for(gone, 5, what="b's registration to go")


async def test_ws_limits_and_validation(edge: Edge) -> None:
    tenant = unique("wslim")
    await edge.rows(tenant).seed(3)
    headers = {"authorization": f"Bearer {token(tenant)}"}
    async with connect(edge.ws_url, additional_headers=headers) as raw:
        ws = WS(raw)
        for i in range(PER_CONNECTION):
            await ws.send(op="subscribe", id=f"s{i}", query=by_name(1).model_dump(mode="json"))
            await ws.until(lambda m, i=i: m["type"] == "subscribed" and m["id"] == f"s{i}")
        await ws.send(op="subscribe", id="over", query=by_name(1).model_dump(mode="json"))
        err = await ws.until(lambda m: m["type"] == "error")
        assert err["status"] == 429 and err["error"] == "limit" and err["id"] == "over"
        bad = {**by_name(1).model_dump(mode="json"), "sort": [{"column": "nope"}]}
        await ws.send(op="subscribe", id="bad", query=bad)
        err = await ws.until(lambda m: m["type"] == "error")
        assert err["status"] == 429 or err["detail"][0]["loc"][-1] == "column"
        await ws.ws.send("not json")
        err = await ws.until(lambda m: m["type"] == "error")
        assert err["status"] == 422


@pytest.mark.parametrize(
    ("auth", "status"),
    [(None, 401), ("bad", 401), (sign_token("wrong", "t", 60), 401), ("expired", 403)],
)
async def test_ws_auth_refused(edge: Edge, auth: str | None, status: int) -> None:
    from edge_helpers import SECRET

    if auth == "expired":
        auth = sign_token(SECRET, "t", -10)
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    with pytest.raises(InvalidStatus) as e:
        async with connect(edge.ws_url, additional_headers=headers):
            pass
    assert e.value.response.status_code == status


async def test_ws_token_in_query_string(edge: Edge) -> None:
    tenant = unique("wsq")
    edge_rows = edge.rows(tenant)
    await edge_rows.seed(3)
    async with connect(f"{edge.ws_url}?access_token={token(tenant)}") as raw:
        ws = WS(raw)
        await ws.send(op="subscribe", id="a", query=by_name(2).model_dump(mode="json"))
        m = await ws.until(lambda m: m["type"] == "subscribed")
        await ws.exact("a", lambda: truth(edge_rows.rows, 2))
    await wait_for(lambda: m["sub"] not in edge.hub.subs, 5, what="the edge to drop it")
