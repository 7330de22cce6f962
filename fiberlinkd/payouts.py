"""The payouts kill switch, shared by the admin commands, the withdrawal executor and the
reconciler.

Frozen means: no new payment leaves the node. The switch is a row in ``settings`` (key
:data:`PAYOUTS_FROZEN_KEY`, value JSON ``{"reason", "by", "since_ms"}``); no row means
payouts run. It lives in the database, not in memory, so it survives restarts and every
actor sees the same answer inside its own transaction.

Usage (all sync, inside ``ledger.transact`` / ``ledger.read``)::

    frozen, reason = is_frozen(conn)          # the executor checks this before each claim
    set_frozen(conn, "balance mismatch app=forum", now_ms, by="reconciler")
    clear_frozen(conn, now_ms)                # `fiberlinkd admin unfreeze`

The ``fiberlinkd_payouts_frozen`` gauge follows every read and write of the switch.
"""

from __future__ import annotations

import json
import sqlite3

import attrs
from prometheus_client import Gauge

from fiberlinkd.ledger.admin import delete_setting, get_setting, put_setting

PAYOUTS_FROZEN_KEY = "payouts_frozen"
REASON_MAX_CHARS = 500

PAYOUTS_FROZEN = Gauge(
    "fiberlinkd_payouts_frozen", "1 while payouts are frozen (kill switch), else 0"
)


@attrs.frozen
class FrozenState:
    reason: str
    by: str  # who froze: "uid 1000 (alice)", "reconciler", ...
    since_ms: int  # unix ms


def frozen_state(conn: sqlite3.Connection) -> FrozenState | None:
    """The switch with its details, or ``None`` while payouts run."""
    setting = get_setting(conn, PAYOUTS_FROZEN_KEY)
    if setting is None:
        PAYOUTS_FROZEN.set(0)
        return None
    value, updated_at = setting
    PAYOUTS_FROZEN.set(1)
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # A hand-edited row still freezes: fail safe, never open.
        return FrozenState(reason=value, by="unknown", since_ms=updated_at)
    return FrozenState(
        reason=str(data.get("reason", "")),
        by=str(data.get("by", "unknown")),
        since_ms=int(data.get("since_ms", updated_at)),
    )


def is_frozen(conn: sqlite3.Connection) -> tuple[bool, str | None]:
    """``(True, reason)`` while payouts are frozen, else ``(False, None)``."""
    state = frozen_state(conn)
    return (False, None) if state is None else (True, state.reason)


def set_frozen(conn: sqlite3.Connection, reason: str, now_ms: int, by: str) -> FrozenState:
    """Freeze payouts (or replace the reason of an existing freeze, keeping its start).

    Errors: ``ValueError`` for an empty reason (a freeze must say why).
    """
    reason = reason.strip()[:REASON_MAX_CHARS]
    if not reason:
        raise ValueError("a payouts freeze needs a reason")
    previous = frozen_state(conn)
    since_ms = previous.since_ms if previous is not None else now_ms
    state = FrozenState(reason=reason, by=by, since_ms=since_ms)
    put_setting(
        conn,
        PAYOUTS_FROZEN_KEY,
        json.dumps({"reason": reason, "by": by, "since_ms": since_ms}),
        now_ms,
    )
    PAYOUTS_FROZEN.set(1)
    return state


def clear_frozen(conn: sqlite3.Connection, now_ms: int) -> bool:
    """Unfreeze payouts; returns whether they were frozen. Wake the executor afterwards."""
    del now_ms  # the row is deleted; kept in the signature for symmetry and future history
    removed = delete_setting(conn, PAYOUTS_FROZEN_KEY)
    PAYOUTS_FROZEN.set(0)
    return removed
