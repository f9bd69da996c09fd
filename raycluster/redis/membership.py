"""`RedisMembership`: who is live — shards and gateways — by TTL heartbeats.

A heartbeat sets the member's key (`lq:shard:{id}` / the gateway's) with a
TTL *and* records its expiry as its score in a sorted set (`Keys.members()` /
`Keys.gateways()`), so the live set is one range read, never a keyspace scan.
Both happen in one script on the **server's clock** (`TIME`): every node
compares expiries against the same clock, so client clock skew cannot make
nodes disagree about who is live. Reading the live set prunes expired members.
"""

from __future__ import annotations

from typing import Any

from ._client import Client, ClientComponent
from .errors import translate_errors
from .scripts import HEARTBEAT, LIVE_MEMBERS

__all__ = ("RedisMembership",)


class RedisMembership(ClientComponent):
    """Heartbeats and live sets of shards and gateways (the `Membership` port).

    A member is live from a heartbeat until `heartbeat_ttl_s` (settings, or the
    call's `ttl_s`) after it; `leave` ends it at once. Live sets are sorted ids.
    """

    client_name = "raycluster-membership"

    def __init__(self, client: Client, **kw: Any) -> None:
        super().__init__(client, **kw)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._live = client.register_script(LIVE_MEMBERS)

    # -- shards ----------------------------------------------------------------------

    async def heartbeat(self, shard_id: str, *, ttl_s: float | None = None) -> None:
        """Mark `shard_id` live for the TTL from now (server clock)."""
        await self._beat(self.keys.heartbeat_key(shard_id), self.keys.members(), shard_id, ttl_s)

    async def live_shards(self) -> list[str]:
        """The ids of shards with an unexpired heartbeat, sorted."""
        return await self._members(self.keys.members())

    async def leave(self, shard_id: str) -> None:
        """Remove `shard_id` from the live set now (graceful shutdown)."""
        await self._leave(self.keys.heartbeat_key(shard_id), self.keys.members(), shard_id)

    # -- gateways --------------------------------------------------------------------

    async def heartbeat_gateway(self, gateway_id: str, *, ttl_s: float | None = None) -> None:
        """Mark a gateway live for the TTL from now (server clock)."""
        await self._beat(
            self.keys.gateway_heartbeat(gateway_id), self.keys.gateways(), gateway_id, ttl_s
        )

    async def live_gateways(self) -> list[str]:
        """The ids of gateways with an unexpired heartbeat, sorted."""
        return await self._members(self.keys.gateways())

    async def leave_gateway(self, gateway_id: str) -> None:
        """Remove a gateway from the live set now."""
        await self._leave(self.keys.gateway_heartbeat(gateway_id), self.keys.gateways(), gateway_id)

    # -- internals -------------------------------------------------------------------

    async def _beat(self, key: str, zset: str, member: str, ttl_s: float | None) -> int:
        if not member:
            raise ValueError("member id must be a non-empty string")
        ttl_ms = max(
            1, round((ttl_s if ttl_s is not None else self.settings.heartbeat_ttl_s) * 1000)
        )
        with translate_errors(f"heartbeat {member}"):
            return int(await self._heartbeat(keys=[key, zset], args=[member, ttl_ms]))

    async def _members(self, zset: str) -> list[str]:
        with translate_errors("live members"):
            raw = await self._live(keys=[zset])
        return sorted(m.decode() for m in raw)

    async def _leave(self, key: str, zset: str, member: str) -> None:
        with translate_errors(f"leave {member}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(zset, member)
                await pipe.execute()
