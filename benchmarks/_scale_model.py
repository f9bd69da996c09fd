"""The capacity model: measured per-unit costs in, shards / Redis masters / gateways out.

Pure arithmetic (no Redis, no Ray), so tests drive it and `bench_scale.py`
feeds it what it measured on this machine. Every cost is per unit of work, in
bytes or in CPU-seconds of one process, so it transfers to a machine where
each process has a core of its own (a shard is single-threaded: one event
loop; Redis runs commands on one thread).

Load of a tier with `subs` subscriptions, `changes_per_s` writes/s and
`fanout` frames per change (how many subscriptions one change reaches):

* shard CPU  = shards x idle + changes/s x (cpu_per_change + fanout x cpu_per_frame)
* shard RAM  = subs x bytes_per_sub (own view or shared view) + base per process
* gateway CPU = gateways x idle + frames/s x cpu_per_frame; RAM = subs x bytes_per_sub + base
* Redis CPU  = changes/s x (cpu_per_change + fanout x cpu_per_frame)
* Redis RAM  = subs x bytes_per_registration + rows x bytes_per_row
               + retained events x bytes_per_event

Each resource is sized to its headroom (a fraction of a core, of a memory
budget); the count needed is the largest over the resources, at least
`min_shards` shards (so one can fail and the rest absorb its partitions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ("Assumptions", "Inputs", "Plan", "plan", "predict_check")

GIB = 1024**3


@dataclass(frozen=True)
class Inputs:
    """Per-unit costs measured by `bench_scale.py` (bytes; CPU-seconds of one process)."""

    shard_bytes_own: float  # one subscription on its own view (window rows included)
    shard_bytes_shared: float  # one more subscriber of an existing identical view
    shard_base_bytes: float  # RSS of a shard process serving nothing
    shard_idle_cores: float  # CPU of a shard with no changes (heartbeats, loops, reads)
    shard_cpu_per_change: float  # a change of an owned partition that reaches no window
    shard_cpu_per_frame: float  # a change that moves one own-view window: one frame
    shard_cpu_per_subscribe: float
    shard_subscribes_per_s: float  # what one shard accepted (wall clock, this machine)
    gateway_bytes_per_sub: float
    gateway_base_bytes: float
    gateway_idle_cores: float
    gateway_cpu_per_frame: float
    gateway_cpu_per_subscribe: float
    redis_bytes_per_registration: float
    redis_bytes_per_row: float
    redis_bytes_per_event: float  # one entry of a partition event stream
    redis_cpu_per_change: float  # the write script + the shard's feed read
    redis_cpu_per_frame: float  # the delta stream: shard XADD + gateway XREAD
    redis_cpu_per_subscribe: float


@dataclass(frozen=True)
class Assumptions:
    """What the model assumes about the deployment (defaults are stated in the README)."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat dict for a table."""
        return asdict(self)


def _count(demands: dict[str, float], floor: int = 1) -> tuple[int, str]:
    """The largest ceil() over `demands` (each in units of one process) and its name."""
    name, need = max(demands.items(), key=lambda kv: kv[1])
    n = math.ceil(need - 1e-9)
    return (n, name) if n >= floor else (floor, "minimum")


def plan(i: Inputs, a: Assumptions) -> Plan:
    """Processes needed for `a` given the measured costs `i`."""
    frames_per_s = a.changes_per_s * a.fanout
    own = a.subs * (1 - a.shared_fraction)
    shard_sub_bytes = own * i.shard_bytes_own + (a.subs - own) * i.shard_bytes_shared
    shard_cpu = a.changes_per_s * (i.shard_cpu_per_change + a.fanout * i.shard_cpu_per_frame)
    shard_mem_usable = a.shard_mem_bytes * a.mem_headroom - i.shard_base_bytes
    shards, shards_by = _count(
        {
            "cpu": shard_cpu / (a.cpu_headroom - i.shard_idle_cores),
            "memory": shard_sub_bytes / shard_mem_usable,
        },
        a.min_shards,
    )
    gw_cpu = frames_per_s * i.gateway_cpu_per_frame
    gw_bytes = a.subs * i.gateway_bytes_per_sub
    gw_mem_usable = a.gateway_mem_bytes * a.mem_headroom - i.gateway_base_bytes
    gateways, gateways_by = _count(
        {
            "cpu": gw_cpu / (a.cpu_headroom - i.gateway_idle_cores),
            "memory": gw_bytes / gw_mem_usable,
        }
    )
    events = a.changes_per_s * a.event_retention_s
    redis_bytes = (
        a.subs * i.redis_bytes_per_registration
        + a.rows * i.redis_bytes_per_row
        + events * i.redis_bytes_per_event
    )
    redis_cpu = a.changes_per_s * (i.redis_cpu_per_change + a.fanout * i.redis_cpu_per_frame)
    masters, redis_by = _count(
        {
            "cpu": redis_cpu / a.cpu_headroom,
            "memory": redis_bytes / (a.redis_mem_bytes * a.mem_headroom),
        }
    )
    return Plan(
        shards=shards,
        shards_by=shards_by,
        gateways=gateways,
        gateways_by=gateways_by,
        redis_masters=masters,
        redis_by=redis_by,
        frames_per_s=frames_per_s,
        shard_cpu_cores=shard_cpu + shards * i.shard_idle_cores,
        shard_mem_gib=(shard_sub_bytes + shards * i.shard_base_bytes) / GIB,
        gateway_cpu_cores=gw_cpu + gateways * i.gateway_idle_cores,
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
    frame_cost = i.shard_cpu_per_change + i.shard_cpu_per_frame
    out: dict[str, float] = {
        "subscribe_s": subscribe_s,
        "subs_per_s": subs / subscribe_s,
        "subscribe_cpu_s_shards": subs * i.shard_cpu_per_subscribe,
        "subscribe_cpu_s_gateways": subs * i.gateway_cpu_per_subscribe,
        "subscribe_cpu_s_redis": subs * i.redis_cpu_per_subscribe,
        "redis_rows_mb": rows * i.redis_bytes_per_row / 1e6,
        "redis_registrations_mb": subs * i.redis_bytes_per_registration / 1e6,
        "frames_per_s": changes_per_s,
    }
    for k, n in enumerate(subs_per_shard):
        out[f"shard{k}_mb"] = n * i.shard_bytes_own / 1e6
        out[f"shard{k}_cpu"] = i.shard_idle_cores + changes_per_s * changes_share[k] * frame_cost
    for k, n in enumerate(subs_per_gateway):
        out[f"gateway{k}_mb"] = n * i.gateway_bytes_per_sub / 1e6
    return out
