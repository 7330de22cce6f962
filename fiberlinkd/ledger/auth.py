"""SQL for request authentication: app secrets and the durable nonce store."""

from __future__ import annotations

import sqlite3


def app_secret(conn: sqlite3.Connection, app_id: str) -> str | None:
    """The HMAC secret of an enabled app; None for an unknown or disabled app."""
    row = conn.execute(
        "SELECT hmac_secret FROM apps WHERE app_id = ? AND disabled_at IS NULL", (app_id,)
    ).fetchone()
    return row["hmac_secret"] if row else None


def consume_nonce(
    conn: sqlite3.Connection, app_id: str, nonce: str, expires_at_s: int, purge_before_s: int | None
) -> bool:
    """Record (app, nonce, expires_at); ``True`` if it was new, ``False`` for a replay.

    With ``purge_before_s``, nonces that expired before it are deleted first (bounded by the
    index on expiry); callers purge now and then, not on every request.
    """
    if purge_before_s is not None:
        conn.execute("DELETE FROM nonces WHERE expires_at < ?", (purge_before_s,))
    cursor = conn.execute(
        "INSERT OR IGNORE INTO nonces (app_id, nonce, expires_at) VALUES (?, ?, ?)",
        (app_id, nonce, expires_at_s),
    )
    return cursor.rowcount == 1


def nonce_used(conn: sqlite3.Connection, app_id: str, nonce: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM nonces WHERE app_id = ? AND nonce = ?", (app_id, nonce)
    ).fetchone()
    return row is not None


def insert_app(conn: sqlite3.Connection, app_id: str, secret: str, now_ms: int) -> None:
    """Used by the demo and tests; operators add apps with ``fiberlinkd admin app add``."""
    conn.execute(
        "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
        (app_id, secret, now_ms),
    )
