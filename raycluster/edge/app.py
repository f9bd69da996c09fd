"""`create_app`: the edge's Starlette application, assembled from its parts.

The wire contract is `docs/edge-protocol.md`. The parts: `sse` (the
SSE transport), `ws` (the WebSocket transport), `side` (reanchor, resync,
delete), `health` (health, metrics, the demo page), `errors` (one table
from exceptions to statuses, used by both transports), over one
`EdgeService` (`_service`) and its `Hub` (`_hub`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from raycluster._connect import RemoteGateway
from raycluster.config import TierSettings

from . import health, side, sse, ws
from ._service import EdgeService
from .errors import exception_handlers

__all__ = ("create_app",)


def create_app(gateway: RemoteGateway, settings: TierSettings) -> Starlette:
    """The edge application over a started external gateway.

    `app.state.hub` holds the connections; `app.state.hub.shutdown()` asks
    every stream to end with reason `shutdown` (the server calls it on SIGTERM).
    """
    svc = EdgeService(gateway, settings)
    ingest = health.IngestCollector(svc)

    def bind(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        return functools.partial(handler, svc)

    routes = [
        Route("/", bind(health.index), methods=["GET"]),
        Route("/healthz", bind(health.healthz), methods=["GET"]),
        Route("/metrics", bind(health.metrics), methods=["GET"]),
        Route("/v1/live", bind(sse.live), methods=["POST"]),
        Route("/v1/live/{sub}/reanchor", bind(side.reanchor), methods=["POST"]),
        Route("/v1/live/{sub}/resync", bind(side.resync), methods=["POST"]),
        Route("/v1/live/{sub}", bind(side.delete), methods=["DELETE"]),
        WebSocketRoute("/v1/live/ws", bind(ws.websocket)),
        Mount("/static", StaticFiles(directory=health.STATIC, check_dir=False), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await svc.hub.aclose()  # the pumps of subscriptions still open at shutdown
        await ingest.aclose()

    app = Starlette(routes=routes, exception_handlers=exception_handlers(), lifespan=lifespan)
    app.state.hub = svc.hub
    app.state.ingest = ingest
    app.state.metrics = health.metrics_registry(svc, ingest)
    app.state.service = svc
    return app
