"""Every Redis key and stream name the tier uses, in one place (docs/redis.md#key-names).

The four seed names are contracts other languages compute too:
`lq:events:{p}`, `lq:ctrl:{shard}`, `lq:delta:{gateway}`, `lq:shard:{shard}`.
Everything else lives under the same prefix, so two tiers can share one Redis
by choosing different prefixes.

Two forms, one code path (`Keys(prefix, cluster=…)`):

* **standalone** (the default): `lq:events:17`,
  `lq:row:acme:asset:a1`, `lq:shard:shard-0`, …
* **cluster** (Redis Cluster): every key of one (tenant, entity) — row
  hashes, live ids, value and sort indexes, index counts — and its
  partition's stream, event counter and epoch carry the partition as a hash
  tag, `{17}`, so one write script touches one slot and a partition's data
  lives on one node (`lq:events:{17}`, `lq:row:{17}:acme:asset:a1`). The
  control-plane keys that change together (heartbeats with the live sets;
  registrations with their index sets; a tier's controller state) share the
  prefix as their tag (`{lq}:shard:shard-0`, `{lq}:members`, `{lq}:reg:…`),
  so their scripts and transactions are legal too. The control and delta
  streams and the resume secret are single keys and keep their names.

The tag is always the first `{` of a key, so tenants, entities and ids may
contain braces; the prefix may not, nor a `:` (`Keys` refuses one that does:
`PREFIX_PATTERN`), so the prefixes of two tiers can never overlap.

What Redis Cluster costs: the registry and the live sets live in one slot
(one master serves them), and a feed cannot read many partitions in one
XREAD (`RedisFeed` reads each partition's stream on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raycluster.errors import InvalidQuery, InvalidRow
from raycluster.livequery.models import check_name

from .routing import partition_of

__all__ = (
    "DEFAULT_KEYS",
    "DEFAULT_PREFIX",
    "PREFIX_PATTERN",
    "Keys",
    "check_key_name",
    "ctrl_stream",
    "delta_channel",
    "event_stream",
    "heartbeat_key",
    "prefix_error",
    "row_prefix",
)

DEFAULT_PREFIX = "lq"
PREFIX_PATTERN = r"^[^{}:]+$"
"""What a key prefix may be: non-empty, without `:` or braces.

Every key is the prefix, then `:` (or, for a control-plane key in cluster
form, the prefix in braces, then `:`), so the text before a key's first `:`
names its tier: two tiers with different prefixes never share a key. A
prefix holding `:` could overlap another (`app` and `app:row`), and a brace
would move a key's hash tag."""


