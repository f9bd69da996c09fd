"""Side requests on a subscription: `POST .../reanchor`, `POST .../resync`, `DELETE`.

They name the subscription by its sub id and act only on the token's
tenant's (404 otherwise). `DELETE` ends that one subscription: an SSE stream
ends; a WebSocket gets `{"type": "unsubscribed", "id": ...}` and stays open.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._json import read_json
from ._service import EdgeService

__all__ = ("delete", "reanchor", "resync")


async def reanchor(svc: EdgeService, request: Request) -> Response:
    """Move the window; 200 once the new window is queued on the stream."""
    esub = svc.side(request)
    rows, seq = await svc.reanchor(esub, await read_json(request, svc.settings))
    return JSONResponse({"sub": esub.id, "rows": rows, "seq": seq})


async def resync(svc: EdgeService, request: Request) -> Response:
    """Ask for a fresh reset and window (202)."""
    esub = svc.side(request)
    await svc.gateway.gateway.resync(esub.id)
    return Response(status_code=202)


async def delete(svc: EdgeService, request: Request) -> Response:
    """Unsubscribe one subscription (204)."""
    esub = svc.side(request)
    conn = esub.conn
    cid = next((k for k, v in conn.subs.items() if v is esub), None)
    if cid is not None:
        del conn.subs[cid]
    if conn.kind == "sse":
        conn.end("unsubscribed")
        await esub.close()
    else:
        await esub.close()
        if cid is not None:
            conn.reply({"type": "unsubscribed", "id": cid})
    return Response(status_code=204)
