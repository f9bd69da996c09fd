"""`/healthz`, `/metrics` (Prometheus text) and the demo page `/`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ._service import EdgeService

__all__ = ("STATIC", "healthz", "index", "metrics")

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


async def metrics(svc: EdgeService, request: Request) -> Response:
    """Connections, subscriptions and counters of the edge and its gateway."""
    hub = svc.hub
    c = hub.counters
    lines = [
        "# HELP raycluster_edge_connections Open client connections.",
        "# TYPE raycluster_edge_connections gauge",
    ]
    for kind in ("sse", "ws"):
        n = sum(1 for x in hub.conns if x.kind == kind)
        lines.append(f'raycluster_edge_connections{{transport="{kind}"}} {n}')
    lines += [
        "# HELP raycluster_edge_connections_opened_total Connections accepted.",
        "# TYPE raycluster_edge_connections_opened_total counter",
    ]
    for kind in ("sse", "ws"):
        n = c[f"connections_opened_{kind}"]
        lines.append(f'raycluster_edge_connections_opened_total{{transport="{kind}"}} {n}')
    simple = [
        ("subscriptions", "gauge", "Open subscriptions.", len(hub.subs)),
        ("frames_sent_total", "counter", "Frames written to clients.", c["frames_sent"]),
        ("slow_consumer_resets_total", "counter",
         "Backlogs replaced by a reset and the current window.", c["slow_consumer_resets"]),
        ("frames_replaced_total", "counter",
         "Queued frames dropped in favour of such a reset.", c["frames_replaced"]),
        ("slow_consumer_disconnects_total", "counter",
         "Clients disconnected for not reading.", c["slow_consumer_disconnects"]),
        ("resume_refused_total", "counter",
         "Resume tokens that did not verify for the tenant (a fresh sub instead).",
         c["resume_refused"]),
        ("resume_conflicts_total", "counter",
         "Verified resume tokens whose sub id the tier refused (a fresh sub instead).",
         c["resume_conflicts"]),
    ]  # fmt: skip
    for name, kind, text, value in simple:
        lines += [
            f"# HELP raycluster_edge_{name} {text}",
            f"# TYPE raycluster_edge_{name} {kind}",
            f"raycluster_edge_{name} {value}",
        ]
    lines += [
        "# HELP raycluster_edge_auth_failures_total Requests refused by auth.",
        "# TYPE raycluster_edge_auth_failures_total counter",
    ]
    for status in (401, 403):
        lines.append(
            f'raycluster_edge_auth_failures_total{{status="{status}"}} '
            f"{c[f'auth_failures_{status}']}"
        )
    gs = svc.gateway.status()
    for key, value in gs.items():
        if isinstance(value, int) and key != "subscriptions":
            name = f"raycluster_gateway_{key}_total"
            lines += [f"# TYPE {name} counter", f"{name} {value}"]
    lines += [
        "# TYPE raycluster_gateway_subscriptions gauge",
        f"raycluster_gateway_subscriptions {gs.get('subscriptions', 0)}",
    ]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")


async def index(svc: EdgeService, request: Request) -> Response:
    """The demo page."""
    page = STATIC / "index.html"
    if not page.is_file():
        return JSONResponse({"error": "not_found", "detail": "no index.html"}, 404)
    return FileResponse(page)
