"""Wire models of the live-query core (pydantic; JSON round-trip stable).

These are the contract other programs speak: a `LiveQuery` in, `LiveDelta`
frames out. Bad input raises `InvalidQuery`/`InvalidRow` (both `ValueError`s,
so inside pydantic validation they surface as a `ValidationError` whose
location names the field).
"""

from __future__ import annotations

import enum
import json
import math
import typing
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from raycluster.errors import InvalidQuery, InvalidRow

__all__ = (
    "COND_OPS",
    "Change",
    "ColumnType",
    "Cond",
    "Cursor",
    "DeltaOp",
    "EntitySpec",
    "LiveDelta",
    "LiveQuery",
    "Row",
    "Scalar",
    "Snapshot",
    "SortKey",
    "and_",
    "eq",
    "gt",
    "gte",
    "ilike",
    "in_",
    "is_not_null",
    "is_null",
    "like",
    "lt",
    "lte",
    "ne",
    "not_in",
    "or_",
    "printable",
    "trusted",
    "unstorable",
)

Scalar = str | int | float | bool | None
_M = TypeVar("_M", bound=BaseModel)
ColumnType = Literal["str", "int", "float", "bool"]
CondOp = Literal[
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in",
    "like", "ilike", "is_null", "is_not_null", "or", "and",
]  # fmt: skip
COND_OPS: tuple[str, ...] = typing.get_args(CondOp)
_COMPARE_OPS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "like", "ilike"})
_LIST_OPS = frozenset({"in", "not_in"})
_NULL_OPS = frozenset({"is_null", "is_not_null"})
_GROUP_OPS = frozenset({"or", "and"})

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def unstorable(v: Any) -> str | None:
    """Why `v` could not be stored as JSON and read back unchanged, or None if it can.

    A string must be valid Unicode (no lone surrogate: UTF-8 cannot encode
    it), a float finite (JSON has no NaN or infinity).
    """
    if isinstance(v, str):
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                return "not valid Unicode (lone surrogate)"
    elif isinstance(v, float) and not math.isfinite(v):
        return "not a finite number"
    return None


def printable(name: Any) -> str:
    """`name` as text that can be encoded (a lone surrogate becomes `\\ud800`): for field paths."""
    return str(name).encode("utf-8", "backslashreplace").decode()


def _storable(v: Any) -> Any:
    why = unstorable(v)
    if why is not None:
        raise PydanticCustomError("unstorable", why)
    return v


# Every string and number a query carries: pydantic names the field on failure.
_Text = Annotated[str, AfterValidator(_storable)]
_Value = Annotated[Scalar, AfterValidator(_storable)]


class SortKey(BaseModel):
    """One sort column; `id` ascending is always appended as the tie-breaker."""

    model_config = _FROZEN
    column: _Text = Field(min_length=1, description="Column to sort by.")
    desc: bool = Field(False, description="Descending (nulls first) instead of ascending.")


class Cursor(BaseModel):
    """A keyset position: one value per sort key, then the row id."""

    model_config = _FROZEN
    values: list[_Value] = Field(description="Sort-key values, then the id (a string).")


class Cond(BaseModel):
    """One filter condition, or an `or`/`and` group of conditions.

    Build with the constructors (`eq`, `in_`, `or_`, …). SQL semantics: a null
    column value satisfies only `is_null`.
    """

    model_config = _FROZEN
    op: CondOp = Field(description="Operator.")
    column: _Text | None = Field(None, description="Column (absent on or/and).")
    value: _Value = Field(None, description="Operand of a comparison or like.")
    values: list[_Value] | None = Field(None, description="Operands of in/not_in.")
    args: list[Cond] | None = Field(None, description="Members of an or/and group.")

    @model_validator(mode="after")
    def _check_arity(self) -> Cond:
        _check_cond(self, "where")
        return self


