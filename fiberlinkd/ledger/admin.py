"""SQL for the operator's side: apps, admin grants, the audit log and settings.

Every function is a plain sync ``fn(conn, ...)`` run through ``Ledger.transact`` (writes)
or ``Ledger.read`` (reads). Rows come back as frozen models built with ``from_row``.
Secrets (``apps.hmac_secret``) are returned only by the functions that create or rotate
them; listings never select the column.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

import attrs

SUPER_ADMIN = "SUPER_ADMIN"
COMMUNITY_ADMIN = "COMMUNITY_ADMIN"


class AppExists(Exception):
    """``insert_app``: an app with this id exists already."""


class UnknownApp(Exception):
    """``add_grant``: the grant names an app that does not exist."""


@attrs.frozen
class AppRecord:
    """An app (a forum talking to fiberlinkd) without its secret."""

    app_id: str
    created_at: int  # unix ms
    disabled_at: int | None  # unix ms; None while enabled

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AppRecord:
        return cls(
            app_id=row["app_id"], created_at=row["created_at"], disabled_at=row["disabled_at"]
        )


@attrs.frozen
class Grant:
    uid: int
    role: str  # SUPER_ADMIN | COMMUNITY_ADMIN
    app_id: str | None  # set exactly for COMMUNITY_ADMIN
    created_at: int  # unix ms

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Grant:
        return cls(
            uid=row["uid"], role=row["role"], app_id=row["app_id"], created_at=row["created_at"]
        )


@attrs.frozen
class AuditRecord:
    id: int
    at: int  # unix ms
    uid: int
    command: str
    app_id: str | None
    args_json: str  # secrets were removed before writing
    outcome: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AuditRecord:
        return cls(
            id=row["id"],
            at=row["at"],
            uid=row["uid"],
            command=row["command"],
            app_id=row["app_id"],
            args_json=row["args_json"],
            outcome=row["outcome"],
        )


# --- apps -------------------------------------------------------------------------------


def insert_app(conn: sqlite3.Connection, app_id: str, secret: str, now_ms: int) -> AppRecord:
    """Create an enabled app. Errors: :class:`AppExists`."""
    try:
        conn.execute(
            "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
            (app_id, secret, now_ms),
        )
    except sqlite3.IntegrityError as exc:
        if get_app(conn, app_id) is not None:
            raise AppExists(app_id) from None
        raise exc from None
    return AppRecord(app_id=app_id, created_at=now_ms, disabled_at=None)


def get_app(conn: sqlite3.Connection, app_id: str) -> AppRecord | None:
    row = conn.execute(
        "SELECT app_id, created_at, disabled_at FROM apps WHERE app_id = ?", (app_id,)
    ).fetchone()
    return AppRecord.from_row(row) if row else None


def list_apps(conn: sqlite3.Connection, app_ids: Collection[str] | None) -> list[AppRecord]:
    """All apps (``app_ids=None``) or only those named, ordered by id."""
    rows = conn.execute(
        "SELECT app_id, created_at, disabled_at FROM apps ORDER BY app_id"
    ).fetchall()
    apps = [AppRecord.from_row(row) for row in rows]
    if app_ids is None:
        return apps
    wanted = set(app_ids)
    return [app for app in apps if app.app_id in wanted]


def set_app_secret(conn: sqlite3.Connection, app_id: str, secret: str) -> bool:
    """Replace the app's HMAC secret; ``False`` when there is no such app."""
    cursor = conn.execute("UPDATE apps SET hmac_secret = ? WHERE app_id = ?", (secret, app_id))
    return cursor.rowcount == 1


