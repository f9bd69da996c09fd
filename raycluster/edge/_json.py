"""Client JSON, read safely: bounded size, bounded depth, valid Unicode, finite numbers.

Every value that passes can be stored and read back: no lone surrogates
(`"\\ud800"`), no NaN or infinity, no nesting deeper than
`edge.max_json_depth` (checked on the text before parsing, so a
20,000-deep document never reaches the parser's recursion). Refusals are `Invalid` (422)
naming the path in the document, or `TooLarge` (413).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from starlette.requests import Request

from raycluster.config import EdgeSettings
from raycluster.livequery.models import unstorable

from .errors import Invalid, RequestTimeout, TooLarge

__all__ = ("parse_json", "read_json")

# The only way a lone surrogate enters: a `\\uD800`-`\\uDFFF` escape (UTF-8 text has none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(r"\\.", re.S)
_NOT_STRUCTURE = re.compile(r'[^"\[\]{}]+')
_STRING_BODY = re.compile(r'"[^"]*"')


def _bad(loc: list[str | int], msg: str) -> Invalid:
    return Invalid([{"loc": loc, "msg": msg}])


def _finite(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise ValueError(f"number out of range: {text[:40]}")
    return f


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(text: str, limit: int) -> bool:
    """Whether the JSON `text` nests deeper than `limit`, by its brackets outside strings.

    Escapes go first, then everything but quotes and brackets, then what
    strings held: the brackets left are the document's structure (C-speed
    passes; the loop runs over the structure only and stops at `limit`).
    """
    structure = _STRING_BODY.sub("", _NOT_STRUCTURE.sub("", _ESCAPE.sub("", text)))
    depth = 0
    for ch in structure:
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _check_strings(doc: Any) -> None:
    """Raise `Invalid` at the first string (or key) that is not valid Unicode."""
    stack: list[tuple[list[str | int], Any]] = [([], doc)]
    while stack:
        loc, v = stack.pop()
        items: Any = ()
        strings: tuple[str, ...] = ()
        if isinstance(v, str):
            strings = (v,)
        elif isinstance(v, dict):
            items = v.items()
            strings = tuple(v)
        elif isinstance(v, list):
            items = enumerate(v)
        else:
            continue
        for s in strings:
            if unstorable(s) is not None:
                where = loc if s is v else [*loc, s.encode("utf-8", "replace").decode()]
                raise _bad(where, "not valid Unicode (a lone surrogate)")
        for k, child in items:
            stack.append(([*loc, k], child))


def parse_json(text: str | bytes, max_depth: int) -> Any:
    """The document in `text`; raises `Invalid` for anything that is not storable JSON."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad([], "body is not UTF-8") from e
    if text.count("[") + text.count("{") > max_depth and _too_deep(text, max_depth):
        raise _bad([], f"JSON nested deeper than {max_depth}")
    try:
        doc = json.loads(text, parse_float=_finite, parse_constant=_constant)
    except ValueError as e:
        raise _bad([], f"body is not JSON: {str(e)[:120]}") from e
    if _SURROGATE_ESCAPE.search(text):
        _check_strings(doc)
    return doc


async def read_json(request: Request, settings: EdgeSettings) -> Any:
    """The request's JSON body: at most `max_body_bytes` are ever buffered (413 beyond),
    and it must arrive within `request_timeout_s` (408)."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body of {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as e:
        raise RequestTimeout(f"body not sent within {settings.request_timeout_s} s") from e
    return parse_json(b"".join(chunks), settings.max_json_depth)
