"""Writer: versions, validation, optimistic concurrency, the event format, the script contract."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from redis_helpers import all_keys, db_size, snapshot_keys, stream_entries

from raycluster.cluster.keys import Keys
from raycluster.cluster.routing import partition_of
from raycluster.errors import ConflictError, InvalidRow
from raycluster.livequery import EntitySpec
from raycluster.redis import Outcome, RedisSettings, RedisUnavailable, Writer
from raycluster.redis._client import Client
from raycluster.redis._index import canon, lex_encode, lex_member
from raycluster.redis.local import _free_port
from raycluster.redis.scripts import WRITE, WRITE_MANY
from raycluster.redis.writer import Write

pytestmark = pytest.mark.redis

SPEC = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "temp": "float", "n": "int", "on": "bool"},
)
P = partition_of("acme", "asset")


@pytest.fixture
async def writer(redis_url: str, settings: RedisSettings) -> Any:
    async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
        yield w


async def test_versions_increase_and_survive_delete(writer: Writer) -> None:
    assert await writer.upsert("acme", "asset", "a1", {"name": "x"}) == 1
    assert await writer.upsert("acme", "asset", "a1", {"name": "y"}) == 2
    assert await writer.get("acme", "asset", "a1") == (2, {"name": "y"})
    assert await writer.delete("acme", "asset", "a1") == 3
    assert await writer.get("acme", "asset", "a1") is None
    assert await writer.version("acme", "asset", "a1") == 3
    # Re-insert continues from the kept counter.
    assert await writer.upsert("acme", "asset", "a1", {"name": "z"}) == 4


async def test_delete_of_missing_row_writes_nothing(
    writer: Writer, admin: Client, keys: Keys
) -> None:
    assert await writer.delete("acme", "asset", "never") == 0
    assert await admin.exists(keys.event_stream(P)) == 0
    await writer.upsert("acme", "asset", "a1", {"name": "x"})
    await writer.delete("acme", "asset", "a1")
    before = await snapshot_keys(admin)
    assert await writer.delete("acme", "asset", "a1") == 2
    assert await snapshot_keys(admin) == before


async def test_event_format_and_stream(writer: Writer, admin: Client, keys: Keys) -> None:
    await writer.upsert("acme", "asset", "a1", {"name": "x", "temp": 1.5, "on": True})
    await writer.delete("acme", "asset", "a1")
    entries = await stream_entries(admin, keys.event_stream(P))
    assert len(entries) == 2
    (_, up), (_, dl) = entries
    assert {k: up[k] for k in ("t", "e", "id", "v", "op", "n")} == {
        "t": "acme",
        "e": "asset",
        "id": "a1",
        "v": "1",
        "op": "upsert",
        "n": "1",
    }
    assert json.loads(up["row"]) == {"name": "x", "temp": 1.5, "on": True}
    assert int(up["at"]) > 1_600_000_000_000
    assert dl["op"] == "delete" and dl["v"] == "2" and "row" not in dl and dl["n"] == "2"


async def test_row_json_is_compact_utf8(writer: Writer, admin: Client, keys: Keys) -> None:
    """Rows are stored (and sent in events) as compact JSON, non-ASCII unescaped."""
    row = {"name": 'é "q"\n\x00', "kind": "\U0001f600", "temp": -1e-7, "n": -(2**63), "on": False}
    for agg_id, batched in [("a1", False), ("a2", True)]:
        if batched:
            await writer.upsert_many("acme", "asset", {agg_id: row})
        else:
            await writer.upsert("acme", "asset", agg_id, row)
        stored = await admin.hget(keys.row("acme", "asset", agg_id), "row")
        assert stored == json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"name": 5}, "row.name"),
        ({"bogus": 1}, "row.bogus"),
        ({"n": 1.5}, "row.n"),
        ({"n": True}, "row.n"),
        ({"temp": float("nan")}, "row.temp"),
        ({"temp": float("inf")}, "row.temp"),
        ({"n": 2**70}, "row.n"),
        ({"name": "\ud800"}, "row.name"),
        ([1, 2], "row"),
    ],
)
async def test_bad_rows_rejected_naming_the_field(
    writer: Writer, admin: Client, row: Any, field: str
) -> None:
    await writer.upsert("acme", "asset", "a1", {"name": "ok"})
    before = await snapshot_keys(admin)
    with pytest.raises(InvalidRow) as info:
        await writer.upsert("acme", "asset", "a1", row)
    assert info.value.field == field
    assert field in str(info.value)
    assert await snapshot_keys(admin) == before


@pytest.mark.parametrize(
    ("tenant", "entity", "agg_id", "field"),
    [
        ("", "asset", "a1", "tenant"),
        ("a:b", "asset", "a1", "tenant"),
        ("acme", "nope", "a1", "entity"),
        ("acme", "asset", "", "agg_id"),
    ],
)
async def test_bad_names_rejected(
    writer: Writer, admin: Client, tenant: str, entity: str, agg_id: str, field: str
) -> None:
    with pytest.raises(InvalidRow) as info:
        await writer.upsert(tenant, entity, agg_id, {"name": "x"})
    assert info.value.field == field
    assert await db_size(admin) == 0


async def test_optimistic_concurrency(writer: Writer, admin: Client) -> None:
    assert await writer.upsert("acme", "asset", "a1", {"name": "x"}, expected_version=0) == 1
    before = await snapshot_keys(admin)
    with pytest.raises(ConflictError) as info:
        await writer.upsert("acme", "asset", "a1", {"name": "y"}, expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    with pytest.raises(ConflictError):
        await writer.delete("acme", "asset", "a1", expected_version=5)
    assert await snapshot_keys(admin) == before
    assert await writer.upsert("acme", "asset", "a1", {"name": "y"}, expected_version=1) == 2
    assert await writer.delete("acme", "asset", "a1", expected_version=2) == 3


async def test_upsert_many(writer: Writer, admin: Client, keys: Keys) -> None:
    rows = [(f"a{i % 7}", {"name": f"n{i}", "n": i}) for i in range(20)]
    versions = await writer.upsert_many("acme", "asset", rows)
    expected: dict[str, int] = {}
    want = []
    for agg_id, _ in rows:
        expected[agg_id] = expected.get(agg_id, 0) + 1
        want.append(expected[agg_id])
    assert versions == want
    assert len(await stream_entries(admin, keys.event_stream(P))) == 20
    assert await writer.get("acme", "asset", "a6") == (2, {"name": "n13", "n": 13})


async def test_upsert_many_validates_everything_first(writer: Writer, admin: Client) -> None:
    rows = {"a1": {"name": "x"}, "a2": {"name": "y", "n": "bad"}, "a3": {"name": "z"}}
    with pytest.raises(InvalidRow) as info:
        await writer.upsert_many("acme", "asset", rows)
    assert info.value.field == "rows.1.row.n"
    assert await db_size(admin) == 0


async def test_upsert_many_batches(redis_url: str, settings: RedisSettings, admin: Client) -> None:
    s = settings.model_copy(update={"write_batch": 7})
    async with Writer.from_url(redis_url, entities=[SPEC], settings=s) as w:
        versions = await w.upsert_many("acme", "asset", {f"a{i}": {"n": i} for i in range(30)})
    assert versions == [1] * 30
    assert await admin.xlen(s.keys.event_stream(P)) == 30


async def test_stream_is_bounded(redis_url: str, settings: RedisSettings, admin: Client) -> None:
    s = settings.model_copy(update={"events_maxlen": 100})
    async with Writer.from_url(redis_url, entities=[SPEC], settings=s) as w:
        await w.upsert_many("acme", "asset", {f"a{i}": {"n": i} for i in range(1000)})
    # Approximate trimming removes whole macro-nodes (100 entries by default).
    assert 100 <= await admin.xlen(s.keys.event_stream(P)) <= 300


async def test_script_reloaded_after_script_flush(writer: Writer, admin: Client) -> None:
    await writer.upsert("acme", "asset", "a1", {"name": "x"})
    await admin.script_flush()
    assert await writer.upsert("acme", "asset", "a1", {"name": "y"}) == 2
    await admin.script_flush()
    assert await writer.upsert_many("acme", "asset", {"a1": {"name": "z"}}) == [3]


def _msgpack_strings(items: list[str]) -> bytes:
    """A MessagePack array of short strings (fixarray of fixstr or str8), encoded by hand."""
    assert len(items) < 16 and all(len(x.encode()) < 256 for x in items)

    def one(x: bytes) -> bytes:
        return (bytes([0xA0 | len(x)]) if len(x) < 32 else bytes([0xD9, len(x)])) + x

    return bytes([0x90 | len(items)]) + b"".join(one(x.encode()) for x in items)


async def test_script_contract_from_another_language(admin: Client, keys: Keys) -> None:
    """Call the script exactly as its docstring says (plain EVAL, no Python helpers but
    the key names, whose two forms `test_layout` pins)."""
    k = [
        keys.row("acme", "asset", "r1"),
        keys.table("acme", "asset"),
        keys.event_stream(P),
        keys.index_counts("acme", "asset"),
        keys.event_seq(P),
    ]
    row = '{"kind":"pump"}'
    vx = keys.value_index("acme", "asset", "kind", '"pump"')
    entries = _msgpack_strings(["v", vx, "v:kind"])
    res = await admin.eval(WRITE, 5, *k, "upsert", "", "acme", "asset", "r1", row, 1000, entries)
    assert res[0] == b"ok" and res[1] == 1
    assert await admin.smembers(vx) == {b"r1"}
    res = await admin.eval(WRITE, 5, *k, "upsert", "0", "acme", "asset", "r1", row, 1000)
    assert res[:2] == [b"conflict", 1]
    res = await admin.eval(WRITE, 5, *k, "delete", "1", "acme", "asset", "r1", "", 1000)
    assert res[:2] == [b"ok", 2]
    assert await admin.exists(vx) == 0
    assert await admin.hgetall(keys.index_counts("acme", "asset")) == {}
    res = await admin.eval(WRITE, 5, *k, "delete", "", "acme", "asset", "r1", "", 1000)
    assert res[:2] == [b"noop", 2]


async def test_entries_in_the_earlier_form_are_still_read(
    writer: Writer, admin: Client, keys: Keys
) -> None:
    """A row stored with length-prefixed entries (before MessagePack) updates exactly."""
    ixc = keys.index_counts("acme", "asset")
    k = [keys.row("acme", "asset", "r1"), keys.table("acme", "asset"), keys.event_stream(P), ixc]
    vx = keys.value_index("acme", "asset", "kind", '"pump"')
    sn = keys.sort_num("acme", "asset", "n")
    entries = f"v{len(vx)}:{vx}6:v:kindn{len(sn)}:{sn}3:7.0"
    row = '{"kind":"pump","n":7}'
    args = ["upsert", "", "acme", "asset", "r1", row, 1000, entries]
    await admin.eval(WRITE, 5, *k, keys.event_seq(P), *args)
    assert await admin.hget(ixc, "v:kind") == b"1"
    assert await writer.upsert("acme", "asset", "r1", {"kind": "fan", "n": 7}) == 2
    # The value set is gone (and its count); the row is in the column's one index now.
    assert await admin.exists(vx) == 0 and await admin.exists(ixc) == 0
    sl = keys.sort_lex("acme", "asset", "kind")
    assert await admin.zrange(sl, 0, -1) == [lex_member("fan", "r1")]
    assert await admin.zrange(sn, 0, -1, withscores=True) == [(b"r1", 7.0)]


@pytest.mark.parametrize("batched", [False, True])
async def test_value_set_entries_are_removed(
    writer: Writer, admin: Client, keys: Keys, batched: bool
) -> None:
    """Rows stored with value sets (MessagePack entries, the previous layout) update
    and delete exactly, one by one and in batches (with grouped entries)."""
    ixc, sn = keys.index_counts("acme", "asset"), keys.sort_num("acme", "asset", "n")
    k = [keys.table("acme", "asset"), keys.event_stream(P), ixc, keys.event_seq(P)]
    args: list[Any] = ["acme", "asset", 1000]
    for i, kind in enumerate(["pump", "pump", "fan"]):
        vx = keys.value_index("acme", "asset", "kind", f'"{kind}"')
        entries = _msgpack_strings(["v", vx, "v:kind", "n", sn, f"{i}.0"])
        args += ["upsert", "", f"r{i}", json.dumps({"kind": kind, "n": i}), entries]
    rows = [keys.row("acme", "asset", f"r{i}") for i in range(3)]
    await admin.eval(WRITE_MANY, 7, *k, *rows, *args)
    assert await admin.hget(ixc, "v:kind") == b"3"
    new = {"r0": {"kind": "valve", "n": 5}, "r1": {"kind": "pump", "n": 1}}
    if batched:
        assert await writer.upsert_many("acme", "asset", new) == [2, 2]
    else:
        for agg_id, row in new.items():
            assert await writer.upsert("acme", "asset", agg_id, row) == 2
    assert await writer.delete("acme", "asset", "r2") == 2
    for kind in ("pump", "fan"):
        assert await admin.exists(keys.value_index("acme", "asset", "kind", f'"{kind}"')) == 0
    assert await admin.exists(ixc) == 0  # every count back to 0
    assert await admin.zrange(sn, 0, -1, withscores=True) == [(b"r1", 1.0), (b"r0", 5.0)]
    assert set(await admin.zrange(keys.sort_lex("acme", "asset", "kind"), 0, -1)) == {
        lex_member("valve", "r0"),
        lex_member("pump", "r1"),
    }


async def test_unreachable_redis_is_translated(settings: RedisSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"command_retries": 0, "connect_timeout_s": 0.5})
    # Nothing listens there: touches no one's server. (A cluster client takes no
    # unix socket: a free port stands in.)
    url = (
        f"redis://127.0.0.1:{_free_port()}"
        if settings.redis_cluster
        else f"unix://{tmp_path / 'nobody.sock'}"
    )
    async with Writer.from_url(url, entities=[SPEC], settings=s) as w:
        with pytest.raises(RedisUnavailable):
            await w.upsert("acme", "asset", "a1", {"name": "x"})


async def test_more_callers_than_connections(
    redis_url: str, settings: RedisSettings, admin: Client
) -> None:
    """Callers beyond the pool size wait their turn; none fails (the pool is not fair)."""
    s = settings.model_copy(update={"max_connections": 4, "socket_timeout_s": 0.5})
    async with Writer.from_url(redis_url, entities=[SPEC], settings=s) as w:

        async def caller(k: int) -> None:
            for i in range(40):
                await w.upsert("acme", "asset", f"a{k}-{i}", {"n": i})

        await asyncio.gather(*(caller(k) for k in range(20)))
        # A waiter can starve while busy callers retake connections: it must
        # not time out for that (only a command's own socket timeout applies).
        client: Any = w._client
        if settings.redis_cluster:  # waiters queue on a semaphore, which has no timeout
            assert isinstance(client._slots, asyncio.Semaphore)
        else:
            assert client.connection_pool.timeout is None
    assert await admin.xlen(s.keys.event_stream(P)) == 800


async def test_upsert_many_across_script_calls(writer: Writer, admin: Client, keys: Keys) -> None:
    """Batches larger than one script call; ids repeat across call boundaries."""
    rows = [(f"a{i % 90}", {"n": i}) for i in range(250)]
    versions = await writer.upsert_many("acme", "asset", rows)
    assert versions == [i // 90 + 1 for i in range(250)]
    assert await writer.get("acme", "asset", "a5") == (3, {"n": 185})
    entries = await stream_entries(admin, keys.event_stream(P))
    assert [e["n"] for _, e in entries] == [str(i + 1) for i in range(250)]


async def test_write_many_script_contract(admin: Client, keys: Keys) -> None:
    """Call WRITE_MANY exactly as its docstring says: five ARGV per write."""
    ids, ixc = keys.table("acme", "asset"), keys.index_counts("acme", "asset")
    k = [ids, keys.event_stream(P), ixc, keys.event_seq(P)]
    rows = [keys.row("acme", "asset", i) for i in ("r1", "r2", "r1")]
    vx = keys.value_index("acme", "asset", "kind", '"pump"')
    entries = _msgpack_strings(["v", vx, "v:kind"])
    args: list[Any] = ["acme", "asset", 1000]
    args += ["upsert", "", "r1", '{"n":1}', entries, "upsert", "0", "r2", '{"n":2}', ""]
    args += ["upsert", "", "r1", '{"n":3}', ""]
    assert await admin.eval(WRITE_MANY, 7, *k, *rows, *args) == [b"ooo", 1, 1, 2]
    assert await admin.hget(keys.row("acme", "asset", "r1"), "row") == b'{"n":3}'
    # r1's second write dropped its entry: the set and its count are gone again.
    assert await admin.exists(vx) == 0 and await admin.hgetall(ixc) == {}
    args = ["acme", "asset", 1000]
    args += ["delete", "1", "r1", "", "", "delete", "", "r3", "", "", "delete", "1", "r2", "", ""]
    rows = [keys.row("acme", "asset", i) for i in ("r1", "r3", "r2")]
    assert await admin.eval(WRITE_MANY, 7, *k, *rows, *args) == [b"cno", 2, 0, 2]
    assert await admin.zrange(ids, 0, -1) == [b"r1"]
    events = await stream_entries(admin, keys.event_stream(P))
    assert [e["n"] for _, e in events] == ["1", "2", "3", "4"]


async def test_without_declared_entities_any_entity_is_stored_unindexed(
    redis_url: str, settings: RedisSettings, admin: Client
) -> None:
    async with Writer.from_url(redis_url, settings=settings) as w:
        assert await w.upsert("acme", "anything", "x1", {"a": 1, "b": None, "c": "s"}) == 1
        with pytest.raises(InvalidRow) as info:
            await w.upsert("acme", "anything", "x2", {"a": [1]})
        assert info.value.field == "row.a"
        assert await w.get("acme", "anything", "x1") == (1, {"a": 1, "b": None, "c": "s"})
    assert await all_keys(admin, "lq:vx:*") == [] and await all_keys(admin, "lq:s?:*") == []


def _deep(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize(
    ("tenant", "agg_id", "row", "field"),
    [
        ("acme", "a1", {"name": "\ud800"}, "row.name"),
        ("acme", "a1", {"\udfff": "x"}, "row.\\udfff"),
        ("acme", "a1", {"temp": float("nan")}, "row.temp"),
        ("acme", "a1", {"temp": float("-inf")}, "row.temp"),
        ("acme", "a1", {"name": _deep(20_000)}, "row.name"),
        ("acme", "\ud800", {"name": "x"}, "agg_id"),
        ("\ud800", "a1", {"name": "x"}, "tenant"),
    ],
)
async def test_a_row_that_cannot_be_read_back_writes_nothing(
    redis_url: str,
    settings: RedisSettings,
    admin: Client,
    declared: bool,
    tenant: str,
    agg_id: str,
    row: dict[Any, Any],
    field: str,
) -> None:
    """Lone surrogates (ids and column names too), NaN/inf and nesting: refused, declared or not."""
    entities = [SPEC] if declared else []
    async with Writer.from_url(redis_url, entities=entities, settings=settings) as w:
        await w.upsert("acme", "asset", "a0", {"name": "ok"})
        before = await snapshot_keys(admin)
        with pytest.raises(InvalidRow) as info:
            await w.upsert(tenant, "asset", agg_id, row)
        assert info.value.field == field
        str(info.value).encode()  # the error itself can be printed and sent
        with pytest.raises(InvalidRow) as info:
            await w.upsert_many(tenant, "asset", [("a2", {"name": "fine"}), (agg_id, row)])
        assert info.value.field == (field if field == "tenant" else f"rows.1.{field}")
        assert await snapshot_keys(admin) == before


async def _state(admin: Client, prefix: str) -> dict[bytes, Any]:
    """Every key under `prefix:`, named and valued without the prefix; streams
    without their entry ids and write times."""
    out = {}
    for key, value in (await snapshot_keys(admin)).items():
        if not key.startswith(f"{prefix}:".encode()):
            continue
        if isinstance(value, list) and value and isinstance(value[0][1], dict):  # a stream
            value = [{k: v for k, v in f.items() if k != b"at"} for _, f in value]
        elif isinstance(value, dict):  # a row hash: its `ix` names keys under the prefix
            value = {k: v.replace(f"{prefix}:".encode(), b"") for k, v in value.items()}
        out[key[len(prefix) + 1 :]] = value
    return out


def _random_row(rnd: random.Random) -> dict[str, Any]:
    row = {
        "name": rnd.choice([None, "x", "y", "z\x00q", f"n{rnd.randrange(5)}"]),
        "kind": rnd.choice(["pump", "fan", None]),
        "temp": rnd.choice([None, -1.5, 0.0, 2.25, 7.0]),
        "n": rnd.choice([None, 1, 2, 3]),
        "on": rnd.choice([True, False, None]),
    }
    return {k: v for k, v in row.items() if rnd.random() < 0.8}


def _random_writes(rnd: random.Random, n: int) -> list[Write]:
    """Upserts, deletes and expected versions (often stale) over a few ids, so ids
    repeat within one script call and across calls."""
    writes: list[Write] = []
    for _ in range(n):
        agg_id = f"a{rnd.randrange(40)}"
        expected = rnd.choice([None, None, None, 0, 1, 2, 3])
        if rnd.random() < 0.25:
            writes.append((agg_id, None, expected))
        else:
            writes.append((agg_id, _random_row(rnd), expected))
    return writes


@pytest.mark.parametrize("seed", [1, 2])
async def test_write_many_equals_the_writes_one_by_one(
    redis_url: str, settings: RedisSettings, admin: Client, seed: int
) -> None:
    """A batch of mixed upserts, deletes and conflicts, across script calls and
    pipeline windows, leaves every key as the same writes one at a time do."""
    writes = _random_writes(random.Random(seed), 450)
    batched = settings.model_copy(update={"key_prefix": "b", "write_batch": 150})
    single = settings.model_copy(update={"key_prefix": "s"})
    async with (
        Writer.from_url(redis_url, entities=[SPEC], settings=batched) as wb,
        Writer.from_url(redis_url, entities=[SPEC], settings=single) as ws,
    ):
        outcomes = await wb.write_many("acme", "asset", writes)
        want: list[Outcome] = []
        for agg_id, row, expected in writes:
            try:
                if row is None:
                    existed = await ws.get("acme", "asset", agg_id) is not None
                    v = await ws.delete("acme", "asset", agg_id, expected_version=expected)
                    want.append(Outcome("ok" if existed else "noop", v))
                else:
                    v = await ws.upsert("acme", "asset", agg_id, row, expected_version=expected)
                    want.append(Outcome("ok", v))
            except ConflictError as e:
                want.append(Outcome("conflict", e.actual))
        live = {}
        for agg_id in {w[0] for w in writes}:
            got = await wb.get("acme", "asset", agg_id)
            if got is not None:
                live[agg_id] = got[1]
    assert outcomes == want
    assert {o.status for o in outcomes} == {"ok", "conflict", "noop"}
    assert await _state(admin, "b") == await _state(admin, "s")
    # Both run the same Lua: check the indexes against the final rows too.
    assert await _index_state(admin, batched.keys) == _expected_indexes(live, batched.keys)


async def _index_state(admin: Client, keys: Keys) -> dict[str, Any]:
    """Every index key (and live-id set) under `keys.prefix`, by name."""
    out: dict[str, Any] = {}
    for key in await all_keys(admin, f"{keys.prefix}:*"):
        name = key.decode()
        kind = name.split(":")[1]
        if kind == "vx":
            out[name] = await admin.smembers(key)
        elif kind in ("sn", "sl", "fx", "ids"):
            out[name] = set(await admin.zrange(key, 0, -1, withscores=True))
        elif kind == "ixc":
            out[name] = await admin.hgetall(key)
    return out


def _expected_indexes(
    live: dict[str, dict[str, Any]], keys: Keys, spec: EntitySpec = SPEC
) -> dict[str, Any]:
    """The index keys of `live` rows: one sorted set per indexed column."""
    out: dict[str, Any] = {}
    if not live:
        return out
    out[keys.table("acme", "asset")] = {(i.encode(), 0.0) for i in live}
    sortable = spec.sortable if spec.sortable is not None else list(spec.columns)
    filterable = spec.filterable if spec.filterable is not None else list(spec.columns)
    for agg_id, row in live.items():
        for c, kind in spec.columns.items():
            v = row.get(c)
            if c not in sortable:
                if c in filterable:
                    member = lex_encode(canon(v)) + agg_id.encode()
                    out.setdefault(keys.filter_index("acme", "asset", c), set()).add((member, 0.0))
            elif kind == "str":
                member = lex_member(v, agg_id)
                out.setdefault(keys.sort_lex("acme", "asset", c), set()).add((member, 0.0))
            else:
                score = float("inf") if v is None else float(v)
                zkey = keys.sort_num("acme", "asset", c)
                out.setdefault(zkey, set()).add((agg_id.encode(), score))
    return out


@pytest.mark.parametrize("filter_only", [False, True])
async def test_grouped_entries_equal_the_writes_one_by_one(
    redis_url: str, settings: RedisSettings, admin: Client, filter_only: bool
) -> None:
    """Calls of distinct ids (the grouped-entries path: new rows, rewrites that
    move index entries, unchanged rows, some calls with a conflict) leave every
    key as the same writes one at a time do."""
    spec = SPEC.model_copy(update={"sortable": ["name", "temp"]}) if filter_only else SPEC
    rnd = random.Random(11)
    writes: list[Write] = []
    last: dict[str, dict[str, Any]] = {}
    for call in range(6):
        for agg_id in rnd.sample([f"a{i}" for i in range(150)], 100):
            if agg_id in last and rnd.random() < 0.2:
                row = last[agg_id]  # unchanged entries
            else:
                row = last[agg_id] = _random_row(rnd)
            expected = rnd.choice([0, 1, 2]) if call % 3 == 2 and rnd.random() < 0.1 else None
            writes.append((agg_id, row, expected))
    batched = settings.model_copy(update={"key_prefix": "b"})
    single = settings.model_copy(update={"key_prefix": "s"})
    async with (
        Writer.from_url(redis_url, entities=[spec], settings=batched) as wb,
        Writer.from_url(redis_url, entities=[spec], settings=single) as ws,
    ):
        outcomes = []
        for start in range(0, len(writes), 100):
            outcomes += await wb.write_many("acme", "asset", writes[start : start + 100])
        want: list[Outcome] = []
        for agg_id, row, expected in writes:
            assert row is not None
            try:
                v = await ws.upsert("acme", "asset", agg_id, row, expected_version=expected)
                want.append(Outcome("ok", v))
            except ConflictError as e:
                want.append(Outcome("conflict", e.actual))
        live = {}
        for agg_id in {w[0] for w in writes}:
            got = await wb.get("acme", "asset", agg_id)
            if got is not None:
                live[agg_id] = got[1]
    assert outcomes == want
    assert {o.status for o in outcomes} == {"ok", "conflict"}
    assert await _state(admin, "b") == await _state(admin, "s")
    assert await _index_state(admin, batched.keys) == _expected_indexes(live, batched.keys, spec)


async def test_write_many_validates_everything_first(writer: Writer, admin: Client) -> None:
    writes = [("a1", {"name": "x"}, None), ("a2", None, -1), ("a3", {"name": "z"}, None)]
    with pytest.raises(InvalidRow) as info:
        await writer.write_many("acme", "asset", writes)
    assert info.value.field == "writes.1.expected_version"
    with pytest.raises(InvalidRow) as info:
        await writer.upsert_many("acme", "asset", [("a1", {"name": "x"}), ("a2", None)])  # type: ignore[list-item]
    assert info.value.field == "rows.1.row"
    assert await db_size(admin) == 0
    assert await writer.write_many("acme", "asset", []) == []
