"""`WebDemo`: the live demo page on one machine, without Ray.

Everything the page needs, started in this process: a private Redis, two
shards over it, a `Writer` that seeds `asset` rows for tenant `demo` and then
keeps writing at a steady rate, an external gateway, and the edge app served
by uvicorn. `run_web_demo` is the blocking entry point of
`raycluster demo --web`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from raycluster._connect import RemoteGateway, connect
from raycluster._resources import Service
from raycluster._tasks import TaskSet, cancel_and_wait, checkpoint, logged
from raycluster._wiring import Closers, redis_shard
from raycluster.cluster import Shard, owned_by
from raycluster.config import TierSettings
from raycluster.errors import RayclusterError, UnavailableError
from raycluster.livequery import EntitySpec
from raycluster.redis import LocalRedis, Writer

__all__ = ("ASSET", "DEMO_TENANT", "WebDemo", "demo_rows", "run_web_demo")

log = logging.getLogger(__name__)

ENTITY = "asset"
DEMO_TENANT = "demo"
# The `asset` entity as configs/tier.yaml declares it.
ASSET = EntitySpec(
    name=ENTITY,
    columns={"name": "str", "kind": "str", "site": "str", "temp": "int", "owner": "str"},
    max_window=500,
)
KINDS = ("pump", "valve", "fan", "sensor", "motor")
SITES = ("north", "south", "east", "west")
OWNERS = ("ana", "bo", "chen", "dev", "eli", "fay", "gus", "hana")

_READY_TIMEOUT_S = 30.0  # shards converge and uvicorn binds within this
_STOP_TIMEOUT_S = 10.0  # teardown steps give up after this


def demo_row(rnd: random.Random, number: int) -> dict[str, Any]:
    """One plausible asset (a null `site` or `temp` now and then: nulls sort too)."""
    kind = rnd.choice(KINDS)
    return {
        "name": f"{kind}-{number:04d}",
        "kind": kind,
        "site": None if rnd.random() < 0.04 else rnd.choice(SITES),
        "temp": None if rnd.random() < 0.03 else rnd.randrange(10, 110),
        "owner": rnd.choice(OWNERS),
    }


def demo_rows(n: int, seed: int = 7) -> dict[str, dict[str, Any]]:
    """The `n` seed rows (id -> row); the same `seed` always gives the same rows."""
    rnd = random.Random(seed)
    numbers = rnd.sample(range(10_000), n) if n <= 10_000 else list(range(n))
    return {f"a{i:05d}": demo_row(rnd, numbers[i]) for i in range(n)}


def demo_settings(redis_url: str, token: str, tenant: str, **edge: Any) -> TierSettings:
    """Tier settings of the demo: its Redis, fast cadences, `asset`, one static token."""
    return TierSettings.load(
        name="webdemo",
        namespace="webdemo",
        redis={"redis_url": redis_url, "key_prefix": "lqweb", "heartbeat_ttl_s": 2.0},
        shard={
            "heartbeat_interval_s": 0.4,
            "ownership_interval_s": 0.2,
            "gateway_check_interval_s": 1.0,
        },
        gateway={"attempt_timeout_s": 1.0, "request_deadline_s": 15.0},
        entities=[ASSET.model_dump()],
        edge={"tokens": {token: tenant}, **edge},
    )


_T = TypeVar("_T")


def _running(part: _T | None) -> _T:
    """A part of the running demo (None before the start and after the close)."""
    if part is None:
        raise RayclusterError("the demo is not running")
    return part


class WebDemo(Service):
    """The demo page's whole stack in this process (`async with WebDemo() as demo`).

    Guarantees: on entry the shards own every partition, the `rows` seed rows
    are written (`demo_rows(rows, seed)`) and the server answers at `url`
    (which carries the demo token; port 0 picks a free port). With
    `rate > 0` a background task writes about `rate` changes per second
    (temperature and owner changes, inserts, deletes) until exit; a failed
    write is logged and the loop goes on. `rows_now` is the truth: every row
    the demo (or `upsert`/`delete` here) wrote. Exit stops everything it
    started, in reverse order, and removes the private Redis.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rows: int = 300,
        rate: float = 5.0,
        seed: int = 7,
        tenant: str = DEMO_TENANT,
        shards: int = 2,
        token: str | None = None,
    ) -> None:
        if rows < 0:
            raise RayclusterError(f"rows must be >= 0, got {rows!r}")
        if rate < 0:
            raise RayclusterError(f"rate must be >= 0, got {rate!r}")
        if shards < 1:
            raise RayclusterError(f"shards must be >= 1, got {shards!r}")
        self.host = host
        self.port = port
        self.seed_count = rows
        self.rate = rate
        self.seed = seed
        self.tenant = tenant
        self.shard_count = shards
        self.token = token or secrets.token_urlsafe(18)
        self.rows_now: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self._redis: LocalRedis | None = None
        self._settings: TierSettings | None = None
        self._writer: Writer | None = None
        self._gateway: RemoteGateway | None = None
        self._shards: list[tuple[Shard, Closers, asyncio.Task[None]]] = []
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._hub: Any = None
        self._tasks = TaskSet("web demo")  # shards, the web server, the writer
        self._rnd = random.Random(seed + 1)
        self._next_number = 10_000

    # -- what callers read -----------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """The private Redis (started on entry)."""
        return _running(self._redis).url

    @property
    def settings(self) -> TierSettings:
        """The tier settings the demo runs with."""
        return _running(self._settings)

    @property
    def writer(self) -> Writer:
        """The demo's `Writer` (writes through it are not tracked in `rows_now`)."""
        return _running(self._writer)

    @property
    def gateway(self) -> RemoteGateway:
        """The external gateway the edge serves."""
        return _running(self._gateway)

    @property
    def base_url(self) -> str:
        """`http://host:port` of the running server."""
        sock = _running(self._server).servers[0].sockets[0]
        port = sock.getsockname()[1]
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The demo page, with the demo token in the fragment (never sent to the server)."""
        return f"{self.base_url}/#token={self.token}"

    # -- writes ------------------------------------------------------------------------

    async def upsert(self, agg_id: str, row: dict[str, Any]) -> int:
        """Write one asset of the demo tenant and record it in `rows_now`; its version."""
        version = await self.writer.upsert(self.tenant, ENTITY, agg_id, row)
        self.rows_now[agg_id] = dict(row)
        self.writes += 1
        return version

    async def delete(self, agg_id: str) -> int:
        """Delete one asset of the demo tenant (and from `rows_now`)."""
        version = await self.writer.delete(self.tenant, ENTITY, agg_id)
        self.rows_now.pop(agg_id, None)
        self.writes += 1
        return version

    async def write_one(self) -> None:
        """One random change, as the background writer makes them."""
        rnd = self._rnd
        ids = list(self.rows_now)
        roll = rnd.random()
        if not ids or roll < 0.08:
            self._next_number += 1
            agg_id = f"b{self._next_number:05d}"
            await self.upsert(agg_id, demo_row(rnd, self._next_number % 10_000))
        elif roll < 0.14 and len(ids) > self.seed_count // 2:
            await self.delete(rnd.choice(ids))
        else:
            agg_id = rnd.choice(ids)
            row = dict(self.rows_now[agg_id])
            if roll < 0.9:
                temp = row.get("temp")
                base = temp if isinstance(temp, int) else 60
                row["temp"] = max(0, min(130, base + rnd.randint(-8, 8)))
            else:
                row["owner"] = rnd.choice(OWNERS)
            await self.upsert(agg_id, row)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start Redis, the shards, the gateway and the edge (`async with` does)."""
        import uvicorn

        from .app import create_app
        from .server import _Server, ws_max_size, ws_protocol

        self._redis = LocalRedis()
        url = await asyncio.to_thread(self._redis.start)
        settings = self._settings = demo_settings(url, self.token, self.tenant)
        for i in range(self.shard_count):
            shard, closers = redis_shard(f"web-{i}", url, settings)
            task = self._tasks.spawn(shard.run(), f"webdemo-shard-{i}")
            self._shards.append((shard, closers, task))
        self._writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
        seed = demo_rows(self.seed_count, self.seed)
        await self._writer.upsert_many(self.tenant, ENTITY, seed)
        self.rows_now.update({k: dict(v) for k, v in seed.items()})
        await self._until(self._converged, "the shards to own every partition")
        self._gateway = await connect(url, settings)
        app = create_app(self._gateway, settings)
        self._hub = app.state.hub

        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            ws=ws_protocol(),
            ws_max_size=ws_max_size(settings.edge),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config, self._hub)
        self._serving = self._tasks.spawn(self._serve(), "webdemo-uvicorn")
        await self._until(self._listening, "the web server to listen")
        if self.rate > 0:
            self._writing = self._tasks.spawn(self._write_loop(), "webdemo-writer")

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as e:  # uvicorn exits when it cannot bind (it logs why)
            raise RayclusterError(f"the web server could not listen on {self._where}") from e

    def _converged(self) -> bool:
        live = sorted(s.id for s, _, _ in self._shards)
        return all(s.owned == owned_by(s.id, live) for s, _, _ in self._shards)

    def _listening(self) -> bool:
        if self._serving is not None and self._serving.done():
            self._serving.result()  # raises why it stopped
            raise RayclusterError(f"the web server stopped before it listened on {self._where}")
        return bool(self._server is not None and self._server.started)

    async def _until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not ready():
            for _, _, task in self._shards:
                if task.done():
                    task.result()  # a shard that crashed: surface why
            if time.monotonic() > deadline:
                raise UnavailableError(f"timed out after {_READY_TIMEOUT_S}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def _write_loop(self) -> None:
        period_s = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            checkpoint()
            try:
                await self.write_one()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("web demo: a write failed")
            next_at = max(next_at + period_s, time.monotonic() - 1.0)  # no burst after a stall
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def wait_closed(self) -> None:
        """Return when the web server stops (Ctrl-C / SIGTERM, or `aclose`)."""
        if self._serving is not None:
            await asyncio.shield(self._serving)

    async def aclose(self) -> None:
        """Stop everything started, in reverse order (idempotent, never hangs)."""
        await cancel_and_wait([self._writing])
        self._writing = None
        if self._hub is not None:
            self._hub.shutdown()
        if self._serving is not None:
            assert self._server is not None
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._serving), _STOP_TIMEOUT_S)
            except (TimeoutError, Exception):
                self._server.force_exit = True
                await cancel_and_wait([self._serving])
            self._serving = None
        if self._gateway is not None:
            with logged("web demo: closing the gateway"):
                await asyncio.wait_for(self._gateway.aclose(), _STOP_TIMEOUT_S)
            self._gateway = None
        for shard, closers, task in reversed(self._shards):
            await shard.stop()
            await cancel_and_wait([task], _STOP_TIMEOUT_S)
            await closers.aclose()
        self._shards.clear()
        await self._tasks.aclose()
        if self._writer is not None:
            await self._writer.aclose()
            self._writer = None
        if self._redis is not None:
            await asyncio.to_thread(self._redis.close)
            self._redis = None


async def _serve_demo(host: str, port: int, rate: float, rows: int) -> None:
    async with WebDemo(host=host, port=port, rate=rate, rows=rows) as demo:
        print(f"raycluster web demo: {demo.url}", flush=True)
        print(
            f"  tenant {demo.tenant!r}, {rows} assets, {rate:g} writes/s; Ctrl-C to stop",
            flush=True,
        )
        await demo.wait_closed()


def run_web_demo(
    host: str = "127.0.0.1", port: int = 8080, rate: float = 5.0, rows: int = 300
) -> None:
    """Run the web demo until Ctrl-C (blocking); prints the page's URL, token included."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_demo(host, port, rate, rows))
