"""`raycluster write`: JSON lines into Redis, batched; a bad line is one clear error."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cli_helpers import ENTITY, Tier1, run_cli


def _lines(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


async def _stored(t: Tier1, agg_id: str) -> dict[str, object] | None:
    got = await t.writer.get(t.tenant, ENTITY, agg_id)
    return None if got is None else got[1]


async def test_write_a_file_upserts_and_deletes_in_order(tier1: Tier1, tmp_path: Path) -> None:
    await tier1.upsert("old", {"name": "gone soon", "temp": 1})
    path = tmp_path / "rows.jsonl"
    path.write_text(
        _lines(
            {"id": "a1", "row": {"name": "p1", "kind": "pump", "temp": 70}},
            {"id": "a2", "row": {"name": "f1", "kind": "fan", "site": None, "temp": 20}},
        )
        + "\n"  # a blank line is skipped
        + _lines(
            {"id": "old", "delete": True},
            {"id": "a1", "row": {"name": "p1", "kind": "pump", "temp": 71}},
        )
    )
    res = await run_cli(
        "write", "--config", str(tier1.config), tier1.tenant, ENTITY, str(path), cwd=tier1.cwd
    )
    assert res.code == 0, res.err
    assert res.out.strip().startswith(
        f"wrote 4 line(s) to {tier1.tenant}/{ENTITY}: 3 upsert(s), 1 delete(s)"
    )
    assert await _stored(tier1, "a1") == {"name": "p1", "kind": "pump", "temp": 71}
    assert await _stored(tier1, "a2") == {"name": "f1", "kind": "fan", "site": None, "temp": 20}
    assert await _stored(tier1, "old") is None
    assert await tier1.writer.version(tier1.tenant, ENTITY, "a1") == 2  # written twice, in order


async def test_write_many_lines_from_stdin_in_batches(tier1: Tier1) -> None:
    rnd = random.Random(3)
    rows = {
        f"r{i:05}": {"name": f"n{rnd.randrange(10**6)}", "kind": "fan", "temp": rnd.randrange(100)}
        for i in range(1234)  # more than two batches of BATCH_ROWS
    }
    text = _lines(*({"id": k, "row": v} for k, v in rows.items()))
    res = await run_cli(
        "write", "--redis-url", tier1.url, "--config", str(tier1.config), tier1.tenant, ENTITY,
        "-", cwd=tier1.cwd, stdin=text,
    )  # fmt: skip
    assert res.code == 0, res.err
    assert "wrote 1,234 line(s)" in res.out
    for agg_id, row in rows.items():
        assert await _stored(tier1, agg_id) == row


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ('{"id": "b3" "row": {}}', "line 3: not JSON"),
        ('{"id": "b3", "row": {"name": "x", "temp": "hot"}}', "line 3: row.temp: expected int"),
        ('{"id": "b3", "row": {"colour": "red"}}', "line 3: row.colour: unknown column"),
        ('{"id": "b3", "delete": false}', 'line 3: "delete" must be true'),
        ('{"id": "", "row": {}}', 'line 3: "id" must be a non-empty string'),
        ('{"id": "b3", "rows": {}}', "line 3: unknown key(s) 'rows'"),
        ("[1, 2]", "line 3: expected"),
    ],
)
async def test_a_bad_line_is_one_error_and_nothing_after_it_is_written(
    tier1: Tier1, bad: str, says: str
) -> None:
    text = (
        _lines({"id": "b1", "row": {"name": "one", "temp": 1}}, {"id": "b2", "delete": True})
        + bad
        + "\n"
        + _lines({"id": "b4", "row": {"name": "four", "temp": 4}})
    )
    res = await run_cli(
        "write", "--config", str(tier1.config), tier1.tenant, ENTITY, cwd=tier1.cwd, stdin=text
    )
    assert res.code == 1
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith(f"raycluster: error: {says}"), line
    assert "the 2 row line(s) before it were" in line
    assert "Traceback" not in res.err
    assert await _stored(tier1, "b1") == {"name": "one", "temp": 1}
    assert await _stored(tier1, "b3") is None
    assert await _stored(tier1, "b4") is None


async def test_a_bad_first_line_writes_nothing(tier1: Tier1) -> None:
    text = _lines({"id": "c1", "row": {"temp": "x"}}, {"id": "c2", "row": {"temp": 2}})
    res = await run_cli(
        "write", "--config", str(tier1.config), tier1.tenant, ENTITY, cwd=tier1.cwd, stdin=text
    )
    assert res.code == 1
    assert res.err_lines == [
        "raycluster: error: line 1: row.temp: expected int (got 'x'); nothing was written"
    ]
    assert await _stored(tier1, "c2") is None