def set_app_disabled(
    conn: sqlite3.Connection, app_id: str, disabled_at: int | None
) -> tuple[AppRecord, bool] | None:
    """Disable (``disabled_at`` = now ms) or enable (``None``) an app.

    Returns the app after the change and whether anything changed (disabling a disabled
    app keeps its original time), or ``None`` when there is no such app.
    """
    before = get_app(conn, app_id)
    if before is None:
        return None
    if (before.disabled_at is None) == (disabled_at is None):
        return before, False
    conn.execute("UPDATE apps SET disabled_at = ? WHERE app_id = ?", (disabled_at, app_id))
    return attrs.evolve(before, disabled_at=disabled_at), True


# --- grants -----------------------------------------------------------------------------


def grants_for_uid(conn: sqlite3.Connection, uid: int) -> list[Grant]:
    rows = conn.execute(
        "SELECT uid, role, app_id, created_at FROM admin_grants WHERE uid = ? "
        "ORDER BY role, app_id",
        (uid,),
    ).fetchall()
    return [Grant.from_row(row) for row in rows]


def list_grants(conn: sqlite3.Connection) -> list[Grant]:
    rows = conn.execute(
        "SELECT uid, role, app_id, created_at FROM admin_grants ORDER BY uid, role, app_id"
    ).fetchall()
    return [Grant.from_row(row) for row in rows]


def add_grant(
    conn: sqlite3.Connection, uid: int, role: str, app_id: str | None, now_ms: int
) -> bool:
    """Insert a grant; ``False`` when the same grant exists already (a no-op).

    Errors: :class:`UnknownApp` when ``app_id`` names no app.
    """
    if app_id is not None and get_app(conn, app_id) is None:
        raise UnknownApp(app_id)
    cursor = conn.execute(
        "INSERT OR IGNORE INTO admin_grants (uid, role, app_id, created_at) VALUES (?, ?, ?, ?)",
        (uid, role, app_id, now_ms),
    )
    return cursor.rowcount == 1


def remove_grant(conn: sqlite3.Connection, uid: int, role: str, app_id: str | None) -> bool:
    """Delete a grant; ``False`` when there was none."""
    cursor = conn.execute(
        "DELETE FROM admin_grants WHERE uid = ? AND role = ? AND coalesce(app_id, '') = ?",
        (uid, role, app_id or ""),
    )
    return cursor.rowcount > 0


# --- audit log --------------------------------------------------------------------------


def append_audit(
    conn: sqlite3.Connection,
    *,
    at: int,
    uid: int,
    command: str,
    app_id: str | None,
    args_json: str,
    outcome: str,
) -> int:
    """Append one audit row (the caller has already removed secrets); returns its id."""
    cursor = conn.execute(
        "INSERT INTO audit_log (at, uid, command, app_id, args_json, outcome) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (at, uid, command, app_id, args_json, outcome),
    )
    return int(cursor.lastrowid or 0)


def list_audit(
    conn: sqlite3.Connection, limit: int, app_ids: Collection[str] | None
) -> list[AuditRecord]:
    """The newest ``limit`` rows, newest first; with ``app_ids``, only rows for those apps."""
    columns = "id, at, uid, command, app_id, args_json, outcome"
    if app_ids is None:
        rows = conn.execute(
            f"SELECT {columns} FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
    else:
        wanted = sorted(app_ids)
        marks = ", ".join("?" for _ in wanted)
        rows = conn.execute(
            f"SELECT {columns} FROM audit_log WHERE app_id IN ({marks}) ORDER BY id DESC LIMIT ?",
            (*wanted, limit),
        ).fetchall()
    return [AuditRecord.from_row(row) for row in rows]


# --- settings ---------------------------------------------------------------------------


def get_setting(conn: sqlite3.Connection, key: str) -> tuple[str, int] | None:
    """``(value, updated_at_ms)`` or ``None`` when unset."""
    row = conn.execute("SELECT value, updated_at FROM settings WHERE key = ?", (key,)).fetchone()
    return (row["value"], row["updated_at"]) if row else None


def put_setting(conn: sqlite3.Connection, key: str, value: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (key, value, now_ms),
    )


def delete_setting(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0


def schema_version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