def prefix_error(prefix: object) -> str | None:
    """Why `prefix` cannot be a key prefix, or None if it can."""
    if not isinstance(prefix, str) or not prefix:
        return "must be a non-empty string"
    if any(ch in prefix for ch in "{}:"):
        return "must not contain ':', '{' or '}' (prefixes could overlap)"
    return None


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (default `lq`), standalone or cluster form."""

    prefix: str = DEFAULT_PREFIX
    cluster: bool = False

    def __post_init__(self) -> None:
        if prefix_error(self.prefix) is not None:
            raise ValueError(f"key prefix {self.prefix!r}: {prefix_error(self.prefix)}")

    # -- how the two forms differ -------------------------------------------------------

    def _part(self, p: int) -> str:
        """Partition `p`'s key part: `17`, or the hash tag `{17}`."""
        return f"{{{p}}}" if self.cluster else str(p)

    def _data(self, kind: str, tenant: str, entity: str) -> str:
        """The start of a (tenant, entity) key: `lq:kind:t:e`, or `lq:kind:{p}:t:e`."""
        if self.cluster:
            return f"{self.prefix}:{kind}:{{{partition_of(tenant, entity)}}}:{tenant}:{entity}"
        return f"{self.prefix}:{kind}:{tenant}:{entity}"

    @property
    def _ctl(self) -> str:
        """The start of a control-plane key: `lq`, or the tag `{lq}`."""
        return f"{{{self.prefix}}}" if self.cluster else self.prefix

    # -- partitions ----------------------------------------------------------------------

    def event_stream(self, p: int) -> str:
        """Stream of partition `p`'s change events (the owning shard tails it)."""
        return f"{self.prefix}:events:{self._part(p)}"

    def event_seq(self, p: int) -> str:
        """Counter of events appended to partition `p`'s stream (the `n` event field)."""
        return f"{self.prefix}:evseq:{self._part(p)}"

    def epoch(self, p: int) -> str:
        """Fencing counter of partition `p`: bumped by every claim."""
        return f"{self.prefix}:epoch:{self._part(p)}"

    # -- rows and their indexes (one (tenant, entity): one slot) ------------------------

    def row(self, tenant: str, entity: str, agg_id: str) -> str:
        """Hash of one row: `v` version, `row` JSON (absent once deleted)."""
        return f"{self._data('row', tenant, entity)}:{agg_id}"

    def table(self, tenant: str, entity: str) -> str:
        """Sorted set of the live row ids of one (tenant, entity)."""
        return self._data("ids", tenant, entity)

    def value_index(self, tenant: str, entity: str, column: str, value_json: str) -> str:
        """Set of row ids whose `column` holds the JSON-encoded value (rows written by
        earlier versions; new rows are in `filter_index` or a sort index)."""
        return f"{self._data('vx', tenant, entity)}:{column}:{value_json}"

    def index_counts(self, tenant: str, entity: str) -> str:
        """Hash `v:{column}` → how many rows the column's (earlier) value sets hold.

        Only rows written by earlier versions are in value sets (new rows go
        to `filter_index` or a sort index): the sets are complete (usable by
        a read) exactly when this count equals the number of live rows.
        """
        return self._data("ixc", tenant, entity)

    def sort_num(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set id → numeric value (null: +inf) of a sortable int/float/bool column."""
        return f"{self._data('sn', tenant, entity)}:{column}"

    def sort_lex(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set (scores 0) of `enc(value) + id` of a sortable str column."""
        return f"{self._data('sl', tenant, entity)}:{column}"

    def filter_index(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set (scores 0) of `enc(canon(value)) + id` of a filterable, unsortable column."""
        return f"{self._data('fx', tenant, entity)}:{column}"

    # -- sources (a Postgres publication, …): what they have applied -------------------

    def source_position(self, source: str, p: int) -> str:
        """String: the position (source order) of the last change source `source` applied
        to partition `p`; a change at or before it is skipped, so re-applying is a no-op."""
        return f"{self.prefix}:srcpos:{self._part(p)}:{source}"

    def source_state(self, source: str) -> str:
        """Hash: source `source`'s progress (its copy, generation, confirmed position)."""
        return f"{self.prefix}:src:{source}"

    def source_status(self, source: str) -> str:
        """String (JSON): the status source `source`'s running ingester published; it
        expires a few publishing intervals after the last (so a stopped one disappears)."""
        return f"{self.prefix}:src:{source}:status"

    def source_tenants(self, source: str, entity: str) -> str:
        """Set: every tenant source `source` has written rows of `entity` for (a superset)."""
        return f"{self.prefix}:src:{source}:tenants:{entity}"

    def source_owners(self, source: str, entity: str) -> str:
        """Hash: row id → tenant of the rows of `entity` source `source` holds (for sources
        whose deletes name the id alone)."""
        return f"{self.prefix}:src:{source}:owner:{entity}"

    # -- shards, gateways, buses ---------------------------------------------------------

    def ctrl_stream(self, shard: str) -> str:
        """Control requests to one shard (consumer group, acked after handling)."""
        return f"{self.prefix}:ctrl:{shard}"

    def delta_channel(self, gateway: str) -> str:
        """Delta batches to one external gateway."""
        return f"{self.prefix}:delta:{gateway}"

    def heartbeat_key(self, shard: str) -> str:
        """A shard's liveness key (expires after the heartbeat TTL)."""
        return f"{self._ctl}:shard:{shard}"

    def members(self) -> str:
        """Sorted set of shard id → heartbeat expiry (ms): the live set without a scan."""
        return f"{self._ctl}:members"

    def gateway_heartbeat(self, gateway: str) -> str:
        """A gateway's liveness key."""
        return f"{self._ctl}:gw:{gateway}"

    def gateways(self) -> str:
        """Sorted set of gateway id → heartbeat expiry (ms)."""
        return f"{self._ctl}:gateways"

    # -- the registry ----------------------------------------------------------------------

    def registration(self, sub_id: str) -> str:
        """Hash: one subscription's durable `Registration`."""
        return f"{self._ctl}:reg:{sub_id}"

    def partition_regs(self, p: int) -> str:
        """Set of subscription ids registered on partition `p`."""
        return f"{self._ctl}:regs:p:{p}"

    def gateway_regs(self, gateway: str) -> str:
        """Set of subscription ids held by one gateway."""
        return f"{self._ctl}:regs:gw:{gateway}"

    # -- tiers and edges -------------------------------------------------------------------

    def tier_shard_count(self, tier: str) -> str:
        """String: the desired shard count of tier `tier` (its controller's only state)."""
        return f"{self._ctl}:tier:{tier}:shards"

    def tier_shard_ids(self, tier: str) -> str:
        """Set: every shard id tier `tier` may run (added before a shard is created)."""
        return f"{self._ctl}:tier:{tier}:shard-ids"

    def edge_resume_secret(self) -> str:
        """The edges' shared resume-token secret (set once, never expires)."""
        return f"{self.prefix}:edge:resume_secret"


def check_key_name(
    field: str, value: Any, error: type[InvalidRow] | type[InvalidQuery] = InvalidRow
) -> None:
    """Raise `error` naming `field` unless `value` can name a tenant, an entity or a row
    id in a key: a non-empty string of valid Unicode; a tenant or an entity also
    without ':' (key names join them with ':', so one inside would collide:
    tenant `a:b` of entity `c` is tenant `a` of entity `b:c`)."""
    check_name(field, value, error)
    if field in ("tenant", "entity") and ":" in value:
        raise error(field, value, "must not contain ':'")


def row_prefix(keys: Keys, tenant: str, entity: str) -> str:
    """The text every row key of one (tenant, entity) starts with.

    The read script builds `Keys.row(tenant, entity, id)` as this prefix plus
    the id; the check keeps the two from drifting apart.
    """
    prefix = keys.row(tenant, entity, "")
    if keys.row(tenant, entity, "id") != prefix + "id":
        raise RuntimeError("Keys.row no longer ends with the row id; update the read script")
    return prefix


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
