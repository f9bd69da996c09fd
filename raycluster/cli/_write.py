"""`raycluster write`: rows from JSON lines into the tier's Redis.

Each non-blank line is one JSON object:

    {"id": "a1", "row": {"name": "p1", "kind": "pump", "temp": 70}}   upsert (the whole row)
    {"id": "a2", "delete": true}                                      delete

Runs of upserts go through `Writer.upsert_many` in batches; a delete flushes
the batch before it, so the order of the lines is the order of the writes.
A bad line stops the run with one error naming it: every line before it has
been written, nothing from it on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raycluster.errors import InvalidRow

from ._common import EXIT_USAGE, CommandError, Progress

if TYPE_CHECKING:
    from raycluster.config import TierSettings
    from raycluster.redis import Writer

__all__ = ("BATCH_ROWS", "WriteStats", "decode_line", "parse_line", "write_lines")

BATCH_ROWS = 500  # upserts per `upsert_many` call (it pipelines them in turn)
_ALLOWED_KEYS = frozenset({"id", "row", "delete"})


def parse_line(text: str) -> tuple[str, dict[str, Any] | None]:
    """`(id, row)` for an upsert line, `(id, None)` for a delete line; `ValueError` otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError('expected {"id": ..., "row": {...}} or {"id": ..., "delete": true}')
    extra = sorted(set(obj) - _ALLOWED_KEYS)
    if extra:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, extra))}: use id, row, delete")
    agg_id = obj.get("id")
    if not isinstance(agg_id, str) or not agg_id:
        raise ValueError(f'"id" must be a non-empty string (got {agg_id!r})')
    if obj.get("delete") is True:
        if "row" in obj:
            raise ValueError('a line has either "row" or "delete": true, not both')
        return agg_id, None
    if "delete" in obj:
        raise ValueError(f'"delete" must be true (got {obj["delete"]!r})')
    row = obj.get("row")
    if not isinstance(row, dict):
        raise ValueError(f'"row" must be an object (got {row!r})')
    return agg_id, row


def decode_line(raw: bytes) -> str:
    """`raw` as UTF-8 text; `ValueError` saying where it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)") from None


@dataclass
class WriteStats:
    """What a `write` run did."""

    lines: int = 0  # non-blank lines written
    upserts: int = 0
    deletes: int = 0
    last_line: int = 0  # number of the last line written (blank lines count)

    def written_note(self, bad_line: int) -> str:
        """Says plainly what a failure at `bad_line` left written."""
        if self.lines == 0:
            return "nothing was written"
        return (
            f"nothing from line {bad_line} on was written; "
            f"the {self.lines} row line(s) before it were"
        )


def check_target(tenant: str, entity: str, settings: TierSettings) -> None:
    """A usage `CommandError` when TENANT or ENTITY cannot be written at all."""
    for field, value in (("TENANT", tenant), ("ENTITY", entity)):
        if not value or ":" in value:
            raise CommandError(f"{field} {value!r}: must be non-empty, without ':'", EXIT_USAGE)
    declared = [e.name for e in settings.entities]
    if declared and entity not in declared:
        raise CommandError(
            f"ENTITY {entity!r}: not declared in the config (declared: {', '.join(declared)})",
            EXIT_USAGE,
        )


async def write_lines(
    writer: Writer,
    tenant: str,
    entity: str,
    lines: Iterable[bytes],
    progress: Progress,
    stats: WriteStats,
) -> None:
    """Write every line (bytes, each decoded as UTF-8) in order, counting into `stats` as
    batches land.

    A bad line (not UTF-8, not JSON, not a row of the entity) raises
    `CommandError` naming it (exit 1), every line before it written; a Redis
    failure propagates with `stats` telling how far the run got.
    """
    batch: list[tuple[str, dict[str, Any]]] = []
    batch_lines: list[int] = []

    async def flush() -> None:
        if not batch:
            return
        try:
            await writer.upsert_many(tenant, entity, batch)
        except InvalidRow as e:
            # `rows.{i}.…`: nothing of the batch was written; write the rows before i.
            head, _, rest = e.field.partition(".")
            index_text, _, field = rest.partition(".")
            if head != "rows" or not index_text.isdigit():
                raise
            i = int(index_text)
            if i:
                await writer.upsert_many(tenant, entity, batch[:i])
                _count(batch_lines[:i], upserts=i)
            bad = batch_lines[i]
            raise CommandError(
                f"line {bad}: {field or 'row'}: {e.reason} (got {e.value!r}); "
                f"{stats.written_note(bad)}"
            ) from e
        _count(batch_lines, upserts=len(batch))
        batch.clear()
        batch_lines.clear()

    def _count(numbers: list[int], *, upserts: int = 0, deletes: int = 0) -> None:
        stats.lines += len(numbers)
        stats.upserts += upserts
        stats.deletes += deletes
        stats.last_line = numbers[-1]
        rate = stats.lines / max(progress.elapsed_s(), 1e-9)
        progress.update(f"{stats.lines:,} lines written ({rate:,.0f}/s), at line {numbers[-1]:,}")

    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            agg_id, row = parse_line(decode_line(raw))
        except ValueError as e:
            await flush()
            raise CommandError(f"line {lineno}: {e}; {stats.written_note(lineno)}") from e
        if row is None:
            await flush()
            await writer.delete(tenant, entity, agg_id)
            _count([lineno], deletes=1)
            continue
        batch.append((agg_id, row))
        batch_lines.append(lineno)
        if len(batch) >= BATCH_ROWS:
            await flush()
    await flush()


def summary(stats: WriteStats, tenant: str, entity: str, elapsed_s: float) -> str:
    """The line printed when a run ends well."""
    return (
        f"wrote {stats.lines:,} line(s) to {tenant}/{entity}: {stats.upserts:,} upsert(s), "
        f"{stats.deletes:,} delete(s) in {elapsed_s:.2f}s"
    )
