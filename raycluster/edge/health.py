"""`/healthz`, `/metrics` (Prometheus text, by `prometheus_client`) and the demo page `/`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from raycluster._tasks import logged
from raycluster.postgres.status import lsn_number
from raycluster.redis import SourceStatus

from ._service import EdgeService

__all__ = (
    "STATIC",
    "EdgeCollector",
    "IngestCollector",
    "healthz",
    "index",
    "metrics",
    "metrics_registry",
)

STATIC = Path(__file__).resolve().parent / "static"
_HEALTH_TIMEOUT_S = 5.0


async def healthz(svc: EdgeService, request: Request) -> Response:
    """200 when this gateway is live, some shard is, and the edge is not shutting down."""
    gw = svc.gateway.gateway
    try:
        async with asyncio.timeout(_HEALTH_TIMEOUT_S):
            gateways, shards = await asyncio.gather(
                gw.deps.members.live_gateways(), gw.deps.members.live_shards()
            )
    except Exception as e:
        return JSONResponse(
            {"ok": False, "detail": f"redis: {e}"}, status_code=503, headers={"retry-after": "1"}
        )
    ok = gw.id in gateways and bool(shards) and not svc.hub.closing
    body = {"ok": ok, "gateway": gw.id, "gateway_live": gw.id in gateways, "shards": shards}
    return JSONResponse(body, status_code=200 if ok else 503)


class EdgeCollector:
    """The edge's and its gateway's counters as Prometheus metrics (read at each scrape)."""

    def __init__(self, svc: EdgeService) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        """What `/metrics` shows: connections, subscriptions, frames, resets, auth, gateway."""
        hub = self.svc.hub
        c = hub.counters
        conns = GaugeMetricFamily(
            "raycluster_edge_connections", "Open client connections.", labels=["transport"]
        )
        opened = CounterMetricFamily(
            "raycluster_edge_connections_opened", "Connections accepted.", labels=["transport"]
        )
        for kind in ("sse", "ws"):
            conns.add_metric([kind], sum(1 for x in hub.conns if x.kind == kind))
            opened.add_metric([kind], c[f"connections_opened_{kind}"])
        yield conns
        yield opened
        yield GaugeMetricFamily(
            "raycluster_edge_subscriptions", "Open subscriptions.", value=len(hub.subs)
        )
        for name, text in _EDGE_COUNTERS:
            yield CounterMetricFamily(f"raycluster_edge_{name}", text, value=c[name])
        auth = CounterMetricFamily(
            "raycluster_edge_auth_failures", "Requests refused by auth.", labels=["status"]
        )
        for status in (401, 403):
            auth.add_metric([str(status)], c[f"auth_failures_{status}"])
        yield auth
        gs = self.svc.gateway.status()
        yield GaugeMetricFamily(
            "raycluster_gateway_subscriptions",
            "Subscriptions held by the edge's gateway.",
            value=gs.get("subscriptions", 0),
        )
        for key, value in gs.items():
            if isinstance(value, int) and key != "subscriptions":
                yield CounterMetricFamily(f"raycluster_gateway_{key}", f"Gateway counter {key}.",
                                          value=value)  # fmt: skip


_EDGE_COUNTERS = (
    ("frames_sent", "Frames written to clients."),
    ("slow_consumer_resets", "Backlogs replaced by a reset and the current window."),
    ("frames_replaced", "Queued frames dropped in favour of such a reset."),
    ("slow_consumer_disconnects", "Clients disconnected for not reading."),
    ("resume_refused", "Resume tokens that did not verify for the tenant (a fresh sub instead)."),
    ("resume_conflicts",
     "Verified resume tokens whose sub id the tier refused (a fresh sub instead)."),
)  # fmt: skip


class IngestCollector:
    """The tier's Postgres ingester, as its last published status says (tiers with a
    `postgres:` section only): whether one reports, its state, the slot position it
    confirmed, its lag in bytes and seconds, rows/s and counters.

    The status is read from Redis (`SourceStatus`) by `refresh()` before each
    scrape: the ingester runs elsewhere (a Ray actor, `raycluster ingest`).
    """

    def __init__(self, svc: EdgeService) -> None:
        self.svc = svc
        pg = svc.tier_settings.postgres
        self.slot = pg.slot if pg is not None else None
        self.status: dict[str, Any] | None = None
        self._reader: SourceStatus | None = None

    async def refresh(self) -> None:
        """Read the ingester's status (none reporting, or Redis down: no status)."""
        if self.slot is None:
            return
        if self._reader is None:
            s = self.svc.tier_settings
            self._reader = SourceStatus.from_url(self.svc.gateway.redis_url, settings=s.redis)
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                self.status = await self._reader.read(self.slot)
        except Exception:
            self.status = None

    async def aclose(self) -> None:
        """Close its Redis client."""
        if self._reader is not None:
            with logged("edge: closing the ingest status reader"):
                await self._reader.aclose()

    def collect(self) -> Iterator[Metric]:
        """The ingester's metrics, labelled by slot (nothing without a Postgres source)."""
        if self.slot is None:
            return
        st, slot = self.status, [self.slot]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"raycluster_ingest_{name}", text, labels=["slot"])
            g.add_metric(slot, value)
            return g

        yield gauge("reporting", "1 while an ingester publishes its status", st is not None)
        if st is None:
            return
        yield gauge("streaming", "1 while the ingester streams its slot",
                    st.get("state") == "streaming")  # fmt: skip
        yield gauge("lag_bytes", "WAL committed but not yet in Redis (bytes)",
                    st.get("lag_bytes", 0))  # fmt: skip
        yield gauge("lag_seconds", "Age of the oldest commit not yet in Redis",
                    st.get("lag_s", 0.0))  # fmt: skip
        yield gauge("rows_per_second", "Rows written to Redis per second (last 10 s)",
                    st.get("rows_per_s", 0.0))  # fmt: skip
        yield gauge("confirmed_lsn", "Slot position confirmed to Postgres (WAL bytes)",
                    lsn_number(st.get("confirmed_lsn", "0/0")))  # fmt: skip
        for name, text in _INGEST_COUNTERS:
            c = CounterMetricFamily(f"raycluster_ingest_{name}", text, labels=["slot"])
            c.add_metric(slot, st.get(name, 0))
            yield c


_INGEST_COUNTERS = (
    ("applied", "Streamed writes that changed a row (since the ingester started)."),
    ("copied_rows", "Rows written by initial copies."),
    ("transactions", "Transactions applied."),
    ("reconnects", "Lost connections to Postgres or Redis."),
    ("copies", "Initial copies (a lost slot makes another)."),
)


def metrics_registry(svc: EdgeService, ingest: IngestCollector | None = None) -> CollectorRegistry:
    """A registry of this edge's metrics alone (several edges may share a process); with
    `ingest`, the tier's Postgres ingester's too."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(svc))
    if ingest is not None:
        registry.register(ingest)
    return registry


async def metrics(svc: EdgeService, request: Request) -> Response:
    """Connections, subscriptions and counters of the edge and its gateway, and the tier's
    Postgres ingester (Prometheus text)."""
    ingest: IngestCollector | None = getattr(request.app.state, "ingest", None)
    if ingest is not None:
        await ingest.refresh()
    registry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def index(svc: EdgeService, request: Request) -> Response:
    """The demo page."""
    page = STATIC / "index.html"
    if not page.is_file():
        return JSONResponse({"error": "not_found", "detail": "no index.html"}, 404)
    return FileResponse(page)
