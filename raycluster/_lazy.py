"""`lazy_attributes`: a package attribute that imports its module on first use.

Keeps a package `__init__` light: importing the package loads only what it
names eagerly; `package.Name` imports the module that defines `Name` when it
is first looked up (and caches it in the package).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ("lazy_attributes",)


def lazy_attributes(
    package: str, namespace: dict[str, Any], where: Mapping[str, str]
) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where` maps a name to the module defining it
    (relative to `package`, e.g. ".store", or absolute)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
