"""`attach_ray`: connect this process to a Ray cluster, failing fast when none answers."""

from __future__ import annotations

import logging
import os
from typing import Any

from raycluster.errors import InvalidArgument, UnavailableError

__all__ = ("attach_ray",)

RAY_PROBE_TIMEOUT_S = 5.0  # how long a TCP connect to the Ray address may take


def _bootstrap(address: str) -> tuple[str, int] | None:
    """The host and port `ray.init(address)` would connect to (None: unknown / local)."""
    from urllib.parse import urlsplit

    if "://" in address:  # ray://host:port (Ray Client)
        parts = urlsplit(address)
        return (parts.hostname, parts.port) if parts.hostname and parts.port else None
    try:
        from ray._private.services import canonicalize_bootstrap_address  # not public API
    except ImportError:
        return None
    try:
        found = canonicalize_bootstrap_address(address)
    except ConnectionError as e:  # "auto" and no cluster on this machine
        raise UnavailableError(f"no Ray cluster at {address}: {_one_line(e)}") from e
    except ValueError as e:
        raise InvalidArgument("address", address, _one_line(e)) from e
    if not found:
        return None
    host, _, port = found.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


AUTH_HINT = (
    "if the cluster uses token auth, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
    "(or ~/.ray/auth_token): docs/operations.md, '1. Start a head and workers'"
)


def attach_ray(address: str | None, namespace: str, *, quiet: bool = True) -> None:
    """Connect this process to the Ray cluster at `address` (else `RAY_ADDRESS`, else the
    local one), failing within seconds with `UnavailableError` when nothing answers there
    (`InvalidArgument` for an address that is not one).

    `ray.init` itself retries an unreachable address for minutes, so the
    address is probed with a plain TCP connect first.
    """
    import socket

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    target = _bootstrap(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=RAY_PROBE_TIMEOUT_S).close()
        except OSError as e:
            reason = e.strerror or _one_line(e)
            raise UnavailableError(f"no Ray cluster at {address}: {reason}") from e
    quiet_kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        ray.init(address=address, namespace=namespace, **(quiet_kw if quiet else {}))
    except ConnectionError as e:
        hint = f"; {AUTH_HINT}" if target is not None else ""
        raise UnavailableError(f"no Ray cluster at {address}: {_one_line(e)}{hint}") from e
    except (RuntimeError, ValueError) as e:
        raise UnavailableError(f"no Ray cluster at {address}: {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
