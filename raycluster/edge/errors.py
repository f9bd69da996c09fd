"""Errors of the edge: one table from exception classes to HTTP statuses and WS error frames.

`failure(exc)` maps any exception to an `EdgeError` (status, error, detail);
the HTTP exception handlers and the WebSocket reader both use it, so a
failure answers the same on either transport (docs/edge-protocol.md, Errors):

| raised                                         | status | error          |
|------------------------------------------------|--------|----------------|
| `AuthError`                                    | 401/403| unauthorized / forbidden |
| `InvalidQuery`, `ValidationError`, bad JSON    | 422    | invalid        |
| body / message over `edge.max_body_bytes`      | 413    | too_large      |
| an edge limit                                  | 429    | limit          |
| unknown or another tenant's subscription       | 404    | not_found      |
| `UnavailableError` (`RedisUnavailable` too), timeout | 503 | unavailable (+ `Retry-After`) |
| the client left mid-request                    | 400    | disconnected   |
| a body not sent within `edge.request_timeout_s`| 408    | timeout        |
| anything else (logged)                         | 500    | internal       |

Bad input is never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from raycluster.errors import ClosedError, InvalidQuery, RayclusterError, UnavailableError

from .auth import AuthError

__all__ = (
    "UNAVAILABLE",
    "EdgeError",
    "Invalid",
    "LimitExceeded",
    "NotFound",
    "RequestTimeout",
    "TooLarge",
    "Unavailable",
    "exception_handlers",
    "failure",
    "ws_error",
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
# A dependency (Redis, the shards) did not answer: 503, and worth a retry.
UNAVAILABLE: tuple[type[BaseException], ...] = (UnavailableError, TimeoutError)


class EdgeError(RayclusterError):
    """A request refused with an HTTP status and a protocol error body `{error, detail}`."""

    status = 500
    error = "internal"

    def __init__(self, detail: Any, *, status: int | None = None, error: str | None = None) -> None:
        self.detail = detail
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error
        super().__init__(f"{self.status} {self.error}: {detail}")

    @property
    def headers(self) -> dict[str, str]:
        """Extra HTTP headers of the answer."""
        return {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the HTTP answer."""
        return {"error": self.error, "detail": self.detail}

    def response(self) -> JSONResponse:
        """The HTTP answer."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class Invalid(EdgeError):
    """Bad input (HTTP 422): `detail` is a list of `{"loc": [...], "msg": ...}`."""

    status = 422
    error = "invalid"


class TooLarge(EdgeError):
    """A body or message over `edge.max_body_bytes` (HTTP 413, WS close 1009)."""

    status = 413
    error = "too_large"


class RequestTimeout(EdgeError):
    """A request body that did not arrive within `edge.request_timeout_s` (HTTP 408)."""

    status = 408
    error = "timeout"


class LimitExceeded(EdgeError):
    """An edge limit: subscriptions or connections (HTTP 429, WS close 4429 at connect)."""

    status = 429
    error = "limit"


class NotFound(EdgeError):
    """An unknown subscription, or another tenant's (HTTP 404)."""

    status = 404
    error = "not_found"


class Unavailable(EdgeError):
    """Redis or the shards did not answer (HTTP 503 with `Retry-After`)."""

    status = 503
    error = "unavailable"

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(RETRY_AFTER_S)}


def _loc(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".") if p]


def invalid(exc: InvalidQuery | ValidationError) -> Invalid:
    """A 422 naming the field(s): each `loc` is a path into the request's JSON."""
    if isinstance(exc, InvalidQuery):
        return Invalid([{"loc": _loc(exc.field), "msg": exc.reason}])
    detail: list[dict[str, Any]] = []
    for e in exc.errors(include_url=False):
        loc: list[str | int] = list(e["loc"])
        inner = (e.get("ctx") or {}).get("error")
        msg = e["msg"]
        if isinstance(inner, InvalidQuery):
            sub = _loc(inner.field)
            # A condition's own checks name its fields under "where": pydantic's loc
            # already points at that condition (["where", 0, "args", 1]).
            if loc and sub[:1] == ["where"]:
                sub = sub[1:]
            loc += sub
            msg = inner.reason
        detail.append({"loc": loc, "msg": msg})
    return Invalid(detail)


def _auth(e: AuthError) -> EdgeError:
    return EdgeError(e.detail, status=e.status, error=e.error)


def _unavailable(e: Exception) -> EdgeError:
    return Unavailable(str(e) or "no shard answered in time")


def _disconnected(e: Exception) -> EdgeError:
    return EdgeError("the client left mid-request", status=400, error="disconnected")


# The table: first matching class wins (order matters: TimeoutError and
# RedisUnavailable are OSErrors).
TABLE: Sequence[tuple[tuple[type[BaseException], ...], Callable[[Any], EdgeError]]] = (
    ((EdgeError,), lambda e: e),
    ((AuthError,), _auth),
    ((InvalidQuery, ValidationError), invalid),
    ((ClosedError,), lambda e: NotFound("no such subscription")),
    (UNAVAILABLE, _unavailable),
    ((ClientDisconnect,), _disconnected),
)


def failure(exc: BaseException) -> EdgeError:
    """The protocol answer to `exc`; an exception not in the table is logged and a 500."""
    for classes, convert in TABLE:
        if isinstance(exc, classes):
            return convert(exc)
    log.error("edge request failed", exc_info=exc)
    return EdgeError("internal error")


def ws_error(cid: str | None, exc: BaseException) -> dict[str, Any]:
    """The WebSocket error frame of `exc` (the same table as HTTP)."""
    f = failure(exc)
    return {"type": "error", "id": cid, "status": f.status, "error": f.error, "detail": f.detail}


async def _handle(request: Request, exc: Exception) -> Response:
    return failure(exc).response()


async def _internal(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after answering, so the server logs the traceback once.
    return EdgeError("internal error").response()


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    """Starlette's `exception_handlers`: every class of the table, then 500 for the rest."""
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        cls: _handle for classes, _ in TABLE for cls in classes
    }
    handlers[Exception] = _internal
    return handlers