def _check_cond(c: Cond, at: str) -> None:
    """Raise `InvalidQuery` unless `c` carries exactly what its operator needs."""
    if c.op in _GROUP_OPS:
        if not c.args:
            raise InvalidQuery(f"{at}.args", c.args, f"`{c.op}` needs at least one condition")
        if c.column is not None:
            raise InvalidQuery(f"{at}.column", c.column, f"`{c.op}` takes no column")
        return
    if not c.column:
        raise InvalidQuery(f"{at}.column", c.column, f"`{c.op}` needs a column")
    if c.args is not None:
        raise InvalidQuery(f"{at}.args", c.args, f"`{c.op}` takes no nested conditions")
    if c.op in _LIST_OPS:
        if not c.values:
            raise InvalidQuery(f"{at}.values", c.values, f"`{c.op}` needs at least one value")
        if any(v is None for v in c.values):
            raise InvalidQuery(f"{at}.values", c.values, "null never matches; use is_null")
    elif c.op in _COMPARE_OPS:
        if c.value is None:
            raise InvalidQuery(f"{at}.value", c.value, f"`{c.op}` with null; use is_null")
        if c.op in ("like", "ilike") and not isinstance(c.value, str):
            raise InvalidQuery(f"{at}.value", c.value, f"`{c.op}` needs a string pattern")
    # Inside validation the fields' own validators have checked these already;
    # the constructors (`eq`, …) come here first.
    for field, v in [("column", c.column), *_operands(c)]:
        if (why := unstorable(v)) is not None:
            raise InvalidQuery(f"{at}.{field}", v, why)


def _operands(c: Cond) -> list[tuple[str, Any]]:
    """(field path within `c`, value) of each operand: `value`, or `values.{i}`."""
    if c.values is None:
        return [("value", c.value)]
    return [(f"values.{i}", v) for i, v in enumerate(c.values)]


def _cond(op: CondOp, column: str | None = None, **kw: Any) -> Cond:
    # Constructors raise InvalidQuery itself, not pydantic's wrapper.
    c = Cond.model_construct(op=op, column=column, **kw)
    _check_cond(c, "where")
    return Cond.model_validate(c.model_dump(exclude_none=True))


def eq(column: str, value: Scalar) -> Cond:
    """`column = value`."""
    return _cond("eq", column, value=value)


def ne(column: str, value: Scalar) -> Cond:
    """`column <> value` (false on null)."""
    return _cond("ne", column, value=value)


def gt(column: str, value: Scalar) -> Cond:
    """`column > value`."""
    return _cond("gt", column, value=value)


def gte(column: str, value: Scalar) -> Cond:
    """`column >= value`."""
    return _cond("gte", column, value=value)


def lt(column: str, value: Scalar) -> Cond:
    """`column < value`."""
    return _cond("lt", column, value=value)


def lte(column: str, value: Scalar) -> Cond:
    """`column <= value`."""
    return _cond("lte", column, value=value)


def in_(column: str, values: list[Scalar] | tuple[Scalar, ...] | set[Scalar]) -> Cond:
    """`column IN (values…)`; an empty list is an error."""
    vals = sorted(values, key=repr) if isinstance(values, set) else list(values)
    return _cond("in", column, values=vals)


def not_in(column: str, values: list[Scalar] | tuple[Scalar, ...] | set[Scalar]) -> Cond:
    """`column NOT IN (values…)` (false on null)."""
    vals = sorted(values, key=repr) if isinstance(values, set) else list(values)
    return _cond("not_in", column, values=vals)


def like(column: str, pattern: str) -> Cond:
    """SQL LIKE, case-sensitive: `%` any run, `_` one character, anchored."""
    return _cond("like", column, value=pattern)


def ilike(column: str, pattern: str) -> Cond:
    """SQL ILIKE: LIKE ignoring case."""
    return _cond("ilike", column, value=pattern)


def is_null(column: str) -> Cond:
    """`column IS NULL` (a missing column is null)."""
    return _cond("is_null", column)


def is_not_null(column: str) -> Cond:
    """`column IS NOT NULL`."""
    return _cond("is_not_null", column)


def _group(op: CondOp, conds: tuple[Cond | list[Cond], ...]) -> Cond:
    args = [and_(*c) if isinstance(c, list) else c for c in conds]
    return _cond(op, None, args=args)


def or_(*conds: Cond | list[Cond]) -> Cond:
    """Any of `conds`; a list inside stands for the AND of its members."""
    return _group("or", conds)


def and_(*conds: Cond) -> Cond:
    """All of `conds` (the top-level `where` list is already an AND)."""
    return _group("and", conds)


