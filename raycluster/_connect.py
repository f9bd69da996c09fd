"""`connect()`: a gateway outside Ray, over the Redis buses."""

from __future__ import annotations

from urllib.parse import urlsplit

from raycluster._resources import AsyncResource
from raycluster._urls import mask_url
from raycluster._wiring import Closers, redis_gateway
from raycluster.client import Subscription
from raycluster.cluster import Gateway
from raycluster.cluster.gateway import GatewayStatus
from raycluster.config import TierSettings
from raycluster.errors import ConfigError
from raycluster.livequery import Cursor, LiveQuery

__all__ = ("RemoteGateway", "connect")


class RemoteGateway(AsyncResource):
    """An external gateway: same `subscribe` as `Tier`, frames over `lq:delta:{id}`."""

    def __init__(self, gateway: Gateway, closers: Closers, redis_url: str | None = None) -> None:
        self.gateway = gateway
        self.redis_url = redis_url  # the tier's Redis (the edge keeps shared state there)
        self._closers = closers

    @property
    def id(self) -> str:
        """This gateway's id (its delta stream is `lq:delta:{id}`)."""
        return self.gateway.id

    async def subscribe(
        self, tenant: str, query: LiveQuery, *, sub_id: str | None = None
    ) -> Subscription:
        """Register a live query; returns once its first window has arrived.

        The id is minted here; `sub_id` resumes a subscription of `tenant`
        whose possession the caller has verified (the edge checks a resume
        token), moving it to this gateway (see `Gateway.subscribe`).
        """
        return await self.gateway.subscribe(tenant, query, sub_id=sub_id, resume=sub_id is not None)

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        """Move a window."""
        await self.gateway.reanchor(sub_id, cursor, limit)

    def status(self) -> GatewayStatus:
        """Subscriptions and counters."""
        return self.gateway.status()

    async def aclose(self) -> None:
        """Unsubscribe everything and close the connections."""
        await self.gateway.aclose()
        await self._closers.aclose()


async def connect(redis_url: str, settings: TierSettings | None = None) -> RemoteGateway:
    """A started gateway over the tier's Redis (no Ray needed in this process).

    Raises `ConfigError` for a `redis_url` that is not a Redis URL,
    `AuthenticationError` when Redis refuses its password (or wants one), and
    `UnavailableError` when Redis cannot be reached or does not answer within
    `socket_timeout_s` (one timeout: a timeout is not retried). Nothing stays
    open after a failure, and no message holds the password.
    """
    _check_url(redis_url)
    s = settings or TierSettings.load()
    gw, closers = redis_gateway(None, redis_url, s, transport="redis")
    try:
        await gw.start()
    except BaseException:
        # (start spawns its tasks only once its Redis calls succeeded)
        await closers.aclose()
        raise
    return RemoteGateway(gw, closers, redis_url)


_SCHEMES = ("redis", "rediss", "unix")


def _check_url(url: object) -> None:
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        shown = mask_url(url) if isinstance(url, str) else repr(url)
        raise ConfigError("redis_url", f"{shown} is not a redis://, rediss:// or unix:// URL")
