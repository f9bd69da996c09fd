"""The engine-neutral live-query core: models, filters, order, windows, engine.

Depends on pydantic only; no Redis, no Ray.
"""

from ._gc import tune_gc
from .engine import Engine, EngineStats, EngineSubscription
from .filter import Predicate, compile_predicate, indexable_terms
from .index import PredicateIndex
from .limits import QueryLimits, check_cost, query_cost
from .memory import MemoryStore
from .models import (
    Change,
    ColumnType,
    Cond,
    Cursor,
    DeltaOp,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    Row,
    Scalar,
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
from .order import compare_cursors, cursor_key, cursor_of, sort_key_of
from .ports import Feed, FeedBatch, Refiller, Snapshotter, pos_key
from .window import Entry, Frame, StreamSet, Window

__all__ = (
    "Change",
    "ColumnType",
    "Cond",
    "Cursor",
    "DeltaOp",
    "Engine",
    "EngineStats",
    "EngineSubscription",
    "EntitySpec",
    "Entry",
    "Feed",
    "FeedBatch",
    "Frame",
    "LiveDelta",
    "LiveQuery",
    "MemoryStore",
    "Predicate",
    "PredicateIndex",
    "QueryLimits",
    "Refiller",
    "Row",
    "Scalar",
    "Snapshot",
    "Snapshotter",
    "SortKey",
    "StreamSet",
    "Window",
    "and_",
    "check_cost",
    "compare_cursors",
    "compile_predicate",
    "cursor_key",
    "cursor_of",
    "eq",
    "gt",
    "gte",
    "ilike",
    "in_",
    "indexable_terms",
    "is_not_null",
    "is_null",
    "like",
    "lt",
    "lte",
    "ne",
    "not_in",
    "or_",
    "pos_key",
    "query_cost",
    "sort_key_of",
    "tune_gc",
)


def __getattr__(name: str) -> object:
    if name == "Subscription":  # the old name of EngineSubscription (one release)
        import warnings

        warnings.warn(
            "raycluster.livequery.Subscription is now EngineSubscription "
            "(raycluster.Subscription is the client's)",
            DeprecationWarning,
            stacklevel=2,
        )
        return EngineSubscription
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
