"""Errors mapped once: hostile input is a 4xx naming the field, never a 500; outages are 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from edge_helpers import SSE, Edge, by_name, sse, token
from pydantic import ValidationError
from support import private_redis, unique
from support.serving import served
from websockets.asyncio.client import ClientConnection, connect

from raycluster import connect as connect_gateway
from raycluster.config import TierSettings
from raycluster.edge import create_app
from raycluster.edge._json import parse_json
from raycluster.edge.errors import Invalid, failure
from raycluster.errors import ClosedError, InvalidQuery, UnavailableError
from raycluster.redis.errors import RedisUnavailable

QUERY = by_name(3).model_dump(mode="json")


def _exists(doc: Any, loc: list[Any]) -> bool:
    """`loc` minus its leaf is a path in `doc` (the leaf may be a missing field)."""
    for part in loc[:-1]:
        in_list = isinstance(doc, list) and isinstance(part, int) and 0 <= part < len(doc)
        if not (in_list or (isinstance(doc, dict) and part in doc)):
            return False
        doc = doc[part]
    return True


def test_the_table() -> None:
    with pytest.raises(ValidationError) as ve:
        by_name(0)
    cases: list[tuple[BaseException, int]] = [
        (InvalidQuery("limit", 0, "must be > 0"), 422),
        (ve.value, 422),
        (ClosedError("gone"), 404),
        (RedisUnavailable("down"), 503),
        (UnavailableError("no shard"), 503),
        (TimeoutError(), 503),
        (KeyError("bug"), 500),
    ]
    for exc, status in cases:
        f = failure(exc)
        assert f.status == status, exc
        assert ("retry-after" in f.response().headers) == (status == 503)


def test_parse_json_bounds_depth_unicode_and_numbers() -> None:
    ok = [
        ('{"a": "[[[[[[[[[[{{{{{{{{"}', {"a": "[[[[[[[[[[{{{{{{{{"}),
        ('["\\\\", "\\"[[[[", [1]]', ["\\", '"[[[[', [1]]),
        ('["\\ud83d\\ude00"]', ["\U0001f600"]),  # a valid pair
        ("[1.5, -2e10]", [1.5, -2e10]),
    ]
    for text, want in ok:
        assert parse_json(text, 2) == want, text
    bad = [
        ("[[[1]]]", []),
        ("[" * 20_000 + "]" * 20_000, []),
        ('{"a": ' * 5_000 + "1" + "}" * 5_000, []),
        ('["ok", {"x": "\\udc00"}]', [1, "x"]),
        ('{"\\ud800": 1}', ["?"]),
        ("[NaN]", []),
        ("[-Infinity]", []),
        ("[1e999]", []),
        ("[1", []),
    ]
    for text, loc in bad:
        with pytest.raises(Invalid) as e:
            parse_json(text, 2)
        assert e.value.status == 422 and e.value.detail[0]["loc"] == loc, text


async def test_locs_name_paths_of_the_request(edge: Edge) -> None:
    bad_in = {**QUERY, "where": [{"op": "in", "column": "kind", "values": []}]}
    nested = {**QUERY, "where": [{"op": "or", "args": [{"op": "eq", "column": "kind"}]}]}
    cases = [
        (bad_in, ["where", 0, "values"]),
        (nested, ["where", 0, "args", 0, "value"]),
        ({**QUERY, "limit": 0}, ["limit"]),
        ({"entity": "asset"}, ["limit"]),
    ]
    async with edge.http() as c:
        for body, loc in cases:
            r = await c.post("/v1/live", json=body)
            assert r.status_code == 422, r.text
            got = r.json()["detail"][0]["loc"]
            assert got == loc and _exists(body, got), (body, got)


async def test_hostile_bodies_are_4xx(edge: Edge) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    surrogate = json.dumps(QUERY).replace('"pump"', '"\\ud800"').encode()
    async with edge.http() as c:
        cases: list[tuple[bytes, int, list[Any] | None]] = [
            (deep.encode(), 422, []),
            (b'{"entity": "asset", "limit": NaN}', 422, []),
            (b'{"entity": "asset", "limit": 1e400}', 422, []),
            (surrogate, 422, ["where", 0, "value"]),
            (b"\xff\xfe", 422, []),
            (b'{"entity": "' + b"a" * 70_000 + b'"}', 413, None),
        ]
        for body, status, loc in cases:
            r = await c.post("/v1/live", content=body)
            assert r.status_code == status, (body[:60], r.text[:200])
            if loc is not None:
                assert r.json()["detail"][0]["loc"] == loc
        # chunked, no content-length: refused once past the limit, not buffered whole

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 4096

        r = await c.post("/v1/live", content=chunks())
        assert r.status_code == 413 and r.json()["error"] == "too_large"


async def test_a_body_that_never_finishes_is_408(edge: Edge) -> None:
    fast = edge.settings.model_copy(
        update={"edge": edge.settings.edge.model_copy(update={"request_timeout_s": 0.5})}
    )
    app = create_app(edge.gateway, fast)
    tenant = unique("slowloris")

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"entity": "asset", '
        await asyncio.Event().wait()  # never the rest

    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {token(tenant)}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://e", headers=headers) as c:
        async with asyncio.timeout(10):
            r = await c.post("/v1/live", content=stalled())
    assert r.status_code == 408 and r.json()["error"] == "timeout"
    assert app.state.hub.tenant_conns[tenant] == 0 and not app.state.hub.subs


async def test_rejected_reanchor_changes_nothing(edge: Edge) -> None:
    tenant = unique("reanchor")
    w = edge.rows(tenant)
    await w.seed(9)
    async with edge.http(tenant) as c, sse(c, by_name(3)) as s:
        assert isinstance(s, SSE)
        sid = (await s.next()).data["sub"]
        await s.window()
        before = await edge.registry.get(sid)
        state = edge.gateway.gateway._subs[sid]
        rev, query = state.reg.rev, state.sub.query
        bad = b'{"cursor": {"values": ["\\ud800", "a001"]}, "limit": 3}'
        r = await c.post(f"/v1/live/{sid}/reanchor", content=bad)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["cursor", "values", 0]
        r = await c.post(f"/v1/live/{sid}/reanchor", json={"cursor": {"values": [1]}, "limit": 3})
        assert r.status_code == 422, r.text
        assert state.reg.rev == rev and state.sub.query == query
        assert await edge.registry.get(sid) == before


async def _recv(ws: ClientConnection, want: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            m = json.loads(await ws.recv())
            if want(m):
                return m  # type: ignore[no-any-return]


async def test_ws_hostile_messages_get_error_frames_and_the_socket_lives(edge: Edge) -> None:
    tenant = unique("wsbad")
    await edge.rows(tenant).seed(6)
    headers = {"authorization": f"Bearer {token(tenant)}"}
    max_bytes = edge.settings.edge.max_body_bytes
    async with connect(edge.ws_url, additional_headers=headers, max_size=None) as ws:
        cases: list[tuple[str | bytes, int, list[Any] | None]] = [
            ("[" * 20_000 + "]" * 20_000, 422, []),
            (json.dumps({"op": "nope", "id": "never-seen"}), 422, ["op"]),
            (json.dumps({"op": "resync"}), 422, ["id"]),
            ('{"op": "subscribe", "id": "x", "query": {"entity": "asset", "limit": NaN}}', 422, []),
            (
                json.dumps({"op": "subscribe", "id": "x", "query": QUERY}).replace(
                    '"pump"', '"\\udfff"'
                ),
                422,
                ["query", "where", 0, "value"],
            ),
            (json.dumps({"op": "subscribe", "id": "x", "query": {**QUERY, "limit": 0}}), 422,
             ["query", "limit"]),
            (b"\x00\x01", 422, []),
            (json.dumps({"op": "resync", "id": "x", "pad": "a" * max_bytes}), 413, None),
        ]  # fmt: skip
        for raw, status, loc in cases:
            await ws.send(raw)
            err = await _recv(ws, lambda m: m["type"] == "error")
            assert err["status"] == status, (str(raw)[:60], err)
            if loc is not None:
                assert err["detail"][0]["loc"] == loc, err
        # still open and serving
        await ws.send(json.dumps({"op": "subscribe", "id": "ok", "query": QUERY}))
        assert (await _recv(ws, lambda m: m["type"] in ("subscribed", "error")))["type"] == (
            "subscribed"
        )


async def test_delete_of_a_ws_sub_ends_only_that_sub(edge: Edge) -> None:
    tenant = unique("wsdel")
    w = edge.rows(tenant)
    await w.seed(9)
    headers = {"authorization": f"Bearer {token(tenant)}"}
    async with connect(edge.ws_url, additional_headers=headers) as ws, edge.http(tenant) as c:
        subs = {}
        for cid in ("a", "b"):
            await ws.send(json.dumps({"op": "subscribe", "id": cid, "query": QUERY}))
            m = await _recv(ws, lambda m, cid=cid: m["type"] == "subscribed" and m["id"] == cid)
            subs[cid] = m["sub"]
        assert (await c.delete(f"/v1/live/{subs['a']}")).status_code == 204
        await _recv(ws, lambda m: m == {"type": "unsubscribed", "id": "a"})
        assert await edge.registry.get(subs["a"]) is None
        # b is still live on the same socket
        await w.put("a001", name="n000a", kind="pump", temp=99)
        m = await _recv(ws, lambda m: m["type"] == "frame" and m["id"] == "b")
        assert m["id"] == "b"
        assert await edge.registry.get(subs["b"]) is not None
        assert (await c.delete(f"/v1/live/{subs['a']}")).status_code == 404


async def test_redis_outage_is_503_with_retry_after(edge: Edge) -> None:
    with private_redis() as srv:
        settings = TierSettings.load(
            redis={"key_prefix": unique("outage"), "redis_url": srv.url,
                   "command_retries": 0, "socket_timeout_s": 1.0},
            entities=[e.model_dump() for e in edge.settings.entities],
            edge=edge.settings.edge.model_dump(),
        )  # fmt: skip
        gateway = await connect_gateway(srv.url, settings)
        app = create_app(gateway, settings)
        await app.state.service.tokens()  # loaded while Redis is up
        try:
            async with served(app) as port:
                srv.stop()
                tenant = unique("out")
                headers = {"authorization": f"Bearer {token(tenant)}"}
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
                ) as c:
                    r = await c.post("/v1/live", json=QUERY)
                    assert r.status_code == 503, r.text
                    assert r.json()["error"] == "unavailable" and r.headers["retry-after"]
                    assert (await c.get("/healthz")).status_code == 503
                url = f"ws://127.0.0.1:{port}/v1/live/ws"
                async with connect(url, additional_headers=headers) as ws:
                    await ws.send(json.dumps({"op": "subscribe", "id": "a", "query": QUERY}))
                    err = await _recv(ws, lambda m: m["type"] == "error")
                    assert err["status"] == 503 and err["id"] == "a"
                    await ws.send(json.dumps({"op": "resync", "id": "a"}))  # the socket lives
                    err = await _recv(ws, lambda m: m["type"] == "error")
                    assert err["status"] == 404
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gateway.aclose(), 10)


def test_a_tenants_query_cost_budget() -> None:
    """The summed query_cost of one tenant's subscriptions is capped; others are unaffected."""
    from raycluster.edge._hub import Hub
    from raycluster.edge.settings import EdgeSettings

    hub = Hub(EdgeSettings(max_cost_per_tenant=100))
    assert hub.reserve("a", 60) is None
    refused = hub.reserve("a", 41)
    assert refused is not None and "100" in refused and "41" in refused
    assert hub.reserve("b", 100) is None  # another tenant has its own budget
    assert hub.reserve("a", 40) is None
    hub.release("a", 60)
    assert hub.reserve("a", 60) is None
    assert hub.tenant_cost["a"] == 100 and hub.tenant_subs["a"] == 2
