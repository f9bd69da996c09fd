"""Resume tokens: `<sub id>.<epoch>.<seq>.<mac>`, which prove the tenant was given the sub id.

`mac` = base64url, no padding, of the first 16 bytes of
HMAC-SHA256(secret, tenant \\0 sub id \\0 epoch). A token is only honoured for
the authenticated tenant it was minted for, so a sub id seen elsewhere (an
SSE `id:` line, a URL) is worth nothing without the token. The secret is
`edge.resume_secret`, or one generated once and shared by every edge of a
tier through its Redis (`Keys.edge_resume_secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import NamedTuple

from pydantic import SecretStr

from raycluster.config import TierSettings
from raycluster.redis import SharedSecrets

__all__ = ("Resume", "ResumeTokens", "load_secret")

_MAC_BYTES = 16  # 128 bits
_MAC_CHARS = 22  # its base64url length, unpadded
_MAX_INT_DIGITS = 18


class Resume(NamedTuple):
    """A verified resume token: the sub id it proves, and the last frame the client saw."""

    sub_id: str
    epoch: int
    seq: int


class ResumeTokens:
    """Mints and verifies resume tokens with one secret (constant-time comparison)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mac(self, tenant: str, sub_id: str, epoch: int) -> str:
        """The MAC binding `sub_id` at `epoch` to `tenant` (callers cache it per epoch)."""
        msg = b"\0".join((tenant.encode("utf-8", "surrogatepass"), sub_id.encode(), b"%d" % epoch))
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def token(self, tenant: str, sub_id: str, epoch: int, seq: int) -> str:
        """A token for the frame (`epoch`, `seq`) of `tenant`'s `sub_id`."""
        return f"{sub_id}.{epoch}.{seq}.{self.mac(tenant, sub_id, epoch)}"

    def verify(self, tenant: str, token: str | None) -> Resume | None:
        """What `token` proves for `tenant`; None if it is malformed or not `tenant`'s."""
        if not token or len(token) > 200:
            return None
        parts = token.strip().split(".")
        if len(parts) != 4:
            return None
        sid, epoch, seq, mac = parts
        if not (sid.isascii() and sid.isalnum() and len(sid) <= 64):
            return None
        if not all(n.isascii() and n.isdigit() and len(n) <= _MAX_INT_DIGITS for n in (epoch, seq)):
            return None
        if len(mac) != _MAC_CHARS or not mac.isascii():
            return None
        want = self.mac(tenant, sid, int(epoch))
        if not hmac.compare_digest(want.encode(), mac.encode()):
            return None
        return Resume(sid, int(epoch), int(seq))


async def load_secret(settings: TierSettings, redis_url: str | None) -> bytes:
    """`edge.resume_secret`, else the tier's shared one in Redis (created if absent).

    Every edge of a tier on one Redis gets the same secret: the first one to
    ask creates it with SET NX. Raises `RedisUnavailable` if Redis cannot be
    reached.
    """
    configured: SecretStr | None = settings.edge.resume_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    async with SharedSecrets.from_url(redis_url, settings=settings.redis) as store:
        return await store.get_or_create(settings.redis.keys.edge_resume_secret())
