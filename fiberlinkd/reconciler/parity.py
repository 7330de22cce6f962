"""Node parity and solvency: the ledger against what the Fiber node says.

Bounded and incremental: each run checks the next slice of SETTLED tips, COMPLETED Fiber
withdrawals and the node's Success payments, resuming from cursors kept in ``settings``
(``reconciler.cursor.*``) and wrapping around at the end; a cursor only moves past what was
actually checked. Every node call waits its turn on a :class:`CallPacer`
(``[reconciler] max_node_calls_per_s``) and is bounded by :data:`NODE_CALL_BOUND_S`.

Codes:

- ``TIP_NOT_PAID_ON_NODE`` / ``TIP_INVOICE_UNKNOWN`` / ``TIP_AMOUNT_MISMATCH`` (CRITICAL): a
  SETTLED tip whose invoice the node does not report ``Paid`` for the same amount.
- ``UNPAID_TIP_OVERDUE`` (WARNING): UNPAID tips past expiry + ``[settlement] expiry_grace_s``.
- ``PAYOUT_NOT_SUCCESS_ON_NODE`` / ``PAYOUT_UNKNOWN_TO_NODE`` / ``PAYOUT_AMOUNT_MISMATCH`` /
  ``PAYOUT_FEE_MISMATCH`` (CRITICAL): a COMPLETED Fiber withdrawal the node's payment does not
  back (``get_payment`` and ``parse_invoice`` of its invoice).
- ``UNKNOWN_OUTGOING_PAYMENT`` (CRITICAL): ``list_payments`` shows a Success payment no
  withdrawal row knows. ``PAID_WITHDRAWAL_MARKED_FAILED`` (CRITICAL): one that the ledger
  has FAILED (its reservation was released, the money left anyway).
  ``LIST_PAYMENTS_UNSUPPORTED`` (INFO): FNN < 0.8 has no ``list_payments``.
- ``SOLVENCY_SHORTFALL`` (CRITICAL): per asset, the node's spendable channel balance (plus,
  for CKB with on-chain payouts, the hot wallet's balance) is below what fiberlinkd owes.
  ``SOLVENCY_UNCHECKED`` (WARNING): a UDT asset the node does not list, or CKB while the
  CKB node does not report the hot wallet.
- ``NODE_UNAVAILABLE`` (WARNING): the node did not answer; the rest of the node checks wait
  for the next run. ``NODE_ERROR`` (WARNING): an unexpected node answer for one item.

Solvency race: a payout leaves the node before the ledger debits it, so PROCESSING
withdrawals count as possibly gone (``Owed.floor``); and the owed totals are read before
*and* after ``list_channels``, taking the smaller, so neither a tip credited nor a payout
sent while the node was being asked produces a false shortfall.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from fiberlinkd.clock import Clock
from fiberlinkd.fnn.errors import (
    FnnError,
    FnnNodeError,
    FnnTransportError,
    is_invoice_not_found,
    is_payment_session_not_found,
    is_unknown_method,
)
from fiberlinkd.fnn.types import Channel, FiberNode, InvoiceStatus, NodeInfo, PaymentStatus
from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.reconcile import (
    CRITICAL,
    INFO,
    WARNING,
    Finding,
    Owed,
    completed_fiber_withdrawals_after,
    get_cursor,
    overdue_unpaid_tips,
    owed_per_asset,
    put_cursor,
    settled_tips_after,
    withdrawals_by_payment_hash,
)
from fiberlinkd.logsetup import kv
from fiberlinkd.reconciler.checks import FindingSink

log = logging.getLogger(__name__)

T = TypeVar("T")

NODE_CALL_BOUND_S = 10.0
TIPS_PER_RUN = 300  # SETTLED tips checked with get_invoice per run
WITHDRAWALS_PER_RUN = 100  # COMPLETED Fiber withdrawals per run (2 calls each)
PAYMENT_PAGES_PER_RUN = 5
PAYMENT_PAGE_SIZE = 100
OVERDUE_SAMPLE = 50  # tip ids listed in an UNPAID_TIP_OVERDUE finding
READY_STATE = "ChannelReady"

CURSOR_TIPS = "settled_tips"
CURSOR_WITHDRAWALS = "completed_withdrawals"
CURSOR_PAYMENTS = "payments"


class NodeUnavailable(Exception):
    """The node did not answer; node checks stop for this run."""


@attrs.define
class CallPacer:
    """At most ``per_s`` calls per second, spaced evenly (trio time, so fake clocks work)."""

    per_s: float
    _next_at: float = -math.inf

    async def wait(self) -> None:
        now = trio.current_time()
        if self._next_at > now:
            await trio.sleep_until(self._next_at)
            now = self._next_at
        self._next_at = now + 1.0 / self.per_s


@attrs.define
class NodeChecks:
    """One run's node parity and solvency checks. Create a fresh one per run."""

    node: FiberNode
    ledger: Ledger
    clock: Clock
    pacer: CallPacer
    node_info: NodeInfo | None
    expiry_grace_ms: int
    stats: dict[str, Any] = attrs.field(factory=dict)
    onchain_enabled: bool = False  # the hot wallet also holds CKB fiberlinkd owes
    hot_wallet_shannons: int | None = None  # its balance; None: the CKB node did not answer

    async def run(self, sink: FindingSink) -> None:
        """All node checks; a node outage becomes one ``NODE_UNAVAILABLE`` warning.

        Cancellation: safe at any await; cursors only cover what was checked.
        """
        await self.check_overdue_unpaid(sink)
        try:
            await self.check_solvency(sink)
            await self.check_settled_tips(sink)
            await self.check_completed_withdrawals(sink)
            await self.check_unknown_payments(sink)
        except NodeUnavailable as exc:
            log.warning("reconciler: node unavailable", extra=kv(error=str(exc)))
            sink.add(
                Finding(
                    WARNING,
                    "NODE_UNAVAILABLE",
                    f"the node did not answer ({exc}); node checks resume next run",
                    {"error": str(exc)},
                )
            )
            self.stats["node_unavailable"] = True

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        await self.pacer.wait()
        self.stats["node_calls"] = self.stats.get("node_calls", 0) + 1
        try:
            with trio.fail_after(NODE_CALL_BOUND_S):
                return await fn(*args, **kwargs)
        except (FnnTransportError, trio.TooSlowError) as exc:
            raise NodeUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # --- tips -------------------------------------------------------------------------------

    async def check_overdue_unpaid(self, sink: FindingSink) -> None:
        before = self.clock.now_ms() - self.expiry_grace_ms
        count, sample = await self.ledger.read(overdue_unpaid_tips, before, OVERDUE_SAMPLE)
        self.stats["unpaid_overdue"] = count
        if count:
            sink.add(
                Finding(
                    WARNING,
                    "UNPAID_TIP_OVERDUE",
                    f"{count} UNPAID tips are past their invoice expiry plus grace;"
                    " the settlement poller should have resolved them",
                    {"count": count, "tip_ids": sample},
                )
            )

    async def check_settled_tips(self, sink: FindingSink) -> None:
        cursor = await self.ledger.read(get_cursor, CURSOR_TIPS)
        tips = await self.ledger.read(settled_tips_after, cursor, TIPS_PER_RUN)
        checked = 0
        try:
            for tip in tips:
                refs = {"tip_id": tip.id, "payment_hash": tip.payment_hash, "amount": tip.amount}
                try:
                    info = await self._call(self.node.get_invoice, tip.payment_hash)
                except FnnError as exc:
                    if is_invoice_not_found(exc):
                        sink.add(
                            Finding(
                                CRITICAL,
                                "TIP_INVOICE_UNKNOWN",
                                f"tip {tip.id} is SETTLED but the node has no invoice"
                                f" {tip.payment_hash}",
                                refs,
                            )
                        )
                    else:
                        sink.add(_node_error("get_invoice", exc, refs))
                else:
                    if info.status is not InvoiceStatus.PAID:
                        sink.add(
                            Finding(
                                CRITICAL,
                                "TIP_NOT_PAID_ON_NODE",
                                f"tip {tip.id} is SETTLED but the node reports its"
                                f" invoice {info.status.value}",
                                {**refs, "node_status": info.status.value},
                            )
                        )
                    elif info.invoice.amount != tip.amount:
                        sink.add(
                            Finding(
                                CRITICAL,
                                "TIP_AMOUNT_MISMATCH",
                                f"tip {tip.id} credited {tip.amount} but the node's"
                                f" paid invoice is for {info.invoice.amount}",
                                {**refs, "node_amount": info.invoice.amount},
                            )
                        )
                checked += 1
                cursor = tip.id
        finally:
            self.stats["settled_tips_checked"] = checked
            await self._save_cursor(
                CURSOR_TIPS, "" if len(tips) < TIPS_PER_RUN and checked == len(tips) else cursor
            )

    # --- withdrawals ------------------------------------------------------------------------

    async def check_completed_withdrawals(self, sink: FindingSink) -> None:
        cursor = await self.ledger.read(get_cursor, CURSOR_WITHDRAWALS)
        payouts = await self.ledger.read(
            completed_fiber_withdrawals_after, cursor, WITHDRAWALS_PER_RUN
        )
        checked = 0
        try:
            for w in payouts:
                refs = {
                    "withdrawal_id": w.id,
                    "payment_hash": w.payment_hash,
                    "amount": w.amount,
                    "fee_paid": w.fee_paid,
                }
                if w.payment_hash is not None:
                    await self._check_payout(
                        sink, w.payment_hash, w.amount, w.fee_paid, w.destination, refs
                    )
                checked += 1  # a missing hash is COMPLETED_WITHDRAWAL_MISSING_EVIDENCE already
                cursor = w.id
        finally:
            self.stats["completed_withdrawals_checked"] = checked
            await self._save_cursor(
                CURSOR_WITHDRAWALS,
                "" if len(payouts) < WITHDRAWALS_PER_RUN and checked == len(payouts) else cursor,
            )

    async def _check_payout(
        self,
        sink: FindingSink,
        payment_hash: str,
        amount: int,
        fee_paid: int | None,
        invoice: str,
        refs: dict[str, Any],
    ) -> None:
        try:
            payment = await self._call(self.node.get_payment, payment_hash)
        except FnnError as exc:
            if is_payment_session_not_found(exc):
                sink.add(
                    Finding(
                        CRITICAL,
                        "PAYOUT_UNKNOWN_TO_NODE",
                        f"withdrawal {refs['withdrawal_id']} is COMPLETED but the node"
                        f" never sent payment {payment_hash}",
                        refs,
                    )
                )
            else:
                sink.add(_node_error("get_payment", exc, refs))
            return
        if payment.status is not PaymentStatus.SUCCESS:
            sink.add(
                Finding(
                    CRITICAL,
                    "PAYOUT_NOT_SUCCESS_ON_NODE",
                    f"withdrawal {refs['withdrawal_id']} is COMPLETED but the node"
                    f" reports payment {payment_hash} {payment.status.value}",
                    {**refs, "node_status": payment.status.value},
                )
            )
            return
        if fee_paid is not None and payment.fee != fee_paid:
            sink.add(
                Finding(
                    CRITICAL,
                    "PAYOUT_FEE_MISMATCH",
                    f"withdrawal {refs['withdrawal_id']} recorded fee {fee_paid} but the"
                    f" node paid {payment.fee}",
                    {**refs, "node_fee": payment.fee},
                )
            )
        try:
            parsed = await self._call(self.node.parse_invoice, invoice)
        except FnnError as exc:
            sink.add(_node_error("parse_invoice", exc, refs))
            return
        if parsed.amount != amount or parsed.payment_hash != payment_hash:
            sink.add(
                Finding(
                    CRITICAL,
                    "PAYOUT_AMOUNT_MISMATCH",
                    f"withdrawal {refs['withdrawal_id']} is for {amount} (hash"
                    f" {payment_hash}) but its invoice asks {parsed.amount}"
                    f" (hash {parsed.payment_hash})",
                    {
                        **refs,
                        "invoice_amount": parsed.amount,
                        "invoice_payment_hash": parsed.payment_hash,
                    },
                )
            )

    async def check_unknown_payments(self, sink: FindingSink) -> None:
        cursor = await self.ledger.read(get_cursor, CURSOR_PAYMENTS)
        seen = 0
        try:
            for _ in range(PAYMENT_PAGES_PER_RUN):
                try:
                    page = await self._call(
                        self.node.list_payments,
                        status=PaymentStatus.SUCCESS,
                        limit=PAYMENT_PAGE_SIZE,
                        after=cursor or None,
                    )
                except FnnError as exc:
                    if is_unknown_method(exc):
                        sink.add(
                            Finding(
                                INFO,
                                "LIST_PAYMENTS_UNSUPPORTED",
                                "this FNN has no list_payments (< 0.8): outgoing"
                                " payments unknown to the ledger cannot be detected",
                                {},
                            )
                        )
                    else:
                        sink.add(_node_error("list_payments", exc, {}))
                    return
                hashes = [
                    p.payment_hash for p in page.payments if p.status is PaymentStatus.SUCCESS
                ]
                known = await self.ledger.read(withdrawals_by_payment_hash, hashes)
                for payment in page.payments:
                    if payment.status is not PaymentStatus.SUCCESS:
                        continue
                    seen += 1
                    owner = known.get(payment.payment_hash)
                    refs = {
                        "payment_hash": payment.payment_hash,
                        "fee": payment.fee,
                        "created_at_ms": payment.created_at_ms,
                    }
                    if owner is None:
                        sink.add(
                            Finding(
                                CRITICAL,
                                "UNKNOWN_OUTGOING_PAYMENT",
                                f"the node sent payment {payment.payment_hash}, which"
                                " no withdrawal knows (funds spent outside fiberlinkd)",
                                refs,
                            )
                        )
                    elif owner[1] == "FAILED":
                        sink.add(
                            Finding(
                                CRITICAL,
                                "PAID_WITHDRAWAL_MARKED_FAILED",
                                f"withdrawal {owner[0]} is FAILED (reservation"
                                f" released) but the node paid {payment.payment_hash}",
                                {**refs, "withdrawal_id": owner[0]},
                            )
                        )
                if not page.payments or page.last_cursor is None:
                    cursor = ""
                    break
                cursor = page.last_cursor
                if len(page.payments) < PAYMENT_PAGE_SIZE:
                    cursor = ""
                    break
        finally:
            self.stats["node_payments_checked"] = seen
            await self._save_cursor(CURSOR_PAYMENTS, cursor)

    # --- solvency ----------------------------------------------------------------------------

    async def check_solvency(self, sink: FindingSink) -> None:
        before = await self.ledger.read(owed_per_asset)
        channels = await self._call(self.node.list_channels)
        after = await self.ledger.read(owed_per_asset)
        spendable = self.spendable_per_asset(channels)
        if self.onchain_enabled and self.hot_wallet_shannons is not None:
            spendable["CKB"] = spendable.get("CKB", 0) + self.hot_wallet_shannons
        report: dict[str, dict[str, int]] = {}
        for asset in sorted(before.keys() | after.keys()):
            owed_now = after.get(asset, Owed(0, 0))
            floor = min(before.get(asset, owed_now).floor, owed_now.floor)
            have = spendable.get(asset)
            report[asset] = {
                "owed": owed_now.settled,
                "processing": owed_now.processing,
                "owed_floor": floor,
                "node_spendable": have or 0,
            }
            if asset == "CKB" and self.onchain_enabled:
                report[asset]["hot_wallet"] = self.hot_wallet_shannons or 0
                if self.hot_wallet_shannons is None:
                    if floor > 0:
                        sink.add(
                            Finding(
                                WARNING,
                                "SOLVENCY_UNCHECKED",
                                f"fiberlinkd owes {floor} CKB but the CKB node did not report"
                                " the hot wallet's balance; cannot check CKB solvency",
                                {"asset": asset, "owed": floor},
                            )
                        )
                    continue
            if have is None and asset != "CKB":
                if floor > 0:
                    sink.add(
                        Finding(
                            WARNING,
                            "SOLVENCY_UNCHECKED",
                            f"fiberlinkd owes {floor} {asset} but the node does not"
                            " list that UDT; cannot check its channels",
                            {"asset": asset, "owed": floor},
                        )
                    )
                continue
            if (have or 0) < floor:
                shortfall = floor - (have or 0)
                sink.add(
                    Finding(
                        CRITICAL,
                        "SOLVENCY_SHORTFALL",
                        f"fiberlinkd owes {floor} {asset} (base units, excluding"
                        f" payouts in flight) but the node can spend only {have or 0}:"
                        f" short by {shortfall}",
                        {
                            "asset": asset,
                            "owed": floor,
                            "node_spendable": have or 0,
                            "shortfall": shortfall,
                            "owed_total": owed_now.settled,
                            "processing": owed_now.processing,
                        },
                    )
                )
        self.stats["solvency"] = report

    def spendable_per_asset(self, channels: tuple[Channel, ...]) -> dict[str, int]:
        """Spendable local balance of ready channels per asset (CKB: no UDT script)."""
        names: list[tuple[str, Any]] = (
            [(name.upper(), script) for name, script in self.node_info.udt_scripts]
            if self.node_info
            else []
        )
        totals: dict[str, int] = {"CKB": 0}
        for name, _ in names:
            totals.setdefault(name, 0)
        for channel in channels:
            if channel.state_name != READY_STATE:
                continue
            udt = channel.funding_udt_type_script
            if udt is None:
                totals["CKB"] += channel.spendable
                continue
            for name, script in names:
                if (script.code_hash, script.hash_type) == (udt.code_hash, udt.hash_type):
                    totals[name] += channel.spendable
                    break
        return totals

    async def _save_cursor(self, name: str, value: str) -> None:
        with trio.CancelScope(shield=True):
            await self.ledger.transact(put_cursor, name, value, self.clock.now_ms())


def _node_error(method: str, exc: FnnError, refs: dict[str, Any]) -> Finding:
    detail = f"{exc.code}: {exc.message}" if isinstance(exc, FnnNodeError) else str(exc)
    return Finding(
        WARNING,
        "NODE_ERROR",
        f"{method} answered unexpectedly: {detail}",
        {**refs, "method": method, "error": detail},
    )
