"""SQL for on-chain (``CKB_ADDRESS``) withdrawals: liquidity, the signed transaction committed
before broadcast, and the transitions the on-chain executor makes.

Every function is a sync ``fn(conn, ...)`` run through ``Ledger.transact``/``Ledger.read``;
every transition is a compare-and-set on the current state (a replay changes nothing).

On-chain rows use the shared ``withdrawals`` columns this way::

    signed_tx   the molecule bytes of the ONE transaction that may pay this withdrawal,
                committed (state PROCESSING) before it is ever broadcast
    tx_hash     its hash (0x-hex): the evidence once COMPLETED
    fee_paid    the fee that transaction pays, set with it (the debit charges it on completion)

A row holds a signed transaction only while PROCESSING or COMPLETED. It leaves PROCESSING
for anything but COMPLETED only through :func:`abandon_onchain_tx`, which the executor
calls once the node has proven the transaction can never commit (its inputs were spent
elsewhere); the old hash stays in the timeline. The inputs of PROCESSING rows are "in
flight": :func:`inflight_onchain` returns them so they are never spent twice.

Liquidity: a request the hot wallet cannot cover (amount + fee cap + change reserve, minus
what PENDING / RETRY_PENDING on-chain payouts already hold) is created LIQUIDITY_PENDING
and promoted with :func:`promote_liquidity` once the wallet is funded.
"""

from __future__ import annotations

import sqlite3

import attrs

from fiberlinkd.ckb.tx import OutPoint, Transaction
from fiberlinkd.ledger.withdrawals import (
    CKB_ADDRESS,
    LIQUIDITY_PENDING,
    PENDING,
    PROCESSING,
    RETRY_PENDING,
    Created,
    Withdrawal,
    WithdrawalDraft,
    add_event,
    create_withdrawal,
    get_withdrawal,
    require_withdrawal,
)
from fiberlinkd.payouts import is_frozen
from fiberlinkd.withdrawals.policy import Policy

LIQUIDITY_REASON = "hot wallet underfunded"


class InputsInFlight(Exception):
    """A transaction would spend a cell another unconfirmed payout already spends (a bug)."""


@attrs.frozen
class InflightTx:
    """A PROCESSING on-chain payout and the signed transaction committed for it."""

    withdrawal: Withdrawal
    signed_tx: bytes

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> InflightTx:
        return cls(Withdrawal.from_row(row), bytes(row["signed_tx"]))

    @property
    def transaction(self) -> Transaction:
        return Transaction.from_molecule(self.signed_tx)

    @property
    def inputs(self) -> frozenset[OutPoint]:
        return tx_inputs(self.signed_tx)


def tx_inputs(signed_tx: bytes) -> frozenset[OutPoint]:
    """The cells a stored (molecule) transaction spends."""
    return frozenset(i.previous_output for i in Transaction.from_molecule(signed_tx).inputs)


@attrs.frozen
class OnchainTotals:
    """Base units per state of on-chain withdrawals that are still open."""

    count: dict[str, int]
    owed: dict[str, int]  # amount + fee_reserved, per state

    @property
    def held(self) -> int:
        """What PENDING / RETRY_PENDING payouts hold of the wallet (not yet signed)."""
        return self.owed.get(PENDING, 0) + self.owed.get(RETRY_PENDING, 0)


def inflight_onchain(conn: sqlite3.Connection) -> list[InflightTx]:
    """PROCESSING on-chain withdrawals with their signed transaction, oldest first."""
    rows = conn.execute(
        "SELECT * FROM withdrawals WHERE state = 'PROCESSING' AND destination_kind = ?"
        " AND signed_tx IS NOT NULL ORDER BY created_at, id",
        (CKB_ADDRESS,),
    ).fetchall()
    return [InflightTx.from_row(r) for r in rows]


def onchain_totals(conn: sqlite3.Connection) -> OnchainTotals:
    count: dict[str, int] = {}
    owed: dict[str, int] = {}
    for row in conn.execute(
        "SELECT state, count(*) AS n, coalesce(sum(amount + fee_reserved), 0) AS owed"
        " FROM withdrawals WHERE destination_kind = ?"
        " AND state IN ('LIQUIDITY_PENDING', 'PENDING', 'RETRY_PENDING', 'PROCESSING')"
        " GROUP BY state",
        (CKB_ADDRESS,),
    ):
        count[row["state"]] = int(row["n"])
        owed[row["state"]] = int(row["owed"])
    return OnchainTotals(count, owed)


