"""Bearer tokens of the edge: static tokens and HMAC-signed `v1.<payload>.<sig>` tokens.

A token maps to exactly one tenant. Missing, malformed, unknown or wrongly
signed tokens are `Unauthorized` (HTTP 401); a signed token past its `exp` is
`Forbidden` (HTTP 403). Every comparison of secret material is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from pydantic import SecretStr

from raycluster.errors import RayclusterError

__all__ = ("AuthError", "Forbidden", "Unauthorized", "authenticate", "sign_token")

_PREFIX = "v1"


class AuthError(RayclusterError):
    """A request whose token does not grant a tenant; `status` is its HTTP status."""

    status = 401
    error = "unauthorized"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Unauthorized(AuthError):
    """Missing, malformed, unknown or wrongly signed token (HTTP 401, WS 4401)."""


class Forbidden(AuthError):
    """A correctly signed token past its `exp` (HTTP 403, WS 4403)."""

    status = 403
    error = "forbidden"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sig(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def sign_token(secret: str | SecretStr, tenant: str, ttl_s: float) -> str:
    """A signed token for `tenant`, valid for `ttl_s` seconds from now."""
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    body = json.dumps({"tenant": tenant, "exp": int(time.time() + ttl_s)}, separators=(",", ":"))
    payload = _b64(body.encode())
    return f"{_PREFIX}.{payload}.{_sig(key, payload)}"


def authenticate(
    token: str | None,
    tokens: Mapping[str, str],
    secret: SecretStr | None,
    *,
    now: float | None = None,
) -> str:
    """The tenant `token` grants; raises `Unauthorized` or `Forbidden`."""
    if not token:
        raise Unauthorized("missing bearer token")
    if token.startswith(_PREFIX + "."):
        return _signed(token, secret, time.time() if now is None else now)
    tenant: str | None = None
    given = token.encode()
    for known, t in tokens.items():  # every entry compared: timing says nothing
        if hmac.compare_digest(given, known.encode()):
            tenant = t
    if tenant is None:
        raise Unauthorized("unknown token")
    return tenant


def _signed(token: str, secret: SecretStr | None, now: float) -> str:
    parts = token.split(".")
    if len(parts) != 3 or secret is None:
        raise Unauthorized("malformed token" if len(parts) != 3 else "signed tokens not accepted")
    _, payload, sig = parts
    try:
        want = _sig(secret.get_secret_value(), payload)
    except UnicodeEncodeError as e:
        raise Unauthorized("malformed token") from e
    if not hmac.compare_digest(want.encode(), sig.encode("utf-8", "replace")):
        raise Unauthorized("bad signature")
    try:
        claims = json.loads(_unb64(payload))
    except (binascii.Error, ValueError) as e:
        raise Unauthorized("malformed token payload") from e
    if not isinstance(claims, dict):
        raise Unauthorized("malformed token payload")
    tenant, exp = claims.get("tenant"), claims.get("exp")
    if not isinstance(tenant, str) or not tenant or not isinstance(exp, int | float):
        raise Unauthorized("token payload needs tenant and exp")
    if exp <= now:
        raise Forbidden("token expired")
    return tenant
