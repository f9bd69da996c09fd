"""Helpers of the edge tests: settings constants, truth, a raw SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from support import unique

from raycluster import EntitySpec, LiveQuery, SortKey
from raycluster._connect import RemoteGateway
from raycluster.client import LiveList
from raycluster.config import TierSettings
from raycluster.edge import sign_token
from raycluster.edge._hub import Hub
from raycluster.livequery import LiveDelta
from raycluster.redis import RedisRegistry, Writer

ENTITY = "asset"
ASSET = EntitySpec(
    name=ENTITY,
    columns={"name": "str", "kind": "str", "temp": "int", "blob": "str"},
    max_window=200,
)
SECRET = "test-secret"
STATIC_TOKEN = "static-token"
STATIC_TENANT = "static-tenant"
BUFFER = 16
EDGE_MAX_WINDOW = 100
PER_CONNECTION = 3
PER_TENANT = 4
CONNECTIONS_PER_TENANT = 3
SEND_TIMEOUT_S = 3.0


def token(tenant: str, ttl_s: float = 600) -> str:
    """A signed token of `tenant`."""
    return sign_token(SECRET, tenant, ttl_s)


def by_name(limit: int = 5, **kw: Any) -> LiveQuery:
    """Pumps sorted by name."""
    return LiveQuery.model_validate(
        {"entity": ENTITY, "where": [{"op": "eq", "column": "kind", "value": "pump"}],
         "sort": [SortKey(column="name").model_dump()], "limit": limit, **kw}
    )  # fmt: skip


def truth(rows: Mapping[str, Mapping[str, Any]], limit: int, after: str | None = None) -> list[str]:
    """Ids of the first `limit` pumps by (name, id), strictly after the name `after`."""
    keys = sorted((r["name"], i) for i, r in rows.items() if r.get("kind") == "pump")
    if after is not None:
        keys = [k for k in keys if k[0] > after]
    return [i for _, i in keys[:limit]]


class Rows:
    """A writer that keeps what it wrote (the truth)."""

    def __init__(self, writer: Writer, tenant: str) -> None:
        self.writer = writer
        self.tenant = tenant
        self.rows: dict[str, dict[str, Any]] = {}

    async def put(self, agg_id: str, **row: Any) -> None:
        await self.writer.upsert(self.tenant, ENTITY, agg_id, row)
        self.rows[agg_id] = row

    async def delete(self, agg_id: str) -> None:
        await self.writer.delete(self.tenant, ENTITY, agg_id)
        self.rows.pop(agg_id, None)

    async def seed(self, n: int) -> None:
        for i in range(n):
            await self.put(f"a{i:03}", name=f"n{i:03}", kind="pump" if i % 3 else "fan", temp=i)


@dataclass
class Edge:
    """The running edge and what tests need around it."""

    base: str
    port: int
    app: Starlette
    hub: Hub
    gateway: RemoteGateway
    writer: Writer
    registry: RedisRegistry
    settings: TierSettings

    def rows(self, tenant: str) -> Rows:
        return Rows(self.writer, tenant)

    def http(self, tenant: str | None = None, auth: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {auth or token(tenant or unique('t'))}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=20)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/live/ws"


# -- a raw SSE reader (protocol-level tests) -------------------------------------------


@dataclass
class Event:
    event: str
    id: str | None
    data: dict[str, Any]


class SSE:
    """An open `POST /v1/live` stream, read event by event."""

    def __init__(self, client: httpx.AsyncClient, resp: httpx.Response) -> None:
        self.client = client
        self.resp = resp
        self.lines = resp.aiter_lines()
        self.events: list[Event] = []
        self.rows = LiveList()
        self.seqs: list[int] = []

    async def next(self, timeout_s: float = 10) -> Event:
        ev, eid, data = "", None, ""
        while True:
            # Not `asyncio.wait_for`: on 3.11 it loses a cancel that lands just as a line
            # arrives, and a reader cancelled so (test_hostile's `Watch`) read keepalives
            # until the test's timeout.
            async with asyncio.timeout(timeout_s):
                line = await anext(self.lines)
            if line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and ev:
                e = Event(ev, eid, json.loads(data))
                self.events.append(e)
                if ev not in ("subscribed", "error"):
                    self.rows.apply(LiveDelta.model_validate(e.data["delta"]))
                    self.seqs.append(e.data["seq"])
                return e

    async def until(self, want: Callable[[], list[str]], timeout_s: float = 10) -> None:
        """Read until the applied rows are complete and equal `want()`."""
        async with asyncio.timeout(timeout_s):
            while not (self.rows.complete and self.rows.ids == want()):
                await self.next()

    def contiguous(self) -> bool:
        """The seqs read so far have no gap (the edge numbers them contiguously)."""
        return self.seqs == list(range(self.seqs[0], self.seqs[0] + len(self.seqs)))

    async def window(self) -> list[Event]:
        """The next reset and its enters."""
        reset = await self.next()
        while reset.event != "reset":
            reset = await self.next()
        return [reset] + [await self.next() for _ in range(reset.data["delta"]["count"])]


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, query: Any, headers: dict[str, str] | None = None
) -> AsyncIterator[SSE | httpx.Response]:
    """Open a stream; yields an `SSE`, or the response itself when it is not a 200."""
    body = query.model_dump(mode="json") if isinstance(query, LiveQuery) else query
    async with client.stream("POST", "/v1/live", json=body, headers=headers or {}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            yield resp
        else:
            yield SSE(client, resp)


def ids_of(window: list[Event]) -> list[str]:
    return [e.data["delta"]["agg_id"] for e in window[1:]]


partial = functools.partial
