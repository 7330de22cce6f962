"""The on-chain executor: pays CKB_ADDRESS withdrawals from the hot wallet, exactly once.

The rules, in the order they protect the money::

    0. Nothing is built or sent until the CKB node is known to be on the Fiber node's chain
       (mainnet ↔ Fibb, testnet ↔ Fibt, dev ↔ Fibd); a mismatch stops on-chain payouts.
    1. Every step first follows each PROCESSING row's stored transaction (get_transaction):
         committed + [onchain] confirmations blocks on top → COMPLETED: debit amount + the
                                 transaction's fee, release the rest (one commit)
         pending / proposed   → wait
         unknown / rejected   → re-broadcast the SAME stored bytes
    2. claim (commit): build from the wallet's live cells minus every cell an unconfirmed
       payout spends, sign, and store the signed bytes + tx hash + fee with the move to
       PROCESSING, BEFORE the first broadcast. A crash after this commit is resolved by
       step 1, which only ever sends those bytes again.
    3. broadcast: accepted or "already in the pool" → follow it. A lost reply or a timeout
       → unknown, followed by step 1. -301 (an input is dead/unknown) or -1111 (an input is
       spent by another pending transaction): asked get_transaction again; only if the node
       still does not have ours (not committed, not pending) is it proven that it can never
       commit → the row goes back to RETRY_PENDING and a new transaction is built. Any other
       refusal keeps the row PROCESSING with the same bytes, flagged (last_error + log).
    4. liquidity: a row the wallet cannot pay (amount + fee + change reserve) becomes
       LIQUIDITY_PENDING (or waits, if change of an unconfirmed payout is on its way); each
       step promotes LIQUIDITY_PENDING rows, oldest first, that the wallet now covers.
    5. Every outcome is recorded in a shielded, bounded scope; every transition is a
       compare-and-set and every ledger entry is idempotent by key.

One payout per transaction (one output to the recipient, change back to the wallet), so a
transaction hash is the evidence of exactly one withdrawal.

Cancellation: cancelling at any point leaves rows PENDING or PROCESSING with their stored
transaction; a fresh executor on the same database continues from there.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs
import trio
from prometheus_client import Counter, Gauge

from fiberlinkd.ckb.address import AddressError, Network, hex_bytes, parse_address
from fiberlinkd.ckb.client import (
    ERROR_TRANSACTION_FAILED_TO_RESOLVE,
    CkbClientError,
    CkbContractError,
    CkbNodeError,
    CkbTransportError,
    TxStatus,
)
from fiberlinkd.ckb.tx import (
    InsufficientFunds,
    PayoutError,
    Transaction,
    UnsignedTx,
    build_payout_tx,
)
from fiberlinkd.ledger.onchain import (
    InflightTx,
    abandon_onchain_tx,
    claim_onchain,
    defer_onchain,
    due_onchain,
    inflight_onchain,
    liquidity_pending,
    mark_liquidity_pending,
    onchain_totals,
    promote_liquidity,
)
from fiberlinkd.ledger.withdrawals import (
    Withdrawal,
    complete_withdrawal,
    fail_withdrawal,
    note_processing,
)
from fiberlinkd.logsetup import kv
from fiberlinkd.onchain.service import CHAIN_CALL_BOUND_S, OnchainService, WalletView
from fiberlinkd.payouts import is_frozen
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

ERROR_RBF_REJECTED: Final = -1111  # an input is spent by another pending transaction
RECORD_BOUND_S: Final = 30.0  # the shielded outcome commit
LEASE_S: Final = 600.0  # next_attempt_at of a PROCESSING row (the executor follows all anyway)
CLAIMS_PER_STEP: Final = 20
PROMOTIONS_PER_STEP: Final = 100
VERIFY_RETRY_MAX_S: Final = 30.0

HOT_WALLET_BALANCE = Gauge(
    "fiberlinkd_hot_wallet_balance_shannons", "Live capacity of the hot wallet's lock"
)
HOT_WALLET_AVAILABLE = Gauge(
    "fiberlinkd_hot_wallet_available_shannons",
    "Hot wallet capacity new payouts may count on (unconfirmed inputs out, their change in)",
)
ONCHAIN_BY_STATE = Gauge(
    "fiberlinkd_onchain_withdrawals_open", "Open on-chain withdrawals per state", ["state"]
)
LIQUIDITY_SHORTFALL = Gauge(
    "fiberlinkd_onchain_liquidity_shortfall_shannons",
    "What LIQUIDITY_PENDING withdrawals need beyond what the hot wallet can pay",
)
NETWORK_OK = Gauge(
    "fiberlinkd_onchain_network_ok", "1 once the CKB node is verified on the Fiber node's chain"
)
BROADCASTS = Counter(
    "fiberlinkd_onchain_broadcasts", "send_transaction calls by outcome", ["outcome"]
)
ABANDONED = Counter(
    "fiberlinkd_onchain_abandoned_transactions",
    "Signed payout transactions the node proved can never commit (rebuilt)",
)
ONCHAIN_OUTCOMES = Counter(
    "fiberlinkd_onchain_withdrawal_outcomes", "Final on-chain withdrawal outcomes", ["outcome"]
)

_TRANSIENT = (CkbTransportError, CkbContractError, trio.TooSlowError)
_CHAIN_ERRORS = (CkbClientError, trio.TooSlowError)


def _tx_hash_bytes(w: Withdrawal) -> bytes:
    assert w.tx_hash is not None
    return bytes.fromhex(w.tx_hash.removeprefix("0x"))


@attrs.define
class OnchainExecutor:
    """Actor: ``await nursery.start(OnchainExecutor(rt).run)`` when ``rt.onchain`` is set."""

    rt: Runtime

    @property
    def onchain(self) -> OnchainService:
        assert self.rt.onchain is not None, "OnchainExecutor needs rt.onchain"
        return self.rt.onchain

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Verify the network, then pay and follow on-chain withdrawals until cancelled.

        Reports started at once; nothing is built or sent before the network check passed.
        After a mismatch it stays idle (restart with a fixed configuration).
        """
        task_status.started()
        if not await self.verify_network():
            NETWORK_OK.set(0)
            await trio.sleep_forever()
        NETWORK_OK.set(1)
        while True:
            await self.step()
            await self.onchain.wakeup.wait(self.onchain.config.poll_s)

    async def verify_network(self) -> bool:
        """Wait for the Fiber node's identity, then check the CKB node's genesis (retrying)."""
        delay = 0.5
        while True:
            info = self.rt.node_state.info
            if info is not None:
                try:
                    return await self.onchain.verify_network(info)
                except _CHAIN_ERRORS as exc:
                    log.warning(
                        "CKB node not answering the network check; retrying",
                        extra=kv(error=repr(exc), retry_s=delay),
                    )
            await trio.sleep(delay)
            delay = min(VERIFY_RETRY_MAX_S, delay * 2)

    # --- one pass -----------------------------------------------------------------------

    async def step(self) -> None:
        """Follow every payout in flight, then promote and pay what the wallet covers."""
        if not self.onchain.ready:
            return
        for item in await self.rt.ledger.read(inflight_onchain):
            await self._follow(item)
        if await self.rt.ledger.read(lambda conn: is_frozen(conn)[0]):
            return
        view = await self._view()
        if view is None:
            return
        await self._promote(view)
        await self._pay_due()

    async def _view(self) -> WalletView | None:
        try:
            view = await self.onchain.wallet_view(self.rt.ledger)
        except _CHAIN_ERRORS as exc:
            log.warning("CKB node did not list the hot wallet's cells", extra=kv(error=repr(exc)))
            return None
        HOT_WALLET_BALANCE.set(view.balance)
        HOT_WALLET_AVAILABLE.set(view.available)
        return view

    # --- following a signed transaction ---------------------------------------------------

    async def _ask(self, w: Withdrawal) -> TxStatus | None:
        try:
            with trio.fail_after(CHAIN_CALL_BOUND_S):
                return await self.onchain.chain.get_transaction(_tx_hash_bytes(w))
        except _CHAIN_ERRORS as exc:
            await self._note(w, f"get_transaction did not answer: {exc!r}", event=False)
            return None

    async def _follow(self, item: InflightTx) -> None:
        w = item.withdrawal
        status = await self._ask(w)
        if status is None:
            return
        if status.status == "committed":
            await self._committed(w, status)
        elif status.status in ("unknown", "rejected"):
            await self._broadcast(w, item.transaction, first=False)

    async def _committed(self, w: Withdrawal, status: TxStatus) -> None:
        try:
            with trio.fail_after(CHAIN_CALL_BOUND_S):
                tip = await self.onchain.chain.get_tip_block_number()
        except _CHAIN_ERRORS as exc:
            await self._note(w, f"get_tip_block_number did not answer: {exc!r}", event=False)
            return
        block = status.block_number if status.block_number is not None else tip
        if tip - block < self.onchain.config.confirmations:
            return
        fee = w.fee_paid if w.fee_paid is not None else 0
        done = await self._record(
            complete_withdrawal, w.id, fee_paid=fee, now_ms=self.rt.clock.now_ms()
        )
        if done is not None:
            ONCHAIN_OUTCOMES.labels("completed").inc()
            log.info(
                "on-chain withdrawal completed",
                extra=kv(id=w.id, tx_hash=w.tx_hash, block=block, amount=w.amount, fee=fee),
            )

    async def _broadcast(self, w: Withdrawal, tx: Transaction, *, first: bool) -> None:
        """Send the stored bytes once; see rule 3 of the module docstring."""
        what = "broadcast" if first else "re-broadcast of the same bytes"
        try:
            with trio.fail_after(CHAIN_CALL_BOUND_S):
                await self.onchain.chain.send_transaction(tx)
        except CkbNodeError as exc:
            if exc.is_duplicate:
                BROADCASTS.labels("duplicate").inc()
                await self._note(w, f"{what}: already in the pool", event=False)
                return
            if exc.code in (ERROR_TRANSACTION_FAILED_TO_RESOLVE, ERROR_RBF_REJECTED):
                BROADCASTS.labels("conflict").inc()
                await self._conflict(w, exc)
                return
            await self._refused(w, exc, what)
            return
        except _TRANSIENT as exc:
            BROADCASTS.labels("unknown").inc()
            log.warning(
                "send_transaction outcome unknown; following get_transaction",
                extra=kv(id=w.id, tx_hash=w.tx_hash, error=repr(exc)),
            )
            await self._note(w, f"{what}: outcome unknown ({type(exc).__name__})", event=first)
            return
        BROADCASTS.labels("accepted").inc()
        await self._note(w, f"{what} accepted by the CKB node")

    async def _refused(self, w: Withdrawal, exc: CkbNodeError, what: str) -> None:
        """A refusal that proves nothing: keep the same bytes, flag it, send again later."""
        BROADCASTS.labels("refused").inc()
        detail = f"{what} refused ({exc.code} {exc.message}); the same bytes are sent again"
        log.error(
            "CKB node refused a payout transaction; it stays PROCESSING",
            extra=kv(id=w.id, tx_hash=w.tx_hash, code=exc.code, error=exc.message),
        )
        await self._note(w, detail, error=detail)

    async def _conflict(self, w: Withdrawal, exc: CkbNodeError) -> None:
        """An input is dead or taken: abandon only if the node proves ours is not there."""
        status = await self._ask(w)
        if status is None or status.status in ("committed", "pending", "proposed"):
            return  # ours is (or may be) the one that spent it: follow it
        reason = f"node: {exc.code} {exc.message}; get_transaction: {status.status}"
        done = await self._record(
            abandon_onchain_tx,
            w.id,
            tx_hash=w.tx_hash,
            reason=f"can never commit ({reason})",
            now_ms=self.rt.clock.now_ms(),
        )
        if done is not None:
            ABANDONED.inc()
            log.warning(
                "payout transaction can never commit; a new one will be built",
                extra=kv(id=w.id, tx_hash=w.tx_hash, reason=reason),
            )

    # --- liquidity ------------------------------------------------------------------------

    async def _promote(self, view: WalletView) -> None:
        rows = await self.rt.ledger.read(liquidity_pending, PROMOTIONS_PER_STEP)
        totals = await self.rt.ledger.read(onchain_totals)
        budget = view.available - totals.held - self.onchain.change_reserve
        short = 0
        for w in rows:
            if w.reservation <= budget and short == 0:
                budget -= w.reservation
                await self._record(
                    promote_liquidity,
                    w.id,
                    detail=f"hot wallet funded: available {view.available}",
                    now_ms=self.rt.clock.now_ms(),
                )
                log.info("on-chain withdrawal no longer waits for liquidity", extra=kv(id=w.id))
            else:
                short += w.reservation
        LIQUIDITY_SHORTFALL.set(max(0, short - max(0, budget)))
        totals = await self.rt.ledger.read(onchain_totals)
        for state in ("LIQUIDITY_PENDING", "PENDING", "RETRY_PENDING", "PROCESSING"):
            ONCHAIN_BY_STATE.labels(state).set(totals.count.get(state, 0))

    # --- new payouts ----------------------------------------------------------------------

    async def _pay_due(self) -> None:
        rows = await self.rt.ledger.read(due_onchain, self.rt.clock.now_ms(), CLAIMS_PER_STEP)
        for w in rows:
            view = await self._view()  # fresh after each claim: its inputs are now in flight
            if view is None:
                return
            await self._pay(w, view)

    async def _pay(self, w: Withdrawal, view: WalletView) -> None:
        onchain = self.onchain
        network = onchain.network
        assert network is not None
        now_ms = self.rt.clock.now_ms()
        try:
            unsigned = self._build(w, view, network)
        except InsufficientFunds as exc:
            await self._short(w, view, str(exc))
            return
        except (AddressError, PayoutError) as exc:
            await self._unpayable(w, str(exc))
            return
        signed = onchain.wallet.sign(unsigned)
        claimed = await self._record(
            claim_onchain,
            w.id,
            signed_tx=signed.to_molecule(),
            tx_hash=hex_bytes(signed.tx_hash),
            fee=signed.fee_shannons,
            now_ms=now_ms,
            lease_ms=int(LEASE_S * 1000),
        )
        if claimed is None:
            return
        log.info(
            "on-chain payout signed and stored; broadcasting",
            extra=kv(id=w.id, tx_hash=claimed.tx_hash, amount=w.amount, fee=signed.fee_shannons),
        )
        await self._broadcast(claimed, signed.tx, first=True)

    def _build(self, w: Withdrawal, view: WalletView, network: Network) -> UnsignedTx:
        """Errors: InsufficientFunds (also when no change cell fits: the rest would burn as
        fee); AddressError / PayoutError for a destination that cannot be paid."""
        onchain = self.onchain
        lock = parse_address(w.destination, network)
        unsigned = build_payout_tx(
            view.cells,
            [(lock, w.amount)],
            onchain.wallet.lock,
            onchain.config.fee_rate_shannons_per_kb,
            [onchain.cell_dep(network)],
        )
        if unsigned.fee_shannons > w.fee_reserved:
            raise InsufficientFunds(w.amount + w.fee_reserved + onchain.change_reserve, 0)
        return unsigned

    async def _unpayable(self, w: Withdrawal, error: str) -> None:
        done = await self._record(
            fail_withdrawal,
            w.id,
            reason=f"cannot pay on chain: {error}",
            now_ms=self.rt.clock.now_ms(),
            from_states=("PENDING", "RETRY_PENDING"),
        )
        if done is not None:
            ONCHAIN_OUTCOMES.labels("failed").inc()
            log.error("on-chain withdrawal cannot be paid", extra=kv(id=w.id, error=error))

    async def _short(self, w: Withdrawal, view: WalletView, why: str) -> None:
        now_ms = self.rt.clock.now_ms()
        if view.incoming > 0 or view.inflight:
            await self._record(
                defer_onchain,
                w.id,
                next_attempt_at=now_ms + int(self.onchain.config.poll_s * 1000),
                error="waiting for the change of an unconfirmed payout",
                now_ms=now_ms,
            )
            return
        done = await self._record(mark_liquidity_pending, w.id, detail=why, now_ms=now_ms)
        if done is not None:
            log.warning(
                "hot wallet cannot pay an on-chain withdrawal; LIQUIDITY_PENDING",
                extra=kv(id=w.id, amount=w.amount, available=view.available),
            )

    # --- recording ------------------------------------------------------------------------

    async def _note(
        self, w: Withdrawal, detail: str, *, error: str | None = None, event: bool = True
    ) -> None:
        now_ms = self.rt.clock.now_ms()
        await self._record(
            note_processing,
            w.id,
            detail=detail,
            error=error,
            next_check_at=now_ms + int(LEASE_S * 1000),
            now_ms=now_ms,
            event=event,
        )

    async def _record(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an outcome transaction that must not be torn by cancellation (bounded)."""
        result: Any = None
        with trio.move_on_after(RECORD_BOUND_S) as scope:
            scope.shield = True
            result = await self.rt.ledger.transact(fn, *args, **kwargs)
        if scope.cancelled_caught:
            log.error("recording an on-chain outcome timed out", extra=kv(step=fn.__name__))
        return result
