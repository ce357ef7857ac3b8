"""Digest authentication (RFC 3261 §22.4, RFC 2617 MD5) of inbound INVITEs from a peer.

PJSIP authenticates only our own outgoing requests; for a PBX that must prove who it is, the
agent challenges its INVITE with 401 and checks the answer here. Nonces are stateless: a
timestamp signed with a per-process key, valid for `NONCE_TTL_S`, so no table of outstanding
challenges grows under a flood.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

NONCE_TTL_S = 300
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def parse_authorization(value: str) -> dict[str, str]:
    """The parameters of a `Digest ...` Authorization header ({} for any other scheme)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {
        match.group(1).lower(): match.group(2) if match.group(2) is not None else match.group(3)
        for match in _PARAM.finditer(rest)
    }


@dataclass
class DigestAuthenticator:
    """Challenges and verifies INVITEs of one realm."""

    realm: str = "switchboard"
    clock: Callable[[], float] = time.time
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def challenge(self, stale: bool = False) -> tuple[str, str]:
        """The WWW-Authenticate header of a 401."""
        stamp = str(int(self.clock()))
        nonce = f"{stamp}.{self._sign(stamp)}"
        stale_part = ", stale=true" if stale else ""
        value = (
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"{stale_part}'
        )
        return ("WWW-Authenticate", value)

    def verify(self, authorization: str, method: str, username: str, password: str) -> str:
        """ "ok", "missing" (no credentials: challenge), "stale" (old nonce: challenge again)
        or "failed" (wrong user or password: a security event)."""
        params = parse_authorization(authorization)
        if not params:
            return "missing"
        nonce = params.get("nonce", "")
        stamp, _, signature = nonce.partition(".")
        if not stamp.isdigit() or not hmac.compare_digest(signature, self._sign(stamp)):
            return "failed"
        if self.clock() - int(stamp) > NONCE_TTL_S:
            return "stale"
        if params.get("username") != username or params.get("realm") != self.realm:
            return "failed"
        ha1 = _md5(f"{username}:{self.realm}:{password}")
        ha2 = _md5(f"{method}:{params.get('uri', '')}")
        if params.get("qop"):
            nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
            expected = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{params['qop']}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return "ok" if hmac.compare_digest(expected, params.get("response", "")) else "failed"

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]
