"""Row JSON as the row hashes and the events carry it, decoded once."""

from __future__ import annotations

import json
from typing import Any

__all__ = ("decode_row",)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# json.loads(bytes) sniffs the encoding on every call; rows are UTF-8 by contract.
# NaN and Infinity (which Python's decoder takes by default) are not JSON.
_decode = json.JSONDecoder(parse_constant=_not_json).decode


def decode_row(raw: bytes) -> dict[str, Any] | None:
    """A row as a dict of scalars, or None when `raw` is anything else.

    A row is a JSON object whose values are null, booleans, numbers and
    strings (what `Writer` stores). Another program's writer may store
    something else (an array, a nested object, NaN): such a row cannot be
    ordered or filtered, so readers treat it as malformed.
    """
    try:
        row = _decode(raw.decode())
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(row, dict):
        return None
    # Only a `[` or an inner `{` can open a nested value (found in C; rarely there).
    if (b"[" in raw or raw.find(b"{", 1) >= 0) and any(
        isinstance(v, dict | list) for v in row.values()
    ):
        return None
    return row
