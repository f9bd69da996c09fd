"""Resources a component holds, closed explicitly or by `with` / `async with`.

`AsyncResource` (anyio's pattern): `async with x` closes `x` with `await
x.aclose()`; every component with connections or tasks is one. `LocalServer`:
a server process this process starts and stops (`with` starts it, closes it):
the private servers of tests, demos and benchmarks (`LocalRedis`,
`LocalRedisCluster`, `LocalPostgres`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

__all__ = ("AsyncResource", "LocalServer")


class AsyncResource:
    """Closed by `await aclose()`, or by leaving `async with` (which returns it as is)."""

    async def aclose(self) -> None:
        """Release what it holds (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class LocalServer:
    """A server process of this process's own: `start()` it, `close()` it, or use `with`."""

    def start(self) -> Any:
        """Start the server (idempotent); subclasses return how to reach it."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove what it left (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
