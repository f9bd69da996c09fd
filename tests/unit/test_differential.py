"""Differential test of the live-query engine against a brute-force oracle.

Random workloads (upserts, deletes, re-inserts, subscribes, reanchors and
closes over many query shapes) run against `Engine` + `MemoryStore`. After
every `settle()` each subscriber's frames are applied to a client list, which
must equal the oracle's answer computed from `store.rows()`
(docs/architecture.md, docs/semantics.md).

Two schedules: *sequential* (writes happen between settles, so every store
read sees the feed caught up) and *concurrent* (the test yields between
writes, store reads return after a few loop turns, and subscribes run in the
background) which exercises the gapless handoff
(docs/architecture.md#gapless-handoff).

A failure names the seed, schedule, cushion, buffer and operation index.
`await run_workload(seed, ops, concurrent=…)` replays it: a sequential run
exactly; a concurrent run makes the same operations, though the engine may
interleave its store reads differently (views iterate in object-id order).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from lq_oracle import ClientError, apply_maintained, apply_streamed, o_matching

from raycluster.livequery import (
    Cond,
    Cursor,
    Engine,
    EngineSubscription,
    EntitySpec,
    LiveQuery,
    MemoryStore,
    Snapshot,
    SortKey,
    and_,
    eq,
    gt,
    gte,
    ilike,
    in_,
    is_not_null,
    is_null,
    like,
    lt,
    lte,
    ne,
    not_in,
    or_,
)

T, E = "acme", "asset"
SPEC = EntitySpec(
    name=E,
    columns={"kind": "str", "name": "str", "level": "int", "temp": "float", "on": "bool"},
)
COLUMNS = list(SPEC.columns)
DOMAIN: dict[str, list[Any]] = {
    "kind": ["pump", "valve", "fan", "Pump", "PUMP-2", "a.b", "axb", "x(y)", "a_b"],
    "name": ["", "a", "ab", "abc", "aB", "A", "b", "ba", "B", "a_", "a_b", "a%", "%", "_", "é"],
    "level": [-1, 0, 1, 2, 3, 4, 5, 6],
    "temp": [-2.5, -1.0, 0.0, 0.5, 1.25, 2, 3.0, 7.5],
    "on": [True, False],
}

# Where clauses; every query shape of a run uses one of these.
WHERES: list[list[Cond]] = [
    [],
    [eq("kind", "pump")],
    [in_("kind", ["pump", "valve"])],
    [in_("level", [1, 3, 5])],
    [gt("temp", 0.0)],
    [gte("level", 2), lt("level", 5)],
    [lte("temp", 1.25), ne("kind", "fan")],
    [like("name", "a%")],
    [ilike("name", "%B%")],
    [like("name", "_")],
    [like("name", "%\\%%")],
    [like("name", "a\\_%")],
    [ilike("kind", "pump%")],
    [like("kind", "a.b")],
    [like("kind", "x(%")],
    [is_null("temp")],
    [is_not_null("name"), eq("on", True)],
    [or_(eq("kind", "fan"), gt("level", 4))],
    [or_([eq("kind", "pump"), lt("temp", 1.0)], is_null("kind"))],
    [not_in("kind", ["pump", "fan"])],
    [eq("on", False), in_("kind", ["pump", "fan", "valve"])],
    [and_(gte("temp", -1.0), lte("temp", 3.0)), or_(is_null("level"), eq("level", 0))],
    [eq("kind", "valve"), eq("level", 2)],
    [eq("kind", "pump"), in_("kind", ["pump", "fan"])],
    [ne("on", True)],
    [gt("name", "a"), lt("name", "b")],
    [in_("temp", [0.5, 3.0, 2])],
    [ilike("name", "É%")],
]


@dataclass(frozen=True)
class Schema:
    """What a workload writes and asks: columns, their values, its where clauses."""

    specs: list[EntitySpec]
    domain: dict[str, list[Any]]
    wheres: list[list[Cond]]

    @property
    def columns(self) -> list[str]:
        return list(self.domain)


DECLARED = Schema([SPEC], DOMAIN, WHERES)

# An undeclared entity: any scalar in any column. `m` and `x` mix every type (ints
# and floats that are equal, ints beyond 2**53, bools beside 0 and 1, strings of
# digits), so every comparison and sort meets values of other types.
MIXED_DOMAIN: dict[str, list[Any]] = {
    "kind": ["pump", "valve", "fan", 1, True],
    "m": [
        False,
        True,
        -1,
        0,
        1,
        1.0,
        2.5,
        2**53,
        2**53 + 1,
        float(2**53),
        2**63 - 1,
        -(2**63),
        "",
        "a",
        "1",
        "b",
        "é",
        "True",
    ],
    "x": [0, 1, True, False, "0", "1", 0.5, -0.0],
    "n": [-2, 0, 1, 1.5, 3],
}
MIXED_WHERES: list[list[Cond]] = [
    [],
    [eq("m", 1)],
    [eq("m", True)],
    [eq("m", "a")],
    [ne("m", 1)],
    [ne("x", False)],
    [gt("m", 0)],
    [gte("m", False)],
    [lt("m", "b")],
    [lte("m", 2**53)],
    [in_("m", [1, "a", True])],
    [in_("x", [0, "0"])],
    [not_in("m", [0, "", False])],
    [or_(gt("m", 0), eq("kind", "pump"))],
    [or_(eq("kind", "pump"), gt("m", 0))],
    [or_(lt("m", "b"), gt("m", 1)), ne("kind", "fan")],
    [or_([gt("x", 0), lt("n", 2)], like("m", "%a%"))],
    [like("m", "_"), is_not_null("x")],
    [ilike("kind", "P%")],
    [is_null("m")],
    [and_(gte("n", 0), lte("n", 1.5)), or_(is_null("x"), eq("x", True))],
    [eq("m", 2**53 + 1)],
    [gt("m", float(2**53))],
]
MIXED = Schema([], MIXED_DOMAIN, MIXED_WHERES)

DEFAULT_OPS = 12_500  # store writes per run; 8 sequential runs make 100,000
CONCURRENT_OPS = 6_000


@dataclass
class Tracked:
    """One live subscription and the client list its frames build."""

    sub: EngineSubscription
    query: LiveQuery
    joined: int  # every write after this op index must reach a streamed client
    maintained: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    streamed: dict[str, dict[str, Any]] = field(default_factory=dict)
    shape: str = ""

    def __post_init__(self) -> None:
        self.shape = self.query.shape()

    def retarget(self, query: LiveQuery, joined: int) -> None:
        self.query, self.shape, self.joined = query, query.shape(), joined

    def start(self, snapshot: list[Any], joined: int) -> None:
        self.joined = joined
        self.maintained = [(r.agg_id, r.vals) for r in snapshot]
        self.streamed = {r.agg_id: r.vals for r in snapshot}


class LaggyStore:
    """Reads the store atomically, then returns after a few loop turns (a network hop)."""

    def __init__(self, store: MemoryStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng

    async def _lag(self) -> None:
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        snap = self.store.read(tenant, query, query.cursor, limit)
        await self._lag()
        return snap

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        snap = self.store.read(tenant, query, after if after is not None else query.cursor, limit)
        await self._lag()
        return snap


class Workload:
    """One seeded run; `run()` raises `pytest.fail` with replay details on divergence."""

    def __init__(self, seed: int, ops: int, *, concurrent: bool, schema: Schema = DECLARED) -> None:
        self.seed = seed
        self.schema = schema
        self.columns = schema.columns
        self.budget = ops
        self.concurrent = concurrent
        self.rng = random.Random(seed)
        rng = self.rng
        # 0..7 over the sequential seeds, 2, 4, 6, 8, 1, 3 over the concurrent ones
        self.cushion = (seed * 2 + 2 if concurrent else seed) % 9
        self.buffer = rng.choice([1024, 1024, 1024, 12])
        self.pool = [f"r{i:03d}" for i in range(rng.choice([40, 80, 120]))]
        self.store = MemoryStore(schema.specs)
        self.engine: Engine | None = None
        self.ops = 0
        self.last_write: dict[str, int] = {}
        self.deleted: list[str] = []
        self.subs: list[Tracked] = []
        self.pending: list[tuple[asyncio.Task[EngineSubscription], LiveQuery]] = []
        self.boundary: list[str] = []
        self.shape_no = seed * 7
        self.checks = 0

    # -- random data -------------------------------------------------------------

    def value(self, col: str) -> Any:
        return None if self.rng.random() < 0.15 else self.rng.choice(self.schema.domain[col])

    def row(self) -> dict[str, Any]:
        return {c: self.value(c) for c in self.columns if self.rng.random() >= 0.05}

    def cursor(self, sort: list[SortKey]) -> Cursor | None:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return None
        rows = self.store.rows(T, E)
        if r < 0.7 and rows:
            agg_id = rng.choice(sorted(rows))
            vals = rows[agg_id][1]
            return Cursor(values=[*(vals.get(k.column) for k in sort), agg_id])
        # A position that may not exist in the data.
        agg_id = rng.choice([*self.pool[:5], "r050x", "", "zzz", rng.choice(self.pool)])
        return Cursor(values=[*(self.value(k.column) for k in sort), agg_id])

    def query(self) -> LiveQuery:
        rng = self.rng
        self.shape_no += 1
        wheres = self.schema.wheres
        where = wheres[self.shape_no % len(wheres)]
        nkeys = rng.choice([0, 1, 1, 1, 2, 2, 2, 3, 3]) if rng.random() < 0.95 else 0
        cols = rng.sample(self.columns, nkeys)
        sort = [SortKey(column=c, desc=rng.random() < 0.5) for c in cols]
        limit = rng.randint(1, 8) if rng.random() < 0.6 else rng.randint(1, 50)
        mode = "streamed" if rng.random() < 0.2 else "maintained"
        return LiveQuery(
            entity=E, where=where, sort=sort, limit=limit, cursor=self.cursor(sort), mode=mode
        )

    # -- operations ----------------------------------------------------------------

    def write(self) -> None:
        rng, store = self.rng, self.store
        rows = store.rows(T, E)
        r = rng.random()
        unused: list[str] = []
        if 0.2 <= r < 0.35 or not rows:
            gone = set(self.deleted)
            unused = [i for i in self.pool if i not in rows and i not in gone]
        if rows and r < 0.12:
            agg_id = rng.choice(sorted(rows))
            store.delete(T, E, agg_id)
            self.deleted.append(agg_id)
        elif self.deleted and r < 0.2:
            agg_id = self.deleted.pop(rng.randrange(len(self.deleted)))
            store.upsert(T, E, agg_id, self.row())
        elif unused and (r < 0.35 or not rows):
            agg_id = rng.choice(unused)
            store.upsert(T, E, agg_id, self.row())
        else:
            if not rows:
                agg_id = rng.choice(self.pool)
                if agg_id in self.deleted:
                    self.deleted.remove(agg_id)
                store.upsert(T, E, agg_id, self.row())
            else:
                near = [i for i in self.boundary if i in rows]
                agg_id = rng.choice(near) if near and rng.random() < 0.5 else rng.choice(list(rows))
                store.upsert(T, E, agg_id, self.mutate(rows[agg_id][1]))
        self.ops += 1
        self.last_write[agg_id] = self.ops

    def mutate(self, old: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        new = dict(old)
        r = rng.random()
        if r < 0.05:
            return new  # rewrite as is: a version bump only
        if r < 0.2:
            return self.row()
        if r < 0.3 and new:
            del new[rng.choice(list(new))]
            return new
        # Change one or two columns: sort-key or not, depending on the query it hits.
        for col in rng.sample(self.columns, rng.choice([1, 1, 2])):
            new[col] = self.value(col)
        return new

    async def subscribe(self, query: LiveQuery | None = None) -> None:
        assert self.engine is not None
        if query is None:
            if self.subs and self.rng.random() < 0.35:
                query = self.rng.choice(self.subs).query  # same shape: a shared view
            else:
                query = self.query()
        if self.concurrent and self.rng.random() < 0.5:
            task = asyncio.create_task(self.engine.subscribe(T, query))
            self.pending.append((task, query))
            return
        sub = await self.engine.subscribe(T, query)
        t = Tracked(sub, query, self.ops)
        t.start(sub.snapshot, self.ops)
        self.subs.append(t)

    async def reanchor(self) -> None:
        t = self.rng.choice(self.subs)
        q = t.query
        sort = list(q.sort)
        limit = self.rng.randint(1, 8) if self.rng.random() < 0.6 else self.rng.randint(1, 50)
        cursor = self.cursor(sort)
        await t.sub.reanchor(cursor, limit)
        # A streamed reanchor starts a new membership set: writes from now on must reach it.
        t.retarget(q.model_copy(update={"cursor": cursor, "limit": limit}), self.ops)

    async def close(self) -> None:
        t = self.subs.pop(self.rng.randrange(len(self.subs)))
        await t.sub.close()
        assert t.sub.closed

    # -- checking --------------------------------------------------------------------

    def replay(self) -> str:
        return (
            f"replay: seed={self.seed} concurrent={self.concurrent} cushion={self.cushion} "
            f"schema={'mixed' if self.schema is MIXED else 'declared'} "
            f"buffer={self.buffer} after op {self.ops} (check {self.checks})"
        )

    def fail(self, what: str, t: Tracked, client: object, truth: object) -> None:
        pytest.fail(
            f"{what}\n{self.replay()}\n"
            f"query={t.query.model_dump_json()}\n"
            f"client={client}\n"
            f"truth ={truth}",
            pytrace=False,
        )

    async def check(self) -> None:
        assert self.engine is not None
        engine = self.engine
        for task, query in self.pending:
            sub = await task
            self.subs.append(Tracked(sub, query, 0))
            self.subs[-1].start(sub.snapshot, self.ops)
        self.pending.clear()
        await engine.settle()
        self.checks += 1
        if self.checks % 40 == 0:
            drifted = await engine.reconcile()
            if drifted:
                pytest.fail(f"reconcile found {drifted} drifted views\n{self.replay()}")
        rows = self.store.rows(T, E)
        truths: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        boundary: list[str] = []
        for t in self.subs:
            q, shape = t.query, t.shape
            if shape not in truths:
                truths[shape] = o_matching(rows, q)
            everything = truths[shape]
            frames = t.sub.drain()
            if q.mode == "maintained":
                try:
                    apply_maintained(t.maintained, frames)
                except ClientError as e:
                    self.fail(f"bad frame: {e}", t, t.maintained, everything[: q.limit])
                truth = everything[: q.limit]
                if t.maintained != truth:
                    at = _first_difference(t.maintained, truth)
                    self.fail(f"maintained list diverges at index {at}", t, t.maintained, truth)
                boundary += [i for i, _ in everything[max(0, q.limit - 2) : q.limit + 2]]
            else:
                try:
                    apply_streamed(t.streamed, frames)
                except ClientError as e:
                    self.fail(f"bad frame: {e}", t, t.streamed, dict(everything))
                now = dict(everything)
                stale = {i: r for i, r in t.streamed.items() if now.get(i) != r}
                missing = [
                    i for i in now if self.last_write.get(i, 0) > t.joined and i not in t.streamed
                ]
                if stale or missing:
                    self.fail(
                        f"streamed set wrong: stale/unmatched={stale} missing={missing}",
                        t,
                        t.streamed,
                        now,
                    )
        views = engine.view_count()
        shapes = len({t.shape for t in self.subs})
        if views != shapes:
            pytest.fail(f"{views} views for {shapes} distinct shapes\n{self.replay()}")
        self.boundary = boundary

    # -- the run -------------------------------------------------------------------

    async def run(self) -> None:
        rng = self.rng
        if self.concurrent:
            lag = LaggyStore(self.store, random.Random(self.seed + 1))
            engine = Engine(
                lag,
                lag,
                self.store,
                cushion=self.cushion,
                buffer=self.buffer,
                entities=self.schema.specs,
            )
        else:
            engine = Engine(
                self.store,
                self.store,
                self.store,
                cushion=self.cushion,
                buffer=self.buffer,
                entities=self.schema.specs,
            )
        self.engine = engine
        try:
            for _ in range(len(self.pool) // 2):
                self.write()
            for _ in range(4):
                await self.subscribe()
            await self.check()
            until_check = rng.randint(1, 20)
            while self.ops < self.budget:
                r = rng.random()
                if r < 0.012 and len(self.subs) + len(self.pending) < 10:
                    await self.subscribe()
                elif r < 0.02 and self.subs:
                    await self.reanchor()
                elif r < 0.026 and self.subs:
                    await self.close()
                else:
                    self.write()
                    until_check -= 1
                if self.concurrent and rng.random() < 0.3:
                    await asyncio.sleep(0)
                if until_check <= 0:
                    await self.check()
                    until_check = rng.randint(1, 20)
            await self.check()
            stats = engine.stats
            if stats.dispatch_errors or stats.load_errors or stats.resets["error"]:
                pytest.fail(f"engine errors {vars(stats)}\n{self.replay()}")
        finally:
            await engine.aclose()


def _first_difference(a: list[Any], b: list[Any]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


async def run_workload(seed: int, ops: int, *, concurrent: bool, schema: Schema = DECLARED) -> int:
    """Run one seeded workload; returns how many store writes it made."""
    w = Workload(seed, ops, concurrent=concurrent, schema=schema)
    await w.run()
    return w.ops


@pytest.mark.parametrize("seed", range(8))
async def test_sequential_matches_oracle(seed: int) -> None:
    assert await run_workload(seed, DEFAULT_OPS, concurrent=False) >= DEFAULT_OPS


@pytest.mark.parametrize("seed", range(6))
async def test_concurrent_matches_oracle(seed: int) -> None:
    assert await run_workload(seed, CONCURRENT_OPS, concurrent=True) >= CONCURRENT_OPS


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
async def test_mixed_value_types_match_oracle(seed: int, concurrent: bool) -> None:
    """An undeclared entity whose columns mix bools, ints, floats, strings and nulls:
    every window follows the documented cross-type order and comparison rules."""
    ops = CONCURRENT_OPS if concurrent else DEFAULT_OPS // 2
    assert await run_workload(seed, ops, concurrent=concurrent, schema=MIXED) >= ops


@pytest.mark.long
@pytest.mark.parametrize("seed", range(100, 108))
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
async def test_long_matches_oracle(seed: int, concurrent: bool) -> None:
    ops = 10 * (CONCURRENT_OPS if concurrent else DEFAULT_OPS)
    assert await run_workload(seed, ops, concurrent=concurrent) >= ops
