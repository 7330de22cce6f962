"""Request authentication exactly as the Discourse plugin signs.

``x-signature`` = lowercase hex HMAC-SHA256(secret, ``ts + "." + nonce + "." + raw body``),
verified over the body bytes as received (the plugin's JSON may or may not escape ``<>&``).
The nonce is consumed only after the signature verifies, per app, durably: a nonce accepted
before a restart is refused after it while its window lasts.

Nonce writes are group-committed (``Ledger.transact_grouped``): concurrent requests share
one fsync'd transaction, so replay protection costs one commit per batch, not per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import sqlite3
from collections.abc import Iterator

import attrs
import trio

from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.auth import app_secret, consume_nonce, nonce_used

NONCE_RE = re.compile(r"[0-9A-Za-z_-]{8,128}")
MAX_APP_ID_LEN = 64


class AuthError(Exception):
    """Any authentication failure; the plugin only ever sees -32001 Unauthorized."""


def signature(secret: str, ts: str, nonce: str, body: bytes) -> str:
    message = ts.encode() + b"." + nonce.encode() + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


class ReplayedNonce(AuthError):
    """Raised inside a transaction when the request's nonce was already used."""


@attrs.frozen
class NonceClaim:
    """A verified request's nonce, not yet recorded.

    Recording it is the request's first durable write: :meth:`Authenticator.commit` on its
    own, or :meth:`consume` inside the method's own grouped transaction (``tip.create``:
    nonce and tip commit together, one wait fewer on the hot path).
    """

    app_id: str
    nonce: str
    expires_at_s: int
    purge_before_s: int | None

    def consume(self, conn: sqlite3.Connection) -> None:
        """Record the nonce in ``conn``'s transaction; :class:`ReplayedNonce` if it was used."""
        fresh = consume_nonce(conn, self.app_id, self.nonce, self.expires_at_s, self.purge_before_s)
        if not fresh:
            raise ReplayedNonce("replayed nonce")


@attrs.define
class Authenticator:
    ledger: Ledger
    window_s: int
    _secrets: dict[str, tuple[str | None, float]] = attrs.field(factory=dict)
    # Nonces of requests whose claim is still to be committed with their method's write.
    _reserved: set[tuple[str, str]] = attrs.field(factory=set)
    _next_purge_s: int = 0

    SECRET_CACHE_S = 2.0  # a disabled app or rotated secret takes effect within this
    PURGE_EVERY_S = 10  # expired nonces are deleted by one claim in this many seconds

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
    ) -> NonceClaim:
        """Verify the request; return its nonce claim, not yet recorded.

        Errors: :class:`AuthError` (reason inside). Nothing is written: a forged request
        cannot burn a legitimate nonce.
        """
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
        purge = None
        if now_s >= self._next_purge_s:
            purge, self._next_purge_s = now_s, now_s + self.PURGE_EVERY_S
        return NonceClaim(app_id, nonce, int(ts) + self.window_s + 1, purge)

    async def commit(self, claim: NonceClaim) -> None:
        """Record the nonce now (group-committed). :class:`ReplayedNonce` for a replay."""
        await self.ledger.transact_grouped(claim.consume)

    @contextlib.contextmanager
    def reserved(self, claim: NonceClaim) -> Iterator[None]:
        """Hold the nonce while the method runs, to :meth:`NonceClaim.consume` it later.

        Refuses (:class:`ReplayedNonce`) a nonce already recorded or held by a request in
        flight, before the method does any work; the method's own commit stays the final
        word (``INSERT OR IGNORE`` under the writer lock).
        """
        key = (claim.app_id, claim.nonce)
        if key in self._reserved or self.ledger.lookup(nonce_used, *key):
            raise ReplayedNonce("replayed nonce")
        self._reserved.add(key)
        try:
            yield
        finally:
            self._reserved.discard(key)
