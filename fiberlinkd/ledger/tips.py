"""SQL for tip intents: creation, lookup, the settlement schedule, settling, failing, feeds.

Every function is a sync ``fn(conn, ...)`` run through ``Ledger.transact``/``Ledger.read``.
Settling is one transaction: the guarded state change, the ledger credit (idempotent by
``settlement:tip_intent:<id>``), the balance row and the timeline event.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs

from fiberlinkd.ledger.entries import EntryKind, append_entry

UNPAID = "UNPAID"
SETTLED = "SETTLED"
FAILED = "FAILED"


@attrs.frozen
class Tip:
    id: str
    app_id: str
    post_id: str
    from_user_id: str
    to_user_id: str
    asset: str
    amount: int
    invoice: str
    payment_hash: str
    state: str
    message: str | None
    created_at: int
    expires_at: int
    settled_at: int | None
    next_check_at: int | None
    check_count: int
    last_error: str | None
    failure_reason: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Tip:
        return cls(
            id=row["id"],
            app_id=row["app_id"],
            post_id=row["post_id"],
            from_user_id=row["from_user_id"],
            to_user_id=row["to_user_id"],
            asset=row["asset"],
            amount=row["amount"],
            invoice=row["invoice"],
            payment_hash=row["payment_hash"],
            state=row["state"],
            message=row["message"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            settled_at=row["settled_at"],
            next_check_at=row["next_check_at"],
            check_count=row["check_count"],
            last_error=row["last_error"],
            failure_reason=row["failure_reason"],
        )


def add_event(
    conn: sqlite3.Connection,
    tip_id: str,
    *,
    at: int,
    from_state: str | None,
    to_state: str,
    source: str,
    detail: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO tip_events (tip_id, at, from_state, to_state, source, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (tip_id, at, from_state, to_state, source, detail),
    )


def insert_tip(conn: sqlite3.Connection, tip: Tip) -> None:
    conn.execute(
        "INSERT INTO tip_intents (id, app_id, post_id, from_user_id, to_user_id, asset, amount,"
        " invoice, payment_hash, state, message, created_at, expires_at, settled_at,"
        " next_check_at, check_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 0)",
        (
            tip.id,
            tip.app_id,
            tip.post_id,
            tip.from_user_id,
            tip.to_user_id,
            tip.asset,
            tip.amount,
            tip.invoice,
            tip.payment_hash,
            UNPAID,
            tip.message,
            tip.created_at,
            tip.expires_at,
            tip.next_check_at,
        ),
    )
    add_event(
        conn, tip.id, at=tip.created_at, from_state=None, to_state=UNPAID, source="TIP_CREATE"
    )


def get_tip(conn: sqlite3.Connection, tip_id: str) -> Tip | None:
    row = conn.execute("SELECT * FROM tip_intents WHERE id = ?", (tip_id,)).fetchone()
    return Tip.from_row(row) if row else None


def tip_state_by_invoice(
    conn: sqlite3.Connection, app_id: str, invoice: str
) -> tuple[str, str] | None:
    """(tip id, state) of the calling app's tip with this invoice, or None."""
    row = conn.execute(
        "SELECT id, state FROM tip_intents WHERE invoice = ? AND app_id = ?", (invoice, app_id)
    ).fetchone()
    return (row["id"], row["state"]) if row else None