def due_onchain(conn: sqlite3.Connection, now_ms: int, limit: int) -> list[Withdrawal]:
    """PENDING and due RETRY_PENDING on-chain withdrawals, oldest request first."""
    rows = conn.execute(
        "SELECT * FROM withdrawals INDEXED BY withdrawals_due"
        " WHERE state IN ('PENDING', 'RETRY_PENDING') AND next_attempt_at <= ?"
        " AND destination_kind = ? ORDER BY created_at, id LIMIT ?",
        (now_ms, CKB_ADDRESS, limit),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]


def liquidity_pending(conn: sqlite3.Connection, limit: int) -> list[Withdrawal]:
    rows = conn.execute(
        "SELECT * FROM withdrawals INDEXED BY withdrawals_due"
        " WHERE state = 'LIQUIDITY_PENDING' AND destination_kind = ?"
        " ORDER BY created_at, id LIMIT ?",
        (CKB_ADDRESS, limit),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]


def create_onchain_withdrawal(
    conn: sqlite3.Connection,
    draft: WithdrawalDraft,
    *,
    defaults: Policy,
    now_ms: int,
    wallet_available: int,
    change_reserve: int,
) -> Created:
    """Create the withdrawal PENDING, or LIQUIDITY_PENDING when the wallet cannot cover it.

    ``wallet_available`` is what the hot wallet can spend (read from the chain just before,
    in-flight inputs excluded and their change included). It must cover this payout, the
    change cell and what earlier unsigned payouts hold. The decision and the insert share one
    transaction, so two requests cannot both count the same funds.

    Errors: as :func:`~fiberlinkd.ledger.withdrawals.create_withdrawal`.
    """
    held = onchain_totals(conn).held
    need = draft.amount + draft.fee_reserved + change_reserve
    state = PENDING if wallet_available - held >= need else LIQUIDITY_PENDING
    created = create_withdrawal(
        conn, attrs.evolve(draft, state=state), defaults=defaults, now_ms=now_ms
    )
    if created.created and state == LIQUIDITY_PENDING:
        add_event(
            conn,
            draft.id,
            now_ms,
            LIQUIDITY_PENDING,
            LIQUIDITY_PENDING,
            f"{LIQUIDITY_REASON}: available {wallet_available}, held {held}, needs {need}",
        )
    return created


def claim_onchain(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    signed_tx: bytes,
    tx_hash: str,
    fee: int,
    now_ms: int,
    lease_ms: int,
) -> Withdrawal | None:
    """PENDING / due RETRY_PENDING → PROCESSING with the signed transaction and its hash.

    This commit happens *before* the transaction is broadcast. Returns ``None`` (nothing
    written) when the row is not claimable or payouts are frozen.

    Errors: :class:`InputsInFlight` when an input is already spent by another PROCESSING
    payout (the caller built from a stale view; nothing is written).
    """
    if is_frozen(conn)[0]:
        return None
    w = get_withdrawal(conn, withdrawal_id)
    if w is None or w.destination_kind != CKB_ADDRESS:
        return None
    due = w.state == PENDING or (w.state == RETRY_PENDING and (w.next_attempt_at or 0) <= now_ms)
    if not due:
        return None
    taken: set[OutPoint] = set()
    for other in inflight_onchain(conn):
        taken.update(other.inputs)
    clash = taken.intersection(tx_inputs(signed_tx))
    if clash:
        raise InputsInFlight(
            f"inputs already spent by an unconfirmed payout: {sorted(str(op) for op in clash)}"
        )
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'PROCESSING', attempts = attempts + 1,"
        " signed_tx = ?, tx_hash = ?, fee_paid = ?, sent_at = coalesce(sent_at, ?),"
        " next_attempt_at = ?, last_error = NULL, updated_at = ? WHERE id = ? AND state = ?",
        (signed_tx, tx_hash, fee, now_ms, now_ms + lease_ms, now_ms, w.id, w.state),
    )
    if cursor.rowcount != 1:
        return None
    add_event(
        conn,
        w.id,
        now_ms,
        w.state,
        PROCESSING,
        f"attempt {w.attempts + 1}: signed tx {tx_hash} fee={fee} committed before broadcast",
    )
    return require_withdrawal(conn, w.id)


