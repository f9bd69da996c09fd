"""Errors of the Redis layer, and the translation of redis-py's at the boundary.

A refused password becomes `raycluster.errors.AuthenticationError` (never
retried), anything that means "cannot reach Redis now" `RedisUnavailable`,
any other error reply `RedisCommandError`.

(They belong beside the package's other errors in `raycluster/errors.py`;
they live here until that module takes them.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as rx

from raycluster.errors import AuthenticationError, RayclusterError, UnavailableError

__all__ = (
    "REFUSED",
    "UNREACHABLE",
    "RedisCommandError",
    "RedisUnavailable",
    "refused",
    "translate_errors",
)

REFUSED = rx.AuthenticationError
"""redis-py's error for refused credentials; a reader catches it before `UNREACHABLE`
(of which it is a subclass) and raises `refused(...)`: retrying cannot help."""

UNREACHABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    OSError,
    # Redis Cluster between masters (a failover): the slot has no master yet, or
    # it moved (the client has learnt where: the next attempt goes there).
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.SlotNotCoveredError,
    rx.AskError,
)
"""redis-py errors that mean "Redis cannot serve this now; try again later" (what a
blocking reader treats as "connection lost: back off and resume"; BusyLoadingError,
a ConnectionError, covers a restarted server still loading its AOF). redis-py's
AuthenticationError is a ConnectionError too: `translate_errors` catches it first."""


class RedisUnavailable(UnavailableError, ConnectionError):
    """Raised when Redis cannot be reached, or a reply did not arrive in time.

    For a write the outcome is unknown: it may or may not have been applied.
    """


class RedisCommandError(RayclusterError):
    """Raised when Redis rejected a command (out of memory, wrong key type, script error)."""


def refused(what: str, e: BaseException) -> AuthenticationError:
    """The `AuthenticationError` for redis-py's `e` met while doing `what` (raise it `from e`)."""
    return AuthenticationError(f"{what}: Redis refused the credentials ({e})")


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise redis-py errors met while doing `what` as raycluster errors (chained)."""
    try:
        yield
    except REFUSED as e:  # a ConnectionError to redis-py: not "try again"
        raise refused(what, e) from e
    except UNREACHABLE as e:
        raise RedisUnavailable(f"{what}: Redis unavailable ({e})") from e
    except rx.RedisError as e:
        raise RedisCommandError(f"{what}: {e}") from e
