"""`RedisRegistry`: the durable record of every subscription (docs/architecture.md#registry-first).

One hash per subscription (`Keys.registration`: `json` — the
`cluster.protocol.Registration` —, `p` partition, `gw` gateway) and two index
sets (`Keys.partition_regs`, `Keys.gateway_regs`). Every change is one
MULTI/EXEC that WATCHes the registration, so the hash and both sets change
together and a concurrent writer retries instead of interleaving.
"""

from __future__ import annotations

from typing import Any

from raycluster.cluster.protocol import Registration, check_replace

from ._client import ClientComponent
from .errors import translate_errors

__all__ = ("RedisRegistry", "Registration")


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _opt(raw: Any) -> str | None:
    return None if raw is None else _text(raw)


class RedisRegistry(ClientComponent):
    """Registrations in Redis (the `SubscriptionRegistry` port).

    Writes are atomic across the hash and its index sets. Lookups read an
    index set, then the registrations it names; one deleted or moved in
    between is left out, so a lookup never returns what is not there.
    """

    client_name = "raycluster-registry"

    @property
    def _watching(self) -> Any:
        # redis-py types RedisCluster.transaction's callable as a coroutine; both
        # clients call it with the (cluster) pipeline, as `tx` expects.
        return self._client

    # -- writes ------------------------------------------------------------------------

    async def put(self, reg: Registration, *, takeover: bool = False) -> None:
        """Record (or replace) a registration; its index sets follow it atomically.

        A sub id stays bound to its tenant: replacing another tenant's
        registration raises `RegistrationConflict`, and so does replacing
        another gateway's unless `takeover` (a verified resume moving the
        subscription here). Nothing is written then.
        """
        key = self.keys.registration(reg.sub_id)
        body = reg.model_dump_json()
        p, gw = reg.partition, reg.gateway_id

        async def tx(pipe: Any) -> None:
            old_p, old_gw, old_t = await pipe.hmget(key, ["p", "gw", "t"])
            if old_p is not None and old_t is None:  # written before `t` was kept
                raw = await pipe.hget(key, "json")
                old_t = Registration.model_validate_json(raw).tenant if raw else None
            check_replace(reg, _opt(old_t), _opt(old_gw), takeover=takeover)
            pipe.multi()
            if old_p is not None and int(old_p) != p:
                pipe.srem(self.keys.partition_regs(int(old_p)), reg.sub_id)
            if old_gw is not None and _text(old_gw) != gw:
                pipe.srem(self.keys.gateway_regs(_text(old_gw)), reg.sub_id)
            pipe.hset(key, mapping={"json": body, "p": p, "gw": gw, "t": reg.tenant})
            pipe.sadd(self.keys.partition_regs(p), reg.sub_id)
            pipe.sadd(self.keys.gateway_regs(gw), reg.sub_id)

        with translate_errors(f"put registration {reg.sub_id}"):
            await self._watching.transaction(tx, key)

    async def delete(self, sub_id: str, gateway_id: str | None = None) -> None:
        """Remove a registration and its index entries (no error if absent).

        With `gateway_id`, only if that gateway still holds it (one that was
        taken over belongs to its new gateway).
        """
        await self.remove(sub_id, gateway_id)

    async def remove(self, sub_id: str, gateway_id: str | None = None) -> bool:
        """`delete`, returning whether a registration was removed."""
        key = self.keys.registration(sub_id)

        async def tx(pipe: Any) -> bool:
            old_p, old_gw = await pipe.hmget(key, ["p", "gw"])
            pipe.multi()
            if old_p is None or (gateway_id is not None and _opt(old_gw) != gateway_id):
                return False
            pipe.delete(key)
            pipe.srem(self.keys.partition_regs(int(old_p)), sub_id)
            if old_gw is not None:
                pipe.srem(self.keys.gateway_regs(_text(old_gw)), sub_id)
            return True

        with translate_errors(f"delete registration {sub_id}"):
            existed: bool = await self._watching.transaction(tx, key, value_from_callable=True)
        return existed

    async def delete_gateway(self, gateway_id: str) -> int:
        """Remove every registration of a gateway that is gone; how many were removed."""
        removed = 0
        for sub_id in await self.ids_by_gateway(gateway_id):
            removed += await self.remove(sub_id, gateway_id)
        return removed

    # -- reads -------------------------------------------------------------------------

    async def get(self, sub_id: str) -> Registration | None:
        """One registration, or None."""
        with translate_errors(f"get registration {sub_id}"):
            raw = await self._client.hget(self.keys.registration(sub_id), "json")
        return None if raw is None else Registration.model_validate_json(raw)

    async def by_partition(self, p: int) -> list[Registration]:
        """The registrations on partition `p`, by sub id."""
        regs = await self._load(self.keys.partition_regs(p))
        return [r for r in regs if r.partition == p]

    async def by_partition_num(self, p: int) -> int:
        """How many registrations partition `p` has (one SCARD)."""
        with translate_errors(f"count registrations of partition {p}"):
            return int(await self._client.scard(self.keys.partition_regs(p)))

    async def by_gateway(self, gateway_id: str) -> list[Registration]:
        """The registrations held by one gateway, by sub id."""
        regs = await self._load(self.keys.gateway_regs(gateway_id))
        return [r for r in regs if r.gateway_id == gateway_id]

    async def ids_by_gateway(self, gateway_id: str) -> set[str]:
        """The sub ids in one gateway's index (one SMEMBERS; no records read)."""
        with translate_errors(f"read the registrations of gateway {gateway_id}"):
            ids: Any = await self._client.smembers(self.keys.gateway_regs(gateway_id))
        return {_text(i) for i in ids}

    async def _load(self, index_key: str) -> list[Registration]:
        with translate_errors(f"read registrations of {index_key}"):
            ids: Any = sorted(await self._client.smembers(index_key))
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for sub_id in ids:
                    pipe.hget(self.keys.registration(_text(sub_id)), "json")
                raws = await pipe.execute()
        return [Registration.model_validate_json(raw) for raw in raws if raw is not None]
