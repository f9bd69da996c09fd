"""The package's exceptions: one root, one subclass per failure mode."""

from __future__ import annotations

from typing import Any

__all__ = (
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DesyncError",
    "InvalidQuery",
    "InvalidRow",
    "RayclusterError",
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
        super().__init__(f"{field}: {reason} (got {value!r})")


class InvalidQuery(_FieldError):
    """Raised when a live query is malformed or does not fit its entity.

    Raised before anything is registered: a failed subscribe leaves no trace.
    """


class ConfigError(RayclusterError, ValueError):
    """Raised when a config file cannot be used (not YAML, not a mapping); names the file."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"config {path}: {reason}")


class InvalidRow(_FieldError):
    """Raised when a row written does not fit its entity; nothing is written."""


class ConflictError(RayclusterError):
    """Raised by a write whose expected version is not the row's current one."""

    def __init__(self, agg_id: str, expected: int, actual: int) -> None:
        self.agg_id = agg_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"row {agg_id!r}: expected version {expected}, found {actual}")


class ClosedError(RayclusterError):
    """Raised when an engine, subscription or connection is used after close."""


class DesyncError(RayclusterError):
    """Raised by `LiveList.apply` when a frame does not fit the list it is applied to.

    It means frames were lost or reordered; the owner of the list resyncs.
    """


class UnavailableError(RayclusterError):
    """Raised when no shard answered a request within its deadline."""
