"""The capacity model: measured per-unit costs in, shards / Redis masters / gateways out.

Pure arithmetic (no Redis, no Ray), so tests drive it and `bench_scale.py`
feeds it what it measured on this machine. Costs are bytes, or CPU-seconds
of one process, so they transfer to machines where each process has a core
of its own (a shard or a gateway is one event loop; Redis runs commands on
one thread).

What one change costs a process depends on the rate: at a low rate each
read and each delta batch carries few changes, so the per-read and
per-batch overhead dominates. The live costs are therefore measured at a
few rates (a curve of `(changes/s, CPU-seconds per change)`) and read off
at the rate each process would see. The highest point of each curve is a
drain (the process at its own ceiling, batches at their largest); past it
the cost stays flat, which is all a process can do anyway.

For `subs` subscriptions, `changes_per_s` writes/s and `fanout` frames per
change (how many subscriptions one change reaches):

* a shard at r = changes/s / shards: idle + r x (live cost(r) + (fanout - 1) x fan-out
  cost per frame); its memory: its share of subs x bytes per subscription + base;
* a gateway at f = frames/s / gateways: idle + f x live cost(f); memory likewise;
* Redis: changes/s x live cost + extra frames x delta cost; memory:
  registrations + rows + retained events.

Each process is sized to its headroom (a fraction of a core, of a memory
budget); a count is the smallest that fits every resource, at least
`min_shards` shards (so one can fail and the rest absorb its partitions).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ("GIB", "Assumptions", "Inputs", "Plan", "at_rate", "plan", "predict_check")

GIB = 1024**3
Curve = Sequence[tuple[float, float]]  # (rate per second, CPU-seconds per unit at that rate)


@dataclass(frozen=True)
class Inputs:
    """Per-unit costs measured by `bench_scale.py` (bytes; CPU-seconds of one process)."""

    shard_bytes_own: float  # one subscription on its own view (window rows included)
    shard_bytes_shared: float  # one more subscriber of an existing identical view
    shard_base_bytes: float  # RSS of a shard process serving nothing
    shard_idle_cores: float  # CPU of a shard with no changes (heartbeats, loops, reads)
    shard_live: Curve  # (changes/s, CPU per change making one frame) at live rates
    shard_cpu_per_fanout_frame: float  # each further subscriber of a view a change reaches
    shard_drain_cpu_per_change: float  # a backlog drained (large batches): the floor
    shard_cpu_per_subscribe: float
    shard_subscribes_per_s: float  # what one shard accepted (wall clock, this machine)
    gateway_bytes_per_sub: float
    gateway_base_bytes: float
    gateway_idle_cores: float
    gateway_live: Curve  # (frames/s, CPU per frame)
    gateway_cpu_per_subscribe: float
    redis_bytes_per_registration: float
    redis_bytes_per_row: float
    redis_bytes_per_event: float  # one entry of a partition event stream
    redis_live: Curve  # (changes/s, CPU per change: write script, feed read, delta)
    redis_cpu_per_frame: float  # a further frame on the delta streams (XADD + XREAD)
    redis_cpu_per_subscribe: float


@dataclass(frozen=True)
class Assumptions:
    """What the model assumes about the deployment (defaults are stated in docs/capacity.md)."""

    subs: int = 1_000_000
    changes_per_s: float = 10_000
    fanout: float = 1.0  # frames per change (subscriptions one change reaches)
    shared_fraction: float = 0.0  # subscriptions that join an identical existing view
    rows: int = 10_000_000  # rows held in Redis
    event_retention_s: float = 600.0  # events kept per stream (events_maxlen set to cover it)
    cpu_headroom: float = 0.5  # busy at most half a core: a failover or a burst doubles it
    shard_mem_bytes: float = 8 * GIB  # memory of one shard process
    gateway_mem_bytes: float = 8 * GIB
    redis_mem_bytes: float = 16 * GIB  # maxmemory of one Redis master
    mem_headroom: float = 0.7  # use at most this fraction of a memory budget
    min_shards: int = 2


@dataclass(frozen=True)
class Plan:
    """How many of each process, and which resource decided each count."""

    shards: int
    shards_by: str
    gateways: int
    gateways_by: str
    redis_masters: int
    redis_by: str
    frames_per_s: float
    shard_cpu_cores: float  # total busy cores over all shards
    shard_mem_gib: float
    gateway_cpu_cores: float
    gateway_mem_gib: float
    redis_cpu_cores: float
    redis_mem_gib: float
    resubscribe_s: float  # every subscription subscribed again, all shards at the measured rate

    def row(self) -> dict[str, Any]:
        """A flat dict for a table."""
        return asdict(self)


def at_rate(curve: Curve, rate: float) -> float:
    """The per-unit cost at `rate`: linear in log(rate) between measured points, flat outside."""
    pts = sorted(curve)
    if rate <= pts[0][0]:
        return pts[0][1]
    for (r0, c0), (r1, c1) in itertools.pairwise(pts):
        if rate <= r1:
            t = math.log(rate / r0) / math.log(r1 / r0)
            return c0 + t * (c1 - c0)
    return pts[-1][1]


def _fewest(fits: Callable[[int], bool], limit: int = 1_000_000) -> int:
    """The smallest n >= 1 with fits(n) (fits is monotone); `limit` if none."""
    n = 1
    while n < limit and not fits(n):
        n *= 2
    lo, hi = n // 2 + 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _by(counts: dict[str, int], floor: int = 1) -> tuple[int, str]:
    name, n = max(counts.items(), key=lambda kv: kv[1])
    return (n, name) if n >= floor else (floor, "minimum")


def shard_cores(i: Inputs, rate: float, fanout: float = 1.0) -> float:
    """Busy cores of one shard that owns `rate` changes/s."""
    per_change = at_rate(i.shard_live, rate) + (fanout - 1) * i.shard_cpu_per_fanout_frame
    return i.shard_idle_cores + rate * per_change


def gateway_cores(i: Inputs, frames_per_s: float) -> float:
    """Busy cores of one gateway taking `frames_per_s`."""
    return i.gateway_idle_cores + frames_per_s * at_rate(i.gateway_live, frames_per_s)


def plan(i: Inputs, a: Assumptions) -> Plan:
    """Processes needed for `a` given the measured costs `i`."""
    rate, frames = a.changes_per_s, a.changes_per_s * a.fanout
    own = a.subs * (1 - a.shared_fraction)
    shard_sub_bytes = own * i.shard_bytes_own + (a.subs - own) * i.shard_bytes_shared
    shard_mem_usable = a.shard_mem_bytes * a.mem_headroom - i.shard_base_bytes
    shards, shards_by = _by(
        {
            "cpu": _fewest(lambda n: shard_cores(i, rate / n, a.fanout) <= a.cpu_headroom),
            "memory": math.ceil(shard_sub_bytes / shard_mem_usable),
        },
        a.min_shards,
    )
    gw_bytes = a.subs * i.gateway_bytes_per_sub
    gw_mem_usable = a.gateway_mem_bytes * a.mem_headroom - i.gateway_base_bytes
    gateways, gateways_by = _by(
        {
            "cpu": _fewest(lambda n: gateway_cores(i, frames / n) <= a.cpu_headroom),
            "memory": math.ceil(gw_bytes / gw_mem_usable),
        }
    )
    events = rate * a.event_retention_s
    redis_bytes = (
        a.subs * i.redis_bytes_per_registration
        + a.rows * i.redis_bytes_per_row
        + events * i.redis_bytes_per_event
    )
    redis_cpu = rate * at_rate(i.redis_live, rate) + (frames - rate) * i.redis_cpu_per_frame
    masters, redis_by = _by(
        {
            "cpu": math.ceil(redis_cpu / a.cpu_headroom),
            "memory": math.ceil(redis_bytes / (a.redis_mem_bytes * a.mem_headroom)),
        }
    )
    return Plan(
        shards=shards,
        shards_by=shards_by,
        gateways=gateways,
        gateways_by=gateways_by,
        redis_masters=masters,
        redis_by=redis_by,
        frames_per_s=frames,
        shard_cpu_cores=shards * shard_cores(i, rate / shards, a.fanout),
        shard_mem_gib=(shard_sub_bytes + shards * i.shard_base_bytes) / GIB,
        gateway_cpu_cores=gateways * gateway_cores(i, frames / gateways),
        gateway_mem_gib=(gw_bytes + gateways * i.gateway_base_bytes) / GIB,
        redis_cpu_cores=redis_cpu,
        redis_mem_gib=redis_bytes / GIB,
        resubscribe_s=a.subs / (shards * i.shard_subscribes_per_s),
    )


def predict_check(
    i: Inputs,
    *,
    subs_per_shard: list[int],
    subs_per_gateway: list[int],
    rows: int,
    changes_per_s: float,
    changes_share: list[float],
    cores: float,
) -> dict[str, float]:
    """What a run on one machine should show, from the same per-unit costs.

    `changes_share[k]` is the fraction of the changes whose partition shard k
    owns. Subscribing takes as long as the slowest bound: the busiest shard
    at the rate one shard accepted, or the CPU work of every process (shards,
    gateways, Redis) spread over the machine's `cores`.
    """
    subs = sum(subs_per_shard)
    cpu = (
        subs * (i.shard_cpu_per_subscribe + i.redis_cpu_per_subscribe)
        + sum(subs_per_gateway) * i.gateway_cpu_per_subscribe
    )
    subscribe_s = max(max(subs_per_shard) / i.shard_subscribes_per_s, cpu / cores)
    out: dict[str, float] = {
        "subscribe_s": subscribe_s,
        "subs_per_s": subs / subscribe_s,
        "subscribe_cpu_s_shards": subs * i.shard_cpu_per_subscribe,
        "subscribe_cpu_s_gateways": subs * i.gateway_cpu_per_subscribe,
        "subscribe_cpu_s_redis": subs * i.redis_cpu_per_subscribe,
        "redis_rows_mb": rows * i.redis_bytes_per_row / 1e6,
        "redis_registrations_mb": subs * i.redis_bytes_per_registration / 1e6,
        "frames_per_s": changes_per_s,
        "redis_cpu": changes_per_s * at_rate(i.redis_live, changes_per_s),
    }
    for k, n in enumerate(subs_per_shard):
        out[f"shard{k}_mb"] = n * i.shard_bytes_own / 1e6
        out[f"shard{k}_cpu"] = shard_cores(i, changes_per_s * changes_share[k])
    for k, n in enumerate(subs_per_gateway):  # frames spread like the subscriptions
        out[f"gateway{k}_mb"] = n * i.gateway_bytes_per_sub / 1e6
        out[f"gateway{k}_cpu"] = gateway_cores(i, changes_per_s * n / subs)
    return out
