"""The edge: live queries for browsers and other clients over SSE and WebSocket.

The wire contract is `docs/edge-protocol.md`. `create_app` builds the
Starlette application over an external gateway (`raycluster.connect`),
`run_edge` serves it with uvicorn, `EdgeClient` is the Python client,
`sign_token` makes a signed bearer token, `EdgeSettings` is the `edge:`
section of the tier settings.

`EdgeSettings` and `sign_token` import without the `edge` extra (the tier
settings use them); the rest needs starlette, uvicorn, httpx and websockets
and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raycluster._lazy import lazy_attributes
from raycluster.config import EdgeSettings

from .auth import sign_token

if TYPE_CHECKING:
    from .app import create_app
    from .client import EdgeClient
    from .server import run_edge

__all__ = ("EdgeClient", "EdgeSettings", "create_app", "run_edge", "sign_token")

_LAZY = {"create_app": ".app", "EdgeClient": ".client", "run_edge": ".server"}

__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
