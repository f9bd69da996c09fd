"""Every Redis key and stream name the tier uses, in one place (DESIGN §3).

The four seed names are contracts other languages compute too:
`lq:events:{p}`, `lq:ctrl:{shard}`, `lq:delta:{gateway}`, `lq:shard:{shard}`.
Everything else lives under the same prefix, so two tiers can share one Redis
by choosing different prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = (
    "DEFAULT_KEYS",
    "DEFAULT_PREFIX",
    "Keys",
    "ctrl_stream",
    "delta_channel",
    "event_stream",
    "heartbeat_key",
)

DEFAULT_PREFIX = "lq"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (default `lq`)."""

    prefix: str = DEFAULT_PREFIX

    def event_stream(self, p: int) -> str:
        """Stream of partition `p`'s change events (the owning shard tails it)."""
        return f"{self.prefix}:events:{p}"

    def ctrl_stream(self, shard: str) -> str:
        """Control requests to one shard (consumer group, acked after handling)."""
        return f"{self.prefix}:ctrl:{shard}"

    def delta_channel(self, gateway: str) -> str:
        """Delta batches to one external gateway."""
        return f"{self.prefix}:delta:{gateway}"

    def heartbeat_key(self, shard: str) -> str:
        """A shard's liveness key (expires after the heartbeat TTL)."""
        return f"{self.prefix}:shard:{shard}"

    def members(self) -> str:
        """Sorted set of shard id → heartbeat expiry (ms): the live set without a scan."""
        return f"{self.prefix}:members"

    def gateway_heartbeat(self, gateway: str) -> str:
        """A gateway's liveness key."""
        return f"{self.prefix}:gw:{gateway}"

    def gateways(self) -> str:
        """Sorted set of gateway id → heartbeat expiry (ms)."""
        return f"{self.prefix}:gateways"

    def row(self, tenant: str, entity: str, agg_id: str) -> str:
        """Hash of one row: `v` version, `row` JSON (absent once deleted)."""
        return f"{self.prefix}:row:{tenant}:{entity}:{agg_id}"

    def table(self, tenant: str, entity: str) -> str:
        """Set of the live row ids of one (tenant, entity)."""
        return f"{self.prefix}:ids:{tenant}:{entity}"

    def value_index(self, tenant: str, entity: str, column: str, value_json: str) -> str:
        """Set of row ids whose `column` holds the JSON-encoded value."""
        return f"{self.prefix}:vx:{tenant}:{entity}:{column}:{value_json}"

    def registration(self, sub_id: str) -> str:
        """Hash: one subscription's durable `Registration`."""
        return f"{self.prefix}:reg:{sub_id}"

    def partition_regs(self, p: int) -> str:
        """Set of subscription ids registered on partition `p`."""
        return f"{self.prefix}:regs:p:{p}"

    def gateway_regs(self, gateway: str) -> str:
        """Set of subscription ids held by one gateway."""
        return f"{self.prefix}:regs:gw:{gateway}"

    def tier_shard_count(self, tier: str) -> str:
        """String: the desired shard count of tier `tier` (its controller's only state)."""
        return f"{self.prefix}:tier:{tier}:shards"

    def tier_shard_ids(self, tier: str) -> str:
        """Set: every shard id tier `tier` may run (added before a shard is created)."""
        return f"{self.prefix}:tier:{tier}:shard-ids"

    def epoch(self, p: int) -> str:
        """Fencing counter of partition `p`: bumped by every claim."""
        return f"{self.prefix}:epoch:{p}"

    def edge_resume_secret(self) -> str:
        """The edges' shared resume-token secret (set once, never expires)."""
        return f"{self.prefix}:edge:resume_secret"


DEFAULT_KEYS = _DEFAULT = Keys()


def event_stream(p: int) -> str:
    """`lq:events:{p}`."""
    return _DEFAULT.event_stream(p)


def ctrl_stream(shard: str) -> str:
    """`lq:ctrl:{shard}`."""
    return _DEFAULT.ctrl_stream(shard)


def delta_channel(gateway: str) -> str:
    """`lq:delta:{gateway}`."""
    return _DEFAULT.delta_channel(gateway)


def heartbeat_key(shard: str) -> str:
    """`lq:shard:{shard}`."""
    return _DEFAULT.heartbeat_key(shard)
