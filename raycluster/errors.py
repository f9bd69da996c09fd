"""The package's exceptions: one root, one subclass per failure mode."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = (
    "AuthenticationError",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DesyncError",
    "InvalidArgument",
    "InvalidQuery",
    "InvalidRow",
    "NotReadyError",
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


class InvalidArgument(_FieldError):
    """Raised when an argument of a call (not a query, not a row) is outside its domain:
    a shard count that is not an int, an address that is not one. Nothing was changed."""


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.agg_id, self.expected, self.actual))


class ClosedError(RayclusterError):
    """Raised when an engine, subscription or connection is used after close."""


class DesyncError(RayclusterError):
    """Raised by `LiveList.apply` when a frame does not fit the list it is applied to.

    It means frames were lost or reordered; the owner of the list resyncs.
    """


class UnavailableError(RayclusterError):
    """Raised when a dependency (a shard, Redis) did not answer in time; a retry may succeed."""


class AuthenticationError(RayclusterError):
    """Raised when a server refuses the credentials given (a wrong password, or none
    where one is required).

    Not retried, and not an `UnavailableError`: trying again sends the same
    credentials. Fix the URL (`redis://:password@host:port`) or the server's
    settings. The message never contains the password.
    """


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.tier, self.timeout_s, self.pending, self.failed, self.missing,
             self.available, self.total),
        )  # fmt: skip
