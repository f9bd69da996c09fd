"""The package's exceptions: one root, one subclass per failure mode."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = (
    "ClosedError",
    "ConflictError",
    "DesyncError",
    "InvalidQuery",
    "InvalidRow",
    "RayclusterError",
    "RegistrationConflict",
    "UnavailableError",
)


class RayclusterError(Exception):
    """Root of every error raised on purpose by raycluster."""


class _FieldError(RayclusterError, ValueError):
    """Bad input: names the offending field and quotes the bad value."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {_quote(value)})")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields: it crosses processes (Ray tasks, actors) intact.
        return (type(self), (self.field, self.value, self.reason))


# Bad input may be huge or nested thousands deep: quote a bounded, shallow repr.
_repr = reprlib.Repr()
_repr.maxlevel = 4
_repr.maxstring = _repr.maxother = 200
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 20


def _quote(value: Any) -> str:
    return _repr.repr(value)


class InvalidQuery(_FieldError):
    """Raised when a live query is malformed or does not fit its entity.

    Raised before anything is registered: a failed subscribe leaves no trace.
    """


class InvalidRow(_FieldError):
    """Raised when a row written does not fit its entity; nothing is written."""


class ConflictError(RayclusterError):
    """Raised by a write whose expected version is not the row's current one."""

    def __init__(self, agg_id: str, expected: int, actual: int) -> None:
        self.agg_id = agg_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"row {agg_id!r}: expected version {expected}, found {actual}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.agg_id, self.expected, self.actual))


class ClosedError(RayclusterError):
    """Raised when an engine, subscription or connection is used after close."""


class DesyncError(RayclusterError):
    """Raised by `LiveList.apply` when a frame does not fit the list it is applied to.

    It means frames were lost or reordered; the owner of the list resyncs.
    """


class UnavailableError(RayclusterError):
    """Raised when no shard answered a request within its deadline."""


class RegistrationConflict(RayclusterError):
    """Raised when a registration would replace one it must not.

    A sub id stays bound to the tenant that registered it: the registry
    never lets another tenant's registration replace it, nor another
    gateway's unless that gateway takes the subscription over (a resume whose
    token was verified). The message never names the other tenant.
    """

    def __init__(self, sub_id: str, reason: str) -> None:
        self.sub_id = sub_id
        self.reason = reason
        super().__init__(f"subscription {sub_id}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.sub_id, self.reason))
