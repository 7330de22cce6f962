"""The withdrawal executor: pays requested Fiber withdrawals through the node, exactly once.

The rules, in the order they protect the money::

    1. On start, every PROCESSING row is resolved with get_payment before anything new is
       sent (a crash may have left a payment in any state).
    2. claim (commit): PENDING / due RETRY_PENDING → PROCESSING, attempts + 1, unless the
       payouts kill switch is on. The payment hash was stored at request time, so the
       in-between state already names the one hash this withdrawal can ever pay.
    3. send_payment {invoice, max_fee_amount = fee cap} (bounded). A reply, an error, a
       timeout or a lost reply: whatever happens, the outcome is read from get_payment.
    4. follow get_payment:
         Success                → COMPLETED: debit amount + fee, release the rest (one commit)
         Failed, retryable      → RETRY_PENDING with exponential backoff + jitter
         Failed, permanent or
         retry budget spent     → FAILED: release the whole reservation
         "session not found"    → the one proof nothing was sent → RETRY_PENDING, sent again
                                  later with the SAME invoice (never a fresh hash); if the node
                                  had refused our send, the refusal decides instead
         the Failed session an  → likewise: this send has not reached the node (yet); it is
         earlier attempt left     never read as this attempt's outcome (get_payment is asked
                                  before each send to recognise it)
         Created / Inflight, or
         no answer              → stays PROCESSING; asked again (in-process for up to
                                  FOLLOW_INLINE_S, then on the schedule)
    5. Every outcome is recorded in a shielded, bounded scope; every transition is a
       compare-and-set and every ledger entry is idempotent by key, so replays are no-ops.

FNN refuses a second send_payment for a hash whose session is Created/Inflight/Success, and
a Failed session may be resent with the same invoice: relying on that (and never inventing
a new hash) is what makes a double payment impossible.

Cancellation: cancelling the executor at any point leaves rows PROCESSING (or earlier);
the next start resolves them by asking the node.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio
from prometheus_client import Counter, Gauge, Histogram

from fiberlinkd.fnn.errors import (
    FnnContractError,
    FnnNodeError,
    FnnTransportError,
    is_payment_session_exists,
    is_payment_session_not_found,
)
from fiberlinkd.fnn.types import Payment, PaymentStatus
from fiberlinkd.ledger.withdrawals import (
    PROCESSING,
    STATES,
    Withdrawal,
    claim_withdrawal,
    complete_withdrawal,
    counts_by_state,
    due_work,
    fail_withdrawal,
    list_processing,
    next_due_at,
    note_processing,
    record_prior_session,
    retry_withdrawal_later,
)
from fiberlinkd.logsetup import kv
from fiberlinkd.payouts import is_frozen
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

MAX_CONCURRENT_PAYOUTS = 4
SEND_BOUND_S = 30.0  # one send_payment call, end to end
GET_PAYMENT_BOUND_S = 10.0  # one get_payment call
RECORD_BOUND_S = 30.0  # the shielded outcome commit
FOLLOW_INLINE_S = 300.0  # follow one payment in-process this long, then hand it to the schedule
FOLLOW_POLL_MAX_S = 10.0  # get_payment poll interval grows from payment_poll_s up to this
RECHECK_S = 60.0  # a payment still in flight (or unanswered) is asked about again after this
LEASE_S = 600.0  # a claimed row nobody recorded an outcome for is re-checked after this
RETRY_MAX_S = 3600.0  # backoff cap
IDLE_WAIT_MAX_S = 30.0  # look at the schedule at least this often
MIN_WAIT_S = 0.5  # never spin
BLOCKED_WAIT_S = 10.0  # rows are due but cannot be claimed (payouts frozen)
RECOVERY_RETRY_MIN_S = 1.0
RECOVERY_RETRY_MAX_S = 30.0
GAUGE_REFRESH_S = 15.0

# failed_error / refusal texts after which sending the same invoice again cannot succeed
# (fnn-rpc.md §4.2, §8.2). Anything else is retried within the budget: resending a Failed
# session with the same hash is always safe.
PERMANENT_FAILURES = (
    "invoiceexpired",
    "invoicecancelled",
    "incorrectorunknownpaymentdetails",
    "finalincorrecttlcamount",
    "invoice is expired",
    "invoice is invalid",
    "does not match the invoice",
    "amount must be greater than 0",
    "can not pay to self",
    "keysend payment should not have",
    "is missing",
)

WITHDRAWALS_BY_STATE = Gauge(
    "fiberlinkd_withdrawals_by_state",
    "Withdrawals per state (refreshed by the executor)",
    ["state"],
)
PAYOUT_LATENCY = Histogram(
    "fiberlinkd_withdrawal_payout_seconds",
    "From withdrawal request to the node reporting Success",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
AMOUNT_PAID = Counter(
    "fiberlinkd_withdrawal_paid_base_units", "Amounts paid out (base units)", ["asset"]
)
FEES_PAID = Counter(
    "fiberlinkd_withdrawal_fees_paid_base_units", "Routing fees paid (base units)", ["asset"]
)
RETRIES = Counter("fiberlinkd_withdrawal_retries", "Withdrawals scheduled for another attempt")
OUTCOMES = Counter("fiberlinkd_withdrawal_outcomes", "Final withdrawal outcomes", ["outcome"])


def is_permanent_failure(text: str | None) -> bool:
    lowered = (text or "").lower()
    return any(marker in lowered for marker in PERMANENT_FAILURES)


class _NotFound:
    """get_payment said "Payment session not found": nothing was sent for this hash."""


NOT_FOUND = _NotFound()


@attrs.frozen
class _Unknown:
    """The node did not answer (or answered something we cannot read)."""

    error: str


Seen = Payment | _NotFound | _Unknown


def _system_jitter() -> float:
    return secrets.SystemRandom().random()


@attrs.define
class WithdrawalExecutor:
    """Actor: ``await nursery.start(WithdrawalExecutor(rt).run)``.

    ``jitter`` returns a number in [0, 1) that spreads retry delays; tests pin it.
    """

    rt: Runtime
    max_concurrent: int = MAX_CONCURRENT_PAYOUTS
    jitter: Callable[[], float] = _system_jitter
    _active: set[str] = attrs.field(factory=set, init=False)
    _gauge_at: float | None = attrs.field(default=None, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then pay due withdrawals until cancelled.

        Reports started at once so a node that is down at startup does not hold up the
        daemon; nothing is sent until recovery has heard from the node about every
        PROCESSING row.
        """
        task_status.started()
        await self.recover()
        async with trio.open_nursery() as nursery:
            while True:
                wait_s = await self._dispatch(nursery)
                await self._refresh_gauge()
                await self.rt.withdrawals_wakeup.wait(wait_s)

    # --- recovery -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Resolve every PROCESSING row by asking the node; retry until it has answered each."""
        todo = await self.rt.ledger.read(list_processing)
        if todo:
            log.info("resolving withdrawals left in PROCESSING", extra=kv(count=len(todo)))
        delay = RECOVERY_RETRY_MIN_S
        while todo:
            unanswered: list[Withdrawal] = []
            for w in todo:
                seen = await self._ask(w)
                if isinstance(seen, _Unknown):
                    unanswered.append(w)
                elif seen is NOT_FOUND:
                    await self._not_sent(w, delay_s=0.0, why="after restart")
                elif (
                    isinstance(seen, Payment)
                    and w.prior_session is not None
                    and _same_session(seen, w.prior_session)
                ):
                    # Still the session from before this attempt's send: the send may not
                    # have landed yet, or may still land. Never a failure; send again later.
                    await self._retry_unsent(
                        w, "after restart: the node still shows the earlier Failed session"
                    )
                elif isinstance(seen, Payment):
                    await self._settle_seen(w, seen, source="after restart")
            todo = unanswered
            if todo:
                log.warning(
                    "node not answering get_payment during recovery; nothing new is sent",
                    extra=kv(unresolved=len(todo), retry_s=delay),
                )
                await trio.sleep(delay)
                delay = min(RECOVERY_RETRY_MAX_S, delay * 2)

    # --- the schedule -------------------------------------------------------------------

    async def _dispatch(self, nursery: trio.Nursery) -> float:
        """Start work for due rows; return how long to wait before looking again."""
        now_ms = self.rt.clock.now_ms()
        free = self.max_concurrent - len(self._active)
        if free <= 0:
            return IDLE_WAIT_MAX_S
        rows, frozen = await self.rt.ledger.read(_due_and_frozen, now_ms, free + len(self._active))
        blocked = False
        for w in rows:
            if free <= 0:
                break
            if w.id in self._active:
                continue
            if w.state == PROCESSING:
                self._start(nursery, w, send=False)
                free -= 1
                continue
            if frozen:
                blocked = True
                continue
            claimed = await self.rt.ledger.transact(
                claim_withdrawal, w.id, now_ms, int(LEASE_S * 1000)
            )
            if claimed is None:
                blocked = True
                continue
            self._start(nursery, claimed, send=True)
            free -= 1
        if free <= 0:
            return IDLE_WAIT_MAX_S
        if blocked:
            return BLOCKED_WAIT_S
        due = await self.rt.ledger.read(next_due_at)
        if due is None:
            return IDLE_WAIT_MAX_S
        return min(IDLE_WAIT_MAX_S, max(MIN_WAIT_S, (due - now_ms) / 1000))

    def _start(self, nursery: trio.Nursery, w: Withdrawal, *, send: bool) -> None:
        self._active.add(w.id)
        nursery.start_soon(self._drive, w, send)

    async def _drive(self, w: Withdrawal, send: bool) -> None:
        try:
            await self._pay_and_follow(w, send=send)
        finally:
            self._active.discard(w.id)
            self.rt.withdrawals_wakeup.set()

    # --- one withdrawal -----------------------------------------------------------------

    async def _pay_and_follow(self, w: Withdrawal, *, send: bool) -> None:
        # A Failed session left by an earlier attempt (or an earlier retry round) must not
        # be read as the outcome of this send: a send whose reply was lost may still reach
        # the node after we look. The session seen before sending is committed with the
        # row first, so the distinction also survives a crash mid-send.
        earlier: str | None = w.prior_session
        refusal: str | None = None
        if send:
            before = await self._ask(w)
            if isinstance(before, _Unknown):
                await self._retry_unsent(w, f"not sent: {before.error}")
                return
            earlier = None
            if isinstance(before, Payment) and before.status is PaymentStatus.FAILED:
                earlier = session_key(before)
            kept = await self._record(record_prior_session, w.id, earlier, self.rt.clock.now_ms())
            if kept is not True:
                return  # the row is no longer ours to send (or the commit timed out)
            refusal = await self._send(w)
        started = trio.current_time()
        poll_s = self.rt.config.withdrawals.payment_poll_s
        while True:
            seen = await self._ask(w)
            if isinstance(seen, Payment) and earlier is not None and _same_session(seen, earlier):
                if refusal is not None:
                    await self._failed(w, refusal, source="send refused")
                else:
                    await self._retry_unsent(
                        w,
                        "the node still shows the earlier Failed session; this send has not"
                        " reached it (yet); will send the same invoice again",
                    )
                return
            if isinstance(seen, Payment):
                if seen.status in (PaymentStatus.SUCCESS, PaymentStatus.FAILED):
                    await self._settle_seen(w, seen, source="node")
                    return
                detail = f"payment {seen.status} at the node"
            elif isinstance(seen, _NotFound):
                if refusal is not None:
                    await self._failed(w, refusal, source="send refused")
                else:
                    await self._not_sent(w, delay_s=self._backoff_s(w.attempts), why="")
                return
            else:
                detail = f"node did not answer get_payment: {seen.error}"
            if trio.current_time() - started >= FOLLOW_INLINE_S:
                await self._record(
                    note_processing,
                    w.id,
                    detail=detail,
                    error=detail,
                    next_check_at=self.rt.clock.now_ms() + int(RECHECK_S * 1000),
                    now_ms=self.rt.clock.now_ms(),
                    event=False,
                )
                return
            await trio.sleep(poll_s)
            poll_s = min(FOLLOW_POLL_MAX_S, poll_s * 2)

    async def _send(self, w: Withdrawal) -> str | None:
        """``send_payment`` once; returns the node's refusal text, or ``None``.

        ``None`` covers every case where a payment may exist: accepted, "session already
        exists", and no answer at all. Only get_payment decides what happened.
        """
        assert w.payment_hash is not None
        refusal: str | None = None
        try:
            with trio.fail_after(SEND_BOUND_S):
                payment = await self.rt.node.send_payment(
                    invoice=w.destination, max_fee_amount=w.fee_reserved
                )
            detail = f"send_payment accepted: {payment.status} expected_fee={payment.fee}"
        except FnnNodeError as exc:
            if is_payment_session_exists(exc):
                detail = f"already sent (the node has a session): {exc.message}"
            else:
                refusal = exc.message
                detail = f"send_payment refused: {exc.message}"
        except (FnnTransportError, FnnContractError, trio.TooSlowError) as exc:
            detail = f"send_payment outcome unknown ({type(exc).__name__}); asking the node"
            log.warning(
                "send_payment outcome unknown; following get_payment",
                extra=kv(id=w.id, payment_hash=w.payment_hash, error=repr(exc)),
            )
        now_ms = self.rt.clock.now_ms()
        await self._record(
            note_processing,
            w.id,
            detail=detail,
            next_check_at=now_ms + int(LEASE_S * 1000),
            now_ms=now_ms,
        )
        return refusal

    async def _ask(self, w: Withdrawal) -> Seen:
        assert w.payment_hash is not None
        try:
            with trio.fail_after(GET_PAYMENT_BOUND_S):
                return await self.rt.node.get_payment(w.payment_hash)
        except FnnNodeError as exc:
            if is_payment_session_not_found(exc):
                return NOT_FOUND
            return _Unknown(f"FnnNodeError: {exc.message}")
        except (FnnTransportError, FnnContractError, trio.TooSlowError) as exc:
            return _Unknown(f"{type(exc).__name__}: {exc}")

    async def _settle_seen(self, w: Withdrawal, seen: Payment, *, source: str) -> None:
        if seen.status is PaymentStatus.SUCCESS:
            await self._completed(w, seen)
        elif seen.status is PaymentStatus.FAILED:
            await self._failed(w, seen.failed_error or "payment failed", source=source)
        else:
            now_ms = self.rt.clock.now_ms()
            await self._record(
                note_processing,
                w.id,
                detail=f"{source}: payment {seen.status} at the node; following it",
                next_check_at=now_ms,
                now_ms=now_ms,
            )

    async def _completed(self, w: Withdrawal, payment: Payment) -> None:
        done = await self._record(
            complete_withdrawal, w.id, fee_paid=payment.fee, now_ms=self.rt.clock.now_ms()
        )
        if done is None:
            return
        if payment.fee > w.fee_reserved:
            log.critical(
                "node charged more than the fee cap; the excess is not charged to the user",
                extra=kv(id=w.id, fee=payment.fee, cap=w.fee_reserved),
            )
        AMOUNT_PAID.labels(w.asset).inc(w.amount)
        FEES_PAID.labels(w.asset).inc(payment.fee)
        OUTCOMES.labels("completed").inc()
        if done.completed_at is not None:
            PAYOUT_LATENCY.observe(max(0, done.completed_at - done.created_at) / 1000)
        log.info(
            "withdrawal completed",
            extra=kv(id=w.id, payment_hash=w.payment_hash, amount=w.amount, fee=payment.fee),
        )

    async def _failed(self, w: Withdrawal, error: str, *, source: str) -> None:
        now_ms = self.rt.clock.now_ms()
        budget = self.rt.config.withdrawals.retry_budget
        if is_permanent_failure(error) or w.attempts > budget:
            reason = (
                error
                if is_permanent_failure(error)
                else (f"retry budget spent after {w.attempts} attempts; last error: {error}")
            )
            done = await self._record(fail_withdrawal, w.id, reason=reason, now_ms=now_ms)
            if done is not None:
                OUTCOMES.labels("failed").inc()
                log.warning("withdrawal failed", extra=kv(id=w.id, reason=reason, source=source))
            return
        delay_s = self._backoff_s(w.attempts)
        retried = await self._record(
            retry_withdrawal_later,
            w.id,
            error=f"{source}: {error}",
            next_attempt_at=now_ms + int(delay_s * 1000),
            now_ms=now_ms,
        )
        if retried is not None:
            RETRIES.inc()
            log.info(
                "withdrawal will be retried",
                extra=kv(id=w.id, error=error, attempt=w.attempts, retry_in_s=round(delay_s, 1)),
            )

    async def _not_sent(self, w: Withdrawal, *, delay_s: float, why: str) -> None:
        now_ms = self.rt.clock.now_ms()
        prefix = f"{why}: " if why else ""
        retried = await self._record(
            retry_withdrawal_later,
            w.id,
            error=f"{prefix}the node has no payment session: nothing was sent; will send again",
            next_attempt_at=now_ms + int(delay_s * 1000),
            now_ms=now_ms,
        )
        if retried is not None:
            RETRIES.inc()

    async def _retry_unsent(self, w: Withdrawal, why: str) -> None:
        """PROCESSING → RETRY_PENDING keeping the reservation: this attempt's outcome is not
        known to be a failure, so it must never lead to FAILED (and a release)."""
        now_ms = self.rt.clock.now_ms()
        retried = await self._record(
            retry_withdrawal_later,
            w.id,
            error=why,
            next_attempt_at=now_ms + int(self._backoff_s(w.attempts) * 1000),
            now_ms=now_ms,
        )
        if retried is not None:
            RETRIES.inc()

    def _backoff_s(self, attempts: int) -> float:
        base = self.rt.config.withdrawals.retry_base_s
        factor: int = 2 ** max(0, min(attempts - 1, 30))
        ceiling = min(RETRY_MAX_S, base * factor)
        return ceiling * (0.5 + 0.5 * self.jitter())

    async def _record(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an outcome transaction that must not be torn by cancellation (bounded)."""
        result: Any = None
        with trio.move_on_after(RECORD_BOUND_S) as scope:
            scope.shield = True
            result = await self.rt.ledger.transact(fn, *args, **kwargs)
        if scope.cancelled_caught:
            log.error("recording a withdrawal outcome timed out", extra=kv(step=fn.__name__))
        return result

    async def _refresh_gauge(self) -> None:
        now = trio.current_time()
        if self._gauge_at is not None and now - self._gauge_at < GAUGE_REFRESH_S:
            return
        self._gauge_at = now
        counts = await self.rt.ledger.read(counts_by_state)
        for state in STATES:
            WITHDRAWALS_BY_STATE.labels(state).set(counts.get(state, 0))


def session_key(payment: Payment) -> str:
    """Identifies one payment session: FNN re-creates a resent Failed session and resets its
    ``created_at`` (fnn-rpc.md §8.4)."""
    return f"{payment.created_at_ms}:{payment.last_updated_at_ms}"


def _same_session(seen: Payment, earlier: str) -> bool:
    """The node shows the very Failed session it showed before our send."""
    return seen.status is PaymentStatus.FAILED and session_key(seen) == earlier


def _due_and_frozen(conn: Any, now_ms: int, limit: int) -> tuple[list[Withdrawal], bool]:
    return due_work(conn, now_ms, limit), is_frozen(conn)[0]
