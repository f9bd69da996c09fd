"""Start progress: what a `Tier.start` / `tier.scale` under way waits for, and its reporting."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from raycluster.errors import NotReadyError

__all__ = ("LogProgress", "StartProgress", "cluster_resources")

log = logging.getLogger("raycluster.actors.tier")

PROGRESS_EVERY_S = 5.0  # the default reporter logs this often while actors are pending
WARN_AFTER_S = 10.0  # ... and warns once when a start takes this long


@dataclass(frozen=True)
class StartProgress:
    """One look at a `Tier.start` / `tier.scale` under way.

    `live`: actors ready; `pending`: actor id -> resources it waits for;
    `failed`: actor id -> its last readiness error; `available` / `total`:
    what the cluster has free / in all, of the resources the actors ask for.
    """

    elapsed_s: float
    desired: int
    live: list[str]
    pending: dict[str, dict[str, float]]
    failed: dict[str, str]
    available: dict[str, float]
    total: dict[str, float]

    def missing(self) -> dict[str, float]:
        """Resources the pending actors need together beyond what is free."""
        need: dict[str, float] = {}
        for demand in self.pending.values():
            for r, v in demand.items():
                need[r] = need.get(r, 0.0) + v
        gap = {r: v - self.available.get(r, 0.0) for r, v in need.items()}
        return {r: round(v, 3) for r, v in gap.items() if v > 1e-9}

    def describe(self) -> str:
        """One line: live, pending and on what, failed, free of total."""
        groups = NotReadyError.pending_groups(self.pending)
        pending = ", ".join(f"{names} {d}" for names, _, d in groups) or "none"
        line = (
            f"{len(self.live)} ready ({', '.join(self.live) or 'none'}); pending: {pending}; "
            f"free {self.available} of {self.total}"
        )
        if self.failed:
            line += "; failing: " + "; ".join(f"{a}: {e}" for a, e in sorted(self.failed.items()))
        return f"{line} ({self.elapsed_s:.0f} s)"

    def error(self, tier: str, timeout_s: float) -> NotReadyError:
        """The error a start that timed out in this state raises."""
        return NotReadyError(
            tier, timeout_s, self.pending, self.failed, self.missing(), self.available, self.total
        )


def cluster_resources(names: set[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Free and total amounts of `names` (and CPU) in the cluster, right now."""
    names = names | {"CPU"}
    free, total = ray.available_resources(), ray.cluster_resources()
    return (
        {r: round(free.get(r, 0.0), 3) for r in sorted(names)},
        {r: round(total.get(r, 0.0), 3) for r in sorted(names)},
    )


class LogProgress:
    """The default reporter: INFO every few seconds while actors are pending, one WARNING
    once it takes long (visible without any logging configured)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._warned = False

    def __call__(self, p: StartProgress) -> None:
        if not self._warned and p.elapsed_s >= WARN_AFTER_S:
            self._warned = True
            log.warning("tier not ready yet: %s", p.describe())
        elif p.elapsed_s - self._last >= PROGRESS_EVERY_S:
            log.info("waiting for the tier: %s", p.describe())
        else:
            return
        self._last = p.elapsed_s
