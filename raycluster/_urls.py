"""`mask_url`: a URL or DSN safe to print or log (its credentials replaced by `***`)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ("mask_url",)

MASK = "***"
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "pass", "token", "secret", "sslpassword"})
# libpq's key=value form: `host=db password=s3cret` (a value may be quoted).
_KV_SECRET = re.compile(
    r"(?i)\b(" + "|".join(sorted(_SECRET_KEYS)) + r")\s*=\s*('(?:[^'\\]|\\.)*'|\S+)"
)


def mask_url(url: str | None) -> str:
    """`url` with every credential in it masked: a password in the authority, secret
    query parameters, and `password=` in a key=value DSN. Never raises."""
    if not url:
        return ""
    try:
        if "://" not in url:
            return _KV_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", url)
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            masked = [(k, MASK if k.lower() in _SECRET_KEYS else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
        out = f"{parts.scheme}://{netloc}{parts.path}"
        return (
            out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        )
    except ValueError:  # not parseable: show nothing of it that could be a secret
        return f"<unparseable URL: {MASK}>"
