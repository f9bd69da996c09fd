"""The package's exceptions: one root, one subclass per failure mode."""

from __future__ import annotations

import reprlib
from typing import Any, ClassVar

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

    # The constructor's parameters, in order, of an error built from fields: it
    # is rebuilt from them, intact, when it crosses processes (Ray tasks, actors).
    init_fields: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> Any:
        if not self.init_fields:
            return super().__reduce__()
        return (type(self), tuple(getattr(self, f) for f in self.init_fields))


class _FieldError(RayclusterError, ValueError):
    """Bad input: names the offending field and quotes the bad value."""

    init_fields = ("field", "value", "reason")

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {_quote(value)})")


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
    """Raised when the settings cannot be read: a config file that is not UTF-8 YAML or not
    a mapping (names the file, `path`), or a `RAYCLUSTER_*` environment variable that names
    no setting or holds bad JSON (`path` None; the reason names the variable)."""

    init_fields = ("path", "reason")

    def __init__(self, path: str | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"config {path}: {reason}" if path is not None else f"environment: {reason}"
        )


class InvalidRow(_FieldError):
    """Raised when a row written does not fit its entity; nothing is written."""


class ConflictError(RayclusterError):
    """Raised by a write whose expected version is not the row's current one."""

    init_fields = ("agg_id", "expected", "actual")

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

    init_fields = ("sub_id", "reason")

    def __init__(self, sub_id: str, reason: str) -> None:
        self.sub_id = sub_id
        self.reason = reason
        super().__init__(f"subscription {sub_id}: {reason}")


class NotReadyError(RayclusterError):
    """Raised by `Tier.start` / `tier.scale` when actors are not ready within `start_timeout_s`.

    By then what the call started is stopped again. `pending` maps each actor
    that was not ready to its resource demand, `failed` to the error its last
    readiness check raised, and `missing` names the resources the cluster
    lacked for the pending ones (summed demand minus what was free; empty when
    the cluster had room and the actors failed or were still starting).
    """

    init_fields = ("tier", "timeout_s", "pending", "failed", "missing", "available", "total")

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
        not_ready = _listed({*pending, *failed})
        parts = [f"tier {tier!r}: {not_ready} not ready after {timeout_s:g} s"]
        if missing:
            need = ", ".join(f"{r} {v:g}" for r, v in sorted(missing.items()))
            demands = "; ".join(
                f"{names} {'needs' if n == 1 else 'each need'} {d}"
                for names, n, d in self.pending_groups(pending)
            )
            parts.append(f"missing resources: {need} ({demands}; free {available} of {total})")
        for aid, err in sorted(failed.items()):
            parts.append(f"{aid}: {err}")
        if not missing and not failed:
            parts.append(f"the cluster has the resources free ({available}): still starting?")
        parts.append("what the call started was stopped")
        super().__init__("; ".join(parts))

    @staticmethod
    def pending_groups(
        pending: dict[str, dict[str, float]],
    ) -> list[tuple[str, int, dict[str, float]]]:
        """`(actors, how many, demand)` naming what pending actors wait for: one per actor,
        or, past `MAX_LISTED` actors, one per distinct demand (`shard-2, … and 246 more`)."""
        ids = sorted(pending, key=_natural)
        if len(ids) <= MAX_LISTED:
            return [(aid, 1, pending[aid]) for aid in ids]
        groups: dict[str, tuple[list[str], dict[str, float]]] = {}
        for aid in ids:
            key = repr(sorted(pending[aid].items()))
            groups.setdefault(key, ([], pending[aid]))[0].append(aid)
        return [(_listed(names), len(names), demand) for names, demand in groups.values()]


MAX_LISTED = 8  # a message names this many actors, then says how many more


def _natural(aid: str) -> tuple[str, int]:
    """Sort key: `shard-2` before `shard-10`."""
    prefix, _, number = aid.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (aid, -1)


def _listed(ids: Any) -> str:
    """`a, b, c` in natural order; past `MAX_LISTED`, the first ones and how many more."""
    names = sorted(ids, key=_natural)
    if len(names) <= MAX_LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:MAX_LISTED])} and {len(names) - MAX_LISTED} more"