class LiveQuery(BaseModel):
    """A live query over one entity of one tenant (the tenant is not part of it)."""

    model_config = _FROZEN
    entity: _Text = Field(min_length=1, description="Entity name.")
    where: list[Cond] = Field(default_factory=list, description="AND of conditions.")
    sort: list[SortKey] = Field(default_factory=list, description="Sort keys; id ASC appended.")
    limit: int = Field(description="Window size N (> 0).")
    cursor: Cursor | None = Field(None, description="Start strictly after this position.")
    mode: Literal["maintained", "streamed"] = Field("maintained", description="Delivery mode.")

    @model_validator(mode="after")
    def _check(self) -> LiveQuery:
        if self.limit <= 0:
            raise InvalidQuery("limit", self.limit, "must be greater than 0")
        if self.cursor is not None:
            want = len(self.sort) + 1
            if len(self.cursor.values) != want:
                raise InvalidQuery(
                    "cursor.values",
                    self.cursor.values,
                    f"needs {want} values (one per sort key, then the id)",
                )
            if not isinstance(self.cursor.values[-1], str):
                raise InvalidQuery("cursor.values", self.cursor.values, "last value is the id")
        return self

    def shape(self) -> str:
        """Canonical text of the query: equal shapes share one view."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def moved(self, cursor: Cursor | None, limit: int) -> LiveQuery:
        """The same query at another keyset position and size (validated: a bad limit raises)."""
        fields = self.model_dump()
        fields.update(cursor=cursor.model_dump() if cursor is not None else None, limit=limit)
        return LiveQuery.model_validate(fields)


class DeltaOp(enum.StrEnum):
    """What a frame tells the client to do with its list."""

    RESET = "reset"
    ENTER = "enter"
    LEAVE = "leave"
    MOVE = "move"
    UPDATE = "update"
    MATCH = "match"
    UNMATCH = "unmatch"


class LiveDelta(BaseModel):
    """One change to a client's list (each op: docs/architecture.md#what-a-client-gets)."""

    model_config = ConfigDict(frozen=True)
    op: DeltaOp
    agg_id: str | None = None
    version: int = 0
    row: dict[str, Any] | None = Field(None, description="Column values; None on leave/reset.")
    old_index: int | None = None
    new_index: int | None = None
    cursor: Cursor | None = None
    stream_id: str | None = Field(None, description="Position of the change in its stream.")
    at: int | None = Field(None, description="Write time, epoch ms.")
    count: int | None = Field(None, description="On reset: how many enter frames follow.")


class Row(BaseModel):
    """A row as the store hands it out: id, version, its cursor, its values."""

    model_config = ConfigDict(frozen=True)
    agg_id: str
    version: int
    cursor: Cursor
    vals: dict[str, Any]


class Change(BaseModel):
    """One write, as the feed delivers it (event fields: docs/redis.md#events)."""

    model_config = ConfigDict(frozen=True)
    tenant: str
    entity: str
    agg_id: str
    version: int
    op: Literal["upsert", "delete"]
    row: dict[str, Any] | None = None
    stream_id: str = Field("0-0", description="Position in its source stream ('ms-seq').")
    at: int = Field(0, description="Write time, epoch ms.")
    source: str = Field("", description="Which stream carried it (a partition stream).")


class Snapshot(BaseModel):
    """Rows in total order, and the stream position they reflect."""

    model_config = ConfigDict(frozen=True)
    rows: list[Row]
    watermark: str = Field("0-0", description="Last position of `source` the rows reflect.")
    source: str = Field("", description="The stream that carries this entity's changes.")


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}


def _fits(kind: str, v: Any) -> bool:
    if isinstance(v, bool) and kind != "bool":
        return False
    return isinstance(v, _PY_TYPES[kind])


