"""raycluster: a sharded live-query tier on Ray and Redis."""

from .errors import ClosedError, ConflictError, InvalidQuery, InvalidRow, RayclusterError
from .livequery import (
    Cond,
    Cursor,
    DeltaOp,
    Engine,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    MemoryStore,
    Row,
    SortKey,
)

__all__ = (
    "ClosedError",
    "Cond",
    "ConflictError",
    "Cursor",
    "DeltaOp",
    "Engine",
    "EntitySpec",
    "InvalidQuery",
    "InvalidRow",
    "LiveDelta",
    "LiveQuery",
    "MemoryStore",
    "RayclusterError",
    "Row",
    "SortKey",
)
