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
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from raycluster.errors import InvalidQuery, InvalidRow

__all__ = (
    "COND_OPS",
    "MAX_DEPTH",
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
    "check_depth",
    "check_expected",
    "check_free_row",
    "check_name",
    "check_read",
    "eq",
    "gt",
    "gte",
    "ilike",
    "in_",
    "invalid_query",
    "is_not_null",
    "is_null",
    "like",
    "lt",
    "lte",
    "ne",
    "not_in",
    "not_scalar",
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


_INT_MIN, _INT_MAX = -(2**63), 2**63
MAX_DEPTH = 64
"""How deep `or`/`and` groups may nest in any query (a group in `where` is depth 1).

Every store and engine accepts this depth; the tier's `QueryLimits.max_depth`
may only lower it. (A registration is stored as JSON, and the JSON parser
that reads it back refuses nesting much deeper.)"""


def unstorable(v: Any) -> str | None:
    """Why `v` could not be stored as JSON and read back unchanged, or None if it can.

    A string must be valid Unicode (no lone surrogate: UTF-8 cannot encode
    it), a float finite (JSON has no NaN or infinity), an int within 64 bits
    (what every store orders exactly, and what other languages read back).
    """
    if isinstance(v, str):
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                return "not valid Unicode (lone surrogate)"
    elif isinstance(v, float):
        if not math.isfinite(v):
            return "not a finite number"
    elif isinstance(v, int) and not _INT_MIN <= v < _INT_MAX:
        return "outside the 64-bit integer range"
    return None


def not_scalar(v: Any) -> str | None:
    """Why `v` is not a value a row or a query may hold, or None if it is one.

    A value is null, a boolean, a number (a 64-bit int or a finite float) or
    a string of valid Unicode.
    """
    if v is not None and not isinstance(v, str | int | float):
        return "must be a string, number, boolean or null"
    return unstorable(v)


def check_name(field: str, value: Any, error: type[InvalidQuery] | type[InvalidRow]) -> None:
    """Raise `error` naming `field` unless `value` is a non-empty string of valid Unicode.

    For tenants, entities and row ids: None is not the name "None", 5 is not "5".
    """
    if not isinstance(value, str) or not value:
        raise error(field, value, "must be a non-empty string")
    if (why := unstorable(value)) is not None:
        raise error(field, value, why)


def check_free_row(row: Any, field: str = "row") -> dict[str, Any]:
    """A row of an undeclared entity as a dict, or `InvalidRow` naming the bad field.

    It must be an object whose keys are strings of valid Unicode and whose
    values are scalars (`not_scalar`): no nesting, nothing that cannot be
    stored and read back.
    """
    if not isinstance(row, Mapping):
        raise InvalidRow(field, row, "must be an object (a delete is `delete`)")
    vals = dict(row)
    for col, v in vals.items():
        if not isinstance(col, str):
            why: str | None = "column names are strings"
        elif (why := unstorable(col)) is not None:
            why = f"column name {why}"
        else:
            why = not_scalar(v)
        if why is not None:
            raise InvalidRow(f"{field}.{printable(col)}", v, why)
    return vals


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
    desc: bool = Field(
        False, strict=True, description="Descending (nulls first) instead of ascending."
    )


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
    """Raise `InvalidQuery` unless `c` carries exactly what its operator needs.

    A field the operator does not take must be absent (or null): `eq` takes
    one `value`, `in`/`not_in` a list of `values`, `is_null`/`is_not_null`
    neither, `or`/`and` only `args`.
    """
    op = c.op
    if op in _GROUP_OPS:
        if c.column is not None:
            raise InvalidQuery(f"{at}.column", c.column, f"`{op}` takes no column")
        _takes_no(c, at, "value", "values")
        if not isinstance(c.args, list) or not c.args:
            raise InvalidQuery(f"{at}.args", c.args, f"`{op}` needs at least one condition")
        for i, a in enumerate(c.args):
            if not isinstance(a, Cond):
                raise InvalidQuery(f"{at}.args.{i}", a, "must be a condition")
        return
    if not isinstance(c.column, str) or not c.column:
        raise InvalidQuery(f"{at}.column", c.column, f"`{op}` needs a column (a non-empty string)")
    if c.args is not None:
        raise InvalidQuery(f"{at}.args", c.args, f"`{op}` takes no nested conditions")
    if op in _LIST_OPS:
        _takes_no(c, at, "value")
        if not isinstance(c.values, list) or not c.values:
            why = f"`{op}` needs a list of at least one value"
            raise InvalidQuery(f"{at}.values", c.values, why)
        if any(v is None for v in c.values):
            raise InvalidQuery(f"{at}.values", c.values, "null never matches; use is_null")
    elif op in _COMPARE_OPS:
        _takes_no(c, at, "values")
        if c.value is None:
            raise InvalidQuery(f"{at}.value", c.value, f"`{op}` with null; use is_null")
        if op in ("like", "ilike") and not isinstance(c.value, str):
            raise InvalidQuery(f"{at}.value", c.value, f"`{op}` needs a string pattern")
    else:
        _takes_no(c, at, "value", "values")
    # Inside validation the fields' own validators have checked these already;
    # the constructors (`eq`, …) come here first.
    bad = unstorable(c.column)
    if bad is not None:
        raise InvalidQuery(f"{at}.column", c.column, bad)
    for field, v in _operands(c):
        bad = not_scalar(v)
        if bad is not None:
            raise InvalidQuery(f"{at}.{field}", v, bad)


def _takes_no(c: Cond, at: str, *fields: str) -> None:
    for field in fields:
        v = getattr(c, field)
        if v is not None:
            raise InvalidQuery(f"{at}.{field}", v, f"`{c.op}` takes no `{field}`")


def _operands(c: Cond) -> list[tuple[str, Any]]:
    """(field path within `c`, value) of each operand: `value`, or `values.{i}`."""
    if c.values is None:
        return [("value", c.value)]
    return [(f"values.{i}", v) for i, v in enumerate(c.values)]


def _depth(c: Cond) -> int:
    """How deep groups nest in `c` (a condition 0, a group of conditions 1); iterative."""
    most = 0
    stack = [(c, 0)]
    while stack:
        x, d = stack.pop()
        if x.args is not None:
            d += 1
            most = max(most, d)
            stack += [(a, d) for a in x.args if isinstance(a, Cond)]
    return most


def check_depth(where: Iterable[Cond], at: str = "where") -> None:
    """Raise `InvalidQuery` naming the first group nested deeper than `MAX_DEPTH`.

    Iterative, so a query built without validation, nested any depth, is
    refused rather than overflowing a stack (or Python's parser, which the
    filter compiler uses).
    """
    stack = [(c, f"{at}.{i}", 1) for i, c in reversed(list(enumerate(where)))]
    while stack:
        c, path, d = stack.pop()
        if c.args is not None:
            if d > MAX_DEPTH:
                raise InvalidQuery(path, d, f"groups nest at most {MAX_DEPTH} deep")
            stack += [(a, f"{path}.args.{i}", d + 1) for i, a in reversed(list(enumerate(c.args)))]


def _cond(op: CondOp, column: str | None = None, **kw: Any) -> Cond:
    # Constructors raise InvalidQuery itself, not pydantic's wrapper.
    c = Cond.model_construct(op=op, column=column, **kw)
    _check_cond(c, "where")
    return Cond.model_validate(c.model_dump(exclude_none=True))


def eq(column: str, value: Scalar) -> Cond:
    """`column = value` (false when the column holds another type, or null)."""
    return _cond("eq", column, value=value)


def ne(column: str, value: Scalar) -> Cond:
    """`column <> value`: true for a value of another type, false on null."""
    return _cond("ne", column, value=value)


def gt(column: str, value: Scalar) -> Cond:
    """`column > value` (false when the column holds another type, or null)."""
    return _cond("gt", column, value=value)


def gte(column: str, value: Scalar) -> Cond:
    """`column >= value` (false when the column holds another type, or null)."""
    return _cond("gte", column, value=value)


def lt(column: str, value: Scalar) -> Cond:
    """`column < value` (false when the column holds another type, or null)."""
    return _cond("lt", column, value=value)


def lte(column: str, value: Scalar) -> Cond:
    """`column <= value` (false when the column holds another type, or null)."""
    return _cond("lte", column, value=value)


def _value_list(op: str, values: Any) -> list[Any]:
    if isinstance(values, set | frozenset):
        return sorted(values, key=repr)
    if isinstance(values, list | tuple):
        return list(values)
    # A string is not a list of its characters.
    raise InvalidQuery("where.values", values, f"`{op}` needs a list of values")


def in_(column: str, values: list[Scalar] | tuple[Scalar, ...] | set[Scalar]) -> Cond:
    """`column IN (values…)`; an empty list is an error."""
    return _cond("in", column, values=_value_list("in", values))


def not_in(column: str, values: list[Scalar] | tuple[Scalar, ...] | set[Scalar]) -> Cond:
    """`column NOT IN (values…)`: true for a value of another type, false on null."""
    return _cond("not_in", column, values=_value_list("not_in", values))


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
    args: list[Any] = []
    for i, c in enumerate(conds):
        if isinstance(c, list):
            c = and_(*c)
        if not isinstance(c, Cond):
            raise InvalidQuery(f"where.args.{i}", c, "must be a condition (or a list of them)")
        args.append(c)
    depth = 1 + max((_depth(a) for a in args), default=0)
    if depth > MAX_DEPTH:
        raise InvalidQuery("where", depth, f"groups nest at most {MAX_DEPTH} deep")
    return _cond(op, None, args=args)


def or_(*conds: Cond | list[Cond]) -> Cond:
    """Any of `conds`; a list inside stands for the AND of its members.

    A member that cannot be decided (it compares a value of another type) is
    false on its own: the order of the members never changes the answer.
    """
    return _group("or", conds)


def and_(*conds: Cond) -> Cond:
    """All of `conds` (the top-level `where` list is already an AND)."""
    return _group("and", conds)


class LiveQuery(BaseModel):
    """A live query over one entity of one tenant (the tenant is not part of it)."""

    model_config = _FROZEN
    entity: _Text = Field(min_length=1, description="Entity name.")
    where: list[Cond] = Field(
        default_factory=list, description="AND of conditions (one condition: itself)."
    )
    sort: list[SortKey] = Field(default_factory=list, description="Sort keys; id ASC appended.")
    limit: int = Field(description="Window size N (> 0).")
    cursor: Cursor | None = Field(None, description="Start strictly after this position.")
    mode: Literal["maintained", "streamed"] = Field("maintained", description="Delivery mode.")

    @field_validator("limit", mode="before")
    @classmethod
    def _int_limit(cls, v: Any) -> Any:
        # pydantic would take True for 1, "5" and 5.0 for 5
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidQuery("limit", v, "must be an integer")
        return v

    @field_validator("where", mode="before")
    @classmethod
    def _one_cond(cls, v: Any) -> Any:
        # A lone condition is a list of one; iterated as is, a model yields its fields.
        return [v] if isinstance(v, Cond) else v

    @model_validator(mode="after")
    def _check(self) -> LiveQuery:
        if self.limit <= 0:
            raise InvalidQuery("limit", self.limit, "must be greater than 0")
        check_depth(self.where)
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
        """The same query at another keyset position and size.

        Raises `InvalidQuery` naming `cursor` or `limit` when they do not fit.
        """
        if cursor is not None and not isinstance(cursor, Cursor):
            raise InvalidQuery("cursor", cursor, "must be a Cursor or None")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidQuery("limit", limit, "must be an integer")
        fields = self.model_dump()
        fields.update(cursor=cursor.model_dump() if cursor is not None else None, limit=limit)
        try:
            return LiveQuery.model_validate(fields)
        except ValidationError as e:
            raise invalid_query(e) from e


def invalid_query(e: ValidationError) -> InvalidQuery:
    """pydantic's error about a query as `InvalidQuery` (its first error, its field path)."""
    err = e.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidQuery):
        return cause
    where = ".".join(str(x) for x in err["loc"]) or "query"
    return InvalidQuery(where, err.get("input"), err["msg"])


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


def check_expected(expected: Any) -> None:
    """Raise `InvalidRow` unless an expected version is None or an int >= 0."""
    if expected is not None and (
        isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
    ):
        raise InvalidRow("expected_version", expected, "must be an int >= 0")


def check_read(tenant: Any, query: Any, after: Any, limit: Any) -> None:
    """Raise `InvalidQuery` naming the argument of a store read that does not fit.

    `tenant` a non-empty string, `query` a `LiveQuery` (groups at most
    `MAX_DEPTH` deep), `after` None or a `Cursor` of one value per sort key
    then the id, `limit` an int > 0.
    """
    check_name("tenant", tenant, InvalidQuery)
    if not isinstance(query, LiveQuery):
        raise InvalidQuery("query", query, "must be a LiveQuery")
    check_depth(query.where)
    if after is not None:
        if not isinstance(after, Cursor):
            raise InvalidQuery("after", after, "must be a Cursor or None")
        want = len(query.sort) + 1
        if len(after.values) != want or not isinstance(after.values[-1], str):
            why = f"needs {want} values (one per sort key, then the id, a string)"
            raise InvalidQuery("after.values", after.values, why)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidQuery("limit", limit, "must be an integer greater than 0")


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
