"""`SharedSecrets`: secrets every process of a tier shares through its Redis."""

from __future__ import annotations

import secrets

from ._client import ClientComponent
from .errors import RedisUnavailable, translate_errors

__all__ = ("SharedSecrets",)


class SharedSecrets(ClientComponent):
    """Reads a secret kept in Redis, creating it on first use (SET NX: the first wins)."""

    client_name = "raycluster-secrets"

    async def get_or_create(self, key: str) -> bytes:
        """The secret under `key`, a fresh random one if there was none.

        Every caller on one Redis gets the same bytes. Raises `RedisUnavailable`
        if Redis cannot be reached.
        """
        with translate_errors(f"shared secret {key}"):
            await self._client.set(key, secrets.token_urlsafe(32), nx=True)
            value = await self._client.get(key)
        if not value:
            raise RedisUnavailable(f"shared secret: {key} vanished after SET NX")
        return value if isinstance(value, bytes) else str(value).encode()
