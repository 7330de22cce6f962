"""Node parity and solvency: the ledger against what the Fiber node says.

Rules: a small stateful fake FiberNode (fakes, not mocks) that is made to disagree on
purpose — a different amount, an unpaid invoice, a payment the ledger does not know, too
little channel balance, no answer at all. CRITICAL disagreements freeze payouts; a node
outage is a warning, never a freeze. Pacing is asserted in virtual time (trio's fake clock).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fiberlinkd.fnn.types import InvoiceStatus, PaymentStatus
from fiberlinkd.ledger.reconcile import CRITICAL, INFO, WARNING, get_cursor
from fiberlinkd.reconciler import parity
from tests.test_reconciler_support import (
    CKB,
    USDI_SCRIPT,
    FakeNode,
    add_tip,
    codes,
    first,
    frozen_reason,
    open_runtime,
    phash,
    ready_channel,
    reconcile,
    seed_clean,
)


async def test_a_node_reporting_a_different_amount_for_a_settled_tip_is_critical(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.issue(phash("tip3"), 3 * CKB, InvoiceStatus.PAID)  # the ledger credited 4 CKB
        run = await reconcile(rt)
        finding = first(run, "TIP_AMOUNT_MISMATCH")
        assert finding.severity == CRITICAL
        assert (finding.refs["amount"], finding.refs["node_amount"]) == (4 * CKB, 3 * CKB)
        assert "TIP_AMOUNT_MISMATCH" in (await frozen_reason(rt) or "")

        node.issue(phash("tip3"), 4 * CKB, InvoiceStatus.PAID)
        assert (await reconcile(rt)).status == "CLEAN"


async def test_a_settled_tip_whose_invoice_is_not_paid_or_unknown_on_the_node_is_critical(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.issue(phash("tip0"), CKB, InvoiceStatus.OPEN)
        del node.invoices[phash("tip1")]
        run = await reconcile(rt)
        assert first(run, "TIP_NOT_PAID_ON_NODE").refs["node_status"] == "Open"
        assert first(run, "TIP_INVOICE_UNKNOWN").refs["tip_id"] == "tip1"


async def test_an_outgoing_payment_no_withdrawal_knows_is_critical_and_freezes_payouts(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        stranger = phash("someone-else")
        node.paid_out(stranger, "fibdother", 50 * CKB, 10)
        run = await reconcile(rt)
        finding = first(run, "UNKNOWN_OUTGOING_PAYMENT")
        assert finding.refs["payment_hash"] == stranger
        assert "UNKNOWN_OUTGOING_PAYMENT" in (await frozen_reason(rt) or "")


async def test_a_withdrawal_the_ledger_failed_but_the_node_paid_is_critical(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.paid_out(phash("w-failed"), "fibdw-failed", CKB, 0, PaymentStatus.SUCCESS)
        run = await reconcile(rt)
        assert first(run, "PAID_WITHDRAWAL_MARKED_FAILED").refs["withdrawal_id"] == "w-failed"


async def test_an_fnn_without_list_payments_is_noted_as_info_and_the_run_stays_clean(
    tmp_path: Path,
) -> None:
    node = FakeNode(list_payments_supported=False)
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        run = await reconcile(rt)
        assert codes(run) == {"LIST_PAYMENTS_UNSUPPORTED"}
        assert first(run, "LIST_PAYMENTS_UNSUPPORTED").severity == INFO
        assert run.status == "CLEAN"
        assert await frozen_reason(rt) is None


async def test_a_completed_payout_the_node_does_not_back_is_critical(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.paid_out(phash("w-done"), "fibdw-done", CKB, 400, PaymentStatus.INFLIGHT)
        del node.payments[phash("w-carol")]
        run = await reconcile(rt)
        assert first(run, "PAYOUT_NOT_SUCCESS_ON_NODE").refs["node_status"] == "Inflight"
        assert first(run, "PAYOUT_UNKNOWN_TO_NODE").refs["withdrawal_id"] == "w-carol"


async def test_a_completed_payout_with_another_fee_or_invoice_amount_is_critical(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.paid_out(phash("w-done"), "fibdw-done", 2 * CKB, 900)
        run = await reconcile(rt)
        assert first(run, "PAYOUT_FEE_MISMATCH").refs["node_fee"] == 900
        assert first(run, "PAYOUT_AMOUNT_MISMATCH").refs["invoice_amount"] == 2 * CKB


async def test_a_shortfall_is_reported_with_the_amounts_and_freezes_payouts(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        owed = await rt.ledger.read(
            lambda c: c.execute("SELECT SUM(settled) FROM balances WHERE asset = 'CKB'").fetchone()[
                0
            ]
        )
        processing = CKB + 1_000  # w-flight may have left the node already
        node.channels = [
            ready_channel(owed - processing - 1),
            ready_channel(10**12, state="Closed"),
            ready_channel(10_000_000, USDI_SCRIPT),
        ]
        run = await reconcile(rt)
        finding = first(run, "SOLVENCY_SHORTFALL")
        assert finding.refs == {
            "asset": "CKB",
            "owed": owed - processing,
            "node_spendable": owed - processing - 1,
            "shortfall": 1,
            "owed_total": owed,
            "processing": processing,
        }
        assert "SOLVENCY_SHORTFALL" in (await frozen_reason(rt) or "")
        assert run.summary["solvency"]["USDI"]["node_spendable"] == 10_000_000

        node.channels[0] = ready_channel(owed - processing)  # in-flight payout counts as gone
        assert (await reconcile(rt)).status == "CLEAN"


async def test_a_node_that_does_not_answer_is_a_warning_and_never_a_freeze(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        node.down = True
        run = await reconcile(rt)
        assert codes(run) == {"NODE_UNAVAILABLE"}
        assert first(run, "NODE_UNAVAILABLE").severity == WARNING
        assert run.status == "PROBLEMS"
        assert await frozen_reason(rt) is None
        assert node.calls == ["list_channels"]  # stops at the first failed call


async def test_unpaid_tips_past_expiry_plus_grace_are_flagged(
    tmp_path: Path, autojump_clock: object
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        await trio.sleep(3600 + 299)
        assert "UNPAID_TIP_OVERDUE" not in codes(await reconcile(rt))
        await trio.sleep(2)
        run = await reconcile(rt)
        finding = first(run, "UNPAID_TIP_OVERDUE")
        assert finding.severity == WARNING
        assert finding.refs == {"count": 1, "tip_ids": ["tip-unpaid"]}


async def test_parity_checks_the_next_slice_each_run_and_wraps_around(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parity, "TIPS_PER_RUN", 3)
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)  # 9 SETTLED tips: tip0..tip6, tip-late, tip-usdi
        seen: list[int] = []
        cursors: list[str] = []
        for _ in range(4):
            node.calls.clear()
            run = await reconcile(rt)
            seen.append(run.summary["settled_tips_checked"])
            cursors.append(await rt.ledger.read(get_cursor, parity.CURSOR_TIPS))
            assert node.calls.count("get_invoice") == seen[-1]
        assert seen == [3, 3, 3, 0]
        assert cursors == ["tip0", "tip3", "tip6", ""]  # ids sort: tip-late, tip-usdi, tip0..


async def test_node_calls_are_paced_to_the_configured_rate(
    tmp_path: Path, autojump_clock: object
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node, max_node_calls_per_s=2.0) as rt:
        await seed_clean(rt, node)
        start = trio.current_time()
        await reconcile(rt)
        calls = len(node.calls)
        # n calls at 2/s: the last one starts (n - 1) / 2 s after the first.
        assert trio.current_time() - start == pytest.approx((calls - 1) / 2)


async def test_a_settled_usdi_tip_without_a_usdi_udt_on_the_node_is_unchecked_not_short(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        rt.node_state.info = None  # the node's UDT list is not known yet
        await rt.ledger.transact(add_tip, "t-usdi", 5, now_ms=rt.clock.now_ms(), asset="USDI")
        node.issue(phash("t-usdi"), 5, InvoiceStatus.PAID)
        run = await reconcile(rt)
        assert codes(run) == {"SOLVENCY_UNCHECKED"}
        assert first(run, "SOLVENCY_UNCHECKED").refs == {"asset": "USDI", "owed": 5}
