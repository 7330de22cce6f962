"""SQL for request authentication: app secrets and the durable nonce store."""

from __future__ import annotations

import sqlite3


def app_secret(conn: sqlite3.Connection, app_id: str) -> str | None:
    """The HMAC secret of an enabled app; None for an unknown or disabled app."""
    row = conn.execute(
        "SELECT hmac_secret FROM apps WHERE app_id = ? AND disabled_at IS NULL", (app_id,)
    ).fetchone()
    return row["hmac_secret"] if row else None


def consume_nonces(
    conn: sqlite3.Connection, nonces: list[tuple[str, str, int]], now_s: int
) -> list[bool]:
    """Record each (app, nonce, expires_at); ``True`` where it was new, ``False`` for a replay.

    Expired nonces are purged as a side effect (bounded by the index on expiry).
    """
    conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now_s,))
    fresh = []
    for app_id, nonce, expires_at in nonces:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO nonces (app_id, nonce, expires_at) VALUES (?, ?, ?)",
            (app_id, nonce, expires_at),
        )
        fresh.append(cursor.rowcount == 1)
    return fresh


def insert_app(conn: sqlite3.Connection, app_id: str, secret: str, now_ms: int) -> None:
    """Used by the demo and tests; operators add apps with ``fiberlinkd admin app add``."""
    conn.execute(
        "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
        (app_id, secret, now_ms),
    )
