"""On-chain parity and hot-wallet liquidity: the ledger against what the CKB node says.

Runs only with ``[onchain] enabled``. Every CKB call waits its turn on the run's
:class:`~fiberlinkd.reconciler.parity.CallPacer` and is bounded.

Codes:

- ``HOT_WALLET_UNDERFUNDED`` (WARNING): on-chain withdrawals not yet signed (PENDING,
  RETRY_PENDING, LIQUIDITY_PENDING) plus the change reserve exceed what the hot wallet can
  pay. Nothing is wrong with the books (the requests wait as LIQUIDITY_PENDING); the
  operator must fund the wallet.
- ``ONCHAIN_PAYOUT_NOT_COMMITTED`` (CRITICAL): a COMPLETED on-chain withdrawal whose
  transaction the CKB node does not have committed.
- ``ONCHAIN_PAYOUT_MISMATCH`` (CRITICAL): its committed transaction has no output of exactly
  the withdrawal's amount to the withdrawal's address.
- ``FAILED_WITHDRAWAL_HAS_TX`` (CRITICAL): a FAILED on-chain withdrawal still names a signed
  transaction (it may commit while the reservation is released).
- ``CKB_NODE_UNAVAILABLE`` (WARNING): the CKB node did not answer; on-chain checks resume
  next run.

Incremental: COMPLETED withdrawals are checked :data:`ONCHAIN_PER_RUN` at a time from a
cursor in ``settings`` (``reconciler.cursor.completed_onchain``), wrapping around.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import trio

from fiberlinkd.ckb.address import AddressError, parse_address
from fiberlinkd.ckb.client import CkbClientError, TxStatus
from fiberlinkd.clock import Clock
from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.onchain import (
    completed_onchain_after,
    failed_onchain_with_tx,
    onchain_totals,
)
from fiberlinkd.ledger.reconcile import CRITICAL, WARNING, Finding, get_cursor, put_cursor
from fiberlinkd.ledger.withdrawals import LIQUIDITY_PENDING, Withdrawal
from fiberlinkd.onchain.service import CHAIN_CALL_BOUND_S, OnchainService, WalletView
from fiberlinkd.reconciler.checks import FindingSink
from fiberlinkd.reconciler.parity import CallPacer

ONCHAIN_PER_RUN: Final = 100
FAILED_SAMPLE: Final = 100
CURSOR_ONCHAIN: Final = "completed_onchain"


class ChainUnavailable(Exception):
    """The CKB node did not answer; on-chain checks stop for this run."""


@attrs.define
class OnchainChecks:
    onchain: OnchainService
    ledger: Ledger
    clock: Clock
    pacer: CallPacer
    stats: dict[str, Any] = attrs.field(factory=dict)

    async def wallet(self, sink: FindingSink) -> WalletView | None:
        """The hot wallet's view (for solvency and liquidity); ``None`` + a warning if silent."""
        await self.pacer.wait()
        try:
            view = await self.onchain.wallet_view(self.ledger)
        except (CkbClientError, trio.TooSlowError) as exc:
            self._unavailable(sink, exc)
            return None
        totals = await self.ledger.read(onchain_totals)
        unsigned = totals.held + totals.owed.get(LIQUIDITY_PENDING, 0)
        need = unsigned + self.onchain.change_reserve
        self.stats["hot_wallet"] = {
            "balance": view.balance,
            "available": view.available,
            "owed_unsigned": unsigned,
            "owed_processing": totals.owed.get("PROCESSING", 0),
        }
        if unsigned > 0 and view.available < need:
            sink.add(
                Finding(
                    WARNING,
                    "HOT_WALLET_UNDERFUNDED",
                    f"on-chain withdrawals waiting to be paid need {need} shannons (with the"
                    f" change reserve) but the hot wallet can pay {view.available}; fund it",
                    {"needed": need, "available": view.available, "owed": unsigned},
                )
            )
        return view

    async def run(self, sink: FindingSink) -> None:
        """Parity of COMPLETED and FAILED on-chain withdrawals (bounded, incremental)."""
        try:
            await self.check_failed(sink)
            await self.check_completed(sink)
        except ChainUnavailable as exc:
            self._unavailable(sink, exc)

    def _unavailable(self, sink: FindingSink, exc: BaseException) -> None:
        sink.add(
            Finding(
                WARNING,
                "CKB_NODE_UNAVAILABLE",
                f"the CKB node did not answer ({exc!r}); on-chain checks resume next run",
                {"error": repr(exc)},
            )
        )
        self.stats["ckb_node_unavailable"] = True

    async def _tx(self, w: Withdrawal) -> TxStatus:
        assert w.tx_hash is not None
        await self.pacer.wait()
        try:
            with trio.fail_after(CHAIN_CALL_BOUND_S):
                return await self.onchain.chain.get_transaction(
                    bytes.fromhex(w.tx_hash.removeprefix("0x"))
                )
        except (CkbClientError, trio.TooSlowError) as exc:
            raise ChainUnavailable(repr(exc)) from exc

    async def check_failed(self, sink: FindingSink) -> None:
        for w in await self.ledger.read(failed_onchain_with_tx, FAILED_SAMPLE):
            sink.add(
                Finding(
                    CRITICAL,
                    "FAILED_WITHDRAWAL_HAS_TX",
                    f"withdrawal {w.id} is FAILED (reservation released) but names signed"
                    f" transaction {w.tx_hash}, which may commit",
                    {"withdrawal_id": w.id, "tx_hash": w.tx_hash},
                )
            )

    async def check_completed(self, sink: FindingSink) -> None:
        cursor = await self.ledger.read(get_cursor, CURSOR_ONCHAIN)
        rows = await self.ledger.read(completed_onchain_after, cursor, ONCHAIN_PER_RUN)
        checked = 0
        try:
            for w in rows:
                if w.tx_hash is not None:  # missing evidence is the internal checks' finding
                    self._check_one(sink, w, await self._tx(w))
                checked += 1
                cursor = w.id
        finally:
            self.stats["completed_onchain_checked"] = checked
            done = len(rows) < ONCHAIN_PER_RUN and checked == len(rows)
            with trio.CancelScope(shield=True):
                await self.ledger.transact(
                    put_cursor, CURSOR_ONCHAIN, "" if done else cursor, self.clock.now_ms()
                )

    def _check_one(self, sink: FindingSink, w: Withdrawal, status: TxStatus) -> None:
        refs = {"withdrawal_id": w.id, "tx_hash": w.tx_hash, "amount": w.amount}
        if status.status != "committed":
            sink.add(
                Finding(
                    CRITICAL,
                    "ONCHAIN_PAYOUT_NOT_COMMITTED",
                    f"withdrawal {w.id} is COMPLETED but the CKB node reports its"
                    f" transaction {w.tx_hash} {status.status}",
                    {**refs, "chain_status": status.status},
                )
            )
            return
        network = self.onchain.network
        tx = status.transaction
        if network is None or tx is None:
            return  # the network is not verified yet / the node omitted the body
        try:
            lock = parse_address(w.destination, network)
        except AddressError:
            lock = None
        paid = [o.capacity for o in tx.outputs if o.lock == lock]
        if w.amount not in paid:
            sink.add(
                Finding(
                    CRITICAL,
                    "ONCHAIN_PAYOUT_MISMATCH",
                    f"withdrawal {w.id} is for {w.amount} shannons to {w.destination} but its"
                    f" transaction {w.tx_hash} pays that address {paid}",
                    {**refs, "outputs_to_address": paid},
                )
            )
