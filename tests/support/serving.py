"""Serving an edge app (`raycluster.edge.create_app`) with uvicorn on a free loopback port.

Imported on its own (`support.serving`): it loads uvicorn and Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from .servers import free_port
from .waiting import wait_for

__all__ = ("served",)


@contextlib.asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[int]:
    """Serve `app` until exit; yields the port once uvicorn listens. On exit the app's hub
    ends its streams and the server stops (bounded)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, 15, what="uvicorn")
        yield port
    finally:
        app.state.hub.shutdown()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 15)
