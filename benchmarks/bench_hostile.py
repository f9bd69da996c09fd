"""One tenant sends the costliest queries the limits allow; another's latency is measured.

    python benchmarks/bench_hostile.py [--rate 100] [--seconds 10] [--runs 3]
                                       [--hostile-subs N] [--value-len 1024] [--latin1]

The edge (uvicorn + external gateway) and ONE shard (so both tenants share its
event loop: the worst case) run in a child process with the default
`QueryLimits` and edge limits; this process runs a private Redis, the clients
(raw asyncio streams) and the writer. Each run has two phases on the same
tier, measured back to back:

* `baseline`: the honest tenant's SSE client alone;
* `attack`: the hostile tenant also holds as many subscriptions as the edge's
  limits allow it (`edge.max_cost_per_tenant` / the query's cost, capped by
  `max_subscriptions_per_tenant`; or `--hostile-subs`) over WebSockets, each
  the costliest query `QueryLimits` allows: LIKE terms as long as `max_cost`
  lets them be, built so that a matcher tries every start of the value and
  fails late, all matching the hostile rows (an AND never stops early), each
  query distinct (no shared views).

In both phases the writer updates, at `--rate` changes/s each, one honest row
(inside the honest window, carrying its send time) and one hostile row (a
`--value-len` string that every hostile query matches). Latency = the honest
client's receive time - write time, per frame. Prints a table of medians over
`--runs` and writes benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _net import free_port, wait_healthy
from _report import report

from raycluster import EntitySpec, TierSettings
from raycluster.livequery import QueryLimits
from raycluster.redis import LocalRedis, Writer

DOC = EntitySpec(name="doc", columns={"name": "str", "body": "str", "ts": "int"}, max_window=1000)
HONEST, HOSTILE = "honest", "hostile"
TOKENS = {"tok-honest": HONEST, "tok-hostile": HOSTILE}
_TS = re.compile(rb'"ts":(\d+)')


def settings(url: str, port: int) -> TierSettings:
    return TierSettings.load(
        entities=[DOC.model_dump()],
        redis={"redis_url": url, "key_prefix": "benchhostile", "heartbeat_ttl_s": 2.0},
        shard={"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
        edge={"port": port, "tokens": TOKENS, "keepalive_s": 5},
    )


def _serve(url: str, port: int) -> None:
    """The edge process: one shard, a gateway, uvicorn (until terminated)."""
    import logging

    from raycluster._wiring import redis_shard
    from raycluster.edge.server import serve

    logging.basicConfig(level=logging.WARNING)
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    s = settings(url, port)

    async def main() -> None:
        shard, _ = redis_shard("shard-0", url, s)
        task = asyncio.create_task(shard.run())
        try:
            await serve(s, log_level="warning")
        finally:
            task.cancel()

    asyncio.run(main())


TERMS = 4  # LIKE terms per costly query


def pattern_len(limits: QueryLimits) -> int:
    """The longest pattern that `TERMS` of fit in one query's `max_cost`."""
    return min(limits.max_pattern_length, (limits.max_cost - TERMS) // TERMS)


def costly_query(k: int, limits: QueryLimits) -> dict[str, Any]:
    """The `k`-th costliest query: `TERMS` LIKE terms as long as the cost allows.

    `%a_a_…a_Z%` matches the hostile body only at its end (`hostile_body`), so
    every start in the `abab…` run is a candidate that fails late, and every
    term is evaluated (they all match: an AND never stops early). The limit
    makes each query distinct (no shared views).
    """
    n = pattern_len(limits)
    pattern = "%" + "a_" * ((n - 3) // 2) + "Z%"
    where = [{"op": "like", "column": "body", "value": pattern} for _ in range(TERMS)]
    return {"entity": "doc", "where": where, "sort": [{"column": "name"}], "limit": 1 + k}


def hostile_body(value_len: int, unicode: bool) -> str:
    """`abab…` then the `a`-run and `Z` every costly pattern ends on; with `unicode`, a
    leading `Ω` puts the value outside Latin-1 (the slower, mapped path)."""
    head = "\u03a9" if unicode else "a"
    return head + "ab" * max(0, (value_len - 300) // 2) + "a" * 290 + "Z"


class Honest:
    """The honest tenant's SSE stream: records write → client latency of each frame."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.lat: list[float] = []
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        body = json.dumps({"entity": "doc", "sort": [{"column": "name"}], "limit": 5}).encode()
        writer.write(
            b"POST /v1/live HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer tok-honest\r\n"
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        while chunk := await reader.read(65536):
            now = time.time_ns() // 1000
            if b"event: reset" in chunk:
                self.ready.set()
            self.lat += [
                (now - int(m.group(1))) / 1000.0 for m in _TS.finditer(chunk) if m[1] != b"0"
            ]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def hostile_subscribe(port: int, queries: list[dict[str, Any]], per_conn: int) -> list[Any]:
    """Open WebSockets holding `queries` (`per_conn` each); returns them (kept open)."""
    import websockets

    conns = []
    for i in range(0, len(queries), per_conn):
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/v1/live/ws?access_token=tok-hostile", max_size=None
        )
        conns.append(ws)
        batch = queries[i : i + per_conn]
        for j, q in enumerate(batch):
            await ws.send(json.dumps({"op": "subscribe", "id": f"q{i + j}", "query": q}))
        got = 0
        while got < len(batch):
            m = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if m["type"] == "subscribed":
                got += 1
            elif m["type"] == "error":
                raise RuntimeError(f"hostile subscribe refused: {m}")
    return conns


async def drain(conns: list[Any]) -> None:
    """Read the hostile sockets so that the edge never blocks on them."""

    async def one(ws: Any) -> None:
        try:
            async for _ in ws:
                pass
        except Exception:
            return

    await asyncio.gather(*(one(ws) for ws in conns))


async def phase(url: str, s: TierSettings, honest: Honest, rate: int, seconds: float,
                hostile_body: str) -> dict[str, float]:  # fmt: skip
    writer = Writer.from_url(url, entities=s.entities, settings=s.redis)
    honest.lat.clear()
    n = int(rate * seconds)
    t0 = time.monotonic()
    try:
        for k in range(n):
            delay = t0 + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await writer.upsert(
                HONEST, "doc", "r0", {"name": "n0", "body": "x", "ts": time.time_ns() // 1000}
            )
            await writer.upsert(
                HOSTILE, "doc", f"h{k % 8}", {"name": f"h{k % 8}", "body": hostile_body, "ts": k}
            )
        achieved = n / (time.monotonic() - t0)
        await asyncio.sleep(2.0)
    finally:
        await writer.aclose()
    lat = sorted(honest.lat)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"frames": len(lat), "achieved_per_s": achieved, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": lat[-1] if lat else float("nan")}  # fmt: skip


async def one_run(url: str, port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    s = settings(url, port)
    limits = s.limits
    cost = TERMS * (1 + pattern_len(limits))
    subs = args.hostile_subs or min(
        s.edge.max_subscriptions_per_tenant, s.edge.max_cost_per_tenant // cost
    )
    per_conn = s.edge.max_subscriptions_per_connection
    body = hostile_body(args.value_len, not args.latin1)
    writer = Writer.from_url(url, entities=s.entities, settings=s.redis)
    await writer.upsert_many(
        HONEST, "doc", {f"r{i}": {"name": f"n{i}", "body": "x", "ts": 0} for i in range(8)}
    )
    await writer.upsert_many(
        HOSTILE, "doc", {f"h{i}": {"name": f"h{i}", "body": body, "ts": 0} for i in range(8)}
    )
    await writer.aclose()
    honest = Honest()
    task = asyncio.create_task(honest.run(port))
    await asyncio.wait_for(honest.ready.wait(), 30)
    rows = [{"phase": "baseline", "hostile_subs": 0,
             **await phase(url, s, honest, args.rate, args.seconds, body)}]  # fmt: skip
    queries = [costly_query(k, limits) for k in range(subs)]
    t0 = time.monotonic()
    conns = await hostile_subscribe(port, queries, per_conn)
    subscribe_s = time.monotonic() - t0
    reader = asyncio.create_task(drain(conns))
    rows.append({"phase": "attack", "hostile_subs": subs, "subscribe_all_s": subscribe_s,
                 **await phase(url, s, honest, args.rate, args.seconds, body)})  # fmt: skip
    for ws in conns:
        await ws.close()
    reader.cancel()
    honest.close()
    task.cancel()
    await asyncio.gather(task, reader, return_exceptions=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=100, help="changes/s of each tenant")
    ap.add_argument("--seconds", type=float, default=10.0, help="write phase length")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    ap.add_argument("--hostile-subs", type=int, default=0,
                    help="hostile subscriptions (0: the edge's per-tenant limit)")  # fmt: skip
    ap.add_argument("--value-len", type=int, default=1024, help="length of hostile row bodies")
    ap.add_argument("--latin1", action="store_true", help="hostile bodies within Latin-1")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    runs: list[list[dict[str, Any]]] = []
    with LocalRedis() as redis_srv:
        for _ in range(args.runs):
            port = free_port()
            proc = ctx.Process(target=_serve, args=(redis_srv.url, port))
            proc.start()
            try:
                asyncio.run(wait_healthy(port))
                runs.append(asyncio.run(one_run(redis_srv.url, port, args)))
                print(runs[-1], flush=True)
            finally:
                proc.terminate()
                proc.join(20)
    rows = []
    for i, first in enumerate(runs[0]):
        row = dict(first)
        for key in ("frames", "achieved_per_s", "p50_ms", "p99_ms", "max_ms", "subscribe_all_s"):
            if key in first:
                row[key] = statistics.median(r[i][key] for r in runs)
        row["runs"] = len(runs)
        rows.append(row)
    report(
        "hostile",
        rows,
        ["phase", "hostile_subs", "achieved_per_s", "frames", "p50_ms", "p99_ms", "max_ms",
         "subscribe_all_s", "runs"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
