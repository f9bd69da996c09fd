"""Edge benchmark: 1,000 concurrent SSE clients on loopback.

    python benchmarks/bench_edge.py [--clients 1000] [--tenants 100] [--rates 100,500]
                                    [--seconds 10] [--runs 1]

The edge (uvicorn + external gateway) and two shards run in a child process;
this process runs a private Redis, the clients (raw asyncio streams, one SSE
stream each) and a writer at a fixed rate. Clients are spread over
`--tenants` tenants; each write updates one row of one tenant, inside every
window of that tenant, and carries its own send time (`ts`, µs), so delivery
latency = client receive time - write time, per frame delivered. Memory per
connection is the edge process's RSS after the clients subscribed minus
before, divided by the client count. Prints a table of medians over `--runs`
and writes benchmarks/results/edge.json.
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
from raycluster.redis import LocalRedis, Writer

TICK = EntitySpec(name="tick", columns={"name": "str", "ts": "int", "n": "int"}, max_window=50)
TOKEN = "bench-token"
LIMIT = 5
ROWS_PER_TENANT = 8
_TS = re.compile(rb'"ts":(\d+)')


def settings(url: str, port: int, tenants: int) -> TierSettings:
    return TierSettings.load(
        entities=[TICK.model_dump()],
        redis={"redis_url": url, "key_prefix": "benchedge", "heartbeat_ttl_s": 2.0},
        shard={"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
        edge={
            "port": port,
            "hmac_secret": "bench-secret",
            "tokens": {f"{TOKEN}-{t}": f"t{t}" for t in range(tenants)},
            "max_connections_per_tenant": 100_000,
            "max_subscriptions_per_tenant": 100_000,
            "keepalive_s": 5,
        },
    )


def _serve(url: str, port: int, tenants: int) -> None:
    """The edge process: two shards, a gateway, uvicorn (until terminated)."""
    import logging

    from raycluster._wiring import redis_shard
    from raycluster.edge.server import serve

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    s = settings(url, port, tenants)

    async def main() -> None:
        shards = [redis_shard(f"shard-{i}", url, s) for i in range(2)]
        tasks = [asyncio.create_task(sh.run()) for sh, _ in shards]
        try:
            await serve(s, log_level="warning")
        finally:
            for t in tasks:
                t.cancel()

    asyncio.run(main())


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client:
    """One SSE stream read with raw asyncio streams: counts frames, records latencies."""

    def __init__(self, tenant: int) -> None:
        self.tenant = tenant
        self.frames = 0
        self.ready = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, lat: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        body = json.dumps({"entity": "tick", "sort": [{"column": "name"}], "limit": LIMIT}).encode()
        writer.write(
            b"POST /v1/live HTTP/1.1\r\nHost: edge\r\n"
            + f"Authorization: Bearer {TOKEN}-{self.tenant}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            now = time.time_ns() // 1000
            if not self.ready.is_set() and b"event: reset" in chunk:
                self.ready.set()
            for m in _TS.finditer(chunk):
                ts = int(m.group(1))
                if ts:
                    lat.append((now - ts) / 1000.0)
                    self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def one_rate(
    url: str, port: int, pid: int, clients: int, tenants: int, rate: int, seconds: float
) -> dict[str, Any]:
    s = settings(url, port, tenants)
    writer = Writer.from_url(url, entities=s.entities, settings=s.redis)
    for t in range(tenants):
        await writer.upsert_many(
            f"t{t}",
            "tick",
            {f"r{i}": {"name": f"n{i}", "ts": 0, "n": 0} for i in range(ROWS_PER_TENANT)},
        )
    rss0 = rss_kb(pid)
    lat: list[float] = []
    cs = [Client(i % tenants) for i in range(clients)]
    gate = asyncio.Semaphore(50)

    async def start(c: Client) -> None:
        async with gate:
            task = asyncio.create_task(c.run(port, lat))
            tasks.append(task)
            await asyncio.wait({task, asyncio.create_task(c.ready.wait())},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if task.done():
                task.result()

    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()
    await asyncio.gather(*(start(c) for c in cs))
    connect_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    rss1 = rss_kb(pid)
    lat.clear()
    for c in cs:
        c.frames = 0
    # writes at a fixed rate: each updates row r0 (inside every window) of one tenant
    n = int(rate * seconds)
    start_t = time.monotonic()
    for k in range(n):
        due = start_t + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await writer.upsert(f"t{k % tenants}", "tick", "r0",
                            {"name": "n0", "ts": time.time_ns() // 1000, "n": k})  # fmt: skip
    achieved = n / (time.monotonic() - start_t)
    expected = n * (clients // tenants)
    deadline = time.monotonic() + 10
    while sum(c.frames for c in cs) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    frames = sum(c.frames for c in cs)
    for c in cs:
        c.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await writer.aclose()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "clients": clients,
        "tenants": tenants,
        "rate_per_s": rate,
        "achieved_writes_per_s": round(achieved, 1),
        "frames_expected": expected,
        "frames_delivered": frames,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "connect_all_s": connect_s,
        "rss_per_conn_kb": (rss1 - rss0) / clients,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--rates", default="100,500", help="writes/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="write phase per rate")
    ap.add_argument("--runs", type=int, default=1, help="runs per rate; medians are reported")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with LocalRedis() as redis_srv:
        for rate in rates:
            runs = []
            for _ in range(args.runs):
                # a fresh edge per run: RSS before/after is this run's connections only
                port = free_port()
                proc = ctx.Process(target=_serve, args=(redis_srv.url, port, args.tenants))
                proc.start()
                try:
                    asyncio.run(wait_healthy(port))
                    assert proc.pid is not None
                    run = one_rate(
                        redis_srv.url,
                        port,
                        proc.pid,
                        args.clients,
                        args.tenants,
                        rate,
                        args.seconds,
                    )
                    runs.append(asyncio.run(run))
                finally:
                    proc.terminate()
                    proc.join(20)
            row = dict(runs[0])
            for key in ("achieved_writes_per_s", "frames_delivered", "p50_ms", "p99_ms",
                        "connect_all_s", "rss_per_conn_kb"):  # fmt: skip
                row[key] = statistics.median(r[key] for r in runs)
            row["runs"] = args.runs
            rows.append(row)
            print(f"rate {rate}/s: {row}", flush=True)
    report(
        "edge",
        rows,
        ["clients", "tenants", "rate_per_s", "achieved_writes_per_s", "frames_expected",
         "frames_delivered", "p50_ms", "p99_ms", "connect_all_s", "rss_per_conn_kb", "runs"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
