"""`attach_ray`: connect this process to a Ray cluster, failing fast when none answers."""

from __future__ import annotations

import logging
import os
from typing import Any

from raycluster.errors import InvalidArgument, UnavailableError

__all__ = ("attach_ray",)

RAY_PROBE_TIMEOUT_S = 5.0  # connecting to the Ray address and its first answer, together
# An HTTP/2 client preface and an empty SETTINGS frame: Ray's GCS (and the Ray Client
# server) speak gRPC, and any HTTP/2 server answers the preface with a SETTINGS frame
# at once (RFC 9113, section 3.4), before any credentials are checked.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_FRAME_HEADER = 9  # bytes: length (3), type (1), flags (1), stream id (4)
_H2_SETTINGS = 4


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


def _probe(address: str, target: tuple[str, int]) -> None:
    """`UnavailableError` unless something at `target` answers like a gRPC server within
    `RAY_PROBE_TIMEOUT_S` (in all: connecting and the answer).

    With TLS (`RAY_USE_TLS`) only the TCP connect is checked.
    """
    import socket
    import time

    deadline = time.monotonic() + RAY_PROBE_TIMEOUT_S
    try:
        sock = socket.create_connection(target, timeout=RAY_PROBE_TIMEOUT_S)
    except OSError as e:
        reason = e.strerror or _one_line(e)
        raise UnavailableError(f"no Ray cluster at {address}: {reason}") from e
    head = b""
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(_H2_PREFACE)
            while len(head) < _H2_FRAME_HEADER:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(_H2_FRAME_HEADER - len(head))
                if not chunk:
                    break
                head += chunk
        except TimeoutError as e:
            raise UnavailableError(
                f"no Ray cluster at {address}: no answer within {RAY_PROBE_TIMEOUT_S:g} s "
                "(something accepts connections there but does not speak Ray's protocol)"
            ) from e
        except OSError:
            pass  # reset or closed: judged by what arrived, below
    if len(head) < _H2_FRAME_HEADER or head[3] != _H2_SETTINGS:
        raise UnavailableError(
            f"no Ray cluster at {address}: what answers there does not speak Ray's protocol (gRPC)"
        )


def attach_ray(address: str | None, namespace: str, *, quiet: bool = True) -> None:
    """Connect this process to the Ray cluster at `address` (else `RAY_ADDRESS`, else the
    local one), failing within seconds with `UnavailableError` when nothing answers there
    like Ray (`InvalidArgument` for an address that is not one).

    `ray.init` itself retries an unreachable address for minutes, and waits for
    ever on a peer that accepts connections and never answers, so the address
    is probed first: a TCP connect and the first answer of a gRPC server,
    together within `RAY_PROBE_TIMEOUT_S`. Nothing of the probe outlives it.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    target = _bootstrap(address)
    if target is not None:
        _probe(address, target)
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
