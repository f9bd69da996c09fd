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
    "NotReadyError",
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


class NotReadyError(RayclusterError):
    """Raised by `Tier.start` / `tier.scale` when actors are not ready within `start_timeout_s`.

    By then what the call started is stopped again. `pending` maps each actor
    that was not ready to its resource demand, `failed` to the error its last
    readiness check raised, and `missing` names the resources the cluster
    lacked for the pending ones (summed demand minus what was free; empty when
    the cluster had room and the actors failed or were still starting).
    """

    def __init__(
        self,
        tier: str,
        timeout_s: float,
        pending: dict[str, dict[str, float]],
        failed: dict[str, str],
        missing: dict[str, float],
        available: dict[str, float],
        total: dict[str, float],
    ) -> None:
        self.tier = tier
        self.timeout_s = timeout_s
        self.pending = pending
        self.failed = failed
        self.missing = missing
        self.available = available
        self.total = total
        not_ready = sorted({*pending, *failed})
        parts = [f"tier {tier!r}: {', '.join(not_ready)} not ready after {timeout_s:g} s"]
        if missing:
            need = ", ".join(f"{r} {v:g}" for r, v in sorted(missing.items()))
            demands = "; ".join(f"{a} needs {d}" for a, d in sorted(pending.items()))
            parts.append(f"missing resources: {need} ({demands}; free {available} of {total})")
        for aid, err in sorted(failed.items()):
            parts.append(f"{aid}: {err}")
        if not missing and not failed:
            parts.append(f"the cluster has the resources free ({available}): still starting?")
        parts.append("what the call started was stopped")
        super().__init__("; ".join(parts))
