"""`run_edge`: serve the edge (uvicorn) over a gateway connected to the tier's Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

from raycluster._connect import connect
from raycluster.config import EdgeSettings, TierSettings
from raycluster.errors import RayclusterError
from raycluster.livequery import tune_gc

from ._hub import Hub
from .app import create_app

__all__ = ("run_edge", "serve", "ws_max_size", "ws_protocol")

log = logging.getLogger(__name__)


def ws_protocol() -> type[asyncio.Protocol]:
    """The uvicorn WebSocket implementation the edge runs on.

    The sans-I/O one: every send waits until the transport is writable (below
    its high-water mark), so a client that stops reading blocks the edge's
    send, its frames collapse in the bounded per-subscription buffer, and the
    send timeout can fire.
    """
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return WebSocketsSansIOProtocol


def ws_max_size(edge: EdgeSettings) -> int:
    """The largest WebSocket message the server reads: a margin over `edge.max_body_bytes`.

    A message over the limit but under this is answered with a 413 error frame
    (the socket stays open); one over this is refused by the server while it
    is being read (close 1009), so no more than this is ever buffered.
    """
    return 4 * edge.max_body_bytes


async def serve(
    settings: TierSettings,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> None:
    """Connect the gateway, serve until the server is told to exit, close the gateway."""
    url = settings.redis.redis_url
    if not url:
        raise RayclusterError(
            "the edge needs the tier's Redis: set redis.redis_url (or RAYCLUSTER_REDIS_URL)"
        )
    gateway = await connect(url, settings)
    try:
        app = create_app(gateway, settings)
        tune_gc()  # many connections' long-lived state: keep the collector off it
        edge = settings.edge
        config = uvicorn.Config(
            app,
            host=host or edge.host,
            port=edge.port if port is None else port,
            ws=ws_protocol(),
            ws_max_size=ws_max_size(edge),
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(edge.shutdown_grace_s)),
        )
        server = _Server(config, app.state.hub)
        await server.serve()
    finally:
        await gateway.aclose()


class _Server(uvicorn.Server):
    """A uvicorn server whose exit first asks every stream to say `shutdown`."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.hub.shutdown()
        super().handle_exit(sig, frame)


def run_edge(settings: TierSettings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the edge until SIGINT/SIGTERM (blocking); the gateway is closed cleanly on exit.

    Raises `RayclusterError` if `settings.redis.redis_url` is unset: the edge
    must share the tier's Redis.
    """
    asyncio.run(serve(settings, host=host, port=port))
