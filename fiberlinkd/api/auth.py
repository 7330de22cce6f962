"""Request authentication exactly as the Discourse plugin signs.

``x-signature`` = lowercase hex HMAC-SHA256(secret, ``ts + "." + nonce + "." + raw body``),
verified over the body bytes as received (the plugin's JSON may or may not escape ``<>&``).
The nonce is consumed only after the signature verifies, per app, durably: a nonce accepted
before a restart is refused after it while its window lasts.

Nonce writes are group-committed: concurrent requests share one fsync'd transaction, so
replay protection costs one commit per batch instead of one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import attrs
import trio

from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.auth import app_secret, consume_nonces

NONCE_RE = re.compile(r"[0-9A-Za-z_-]{8,128}")
MAX_APP_ID_LEN = 64


class AuthError(Exception):
    """Any authentication failure; the plugin only ever sees -32001 Unauthorized."""


def signature(secret: str, ts: str, nonce: str, body: bytes) -> str:
    message = ts.encode() + b"." + nonce.encode() + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


@attrs.define
class NonceBatcher:
    """Group commit for nonces. ``claim`` returns False for a replay (same app and nonce)."""

    ledger: Ledger
    _pending: list[tuple[str, str, int]] = attrs.field(factory=list)
    _results: dict[tuple[str, str], bool] = attrs.field(factory=dict)
    _flushed: trio.Event = attrs.field(factory=trio.Event)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def claim(self, app_id: str, nonce: str, expires_at_s: int, now_s: int) -> bool:
        key = (app_id, nonce)
        if key in self._results or any(p[:2] == key for p in self._pending):
            return False
        self._pending.append((app_id, nonce, expires_at_s))
        flushed = self._flushed
        try:
            return await self._await_flush(key, flushed, now_s)
        finally:
            self._results.pop(key, None)  # a cancelled waiter must not leave its result behind

    async def _await_flush(self, key: tuple[str, str], flushed: trio.Event, now_s: int) -> bool:
        async with self._lock:
            if not flushed.is_set():
                batch, self._pending = self._pending, []
                self._flushed = trio.Event()
                try:
                    fresh = await self.ledger.transact(consume_nonces, batch, now_s)
                    for (a, n, _), ok in zip(batch, fresh, strict=True):
                        self._results[(a, n)] = ok
                finally:
                    flushed.set()
        result = self._results.pop(key, None)
        if result is None:  # the batch that held it failed: refuse rather than guess
            return False
        return result


@attrs.define
class Authenticator:
    ledger: Ledger
    window_s: int
    nonces: NonceBatcher
    _secrets: dict[str, tuple[str | None, float]] = attrs.field(factory=dict)

    SECRET_CACHE_S = 2.0  # a disabled app or rotated secret takes effect within this

    async def _secret(self, app_id: str) -> str | None:
        cached = self._secrets.get(app_id)
        now = trio.current_time()
        if cached is not None and cached[1] > now:
            return cached[0]
        secret = self.ledger.lookup(app_secret, app_id)
        if len(self._secrets) > 1024:
            self._secrets.clear()
        self._secrets[app_id] = (secret, now + self.SECRET_CACHE_S)
        return secret

    async def authenticate(
        self,
        *,
        app_id: str | None,
        ts: str | None,
        nonce: str | None,
        sig: str | None,
        body: bytes,
        now_s: int,
    ) -> str:
        """Return the authenticated app id. Errors: :class:`AuthError` (reason inside)."""
        if not app_id or not ts or not nonce or not sig:
            raise AuthError("missing authentication header")
        if len(app_id) > MAX_APP_ID_LEN or not NONCE_RE.fullmatch(nonce):
            raise AuthError("malformed app id or nonce")
        if not ts.isascii() or not ts.isdigit() or len(ts) > 12:  # "²".isdigit() is True
            raise AuthError("x-ts is not unix seconds")
        if abs(now_s - int(ts)) > self.window_s:
            raise AuthError("x-ts outside the allowed window")
        secret = await self._secret(app_id)
        if secret is None:
            raise AuthError("unknown or disabled app")
        expected = signature(secret, ts, nonce, body)
        # compare_digest raises TypeError for non-ASCII str; bytes never do.
        if not hmac.compare_digest(expected.encode(), sig.lower().encode()):
            raise AuthError("bad signature")
        # Consumed only now: a forged request cannot burn a legitimate nonce.
        if not await self.nonces.claim(app_id, nonce, int(ts) + self.window_s + 1, now_s):
            raise AuthError("replayed nonce")
        return app_id