def abandon_onchain_tx(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    tx_hash: str,
    reason: str,
    now_ms: int,
) -> Withdrawal | None:
    """PROCESSING → RETRY_PENDING (due now), forgetting a transaction that can never commit.

    Only for a transaction the node proved dead (an input spent elsewhere, and
    ``get_transaction`` does not know it). The reservation stays; the executor builds a new
    transaction. Compare-and-set on the state *and* the hash.
    """
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'RETRY_PENDING', signed_tx = NULL, tx_hash = NULL,"
        " fee_paid = NULL, next_attempt_at = ?, last_error = ?, updated_at = ?"
        " WHERE id = ? AND state = 'PROCESSING' AND tx_hash = ?",
        (now_ms, reason[:500], now_ms, withdrawal_id, tx_hash),
    )
    if cursor.rowcount != 1:
        return None
    add_event(
        conn, withdrawal_id, now_ms, PROCESSING, RETRY_PENDING, f"abandoned tx {tx_hash}: {reason}"
    )
    return require_withdrawal(conn, withdrawal_id)


def defer_onchain(
    conn: sqlite3.Connection, withdrawal_id: str, *, next_attempt_at: int, error: str, now_ms: int
) -> bool:
    """Keep a PENDING / RETRY_PENDING row as it is and look at it again later."""
    cursor = conn.execute(
        "UPDATE withdrawals SET next_attempt_at = ?, last_error = ?, updated_at = ?"
        " WHERE id = ? AND state IN ('PENDING', 'RETRY_PENDING')",
        (next_attempt_at, error[:500], now_ms, withdrawal_id),
    )
    return cursor.rowcount == 1


def mark_liquidity_pending(
    conn: sqlite3.Connection, withdrawal_id: str, *, detail: str, now_ms: int
) -> Withdrawal | None:
    """PENDING / RETRY_PENDING → LIQUIDITY_PENDING (the wallet cannot pay it right now)."""
    w = get_withdrawal(conn, withdrawal_id)
    if w is None or w.state not in (PENDING, RETRY_PENDING):
        return None
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'LIQUIDITY_PENDING', last_error = ?, updated_at = ?"
        " WHERE id = ? AND state = ?",
        (LIQUIDITY_REASON, now_ms, w.id, w.state),
    )
    if cursor.rowcount != 1:
        return None
    add_event(conn, w.id, now_ms, w.state, LIQUIDITY_PENDING, f"{LIQUIDITY_REASON}: {detail}")
    return require_withdrawal(conn, w.id)


def promote_liquidity(
    conn: sqlite3.Connection, withdrawal_id: str, *, detail: str, now_ms: int
) -> Withdrawal | None:
    """LIQUIDITY_PENDING → PENDING (due now): the wallet can cover it."""
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'PENDING', next_attempt_at = ?, last_error = NULL,"
        " updated_at = ? WHERE id = ? AND state = 'LIQUIDITY_PENDING'",
        (now_ms, now_ms, withdrawal_id),
    )
    if cursor.rowcount != 1:
        return None
    add_event(conn, withdrawal_id, now_ms, LIQUIDITY_PENDING, PENDING, detail)
    return require_withdrawal(conn, withdrawal_id)


def completed_onchain_after(
    conn: sqlite3.Connection, after_id: str, limit: int
) -> list[Withdrawal]:
    """COMPLETED on-chain withdrawals with id > ``after_id`` (the reconciler's cursor)."""
    rows = conn.execute(
        "SELECT * FROM withdrawals WHERE state = 'COMPLETED' AND destination_kind = ?"
        " AND id > ? ORDER BY id LIMIT ?",
        (CKB_ADDRESS, after_id, limit),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]


def failed_onchain_with_tx(conn: sqlite3.Connection, limit: int) -> list[Withdrawal]:
    """FAILED on-chain withdrawals that still name a transaction (should never exist)."""
    rows = conn.execute(
        "SELECT * FROM withdrawals WHERE state = 'FAILED' AND destination_kind = ?"
        " AND tx_hash IS NOT NULL ORDER BY updated_at DESC LIMIT ?",
        (CKB_ADDRESS, limit),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]
