"""Names no other test (or session) uses."""

from __future__ import annotations

import uuid

__all__ = ("unique",)


def unique(label: str) -> str:
    """`label` and a random suffix: tenants, tier names, key prefixes, namespaces."""
    return f"{label}-{uuid.uuid4().hex[:8]}"
