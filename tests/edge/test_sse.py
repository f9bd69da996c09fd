"""The SSE transport, side routes, auth, validation, limits, resume, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from edge_helpers import (
    CONNECTIONS_PER_TENANT,
    EDGE_MAX_WINDOW,
    SECRET,
    SSE,
    STATIC_TENANT,
    STATIC_TOKEN,
    Edge,
    by_name,
    ids_of,
    sse,
    truth,
)
from prometheus_client.parser import text_string_to_metric_families
from support import unique, wait_for

from raycluster.edge import sign_token
from raycluster.postgres import PostgresSettings


async def test_subscribe_window_then_live_frames(edge: Edge) -> None:
    tenant = unique("sse")
    w = edge.rows(tenant)
    await w.seed(12)
    async with edge.http(tenant) as c, sse(c, by_name(4)) as s:
        assert isinstance(s, SSE)
        first = await s.next()
        assert first.event == "subscribed" and first.data["resumed"] is False
        sid = first.data["sub"]
        win = await s.window()
        assert ids_of(win) == truth(w.rows, 4)
        assert win[0].id is not None
        assert win[0].id.rsplit(".", 1)[0] == f"{sid}.{win[0].data['epoch']}.{win[0].data['seq']}"
        assert [e.data["seq"] for e in win] == list(range(win[0].data["seq"], len(win)))
        await w.put("zz", name="n000a", kind="pump", temp=1)  # enters at index 0
        await w.put("a004", name="n004", kind="fan", temp=1)  # leaves
        await s.until(lambda: truth(w.rows, 4))
        assert "zz" in s.rows.ids and s.contiguous()
        assert await edge.registry.get(sid) is not None


async def test_reanchor_resync_and_delete(edge: Edge) -> None:
    tenant = unique("side")
    w = edge.rows(tenant)
    await w.seed(20)
    async with edge.http(tenant) as c, sse(c, by_name(3)) as s:
        assert isinstance(s, SSE)
        sid = (await s.next()).data["sub"]
        await s.window()
        after = w.rows[truth(w.rows, 3)[-1]]["name"]
        cursor = {"values": [after, truth(w.rows, 3)[-1]]}
        r = await c.post(f"/v1/live/{sid}/reanchor", json={"cursor": cursor, "limit": 5})
        assert r.status_code == 200
        answer = r.json()
        assert answer["sub"] == sid and answer["rows"] == 5
        window = await s.window()
        assert ids_of(window) == truth(w.rows, 5, after=after)
        assert window[-1].data["seq"] == answer["seq"]  # names the new window's last frame
        r = await c.post(f"/v1/live/{sid}/reanchor", json={"cursor": None, "limit": 0})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "limit"
        assert (await c.post(f"/v1/live/{sid}/resync")).status_code == 202
        assert ids_of(await s.window()) == truth(w.rows, 5, after=after)
        # another tenant cannot touch it
        async with edge.http(unique("other")) as o:
            assert (await o.post(f"/v1/live/{sid}/resync")).status_code == 404
            assert (await o.delete(f"/v1/live/{sid}")).status_code == 404
        assert (await c.delete(f"/v1/live/{sid}")).status_code == 204
        await wait_for(lambda: sid not in edge.hub.subs, what="the sub to end")
        assert await edge.registry.get(sid) is None
        async with asyncio.timeout(5):  # the stream ends
            async for _ in s.lines:
                pass


async def test_disconnect_unsubscribes(edge: Edge) -> None:
    tenant = unique("gone")
    await edge.rows(tenant).seed(5)
    async with edge.http(tenant) as c:
        async with sse(c, by_name(3)) as s:
            assert isinstance(s, SSE)
            sid = (await s.next()).data["sub"]
            await s.window()
            assert await edge.registry.get(sid) is not None
        # the client closed the stream: the edge notices and unsubscribes promptly
        await wait_for(lambda: sid not in edge.hub.subs, 5, what="the edge to drop the sub")

        async def unregistered() -> bool:
            return await edge.registry.get(sid) is None

        await wait_for(unregistered, 5, what="the registration to go")
        assert edge.hub.tenant_conns[tenant] == 0 and edge.hub.tenant_subs[tenant] == 0


async def test_auth(edge: Edge) -> None:
    q = by_name(2).model_dump(mode="json")
    async with httpx.AsyncClient(base_url=edge.base) as c:
        before = edge.hub.counters["auth_failures_401"]
        r = await c.post("/v1/live", json=q)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        for bad in ("nope", "v1.x.y", "v1.only-two", sign_token("wrong", "t", 60)):
            r = await c.post("/v1/live", json=q, headers={"authorization": f"Bearer {bad}"})
            assert r.status_code == 401, bad
        r = await c.post(
            "/v1/live", json=q, headers={"authorization": f"Bearer {sign_token(SECRET, 't', -5)}"}
        )
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert edge.hub.counters["auth_failures_401"] == before + 5
        # the static token, in the query string (as browsers send it)
        static = edge.rows(STATIC_TENANT)
        await static.seed(3)
        async with c.stream("POST", f"/v1/live?access_token={STATIC_TOKEN}", json=q) as resp:
            assert resp.status_code == 200
            s = SSE(c, resp)
            assert (await s.next()).event == "subscribed"
            assert ids_of(await s.window()) == truth(static.rows, 2)


async def test_validation_errors_name_the_field(edge: Edge) -> None:
    async with edge.http() as c:
        cases = [
            ({**by_name(2).model_dump(mode="json"), "limit": 0}, "limit"),
            ({**by_name(2).model_dump(mode="json"), "limit": EDGE_MAX_WINDOW + 1}, "limit"),
            ({**by_name(2).model_dump(mode="json"), "entity": "nope"}, "entity"),
            ({**by_name(2).model_dump(mode="json"), "sort": [{"column": "zzz"}]}, "column"),
            ({"entity": "asset"}, "limit"),
        ]
        for body, field in cases:
            r = await c.post("/v1/live", json=body)
            assert r.status_code == 422, (body, r.text)
            detail = r.json()["detail"]
            assert r.json()["error"] == "invalid" and detail[0]["loc"][-1] == field, detail
        r = await c.post("/v1/live", content=b"{not json")
        assert r.status_code == 422


async def test_connection_limit_429(edge: Edge) -> None:
    tenant = unique("lim")
    await edge.rows(tenant).seed(3)
    async with edge.http(tenant) as c, contextlib.AsyncExitStack() as stack:
        held = []  # a dropped reader would close its stream when collected
        for _ in range(CONNECTIONS_PER_TENANT):
            s = await stack.enter_async_context(sse(c, by_name(1)))
            assert isinstance(s, SSE)
            await s.window()
            held.append(s)
        async with sse(c, by_name(1)) as refused:
            assert isinstance(refused, httpx.Response)
            assert refused.status_code == 429 and refused.json()["error"] == "limit"
        assert edge.hub.tenant_conns[tenant] == CONNECTIONS_PER_TENANT


async def test_resume_keeps_the_sub_id(edge: Edge) -> None:
    tenant = unique("resume")
    w = edge.rows(tenant)
    await w.seed(10)
    async with edge.http(tenant) as c:
        async with sse(c, by_name(3)) as s:
            assert isinstance(s, SSE)
            sid = (await s.next()).data["sub"]
            win = await s.window()
            last = win[-1].id
        assert last is not None
        await w.put("new", name="n000", kind="pump", temp=0)  # changes while away
        await w.delete(truth(w.rows, 3)[-1])
        async with sse(c, by_name(3), {"last-event-id": last}) as s2:
            assert isinstance(s2, SSE)
            sub = await s2.next()
            assert sub.data == {"sub": sid, "resumed": True}
            win2 = await s2.window()
            assert ids_of(win2) == truth(w.rows, 3)
            assert win2[0].data["seq"] > int(last.split(".")[2])  # seq continues
        async with sse(c, by_name(3), {"last-event-id": "garbage"}) as s3:
            assert isinstance(s3, SSE)
            fresh = await s3.next()
            assert fresh.data["resumed"] is False and fresh.data["sub"] != sid


async def test_healthz_and_metrics(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.base) as c:
        r = await c.get("/healthz")
        assert r.status_code == 200
        body = r.json()
        assert body["ok"] and body["gateway"] == edge.gateway.id and body["shards"]
        text = (await c.get("/metrics")).text
        for name in (
            'raycluster_edge_connections{transport="sse"}',
            "raycluster_edge_subscriptions ",
            "raycluster_edge_frames_sent_total ",
            "raycluster_edge_slow_consumer_resets_total ",
            "raycluster_edge_slow_consumer_disconnects_total ",
            'raycluster_edge_auth_failures_total{status="401"}',
            "raycluster_gateway_frames_total ",
        ):
            assert name in text, name
        r = await c.get("/static/does-not-exist.js")
        assert r.status_code == 404


async def test_healthz_503_without_live_shards(edge: Edge) -> None:
    # a second gateway on a key prefix no shard serves: its edge is not healthy
    from raycluster import connect
    from raycluster.edge import create_app

    s = edge.settings.model_copy(
        update={"redis": edge.settings.redis.model_copy(update={"key_prefix": unique("empty")})}
    )
    url = edge.settings.redis.redis_url
    assert url is not None
    gw = await connect(url, s)
    try:
        app = create_app(gw, s)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as c:
            r = await c.get("/healthz")
            assert r.status_code == 503 and r.json()["shards"] == []
    finally:
        await gw.aclose()


async def test_token_helper_round_trip() -> None:
    from pydantic import SecretStr

    from raycluster.edge.auth import Forbidden, Unauthorized, authenticate

    sec = SecretStr(SECRET)
    assert authenticate(sign_token(SECRET, "acme", 60), {}, sec) == "acme"
    assert authenticate(STATIC_TOKEN, {STATIC_TOKEN: STATIC_TENANT}, None) == STATIC_TENANT
    for bad, exc in ((None, Unauthorized), (sign_token(SECRET, "a", -1), Forbidden)):
        try:
            authenticate(bad, {}, sec)
        except exc:
            continue
        raise AssertionError(f"{bad} accepted")


async def test_metrics_report_the_tiers_postgres_ingester(edge: Edge) -> None:
    """With a postgres: section, /metrics shows the status the ingester publishes to Redis
    (whoever runs it): none reporting, then its lag, rate and position."""
    from raycluster.edge import create_app
    from raycluster.redis import SourceStatus

    slot = "edge_metrics"
    settings = edge.settings.model_copy(
        update={"postgres": PostgresSettings(
            dsn="postgresql://ingest:s3cret@db/app", publication="pub", slot=slot,
            tables=[{"table": "asset", "entity": "asset", "tenant_column": "tenant"}],
        )}
    )  # fmt: skip
    app = create_app(edge.gateway, settings)
    transport = httpx.ASGITransport(app=app)
    status = SourceStatus.from_url(edge.settings.redis.redis_url, settings=settings.redis)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as c:
            text = (await c.get("/metrics")).text
            assert f'raycluster_ingest_reporting{{slot="{slot}"}} 0.0' in text
            assert "raycluster_ingest_lag_bytes" not in text
            published = {
                "state": "streaming", "slot": slot, "lag_bytes": 4096, "lag_s": 0.25,
                "rows_per_s": 1234.5, "confirmed_lsn": "1/10", "applied": 77,
            }  # fmt: skip
            await status.publish(slot, published, ttl_s=30)
            text = (await c.get("/metrics")).text
            samples = {
                s.name: s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.labels.get("slot") == slot
            }
            assert samples == {
                "raycluster_ingest_reporting": 1, "raycluster_ingest_streaming": 1,
                "raycluster_ingest_lag_bytes": 4096, "raycluster_ingest_lag_seconds": 0.25,
                "raycluster_ingest_rows_per_second": 1234.5,
                "raycluster_ingest_confirmed_lsn": 2**32 + 16,
                "raycluster_ingest_applied_total": 77, "raycluster_ingest_copied_rows_total": 0,
                "raycluster_ingest_transactions_total": 0, "raycluster_ingest_reconnects_total": 0,
                "raycluster_ingest_copies_total": 0,
            }  # fmt: skip
            assert "s3cret" not in text
    finally:
        await app.state.ingest.aclose()
        await status.aclose()
