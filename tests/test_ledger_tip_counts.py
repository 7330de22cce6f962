"""Tip counts kept as rows (migration 0006) equal a recount on every path.

Rules: ``user_tip_counts`` and ``app_tip_counts`` are maintained by triggers, so whatever
inserts a tip or changes its state (tip.create, settlement, late settlement, failure,
deletion) leaves the rows equal to counting ``tip_intents`` directly; the migration fills
the rows for tips that existed before it; the dashboard reads the rows, so its cost does
not grow with a user's or an app's history.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.ledger.store import MIGRATIONS, connect, migrate

USERS = ("u1", "u2", "u3")
APPS = ("forum", "other")


def _tip(app_id: str, from_user: str, to_user: str, n: int) -> tipsql.Tip:
    return tipsql.Tip(
        id=uuid.uuid4().hex,
        app_id=app_id,
        post_id="1",
        from_user_id=from_user,
        to_user_id=to_user,
        asset="CKB",
        amount=100 + n,
        invoice=f"fibd-test-{n}-{uuid.uuid4().hex}",
        payment_hash=f"0x{uuid.uuid4().hex}{uuid.uuid4().hex}",
        state=tipsql.UNPAID,
        message=None,
        created_at=1_000 + n,
        expires_at=10_000_000,
        settled_at=None,
        next_check_at=2_000,
        check_count=0,
        last_error=None,
        failure_reason=None,
    )


def _assert_counts_match(conn: sqlite3.Connection) -> None:
    for app_id in APPS:
        for user in USERS:
            kept = tipsql.user_tip_counts(conn, app_id, user)
            assert kept == tipsql.count_user_tips(conn, app_id, user), (app_id, user)
        assert tipsql.app_tip_counts(conn, app_id) == tipsql.count_app_tips(conn, app_id)
    for table in ("user_tip_counts", "app_tip_counts"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE n < 0").fetchone()[0] == 0


def _db(path: Path, migrations: int | None = None) -> sqlite3.Connection:
    conn = connect(path)
    migrate(conn, MIGRATIONS if migrations is None else MIGRATIONS[:migrations])
    for app_id in APPS:
        insert_app(conn, app_id, "s" * 64, 0)
    return conn


OPS = st.lists(
    st.tuples(
        st.sampled_from(("create", "settle", "fail", "delete")),
        st.sampled_from(APPS),
        st.sampled_from(USERS),
        st.sampled_from(USERS),
        st.integers(min_value=0, max_value=30),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_counts_equal_a_recount_after_any_sequence_of_changes(
    tmp_path: Path, ops: list[tuple[str, str, str, str, int]]
) -> None:
    db = tmp_path / f"{uuid.uuid4().hex}.sqlite3"
    conn = _db(db)
    tip_ids: list[str] = []
    for n, (op, app_id, sender, recipient, pick) in enumerate(ops):
        conn.execute("BEGIN IMMEDIATE")
        if op == "create" or not tip_ids:
            tip = _tip(app_id, sender, recipient, n)
            tipsql.insert_tip(conn, tip)
            tip_ids.append(tip.id)
        else:
            tip_id = tip_ids[pick % len(tip_ids)]
            if op == "settle":  # from UNPAID, or late from FAILED; a replay changes nothing
                tipsql.settle_tip(conn, tip_id, now_ms=5_000 + n, source="TEST")
            elif op == "fail":
                tipsql.fail_tip(conn, tip_id, now_ms=5_000 + n, reason="EXPIRED", source="TEST")
            else:
                for table in ("ledger_entries", "tip_events"):
                    column = "ref" if table == "ledger_entries" else "tip_id"
                    conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (tip_id,))
                conn.execute("DELETE FROM tip_intents WHERE id = ?", (tip_id,))
                tip_ids.remove(tip_id)
        conn.execute("COMMIT")
        _assert_counts_match(conn)
    conn.close()


def test_migration_counts_the_tips_that_existed_before_it(tmp_path: Path) -> None:
    conn = _db(tmp_path / "old.sqlite3", migrations=5)
    conn.execute("BEGIN IMMEDIATE")
    made = []
    for n, (sender, recipient) in enumerate([("u1", "u2"), ("u2", "u1"), ("u1", "u3")] * 3):
        tip = _tip("forum", sender, recipient, n)
        tipsql.insert_tip(conn, tip)
        made.append(tip.id)
    tipsql.settle_tip(conn, made[0], now_ms=5_000, source="TEST")
    tipsql.fail_tip(conn, made[1], now_ms=5_000, reason="EXPIRED", source="TEST")
    conn.execute("COMMIT")
    found = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'user_tip_counts'")
    assert found.fetchone()[0] == 0
    migrate(conn)
    _assert_counts_match(conn)
    # u1 is in all 9 tips, u2 in 6, u3 in 3; made[0] (u1->u2) settled, made[1] (u2->u1) failed.
    expected = {
        "u1": {tipsql.UNPAID: 7, tipsql.SETTLED: 1, tipsql.FAILED: 1},
        "u2": {tipsql.UNPAID: 4, tipsql.SETTLED: 1, tipsql.FAILED: 1},
        "u3": {tipsql.UNPAID: 3, tipsql.SETTLED: 0, tipsql.FAILED: 0},
    }
    for user, counts in expected.items():
        assert tipsql.user_tip_counts(conn, "forum", user) == counts
    assert tipsql.app_tip_counts(conn, "forum") == {
        tipsql.UNPAID: 7,
        tipsql.SETTLED: 1,
        tipsql.FAILED: 1,
    }
    conn.close()
