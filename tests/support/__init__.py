"""What every test folder shares: waiting on conditions, unique names, private servers,
fast tier settings, and the brute-force oracle of the live-query core.

`tests/` is on `sys.path` (pytest puts the directory of `tests/conftest.py`
there), so tests import this as `support`; a script a test runs in a
subprocess puts `tests/` on its path itself. The fixtures in
`support.fixtures` are registered once, by `tests/conftest.py`.
"""

from __future__ import annotations

from .names import unique
from .servers import (
    REDIS_PASSWORD,
    SYSTEM_REDIS_PORT,
    free_port,
    private_redis,
    private_redis_cluster,
)
from .settings import (
    ATTEMPT_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TTL_S,
    OWNERSHIP_INTERVAL_S,
    fast_tier,
)
from .waiting import wait_for, wait_until

__all__ = (
    "ATTEMPT_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TTL_S",
    "OWNERSHIP_INTERVAL_S",
    "REDIS_PASSWORD",
    "SYSTEM_REDIS_PORT",
    "fast_tier",
    "free_port",
    "private_redis",
    "private_redis_cluster",
    "unique",
    "wait_for",
    "wait_until",
)