class EntitySpec(BaseModel):
    """A declared entity: typed columns, which may be filtered and sorted on.

    `filterable`/`sortable` default to every column. Rows and queries are
    checked against the spec; a failure names the field and the bad value.
    """

    model_config = _FROZEN
    name: str = Field(min_length=1)
    columns: dict[_Text, ColumnType] = Field(description="Column name → type.")
    filterable: list[str] | None = Field(None, description="Default: every column.")
    sortable: list[str] | None = Field(None, description="Default: every column.")
    max_window: int = Field(1000, gt=0, description="Largest allowed `limit`.")

    @model_validator(mode="after")
    def _check(self) -> EntitySpec:
        for attr in ("filterable", "sortable"):
            for col in getattr(self, attr) or ():
                if col not in self.columns:
                    raise InvalidQuery(attr, col, "not a declared column")
        return self

    def check_row(self, row: dict[str, Any]) -> None:
        """Raise `InvalidRow` unless every value has its column's type and can be stored."""
        if not isinstance(row, dict):
            raise InvalidRow("row", row, "must be an object")
        for col, v in row.items():
            kind = self.columns.get(col) if isinstance(col, str) else None
            if kind is None:
                raise InvalidRow(f"row.{printable(col)}", v, f"unknown column of {self.name!r}")
            if v is not None and not _fits(kind, v):
                raise InvalidRow(f"row.{col}", v, f"expected {kind}")
            if (why := unstorable(v)) is not None:
                raise InvalidRow(f"row.{col}", v, why)

    def check_query(self, q: LiveQuery) -> None:
        """Raise `InvalidQuery` unless `q` only uses what this entity allows."""
        if q.entity != self.name:
            raise InvalidQuery("entity", q.entity, f"expected {self.name!r}")
        if q.limit > self.max_window:
            raise InvalidQuery("limit", q.limit, f"above the maximum window {self.max_window}")
        filterable = set(self.filterable if self.filterable is not None else self.columns)
        for i, c in enumerate(q.where):
            self._check_cond(c, f"where.{i}", filterable)
        sortable = set(self.sortable if self.sortable is not None else self.columns)
        for i, k in enumerate(q.sort):
            if k.column not in sortable:
                raise InvalidQuery(f"sort.{i}.column", k.column, "not a sortable column")
        if q.cursor is not None:
            for i, (k, v) in enumerate(zip(q.sort, q.cursor.values, strict=False)):
                if v is not None and not _fits(self.columns[k.column], v):
                    want = self.columns[k.column]
                    raise InvalidQuery(f"cursor.values.{i}", v, f"expected {want}")

    def _check_cond(self, c: Cond, at: str, filterable: set[str]) -> None:
        if c.args is not None:
            for i, sub in enumerate(c.args):
                self._check_cond(sub, f"{at}.args.{i}", filterable)
            return
        col = c.column or ""
        if col not in filterable:
            why = "unknown column" if col not in self.columns else "not a filterable column"
            raise InvalidQuery(f"{at}.column", col, why)
        kind = self.columns[col]
        if c.op in ("like", "ilike") and kind != "str":
            raise InvalidQuery(f"{at}.op", c.op, f"needs a str column, {col!r} is {kind}")
        for field, v in _operands(c):
            if v is not None and not _fits(kind, v):
                raise InvalidQuery(f"{at}.{field}", v, f"expected {kind} for {col!r}")


def check_against(specs: dict[str, EntitySpec], query: LiveQuery) -> None:
    """Raise `InvalidQuery` if `query` does not fit the declared entities (none: any)."""
    if not specs:
        return
    spec = specs.get(query.entity)
    if spec is None:
        raise InvalidQuery("entity", query.entity, "unknown entity")
    spec.check_query(query)


_new = object.__new__
_set = object.__setattr__


def trusted(cls: type[_M], fields: dict[str, Any]) -> _M:
    """Build a model from fields the caller has already validated (hot paths).

    `fields` must name every field of `cls` (pydantic's `model_construct` does
    the same without validation, but fills defaults and costs ~3x more).
    """
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    _set(obj, "__pydantic_fields_set__", set(fields))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_DELTA_FIELDS = frozenset(LiveDelta.model_fields)
_OPS = {op.value: op for op in DeltaOp}


def delta_from_wire(d: dict[str, Any]) -> LiveDelta:
    """A `LiveDelta` from its wire dict (what shards send), about 10x cheaper than validating.

    Shards write every field (see `Frame.wire`), so a dict with exactly those
    keys and a known op is built as is; anything else (another producer, a
    hand-written frame) goes through full validation and raises on bad input.
    """
    op = _OPS.get(d.get("op"))  # type: ignore[arg-type]
    if op is None or d.keys() != _DELTA_FIELDS:
        return LiveDelta.model_validate(d)
    fields = dict(d)
    fields["op"] = op
    c = fields["cursor"]
    if c is not None:
        if not isinstance(c, dict) or not isinstance(c.get("values"), list):
            return LiveDelta.model_validate(d)
        fields["cursor"] = trusted(Cursor, {"values": c["values"]})
    return trusted(LiveDelta, fields)
