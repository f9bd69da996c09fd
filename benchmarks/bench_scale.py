"""Scale model: measure the inputs of a capacity model, size 1M subscriptions, check it.

    python benchmarks/bench_scale.py [--quick] [--runs 3] [--shards 4] [--gateways 2]
                                     [--check-subs 100000] [--rate 2000]

Every component is the real one, each in its own process (spawned, so each
has its own interpreter and event loop, as a Ray actor would): a private
Redis (`LocalRedis`), the core shard runtime over Redis (`redis_shard`, what
`ShardActor` wraps), the external gateway (`redis_gateway`, reading its Redis
delta stream, applying frames to every subscription's `rows`), and a writer
in this process. Ray itself is not started: on 2 cores its own processes
would take CPU from what is measured, and the actors add nothing per
subscription or per frame over the runtimes they wrap.

Sections:

1. **inputs** — one shard, one gateway, `--owners` owners (one own-view
   subscription each) over 64 tenants, 2 rows per owner:
   Redis bytes per row and per event (INFO used_memory, stream sizes from
   MEMORY USAGE); subscribe 10,000 own views (subscriptions/s; shard and
   gateway RSS per subscription; Redis bytes per registration; CPU-seconds
   per subscribe of shard, gateway and Redis); 10,000 subscribers of one
   shared view (RSS per subscription), then a fan-out drain; frames/s at
   10,000 and (after subscribing the rest) at `--owners` subscriptions.
   A drain pauses the shard and the gateway (SIGSTOP), writes the changes,
   then lets the shard drain them alone (shard changes/s, frames/s and
   CPU-seconds), then the gateway (its frames/s and CPU-seconds): each
   process's ceiling, whatever the writer's speed. Then the CPU of each
   process at fixed live rates (`--live-rates`): small reads and batches
   cost more per change. `--runs` of each drain and rate; medians.
2. **model** — `_scale_model.plan` for 1M subscriptions at 1k, 10k and 100k
   changes/s (one frame per change, and ten).
3. **check** — a fresh Redis, `--shards` shards and `--gateways` gateways in
   their own processes, `--check-subs` own-view subscriptions over 256
   tenants; predicted (from section 1) vs measured: subscribe time, shard and
   gateway RSS, Redis memory, CPU-seconds of subscribing, and at `--rate`
   changes/s for `--seconds` (`--runs` times): frames/s delivered and the
   CPU of each process.

Prints tables and writes benchmarks/results/bench_scale.json (the inputs
as soon as section 1 ends; `--inputs-from` that file skips section 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from _report import RESULTS, report
from _scale_model import Assumptions, Inputs, plan, predict_check

from raycluster import EntitySpec, LiveQuery, SortKey, TierSettings, eq
from raycluster.cluster import owner, partition_of
from raycluster.redis import LocalRedis, Writer

ASSET = EntitySpec(
    name="asset",
    columns={"owner": "str", "name": "str"},
    filterable=["owner"],
    sortable=["name"],
    max_window=100,
)
LIMIT = 10  # window size of every query
ROWS_PER_OWNER = 2  # rows each own view holds (a window of LIMIT with 2 rows)
SHARED_TENANT = "shared"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def settings(prefix: str, ttl_s: float) -> TierSettings:
    return TierSettings.load(
        entities=[ASSET.model_dump()],
        redis={"key_prefix": prefix, "heartbeat_ttl_s": ttl_s},
        gateway={"request_deadline_s": 120.0, "attempt_timeout_s": 30.0},
    )


def query(owner_id: str) -> LiveQuery:
    return LiveQuery(
        entity="asset", where=[eq("owner", owner_id)], sort=[SortKey(column="name")], limit=LIMIT
    )


# -- child processes -------------------------------------------------------------------


def _node(kind: str, ident: str, url: str, settings_json: str, conn: Any) -> None:
    """A shard or a gateway in its own process, answering commands on `conn`."""
    import ctypes
    import logging

    # Die with the benchmark, even if it is killed (as LocalRedis's server does).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_node_main(kind, ident, url, settings_json, conn))


async def _node_main(kind: str, ident: str, url: str, settings_json: str, conn: Any) -> None:
    from raycluster._wiring import redis_gateway, redis_shard
    from raycluster.livequery import tune_gc

    s = TierSettings.model_validate_json(settings_json)
    groups: dict[str, list[Any]] = {}
    failed: dict[str, int] = {}
    task: asyncio.Task[None] | None = None
    if kind == "shard":
        shard, closers = redis_shard(ident, url, s)
        task = asyncio.create_task(shard.run())
    else:
        gw, closers = redis_gateway(ident, url, s)
        gw.queue_frames = False  # frames keep each `rows` current; nobody iterates here
        await gw.start()
    tune_gc()  # as ShardActor does once it starts

    def rss() -> int:
        gc.collect()
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    async def subscribe(group: str, items: list[tuple[str, str]], concurrency: int) -> float:
        """Subscribe every item; seconds taken. A subscribe that fails is counted, not raised."""
        subs = groups.setdefault(group, [])
        sem = asyncio.Semaphore(concurrency)

        async def one(tenant: str, owner_id: str) -> None:
            async with sem:
                try:
                    subs.append(await gw.subscribe(tenant, query(owner_id)))
                except Exception as e:  # UnavailableError: no window within the deadline
                    failed[type(e).__name__] = failed.get(type(e).__name__, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(t, o) for t, o in items))
        return time.monotonic() - t0

    async def close(group: str, concurrency: int) -> float:
        sem = asyncio.Semaphore(concurrency)

        async def one(sub: Any) -> None:
            async with sem:
                await gw.unsubscribe(sub.id)

        t0 = time.monotonic()
        await asyncio.gather(*(one(x) for x in groups.pop(group, [])))
        return time.monotonic() - t0

    def status() -> dict[str, Any]:
        if kind == "shard":
            st = shard.status()
            st["partitions"] = len(st["partitions"])
            st.pop("epochs", None)
            st["feed_gaps"] = shard.deps.feed.stats.gaps  # type: ignore[attr-defined]
            return st
        return {**gw.status(), "failed_subscribes": failed}

    try:
        while True:
            cmd, args = await asyncio.to_thread(conn.recv)
            if cmd == "stop":
                break
            if cmd == "status":
                conn.send(status())
            elif cmd == "rss":
                conn.send(rss())
            elif cmd == "subscribe":
                conn.send(await subscribe(**args))
            elif cmd == "close":
                conn.send(await close(**args))
    finally:
        # A gateway is not closed subscription by subscription (100,000 unsubscribes):
        # its process ends and the benchmark's private Redis goes with it.
        if task is not None:
            await shard.stop()
            task.cancel()
        await closers.aclose()
        conn.send("stopped")


class Node:
    """A child process running a shard or a gateway; `call()` sends it one command."""

    def __init__(self, kind: str, ident: str, url: str, s: TierSettings) -> None:
        ctx = mp.get_context("spawn")
        self.kind, self.id = kind, ident
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_node, args=(kind, ident, url, s.model_dump_json(), child), daemon=True
        )
        self.proc.start()
        assert self.proc.pid is not None
        self.pid: int = self.proc.pid

    async def call(self, cmd: str, **args: Any) -> Any:
        def rpc() -> Any:
            self.conn.send((cmd, args))
            return self.conn.recv()

        return await asyncio.to_thread(rpc)

    def cpu_s(self) -> float:
        """CPU-seconds this process has used (user + system), read from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    async def stop(self) -> None:
        self.resume()
        try:
            await asyncio.wait_for(self.call("stop"), 20)
        except Exception:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class RedisProbe:
    """INFO and MEMORY USAGE of the private server."""

    def __init__(self, srv: LocalRedis, prefix: str) -> None:
        self.r = redis.Redis.from_url(srv.url)
        self.pid = srv.pid
        self.keys = settings(prefix, 60).redis.keys

    def used(self) -> int:
        """`used_memory` without client buffers (they come and go with the traffic)."""
        m = self.r.info("memory")
        return int(m["used_memory"]) - int(m["mem_clients_normal"]) - int(m["mem_clients_slaves"])

    def cpu_s(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def size(self, keys: list[str]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        return sum(v or 0 for v in pipe.execute())

    def registration_size(self, gateway_id: str, sample: int = 500) -> float:
        """Mean MEMORY USAGE of a sample of a gateway's registration hashes, plus each
        registration's share of the index sets."""
        ids = [x.decode() for x in self.r.srandmember(self.keys.gateway_regs(gateway_id), sample)]
        n = int(self.r.scard(self.keys.gateway_regs(gateway_id)))
        hashes = self.size([self.keys.registration(i) for i in ids]) / max(1, len(ids))
        sets = self.size([self.keys.partition_regs(p) for p in range(256)])
        sets += self.size([self.keys.gateway_regs(gateway_id)])
        return hashes + sets / max(1, n)

    def events_size(self) -> int:
        return self.size([self.keys.event_stream(p) for p in range(256)])

    def streams_size(self, shards: list[str], gateways: list[str]) -> int:
        """Control and delta streams (bounded by ctrl_maxlen / delta_maxlen, not per sub)."""
        return self.size(
            [self.keys.ctrl_stream(s) for s in shards]
            + [self.keys.delta_channel(g) for g in gateways]
        )


async def wait_for(cond: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- data ------------------------------------------------------------------------------


def tenant_of(j: int, tenants: int) -> str:
    return f"t{j % tenants}"


def row_id(j: int, k: int) -> str:
    return f"a{j:07}-{k}"


async def load_rows(w: Writer, owners: int, tenants: int) -> float:
    """ROWS_PER_OWNER rows for each owner `u{j}` of tenant `t{j % tenants}`; seconds."""
    t0 = time.monotonic()
    per: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for j in range(owners):
        for k in range(ROWS_PER_OWNER):
            per.setdefault(tenant_of(j, tenants), []).append(
                (row_id(j, k), {"owner": f"u{j}", "name": f"n{j:07}-{k}"})
            )

    async def part(items: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> None:
        for tenant, rows in items:
            for i in range(0, len(rows), 1000):
                await w.upsert_many(tenant, "asset", rows[i : i + 1000])

    work = sorted(per.items())
    await asyncio.gather(*(part(work[j::2]) for j in range(2)))
    return time.monotonic() - t0


async def write_changes(
    w: Writer, owners: list[int], tenants: int, tag: str, seed: int | str
) -> int:  # fmt: skip
    """Rename one random row of each listed owner (one frame each if subscribed)."""
    rnd = random.Random(seed)
    per: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for n, j in enumerate(owners):
        k = rnd.randrange(ROWS_PER_OWNER)
        row = {"owner": f"u{j}", "name": f"{tag}{n:07}"}
        per.setdefault(tenant_of(j, tenants), []).append((row_id(j, k), row))

    async def part(items: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> None:
        for tenant, rows in items:
            for i in range(0, len(rows), 500):
                await w.upsert_many(tenant, "asset", rows[i : i + 500])

    work = sorted(per.items())
    await asyncio.gather(*(part(work[j::2]) for j in range(2)))
    return len(owners)


# -- section 1: inputs -----------------------------------------------------------------


class Inputs1:
    """One shard, one gateway, one Redis; measures and collects the model's inputs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tenants = 64
        self.out: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def add(self, what: str, value: float, unit: str, note: str = "", runs: Any = None) -> None:
        self.rows.append({"input": what, "value": value, "unit": unit, "runs": runs, "note": note})
        print(f"  {what}: {value:,.4g} {unit} {note}", flush=True)

    async def run(self) -> Inputs:
        a = self.args
        s = settings("scale", ttl_s=120.0)  # long: drains SIGSTOP the shard and the gateway
        with LocalRedis() as srv:
            probe = RedisProbe(srv, "scale")
            w = Writer.from_url(srv.url, entities=s.entities, settings=s.redis)
            shard = Node("shard", "shard-0", srv.url, s)
            gw = Node("gateway", "gw-0", srv.url, s)
            try:
                await self._measure(a, s, probe, w, shard, gw)
            finally:
                await w.aclose()
                await gw.stop()
                await shard.stop()
        return self.inputs()

    async def _measure(
        self, a: argparse.Namespace, s: TierSettings, probe: RedisProbe, w: Writer,
        shard: Node, gw: Node,
    ) -> None:  # fmt: skip
        await wait_for(
            lambda: _owns_all(shard), 30, "the shard to own every partition"
        )  # fmt: skip
        self.out["shard_base_bytes"] = await shard.call("rss")
        self.out["gateway_base_bytes"] = await gw.call("rss")
        # Idle: heartbeats, the ownership loop, the blocking reads of an idle tier.
        c0, g0, t0 = shard.cpu_s(), gw.cpu_s(), time.monotonic()
        await asyncio.sleep(a.idle_s)
        dt = time.monotonic() - t0
        self.out["shard_idle_cores"] = (shard.cpu_s() - c0) / dt
        self.out["gateway_idle_cores"] = (gw.cpu_s() - g0) / dt
        self.add("shard CPU when idle", self.out["shard_idle_cores"] * 100, "% of a core",
                 f"(gateway {self.out['gateway_idle_cores'] * 100:.2f} %)")  # fmt: skip
        # Rows: Redis bytes per row (hash, id set, owner index) and per stream event.
        owners = a.owners
        used0, ev0 = probe.used(), probe.events_size()
        load_s = await load_rows(w, owners, self.tenants)
        used1, ev1 = probe.used(), probe.events_size()
        nrows = owners * ROWS_PER_OWNER
        self.out["redis_bytes_per_event"] = (ev1 - ev0) / nrows
        self.out["redis_bytes_per_row"] = (used1 - used0 - (ev1 - ev0)) / nrows
        self.add("rows loaded", nrows / load_s, "rows/s", f"({nrows:,} rows, 1 writer)")
        self.add("Redis bytes per row", self.out["redis_bytes_per_row"], "B",
                 "(row hash + id set + owner index; event excluded)")  # fmt: skip
        self.add("Redis bytes per event", self.out["redis_bytes_per_event"], "B",
                 "(one partition stream entry)")  # fmt: skip

        # Own views: 10,000 subscriptions (one per owner).
        first = min(10_000, owners)
        items = [(tenant_of(j, self.tenants), f"u{j}") for j in range(first)]
        await self._subscribe("own", items, probe, shard, gw, per_sub=True)

        # Frames/s at 10k: changes that reach no window, then one frame per change.
        m = a.changes
        unsubscribed = list(range(first, owners)) or list(range(owners))
        if owners > first:
            plan_m = [unsubscribed[i % len(unsubscribed)] for i in range(m)]
            await self._drain(f"{first}", "no-match", probe, w, shard, gw, plan_m, 0)
        await self._drain(f"{first}", "own", probe, w, shard, gw,
                          [i % first for i in range(m)], 1)  # fmt: skip
        await self._live(first, probe, w, shard, gw)

        # Shared view: K subscribers of one identical query.
        k = a.shared
        hot = [(f"h{i}", {"owner": "hot", "name": f"h{i}"}) for i in range(4)]
        await w.upsert_many(SHARED_TENANT, "asset", hot)
        shared_items = [(SHARED_TENANT, "hot")] * k
        await self._subscribe("shared", shared_items, probe, shard, gw, per_sub=False)
        await self._fanout(k, probe, w, shard, gw)
        close_s = await gw.call("close", group="shared", concurrency=a.concurrency)
        self.add("unsubscribe rate", k / close_s, "subs/s", f"({k:,} closed)")
        await wait_for(lambda: _subs_are(shard, first), 60, "the shared subs to leave")

        # Grow to every owner: frames/s at `owners` subscriptions.
        if owners > first:
            items = [(tenant_of(j, self.tenants), f"u{j}") for j in range(first, owners)]
            await self._subscribe("own", items, probe, shard, gw, per_sub=True, label="rest")
            await self._drain(f"{owners}", "own", probe, w, shard, gw,
                              [i % owners for i in range(m)], 1)  # fmt: skip
        st = await shard.call("status")
        self.out["final_status"] = st
        gst = await gw.call("status")
        note = (f"(feed gaps {st['feed_gaps']}, overflow resyncs {st['overflow_resyncs']}, "
                f"failed subscribes {gst['failed_subscribes'] or 0})")  # fmt: skip
        self.add("gateway gaps / stale (fencing)", gst["gaps"] + gst["stale"], "frames", note)

    async def _subscribe(
        self, group: str, items: list[tuple[str, str]], probe: RedisProbe, shard: Node,
        gw: Node, *, per_sub: bool, label: str = "",
    ) -> None:  # fmt: skip
        n = len(items)
        rss_s0, rss_g0 = await shard.call("rss"), await gw.call("rss")
        used0, str0 = probe.used(), probe.streams_size([shard.id], [gw.id])
        cpu0 = (shard.cpu_s(), gw.cpu_s(), probe.cpu_s())
        elapsed = await gw.call(
            "subscribe", group=group, items=items, concurrency=self.args.concurrency
        )
        cpu1 = (shard.cpu_s(), gw.cpu_s(), probe.cpu_s())
        rss_s1, rss_g1 = await shard.call("rss"), await gw.call("rss")
        used1, str1 = probe.used(), probe.streams_size([shard.id], [gw.id])
        name = f"{group}{' ' + label if label else ''} x{n:,}"
        shard_b, gw_b = (rss_s1 - rss_s0) / n, (rss_g1 - rss_g0) / n
        self.add(f"subscribe rate ({name})", n / elapsed, "subs/s",
                 f"(concurrency {self.args.concurrency}; {elapsed:.1f} s)")  # fmt: skip
        self.add(f"shard RSS per sub ({name})", shard_b, "B")
        self.add(f"gateway RSS per sub ({name})", gw_b, "B")
        cpu = [(b - a) / n for a, b in zip(cpu0, cpu1, strict=True)]
        self.add(f"CPU per subscribe ({name})", sum(cpu) * 1e3, "ms",
                 f"(shard {cpu[0] * 1e3:.3f}, gateway {cpu[1] * 1e3:.3f}, "
                 f"Redis {cpu[2] * 1e3:.3f})")  # fmt: skip
        reg_b = (used1 - used0 - (str1 - str0)) / n
        note = f"(control/delta streams excluded: {(str1 - str0) / n:.0f} B/sub, bounded)"
        self.add(f"Redis bytes per registration ({name})", reg_b, "B", note)
        if not label:
            sampled = probe.registration_size(gw.id)
            self.add(f"  same, MEMORY USAGE of the hash + index entries ({name})", sampled, "B")
        key = "own" if per_sub else "shared"
        self.out.setdefault(f"subscribe_{key}", []).append(
            {
                "n": n,
                "elapsed_s": elapsed,
                "shard_b": shard_b,
                "gw_b": gw_b,
                "cpu": cpu,
                "reg_b": reg_b,
            }
        )

    async def _drain(
        self, at: str, kind: str, probe: RedisProbe, w: Writer, shard: Node, gw: Node,
        owners: list[int], frames_per_change: int,
    ) -> None:  # fmt: skip
        res: list[dict[str, float]] = []
        for run in range(self.args.runs):
            res.append(await self._drain_once(probe, w, shard, gw, owners,
                                              frames_per_change, f"{kind[0]}{run}"))  # fmt: skip
        med = {key: statistics.median(r[key] for r in res) for key in res[0]}
        self.out.setdefault("drains", []).append({"subs": at, "kind": kind, **med, "runs": res})
        m = len(owners)
        runs = [round(r["shard_changes_per_s"]) for r in res]
        if frames_per_change:
            self.add(f"shard frames/s at {at} subs ({kind}, 1 frame/change)",
                     med["shard_changes_per_s"], "frames/s",
                     f"(CPU {med['shard_cpu_per_change'] * 1e6:.1f} us/change; {m:,} changes)",
                     runs)  # fmt: skip
            self.add(f"gateway frames/s at {at} subs", med["gateway_frames_per_s"], "frames/s",
                     f"(CPU {med['gateway_cpu_per_frame'] * 1e6:.1f} us/frame)",
                     [round(r["gateway_frames_per_s"]) for r in res])  # fmt: skip
        else:
            self.add(f"shard changes/s reaching no window ({at} subs)",
                     med["shard_changes_per_s"], "changes/s",
                     f"(CPU {med['shard_cpu_per_change'] * 1e6:.1f} us/change)", runs)  # fmt: skip
        write_us = med["redis_write_cpu"] * 1e6
        rest_us = med["redis_cpu_per_change"] * 1e6 - write_us
        note = f"(write {write_us:.1f} + read/deliver {rest_us:.1f})"
        self.add(f"Redis CPU per change ({kind})", write_us + rest_us, "us", note)

    async def _drain_once(
        self, probe: RedisProbe, w: Writer, shard: Node, gw: Node, owners: list[int],
        frames_per_change: int, tag: str,
    ) -> dict[str, float]:  # fmt: skip
        m = len(owners)
        st0, gs0 = await shard.call("status"), await gw.call("status")
        shard.pause()
        gw.pause()
        try:
            r0, w0 = probe.cpu_s(), time.monotonic()
            await write_changes(w, owners, self.tenants, tag, seed=tag)
            r1, write_s = probe.cpu_s(), time.monotonic() - w0
            c0 = shard.cpu_s()
        finally:
            shard.resume()
        t0 = time.monotonic()
        want_frames = m * frames_per_change

        async def shard_done() -> bool:
            st = await shard.call("status")
            return bool(
                st["changes"] - st0["changes"] >= m
                and st["frames"] - st0["frames"] >= want_frames
                and st["pending_frames"] == 0
            )

        try:
            await wait_for(shard_done, 300, "the shard to drain")
        finally:
            shard_s = time.monotonic() - t0
            c1 = shard.cpu_s()
            g0 = gw.cpu_s()
            gw.resume()
        t1 = time.monotonic()

        async def gw_done() -> bool:
            gs = await gw.call("status")
            return bool(gs["frames"] - gs0["frames"] >= want_frames)

        if want_frames:
            await wait_for(gw_done, 300, "the gateway to drain")
        gw_s = time.monotonic() - t1
        g1, r2 = gw.cpu_s(), probe.cpu_s()
        return {
            "shard_changes_per_s": m / shard_s,
            "shard_cpu_per_change": (c1 - c0) / m,
            "gateway_frames_per_s": want_frames / gw_s if want_frames else 0.0,
            "gateway_cpu_per_frame": (g1 - g0) / want_frames if want_frames else 0.0,
            "redis_write_cpu": (r1 - r0) / m,
            "write_rate": m / write_s,
            "redis_cpu_per_change": (r2 - r0) / m,
        }

    async def _live(self, owners: int, probe: RedisProbe, w: Writer, shard: Node,
                    gw: Node) -> None:  # fmt: skip
        """CPU per change at fixed live rates: small reads and batches cost more per change."""
        curve = []
        for rate in self.args.live_rates:
            res = []
            for run in range(self.args.runs):
                res.append(await fixed_rate(w, [shard], [gw], probe, owners, self.tenants, rate,
                                            self.args.live_s, run))  # fmt: skip
            shard_c = statistics.median(r["shard_cpu"][0] for r in res)
            gw_c = statistics.median(r["gateway_cpu"][0] for r in res)
            redis_c = statistics.median(r["redis_cpu"] for r in res)
            reached = statistics.median(r["write_rate"] for r in res)
            busy_s = max(0.0, shard_c - self.out["shard_idle_cores"])
            busy_g = max(0.0, gw_c - self.out["gateway_idle_cores"])
            point = {"rate": reached, "shard_cores": shard_c, "gateway_cores": gw_c,
                     "redis_cores": redis_c,
                     "shard_cpu_per_change": busy_s / reached,
                     "gateway_cpu_per_frame": busy_g / reached,
                     "redis_cpu_per_change": redis_c / reached,
                     "runs": res}  # fmt: skip
            curve.append(point)
            self.add(f"shard CPU at {reached:,.0f} changes/s live (1 frame each)", shard_c * 100,
                     "% of a core",
                     f"({point['shard_cpu_per_change'] * 1e6:.1f} us/change; gateway "
                     f"{gw_c * 100:.1f} %, {point['gateway_cpu_per_frame'] * 1e6:.1f} us/frame; "
                     f"Redis {redis_c * 100:.1f} %)",
                     [round(r["shard_cpu"][0] * 100, 1) for r in res])  # fmt: skip
        self.out["live"] = curve

    async def _fanout(self, k: int, probe: RedisProbe, w: Writer, shard: Node, gw: Node) -> None:
        """One shared view of `k` subscribers: each change makes `k` frames."""
        changes = max(2, self.args.fanout_frames // k)
        res = []
        for run in range(self.args.runs):
            st0, gs0 = await shard.call("status"), await gw.call("status")
            shard.pause()
            gw.pause()
            try:
                for c in range(changes):
                    await w.upsert(SHARED_TENANT, "asset", "h0",
                                   {"owner": "hot", "name": f"h0-{run}-{c}"})  # fmt: skip
            finally:
                c0 = shard.cpu_s()
                shard.resume()
            want = changes * k
            t0 = time.monotonic()

            async def shard_done(st0: dict[str, Any] = st0, want: int = want) -> bool:
                st = await shard.call("status")
                return bool(st["frames"] - st0["frames"] >= want and st["pending_frames"] == 0)

            await wait_for(shard_done, 300, "the shard to fan out")
            shard_s, c1 = time.monotonic() - t0, shard.cpu_s()
            g0 = gw.cpu_s()
            gw.resume()
            t1 = time.monotonic()

            async def gw_done(gs0: dict[str, Any] = gs0, want: int = want) -> bool:
                gs = await gw.call("status")
                return bool(gs["frames"] - gs0["frames"] >= want)

            await wait_for(gw_done, 300, "the gateway to take the fan-out")
            res.append({"shard_frames_per_s": want / shard_s,
                        "shard_cpu_per_frame": (c1 - c0) / want,
                        "gateway_frames_per_s": want / (time.monotonic() - t1),
                        "gateway_cpu_per_frame": (gw.cpu_s() - g0) / want})  # fmt: skip
        med = {key: statistics.median(r[key] for r in res) for key in res[0]}
        self.out["fanout"] = {"subs": k, "changes": changes, **med, "runs": res}
        self.add(f"shard frames/s, fan-out (1 change -> {k:,} subs of one view)",
                 med["shard_frames_per_s"], "frames/s",
                 f"(CPU {med['shard_cpu_per_frame'] * 1e6:.2f} us/frame)",
                 [round(r["shard_frames_per_s"]) for r in res])  # fmt: skip
        self.add("gateway frames/s, fan-out", med["gateway_frames_per_s"], "frames/s",
                 f"(CPU {med['gateway_cpu_per_frame'] * 1e6:.2f} us/frame)",
                 [round(r["gateway_frames_per_s"]) for r in res])  # fmt: skip

    def inputs(self) -> Inputs:
        """The model's inputs: own-view costs averaged over every own subscription."""
        o = self.out
        own = o["subscribe_own"]
        n_own = sum(x["n"] for x in own)
        wavg = lambda key: sum(x[key] * x["n"] for x in own) / n_own  # noqa: E731
        cpu = [sum(x["cpu"][i] * x["n"] for x in own) / n_own for i in range(3)]
        own_drain = [d for d in o["drains"] if d["kind"] == "own"][-1]  # the largest size
        nomatch = next((d for d in o["drains"] if d["kind"] == "no-match"), own_drain)
        # The live curves end with the drains: each process at its own ceiling
        # (Redis at the writer's rate), where batches are largest.
        live = o["live"]
        shard_live = [(p["rate"], p["shard_cpu_per_change"]) for p in live]
        shard_live.append((own_drain["shard_changes_per_s"], own_drain["shard_cpu_per_change"]))
        gw_live = [(p["rate"], p["gateway_cpu_per_frame"]) for p in live]
        gw_live.append((own_drain["gateway_frames_per_s"], own_drain["gateway_cpu_per_frame"]))
        redis_live = [(p["rate"], p["redis_cpu_per_change"]) for p in live]
        redis_live.append((own_drain["write_rate"], own_drain["redis_cpu_per_change"]))
        return Inputs(
            shard_bytes_own=wavg("shard_b"),
            shard_bytes_shared=o["subscribe_shared"][0]["shard_b"],
            shard_base_bytes=o["shard_base_bytes"],
            shard_idle_cores=o["shard_idle_cores"],
            shard_live=shard_live,
            shard_cpu_per_fanout_frame=o["fanout"]["shard_cpu_per_frame"],
            shard_drain_cpu_per_change=own_drain["shard_cpu_per_change"],
            shard_cpu_per_subscribe=cpu[0],
            shard_subscribes_per_s=n_own / sum(x["elapsed_s"] for x in own),
            gateway_bytes_per_sub=wavg("gw_b"),
            gateway_base_bytes=o["gateway_base_bytes"],
            gateway_idle_cores=o["gateway_idle_cores"],
            gateway_live=gw_live,
            gateway_cpu_per_subscribe=cpu[1],
            redis_bytes_per_registration=wavg("reg_b"),
            redis_bytes_per_row=o["redis_bytes_per_row"],
            redis_bytes_per_event=o["redis_bytes_per_event"],
            redis_live=redis_live,
            redis_cpu_per_frame=max(
                0.0, own_drain["redis_cpu_per_change"] - nomatch["redis_cpu_per_change"]
            ),
            redis_cpu_per_subscribe=cpu[2],
        )


async def _owns_all(shard: Node) -> bool:
    return bool((await shard.call("status"))["partitions"] == 256)


async def _subs_are(shard: Node, n: int) -> bool:
    return bool((await shard.call("status"))["subscriptions"] == n)


# -- section 2: the model --------------------------------------------------------------


def model_rows(i: Inputs) -> list[dict[str, Any]]:
    rows = []
    for fanout in (1, 10):
        for rate in (1_000, 10_000, 100_000):
            p = plan(i, Assumptions(changes_per_s=rate, fanout=fanout))
            rows.append({
                "changes/s": rate, "frames/change": fanout, "frames/s": p.frames_per_s,
                "shards": f"{p.shards} ({p.shards_by})",
                "gateways": f"{p.gateways} ({p.gateways_by})",
                "redis": f"{p.redis_masters} ({p.redis_by})",
                "shard_cores": p.shard_cpu_cores, "shard_gib": p.shard_mem_gib,
                "gw_cores": p.gateway_cpu_cores, "gw_gib": p.gateway_mem_gib,
                "redis_cores": p.redis_cpu_cores, "redis_gib": p.redis_mem_gib,
                "resubscribe_s": p.resubscribe_s,
            })  # fmt: skip
    return rows


# -- section 3: the check run ----------------------------------------------------------


async def check_run(args: argparse.Namespace, i: Inputs) -> list[dict[str, Any]]:
    """`--check-subs` subscriptions over `--shards` shards: predicted vs measured."""
    n, tenants = args.check_subs, 256
    # A long TTL: with 10 s, a gateway starved on this shared 2-core VM missed its
    # heartbeats, the shards swept its subscriptions, and its audit (run in its
    # heartbeat loop, one registration at a time) kept it from heartbeating again.
    s = settings("check", ttl_s=60.0)
    shard_ids = [f"shard-{k}" for k in range(args.shards)]
    gw_ids = [f"gw-{k}" for k in range(args.gateways)]
    # Which shard owns each tenant's partition (rendezvous hashing over the live set).
    owner_of = {t: owner(partition_of(f"t{t}", "asset"), sorted(shard_ids)) for t in range(tenants)}
    subs_per_shard = [sum(1 for j in range(n) if owner_of[j % tenants] == sid) for sid in shard_ids]
    subs_per_gw = [len(range(k, n, args.gateways)) for k in range(args.gateways)]
    rate = args.rate
    pred = predict_check(
        i, subs_per_shard=subs_per_shard, subs_per_gateway=subs_per_gw,
        rows=n * ROWS_PER_OWNER, changes_per_s=rate,
        changes_share=[x / n for x in subs_per_shard], cores=os.cpu_count() or 1,
    )  # fmt: skip
    meas: dict[str, Any] = {}
    with LocalRedis() as srv:
        probe = RedisProbe(srv, "check")
        w = Writer.from_url(srv.url, entities=s.entities, settings=s.redis)
        shards = [Node("shard", sid, srv.url, s) for sid in shard_ids]
        gws = [Node("gateway", gid, srv.url, s) for gid in gw_ids]
        try:

            async def settled() -> bool:
                parts = [(await x.call("status"))["partitions"] for x in shards]
                return sum(parts) == 256 and all(parts)

            await wait_for(settled, 60, "the shards to split the partitions")
            base_s = [await x.call("rss") for x in shards]
            base_g = [await x.call("rss") for x in gws]
            used0 = probe.used()
            ev0 = probe.events_size()
            await load_rows(w, n, tenants)
            meas["redis_rows_mb"] = (probe.used() - used0 - (probe.events_size() - ev0)) / 1e6
            str0 = probe.streams_size(shard_ids, gw_ids)
            used1 = probe.used()
            cpu0 = ([x.cpu_s() for x in shards], [x.cpu_s() for x in gws], probe.cpu_s())
            items = [[(tenant_of(j, tenants), f"u{j}") for j in range(k, n, args.gateways)]
                     for k in range(args.gateways)]  # fmt: skip
            t0 = time.monotonic()
            await asyncio.gather(*(g.call("subscribe", group="own", items=it,
                                          concurrency=args.concurrency)
                                   for g, it in zip(gws, items, strict=True)))  # fmt: skip
            meas["subscribe_s"] = time.monotonic() - t0
            meas["subs_per_s"] = n / meas["subscribe_s"]
            meas["subscribe_cpu_s_shards"] = sum(x.cpu_s() for x in shards) - sum(cpu0[0])
            meas["subscribe_cpu_s_gateways"] = sum(x.cpu_s() for x in gws) - sum(cpu0[1])
            meas["subscribe_cpu_s_redis"] = probe.cpu_s() - cpu0[2]
            served = [(await x.call("status"))["subscriptions"] for x in shards]
            print(f"  subscribed {n:,} in {meas['subscribe_s']:.1f} s; served {served}", flush=True)
            reg = probe.used() - used1 - (probe.streams_size(shard_ids, gw_ids) - str0)
            meas["redis_registrations_mb"] = reg / 1e6
            for k, x in enumerate(shards):
                meas[f"shard{k}_mb"] = (await x.call("rss") - base_s[k]) / 1e6
            for k, x in enumerate(gws):
                meas[f"gateway{k}_mb"] = (await x.call("rss") - base_g[k]) / 1e6
            res = [await fixed_rate(w, shards, gws, probe, n, tenants, rate, args.seconds, run)
                   for run in range(args.runs)]  # fmt: skip
            meas["frames_per_s"] = statistics.median(r["frames_per_s"] for r in res)
            for k in range(len(shards)):
                meas[f"shard{k}_cpu"] = statistics.median(r["shard_cpu"][k] for r in res)
            for k in range(len(gws)):
                meas[f"gateway{k}_cpu"] = statistics.median(r["gateway_cpu"][k] for r in res)
            meas["redis_cpu"] = statistics.median(r["redis_cpu"] for r in res)
            gaps = sum([(await g.call("status"))["gaps"] for g in gws])
            sts = [await x.call("status") for x in shards]
            meas["gaps"] = gaps
            meas["failed"] = [(await g.call("status"))["failed_subscribes"] for g in gws]
            meas["overflow_resyncs"] = sum(x["overflow_resyncs"] for x in sts)
            meas["subscriptions"] = sum(x["subscriptions"] for x in sts)
        finally:
            await w.aclose()
            for x in gws + shards:
                await x.stop()
    rows = []
    for key, p in pred.items():
        m = meas.get(key)
        if m is None:
            continue
        rows.append({"quantity": key, "predicted": p, "measured": m,
                     "error_pct": 100.0 * (m - p) / p if p else None})  # fmt: skip
    rows.append({"quantity": "subscriptions served", "measured": meas["subscriptions"]})
    rows.append({"quantity": "failed subscribes (per gateway)", "measured": str(meas["failed"])})
    rows.append({"quantity": "gateway gaps / shard overflow resyncs",
                 "measured": f"{meas['gaps']} / {meas['overflow_resyncs']}"})  # fmt: skip
    return rows


async def fixed_rate(
    w: Writer, shards: list[Node], gws: list[Node], probe: RedisProbe, owners: int,
    tenants: int, rate: float, seconds: float, run: int,
) -> dict[str, Any]:  # fmt: skip
    """Write `rate` renames/s (one frame each) for `seconds`, in 50 ms ticks.

    Returns the write rate reached, frames/s delivered to the gateways (until
    the last one arrived) and the CPU of each process while writing (cores).
    """
    rnd = random.Random(run)
    total = int(rate * seconds)
    g0 = sum([(await g.call("status"))["frames"] for g in gws])
    c0 = [x.cpu_s() for x in shards + gws]
    r0 = probe.cpu_s()
    t0 = time.monotonic()
    tick = 0.05
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0 + tick) * rate))
        if due > sent:
            await write_changes(w, [rnd.randrange(owners) for _ in range(due - sent)],
                                tenants, f"r{run}-{sent}-", seed=sent)  # fmt: skip
            sent = due
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    write_s = time.monotonic() - t0
    cpu = [(x.cpu_s() - c) / write_s for x, c in zip(shards + gws, c0, strict=True)]
    redis_cpu = (probe.cpu_s() - r0) / write_s

    async def delivered() -> bool:
        return sum([(await g.call("status"))["frames"] for g in gws]) - g0 >= total

    await wait_for(delivered, 120, "every frame to reach a gateway")
    return {
        "write_rate": total / write_s,
        "frames_per_s": total / (time.monotonic() - t0),
        "shard_cpu": cpu[: len(shards)],
        "gateway_cpu": cpu[len(shards) :],
        "redis_cpu": redis_cpu,
    }


# -- main ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    sec1 = Inputs1(args)
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    if args.saved:
        saved = args.saved
        inputs = Inputs(**saved["inputs"])
        sec1.rows, sec1.out = saved["inputs_measured"], saved["raw"]
    else:
        print(f"== inputs: one shard, one gateway, {args.owners:,} owners", flush=True)
        inputs = await sec1.run()
        report("bench_scale_inputs", sec1.rows, ["input", "value", "unit", "note", "runs"])
    save(args, sec1, inputs, [], [], load0)  # a failed check run keeps the inputs
    print("\n== model: 1,000,000 subscriptions", flush=True)
    mrows = model_rows(inputs)
    cols = ["changes/s", "frames/change", "frames/s", "shards", "gateways", "redis",
            "shard_cores", "shard_gib", "gw_cores", "gw_gib", "redis_cores", "redis_gib",
            "resubscribe_s"]  # fmt: skip
    report("bench_scale_model", mrows, cols)
    crows: list[dict[str, Any]] = []
    if args.check_subs:
        print(f"\n== check: {args.check_subs:,} subscriptions over {args.shards} shards, "
              f"{args.gateways} gateways, {args.rate:,.0f} changes/s", flush=True)  # fmt: skip
        crows = await check_run(args, inputs)
        report("bench_scale_check", crows, ["quantity", "predicted", "measured", "error_pct"])
    save(args, sec1, inputs, mrows, crows, load0)


def save(
    args: argparse.Namespace, sec1: Inputs1, inputs: Inputs, mrows: list[dict[str, Any]],
    crows: list[dict[str, Any]], load0: tuple[float, float, float],
) -> None:  # fmt: skip
    """Write everything to benchmarks/results/bench_scale.json (`--inputs-from` reads it)."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_scale.json"
    out.write_text(json.dumps({
        "meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                 "args": {k: v for k, v in vars(args).items() if k != "saved"}},
        "inputs_measured": sec1.rows, "inputs": asdict(inputs),
        "assumptions": asdict(Assumptions()),
        "raw": {k: v for k, v in sec1.out.items() if k != "final_status"},
        "model": mrows, "check": crows,
    }, indent=2, default=str))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--runs", type=int, default=3, help="drains / fixed-rate phases; medians")
    ap.add_argument("--owners", type=int, help="own-view subscriptions on the one shard (100000)")
    ap.add_argument("--shared", type=int, help="subscribers of the one shared view (10000)")
    ap.add_argument("--changes", type=int, help="changes per drain (20000)")
    ap.add_argument("--fanout-frames", type=int, help="frames per fan-out drain (100000)")
    ap.add_argument("--concurrency", type=int, default=200, help="subscribes in flight per gateway")
    ap.add_argument(
        "--check-subs", type=int, help="subscriptions of the check run (100000; 0: skip)"
    )
    ap.add_argument("--shards", type=int, default=4, help="shards of the check run")
    ap.add_argument("--gateways", type=int, default=2, help="gateways of the check run")
    ap.add_argument("--rate", type=float, default=2000, help="changes/s of the check run")
    ap.add_argument("--seconds", type=float, default=10.0, help="fixed-rate phase of the check run")
    ap.add_argument(
        "--live-rates",
        default="500,2000,8000",
        help="changes/s of the live-rate CPU curve of section 1",
    )
    ap.add_argument("--live-s", type=float, default=5.0, help="seconds per live rate")
    ap.add_argument("--idle-s", type=float, default=5.0, help="idle CPU sample of section 1")
    ap.add_argument("--inputs-from", help="skip section 1: read its inputs from this JSON file")
    ns = ap.parse_args()
    quick = {"owners": 12_000, "shared": 2_000, "changes": 4_000, "fanout_frames": 20_000,
             "check_subs": 10_000}  # fmt: skip
    full = {"owners": 100_000, "shared": 10_000, "changes": 20_000, "fanout_frames": 100_000,
            "check_subs": 100_000}  # fmt: skip
    for key, val in (quick if ns.quick else full).items():
        if getattr(ns, key) is None:
            setattr(ns, key, val)
    ns.live_rates = [float(x) for x in ns.live_rates.split(",") if x]
    ns.saved = json.loads(Path(ns.inputs_from).read_text()) if ns.inputs_from else None
    if ns.quick:
        ns.live_s = min(ns.live_s, 3.0)
        ns.seconds = min(ns.seconds, 4.0)
        ns.runs = min(ns.runs, 2)
    asyncio.run(main(ns))
