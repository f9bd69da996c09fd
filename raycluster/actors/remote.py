"""Calls to actors whose errors reach the caller as themselves.

Ray raises an error from inside an actor as a `RayTaskError` subclass of
the error's own type whose `str()` is the whole remote traceback. The
driver's calls raise the error the actor raised instead (its own one-line
message, its fields), chained to the `RayTaskError` (`__cause__`) that
holds the remote traceback. Errors of Ray itself (an actor that died, a
timeout) pass unchanged.
"""

from __future__ import annotations

from typing import Any, NoReturn

import ray
from ray.exceptions import RayError, RayTaskError

__all__ = ("call", "get", "raised_by")


def raised_by(e: RayTaskError) -> Exception | None:
    """What the actor raised (through actors that passed it on); None for Ray's own errors."""
    cause: object = e
    while isinstance(cause, RayTaskError):
        cause = cause.cause
    if isinstance(cause, Exception) and not isinstance(cause, RayError):
        return cause
    return None


async def call(ref: Any) -> Any:
    """`await ref`, an error the actor raised raised as itself."""
    try:
        return await ref
    except RayTaskError as e:
        _raise_own(e)


def get(ref: Any, timeout_s: float | None = None) -> Any:
    """`ray.get(ref, timeout=timeout_s)`, an error the actor raised raised as itself."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except RayTaskError as e:
        _raise_own(e)


def _raise_own(e: RayTaskError) -> NoReturn:
    """Raise what the actor raised (chained to `e`), or `e` itself for Ray's own errors."""
    own = raised_by(e)
    if own is None:
        raise e
    raise own from e
