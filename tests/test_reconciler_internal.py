"""The reconciler's internal checks: the ledger proved against itself.

Rules: a real SQLite file in tmp_path; the world is seeded through the real ledger
functions (so it is correct by construction) and then broken on purpose with raw SQL behind
the daemon's back. Each test sees the right finding, the payouts freeze for a CRITICAL one,
and a clean run after the repair — while the freeze stays until an operator lifts it.
Chunks are 3 rows, so every check crosses chunk boundaries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from fiberlinkd.ledger.entries import EntryKind, append_entry, entry_hash
from fiberlinkd.ledger.reconcile import CRITICAL, WARNING, Finding
from fiberlinkd.payouts import clear_frozen, set_frozen
from fiberlinkd.reconciler.checks import FindingSink
from tests.test_reconciler_support import (
    APP,
    CKB,
    FakeNode,
    codes,
    first,
    frozen_reason,
    open_runtime,
    reconcile,
    seed_clean,
    tamper,
)


async def test_a_correct_ledger_gives_a_clean_run_and_leaves_payouts_running(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        run = await reconcile(rt)
        assert run.findings == ()
        assert run.status == "CLEAN"
        assert run.summary["tips_checked"] == 11
        assert run.summary["withdrawals_checked"] == 7
        assert run.summary["entries_checked"] > 20
        assert run.summary["findings"] == {"INFO": 0, "WARNING": 0, "CRITICAL": 0}
        assert await frozen_reason(rt) is None


async def test_an_edited_balance_is_a_critical_mismatch_that_freezes_payouts(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE balances SET settled = settled + 5 WHERE user_id = 'carol'")

        run = await reconcile(rt)

        assert run.status == "PROBLEMS"
        finding = first(run, "BALANCE_MISMATCH")
        assert finding.severity == CRITICAL
        assert finding.refs["user_id"] == "carol"
        assert finding.refs["settled"] - finding.refs["entries_settled"] == 5
        reason = await frozen_reason(rt)
        assert reason is not None
        assert f"reconciler run {run.id}: BALANCE_MISMATCH" in reason

        await tamper(rt, "UPDATE balances SET settled = settled - 5 WHERE user_id = 'carol'")
        repaired = await reconcile(rt)
        assert repaired.status == "CLEAN"
        assert await frozen_reason(rt) == reason  # never auto-unfreeze


async def test_a_freeze_lifted_by_the_operator_stays_lifted_after_a_clean_run(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE balances SET reserved = reserved + 1 WHERE user_id = 'bob'")
        assert {"BALANCE_MISMATCH", "RESERVATION_MISMATCH"} <= codes(await reconcile(rt))
        await tamper(rt, "UPDATE balances SET reserved = reserved - 1 WHERE user_id = 'bob'")
        await rt.ledger.transact(clear_frozen, rt.clock.now_ms())
        assert (await reconcile(rt)).status == "CLEAN"
        assert await frozen_reason(rt) is None


async def test_an_operators_freeze_reason_is_not_overwritten_by_the_reconciler(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await rt.ledger.transact(set_frozen, "maintenance", rt.clock.now_ms(), "uid 0 (root)")
        await tamper(rt, "UPDATE balances SET settled = settled + 1 WHERE user_id = 'bob'")
        assert "BALANCE_MISMATCH" in codes(await reconcile(rt))
        assert await frozen_reason(rt) == "maintenance"


async def test_an_edited_entry_breaks_the_hash_chain_at_that_entry(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        # A careful forger moves the balance too, so only the chain can tell.
        await tamper(rt, "UPDATE ledger_entries SET amount = amount + 7 WHERE id = 5")
        owner = await rt.ledger.read(
            lambda c: tuple(
                c.execute(
                    "SELECT app_id, user_id, asset FROM ledger_entries WHERE id = 5"
                ).fetchone()
            )
        )
        await tamper(
            rt,
            "UPDATE balances SET settled = settled + 7"
            " WHERE app_id = ? AND user_id = ? AND asset = ?",
            *owner,
        )
        await tamper(
            rt,
            "UPDATE tip_intents SET amount = amount + 7 WHERE id ="
            " (SELECT ref FROM ledger_entries WHERE id = 5)",
        )

        run = await reconcile(rt)

        # Only the chain (and the node, which was paid the original amount) can tell.
        assert codes(run) == {"CHAIN_BROKEN", "TIP_AMOUNT_MISMATCH"}
        broken = first(run, "CHAIN_BROKEN")
        assert broken.refs["entry_id"] == 5
        assert "edited" in broken.message
        assert await frozen_reason(rt) is not None

        await tamper(rt, "UPDATE ledger_entries SET amount = amount - 7 WHERE id = 5")
        await tamper(
            rt,
            "UPDATE balances SET settled = settled - 7"
            " WHERE app_id = ? AND user_id = ? AND asset = ?",
            *owner,
        )
        await tamper(
            rt,
            "UPDATE tip_intents SET amount = amount - 7 WHERE id ="
            " (SELECT ref FROM ledger_entries WHERE id = 5)",
        )
        assert (await reconcile(rt)).status == "CLEAN"


async def test_a_deleted_entry_is_located_as_a_gap_in_the_chain(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "DELETE FROM ledger_entries WHERE id = 4")
        run = await reconcile(rt)
        broken = first(run, "CHAIN_BROKEN")
        assert broken.refs["entry_id"] == 5
        assert broken.refs["previous_id"] == 3
        assert "BALANCE_MISMATCH" in codes(run)


async def test_a_fully_rehashed_rewrite_is_caught_by_the_anchor_of_the_last_clean_run(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        assert (await reconcile(rt)).status == "CLEAN"

        def rewrite(conn: sqlite3.Connection) -> None:
            # Change the created_at of entry 1 and recompute the whole chain consistently.
            conn.execute("UPDATE ledger_entries SET created_at = created_at + 1 WHERE id = 1")
            prev = "0" * 64
            for row in conn.execute("SELECT * FROM ledger_entries ORDER BY id").fetchall():
                digest = entry_hash(
                    prev_hash=prev,
                    entry_id=row["id"],
                    app_id=row["app_id"],
                    user_id=row["user_id"],
                    asset=row["asset"],
                    amount=row["amount"],
                    reserved_delta=row["reserved_delta"],
                    kind=row["kind"],
                    ref=row["ref"],
                    idempotency_key=row["idempotency_key"],
                    created_at=row["created_at"],
                )
                conn.execute(
                    "UPDATE ledger_entries SET prev_hash = ?, entry_hash = ? WHERE id = ?",
                    (prev, digest, row["id"]),
                )
                prev = digest

        await rt.ledger.transact(rewrite)
        run = await reconcile(rt)
        assert codes(run) == {"CHAIN_ANCHOR_MISMATCH"}
        assert first(run, "CHAIN_ANCHOR_MISMATCH").severity == CRITICAL


async def test_a_settled_tip_without_its_credit_is_critical(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(
            rt, "UPDATE tip_intents SET state = 'SETTLED', settled_at = 1 WHERE id = 'tip-unpaid'"
        )
        run = await reconcile(rt)
        finding = first(run, "SETTLED_TIP_MISSING_CREDIT")
        assert finding.refs["tip_id"] == "tip-unpaid"
        assert finding.refs["amount"] == 5 * CKB
        await tamper(
            rt, "UPDATE tip_intents SET state = 'UNPAID', settled_at = NULL WHERE id = 'tip-unpaid'"
        )
        assert "SETTLED_TIP_MISSING_CREDIT" not in codes(await reconcile(rt))


async def test_a_credit_on_a_tip_that_is_not_settled_is_critical(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(
            rt, "UPDATE tip_intents SET state = 'FAILED', settled_at = NULL WHERE id = 'tip2'"
        )
        run = await reconcile(rt)
        finding = first(run, "UNSETTLED_TIP_HAS_CREDIT")
        assert finding.refs["tip_id"] == "tip2"
        assert len(finding.refs["entry_ids"]) == 1


async def test_a_tip_amount_changed_after_its_credit_is_a_credit_amount_mismatch(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE tip_intents SET amount = 999 WHERE id = 'tip3'")
        run = await reconcile(rt)
        finding = first(run, "CREDIT_AMOUNT_MISMATCH")
        assert (finding.refs["amount"], finding.refs["credited"]) == (999, 4 * CKB)


async def test_a_second_credit_for_one_tip_is_a_duplicate_with_a_malformed_key(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await rt.ledger.transact(
            lambda c: append_entry(
                c,
                app_id=APP,
                user_id="bob",
                asset="CKB",
                amount=2 * CKB,
                kind=EntryKind.TIP_CREDIT,
                ref="tip1",
                idempotency_key="replay:tip1",
                now_ms=1,
            )
        )
        run = await reconcile(rt)
        assert {"DUPLICATE_CREDIT", "MALFORMED_ENTRY_KEY"} <= codes(run)
        assert first(run, "DUPLICATE_CREDIT").refs["credited_total"] == 4 * CKB


async def test_a_credit_for_a_tip_that_does_not_exist_is_an_orphan(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await rt.ledger.transact(
            lambda c: append_entry(
                c,
                app_id=APP,
                user_id="mallory",
                asset="CKB",
                amount=CKB,
                kind=EntryKind.TIP_CREDIT,
                ref="ghost",
                idempotency_key="settlement:tip_intent:ghost",
                now_ms=1,
            )
        )
        run = await reconcile(rt)
        assert codes(run) >= {"ORPHAN_CREDIT"}
        assert first(run, "ORPHAN_CREDIT").refs["user_id"] == "mallory"


async def test_a_withdrawal_marked_completed_without_a_debit_is_critical(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE withdrawals SET state = 'COMPLETED' WHERE id = 'w-pending'")
        run = await reconcile(rt)
        assert {
            "COMPLETED_WITHDRAWAL_MISSING_DEBIT",
            "COMPLETED_WITHDRAWAL_MISSING_EVIDENCE",  # no fee_paid
            "RESERVATION_NOT_RELEASED",
            "RESERVATION_MISMATCH",
        } <= codes(run)
        await tamper(rt, "UPDATE withdrawals SET state = 'PENDING' WHERE id = 'w-pending'")
        assert (await reconcile(rt)).status == "CLEAN"


async def test_a_completed_withdrawal_without_its_payment_hash_lacks_evidence(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE withdrawals SET payment_hash = NULL WHERE id = 'w-done'")
        run = await reconcile(rt)
        assert first(run, "COMPLETED_WITHDRAWAL_MISSING_EVIDENCE").refs["withdrawal_id"] == (
            "w-done"
        )


async def test_a_debit_that_differs_from_amount_plus_fee_is_a_debit_mismatch(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE withdrawals SET fee_paid = 100 WHERE id = 'w-done'")
        run = await reconcile(rt)
        finding = first(run, "DEBIT_AMOUNT_MISMATCH")
        assert (finding.refs["debited"], finding.refs["expected"]) == (CKB + 400, CKB + 100)


async def test_a_failed_withdrawal_that_kept_its_reservation_is_not_released(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE withdrawals SET state = 'FAILED' WHERE id = 'w-pending'")
        run = await reconcile(rt)
        finding = first(run, "RESERVATION_NOT_RELEASED")
        assert finding.refs["withdrawal_id"] == "w-pending"
        assert finding.refs["reserved"] == CKB + 1_000
        assert (
            first(run, "RESERVATION_MISMATCH").refs["in_flight"] + CKB + 1_000
            == (first(run, "RESERVATION_MISMATCH").refs["reserved"])
        )


async def test_a_debit_on_a_withdrawal_that_is_not_completed_is_critical(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "UPDATE withdrawals SET state = 'PROCESSING' WHERE id = 'w-done'")
        run = await reconcile(rt)
        assert "UNCOMPLETED_WITHDRAWAL_HAS_DEBIT" in codes(run)


async def test_entries_whose_owner_has_no_balance_row_are_found(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await tamper(rt, "DELETE FROM balances WHERE user_id = 'dave'")
        run = await reconcile(rt)
        finding = first(run, "ENTRY_WITHOUT_BALANCE")
        assert finding.refs["user_id"] == "dave"


async def test_a_withdrawal_processing_past_the_threshold_is_a_warning_that_does_not_freeze(
    tmp_path: Path, autojump_clock: object
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node, stuck_processing_s=900.0) as rt:
        await seed_clean(rt, node)
        assert (await reconcile(rt)).status == "CLEAN"
        await trio.sleep(901)
        run = await reconcile(rt)
        assert codes(run) == {"STUCK_PROCESSING"}
        finding = first(run, "STUCK_PROCESSING")
        assert finding.severity == WARNING
        assert finding.refs["withdrawal_id"] == "w-flight"
        assert run.status == "PROBLEMS"
        assert await frozen_reason(rt) is None


def test_finding_sink_keeps_a_bounded_number_per_code_and_counts_the_rest() -> None:
    sink = FindingSink(max_per_code=2)
    for i in range(5):
        sink.add(Finding(CRITICAL, "X", f"x{i}", {}))
    sink.add(Finding(WARNING, "Y", "y", {}))
    listed = sink.findings()
    assert [f.message for f in listed if f.code == "X"][:2] == ["x0", "x1"]
    assert listed[-1].refs == {"total": 5, "listed": 2}
    assert sink.counts() == {"INFO": 0, "WARNING": 1, "CRITICAL": 5}