def due_tips(conn: sqlite3.Connection, now_ms: int, limit: int) -> list[Tip]:
    """Unpaid tips whose next check is due, oldest schedule first (walks ``tips_due``)."""
    rows = conn.execute(
        "SELECT * FROM tip_intents WHERE state = 'UNPAID' AND next_check_at <= ?"
        " ORDER BY next_check_at LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    return [Tip.from_row(r) for r in rows]


def next_due_at(conn: sqlite3.Connection) -> int | None:
    row = conn.execute(
        "SELECT min(next_check_at) AS at FROM tip_intents WHERE state = 'UNPAID'"
    ).fetchone()
    return row["at"] if row else None


def unpaid_with_amount(conn: sqlite3.Connection, asset: str, amount: int, limit: int) -> list[Tip]:
    """Unpaid tips of ``asset`` for exactly ``amount``, newest first (``tips_unpaid_amount``)."""
    rows = conn.execute(
        "SELECT * FROM tip_intents WHERE state = 'UNPAID' AND asset = ? AND amount = ?"
        " ORDER BY created_at DESC LIMIT ?",
        (asset, amount, limit),
    ).fetchall()
    return [Tip.from_row(r) for r in rows]


def unpaid_up_to_amount(
    conn: sqlite3.Connection, asset: str, max_amount: int, limit: int
) -> list[Tip]:
    """Unpaid tips of ``asset`` for at most ``max_amount``, newest first.

    Walks the ``amount <= ?`` range of ``tips_unpaid_amount`` and sorts it: the cost follows
    the open (unpaid) backlog of that asset, never the history of settled tips.
    """
    rows = conn.execute(
        "SELECT * FROM tip_intents WHERE state = 'UNPAID' AND asset = ? AND amount <= ?"
        " ORDER BY created_at DESC LIMIT ?",
        (asset, max_amount, limit),
    ).fetchall()
    return [Tip.from_row(r) for r in rows]


def unpaid_tips_by_id(conn: sqlite3.Connection, tip_ids: list[str]) -> list[Tip]:
    if not tip_ids:
        return []
    marks = ",".join("?" * len(tip_ids))
    rows = conn.execute(
        f"SELECT * FROM tip_intents WHERE state = 'UNPAID' AND id IN ({marks})", tip_ids
    ).fetchall()
    return [Tip.from_row(r) for r in rows]


def reschedule(
    conn: sqlite3.Connection,
    tip_id: str,
    *,
    next_check_at: int,
    last_error: str | None = None,
) -> None:
    """Record one check that changed nothing, and when to look again (only while UNPAID)."""
    conn.execute(
        "UPDATE tip_intents SET next_check_at = ?, check_count = check_count + 1,"
        " last_error = ? WHERE id = ? AND state = 'UNPAID'",
        (next_check_at, last_error, tip_id),
    )


def feed_time(conn: sqlite3.Connection, app_id: str, now_ms: int) -> int:
    """The ``settled_at`` for a tip settling now: strictly after every settled tip of the app.

    The plugin's notification job keeps a cursor ``(settledAt, id)`` and never looks behind
    it. A clock read before a slow node call, two settlements in one millisecond, or a clock
    step backwards could otherwise slot a tip behind a cursor already handed out, and the
    creator would never be notified. With one writer, commit order is feed order.
    """
    row = conn.execute(
        "SELECT max(settled_at) AS last FROM tip_intents WHERE app_id = ? AND state = 'SETTLED'",
        (app_id,),
    ).fetchone()
    last = row["last"] if row and row["last"] is not None else None
    return now_ms if last is None else max(now_ms, last + 1)


def settle_tip(conn: sqlite3.Connection, tip_id: str, *, now_ms: int, source: str) -> bool:
    """UNPAID (or FAILED: a late payment) → SETTLED with its credit, once.

    Returns ``True`` when this call settled the tip, ``False`` when it was already
    settled (a replay changes nothing).
    """
    tip = get_tip(conn, tip_id)
    if tip is None:
        raise LookupError(f"tip {tip_id} does not exist")
    if tip.state == SETTLED:
        return False
    updated = conn.execute(
        "UPDATE tip_intents SET state = 'SETTLED', settled_at = ?, next_check_at = NULL,"
        " check_count = check_count + 1, last_error = NULL WHERE id = ? AND state = ?",
        (feed_time(conn, tip.app_id, now_ms), tip_id, tip.state),
    ).rowcount
    if updated != 1:  # pragma: no cover - one writer connection makes this unreachable
        raise RuntimeError(f"tip {tip_id} changed state during settlement")
    append_entry(
        conn,
        app_id=tip.app_id,
        user_id=tip.to_user_id,
        asset=tip.asset,
        amount=tip.amount,
        kind=EntryKind.TIP_CREDIT,
        ref=tip.id,
        idempotency_key=f"settlement:tip_intent:{tip.id}",
        now_ms=now_ms,
    )
    late = tip.state == FAILED
    add_event(
        conn,
        tip.id,
        at=now_ms,
        from_state=tip.state,
        to_state=SETTLED,
        source=source,
        detail="LATE_SETTLEMENT" if late else None,
    )
    return True


def fail_tip(
    conn: sqlite3.Connection, tip_id: str, *, now_ms: int, reason: str, source: str
) -> bool:
    """UNPAID → FAILED with a reason. Returns whether this call changed the tip."""
    updated = conn.execute(
        "UPDATE tip_intents SET state = 'FAILED', failure_reason = ?, next_check_at = NULL"
        " WHERE id = ? AND state = 'UNPAID'",
        (reason, tip_id),
    ).rowcount
    if updated:
        add_event(
            conn,
            tip_id,
            at=now_ms,
            from_state=UNPAID,
            to_state=FAILED,
            source=source,
            detail=reason,
        )
    return bool(updated)


def record_observation(conn: sqlite3.Connection, tip_id: str, *, now_ms: int, detail: str) -> None:
    """An unexpected node answer: kept on the tip's timeline, never guessed at."""
    tip = get_tip(conn, tip_id)
    if tip is not None:
        add_event(
            conn,
            tip_id,
            at=now_ms,
            from_state=tip.state,
            to_state=tip.state,
            source="SETTLEMENT_POLLER",
            detail=detail,
        )
        conn.execute("UPDATE tip_intents SET last_error = ? WHERE id = ?", (detail, tip_id))


def settled_feed(
    conn: sqlite3.Connection, app_id: str, after: tuple[int, str] | None, limit: int
) -> list[Tip]:
    """Settled tips of one app, ascending by (settled_at, id), strictly after ``after``."""
    if after is None:
        rows = conn.execute(
            "SELECT * FROM tip_intents WHERE app_id = ? AND state = 'SETTLED'"
            " ORDER BY settled_at, id LIMIT ?",
            (app_id, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM tip_intents WHERE app_id = ? AND state = 'SETTLED'"
            " AND (settled_at, id) > (?, ?) ORDER BY settled_at, id LIMIT ?",
            (app_id, after[0], after[1], limit),
        ).fetchall()
    return [Tip.from_row(r) for r in rows]


def user_tips(conn: sqlite3.Connection, app_id: str, user_id: str, limit: int) -> list[Tip]:
    """A user's newest tips, sent or received (two index walks, merged)."""
    rows = conn.execute(
        "SELECT * FROM (SELECT * FROM tip_intents WHERE app_id = ? AND to_user_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?)"
        " UNION ALL SELECT * FROM (SELECT * FROM tip_intents WHERE app_id = ? AND from_user_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?)",
        (app_id, user_id, limit, app_id, user_id, limit),
    ).fetchall()
    tips = sorted((Tip.from_row(r) for r in rows), key=lambda t: (t.created_at, t.id), reverse=True)
    return tips[:limit]


def user_tip_counts(conn: sqlite3.Connection, app_id: str, user_id: str) -> dict[str, int]:
    """A user's tips by state, sent and received (kept as rows by triggers, migration 0006)."""
    counts = {UNPAID: 0, SETTLED: 0, FAILED: 0}
    for row in conn.execute(
        "SELECT state, n FROM user_tip_counts WHERE app_id = ? AND user_id = ?", (app_id, user_id)
    ):
        counts[row["state"]] = row["n"]
    return counts


def count_user_tips(conn: sqlite3.Connection, app_id: str, user_id: str) -> dict[str, int]:
    """The same counts recounted from ``tip_intents`` (for checks; grows with history)."""
    counts = {UNPAID: 0, SETTLED: 0, FAILED: 0}
    for column in ("to_user_id", "from_user_id"):
        for row in conn.execute(
            f"SELECT state, count(*) AS n FROM tip_intents WHERE app_id = ? AND {column} = ?"
            " GROUP BY state",
            (app_id, user_id),
        ):
            counts[row["state"]] += row["n"]
    return counts


def app_tip_counts(conn: sqlite3.Connection, app_id: str) -> dict[str, int]:
    """An app's tips by state (kept as rows by triggers, migration 0006)."""
    counts = {UNPAID: 0, SETTLED: 0, FAILED: 0}
    for row in conn.execute("SELECT state, n FROM app_tip_counts WHERE app_id = ?", (app_id,)):
        counts[row["state"]] = row["n"]
    return counts


def count_app_tips(conn: sqlite3.Connection, app_id: str) -> dict[str, int]:
    """The same counts recounted from ``tip_intents`` (for checks; grows with history)."""
    counts = {UNPAID: 0, SETTLED: 0, FAILED: 0}
    for row in conn.execute(
        "SELECT state, count(*) AS n FROM tip_intents WHERE app_id = ? GROUP BY state", (app_id,)
    ):
        counts[row["state"]] = row["n"]
    return counts


def pending_incoming(conn: sqlite3.Connection, app_id: str, user_id: str, asset: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(amount), 0) AS total FROM tip_intents"
        " WHERE app_id = ? AND to_user_id = ? AND state = 'UNPAID' AND asset = ?",
        (app_id, user_id, asset),
    ).fetchone()
    return int(row["total"])


def recent_app_tips(
    conn: sqlite3.Connection, app_id: str, state: str | None, limit: int
) -> list[Tip]:
    if state is None:
        rows = conn.execute(
            "SELECT * FROM tip_intents WHERE app_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (app_id, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM tip_intents WHERE app_id = ? AND state = ?"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (app_id, state, limit),
        ).fetchall()
    return [Tip.from_row(r) for r in rows]


def unpaid_backlog(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) AS n FROM tip_intents WHERE state = 'UNPAID'").fetchone()
    return int(row["n"])


def count_tips_in_window(
    conn: sqlite3.Connection, *, app_id: str | None, since_ms: int, until_ms: int
) -> int:
    """How many tips were created in [since, until) (of one app if given), for backfill."""
    sql = "SELECT count(*) AS n FROM tip_intents WHERE created_at >= ? AND created_at < ?"
    params: list[Any] = [since_ms, until_ms]
    if app_id is not None:
        sql += " AND app_id = ?"
        params.append(app_id)
    row = conn.execute(sql, params).fetchone()
    return int(row["n"])


def tips_in_window(
    conn: sqlite3.Connection,
    *,
    app_id: str | None,
    since_ms: int,
    until_ms: int,
    after_id: str,
    limit: int,
) -> list[Tip]:
    """A page of tips created in [since, until), for backfill; ordered by id."""
    params: list[Any] = [since_ms, until_ms, after_id]
    app_clause = ""
    if app_id is not None:
        app_clause = " AND app_id = ?"
        params.append(app_id)
    params.append(limit)
    rows = conn.execute(
        "SELECT * FROM tip_intents WHERE created_at >= ? AND created_at < ? AND id > ?"
        + app_clause
        + " ORDER BY id LIMIT ?",
        params,
    ).fetchall()
    return [Tip.from_row(r) for r in rows]
