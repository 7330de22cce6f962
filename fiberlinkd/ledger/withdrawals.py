"""SQL for withdrawals: creation with its policy checks and reservation, the executor's claim
and outcome transitions, timelines, policies, and the admin views.

Every function is a sync ``fn(conn, ...)`` run through ``Ledger.transact``/``Ledger.read``.
Each transition is a compare-and-set on the current state, so a replay or a lost race
changes nothing and returns ``None``/``False``.

Ledger keys (one reservation *round* per time the withdrawal holds a reservation; round 1
is the request, an admin ``withdrawals retry`` opens round 2, ...)::

    withdrawal:reserve:<id>[:<round>]   reserved += amount + fee cap     (request / retry)
    withdrawal:debit:<id>               settled -= amount + fee, reserved -= the same
    withdrawal:release:<id>[:<round>]   reserved -= what is left of the reservation

Round 1 has no suffix. A withdrawal is debited at most once in its life (one key).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import attrs

from fiberlinkd.amounts import format_amount
from fiberlinkd.ledger.entries import EntryKind, append_entry, get_balance
from fiberlinkd.payouts import is_frozen
from fiberlinkd.withdrawals.policy import Policy

LIQUIDITY_PENDING = "LIQUIDITY_PENDING"
PENDING = "PENDING"
PROCESSING = "PROCESSING"
RETRY_PENDING = "RETRY_PENDING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
STATES = (LIQUIDITY_PENDING, PENDING, PROCESSING, RETRY_PENDING, COMPLETED, FAILED)
RESERVED_STATES = (LIQUIDITY_PENDING, PENDING, PROCESSING, RETRY_PENDING)

PAYMENT_REQUEST = "PAYMENT_REQUEST"
CKB_ADDRESS = "CKB_ADDRESS"

DAY_MS = 86_400_000
DUPLICATE_WINDOW_MS = 60_000  # an identical request within this window is a double click
DETAIL_MAX_CHARS = 500

PAUSED_MESSAGE = "Withdrawals are paused by the operator"
INSUFFICIENT_MESSAGE = "Insufficient balance for withdrawal"


class WithdrawalRefused(Exception):
    """A request the policy, the balance or the kill switch refuses (-32602 on the wire)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@attrs.frozen
class Withdrawal:
    id: str
    app_id: str
    user_id: str
    asset: str
    amount: int
    destination_kind: str
    destination: str
    state: str
    payment_hash: str | None
    tx_hash: str | None
    fee_reserved: int
    fee_paid: int | None
    attempts: int
    next_attempt_at: int | None
    sent_at: int | None
    last_error: str | None
    failure_reason: str | None
    cancelled: bool
    created_at: int
    updated_at: int
    completed_at: int | None
    prior_session: str | None = None  # see migration 0005

    @property
    def reservation(self) -> int:
        """What this withdrawal holds of the user's balance while it is open."""
        return self.amount + self.fee_reserved

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Withdrawal:
        return cls(
            id=row["id"],
            app_id=row["app_id"],
            user_id=row["user_id"],
            asset=row["asset"],
            amount=row["amount"],
            destination_kind=row["destination_kind"],
            destination=row["destination"],
            state=row["state"],
            payment_hash=row["payment_hash"],
            tx_hash=row["tx_hash"],
            fee_reserved=row["fee_reserved"],
            fee_paid=row["fee_paid"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            sent_at=row["sent_at"],
            last_error=row["last_error"],
            failure_reason=row["failure_reason"],
            cancelled=bool(row["cancelled"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            completed_at=row["completed_at"],
            prior_session=row["prior_session"],
        )


@attrs.frozen
class WithdrawalEvent:
    id: int
    withdrawal_id: str
    at: int
    from_state: str | None
    to_state: str
    detail: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> WithdrawalEvent:
        return cls(
            id=row["id"],
            withdrawal_id=row["withdrawal_id"],
            at=row["at"],
            from_state=row["from_state"],
            to_state=row["to_state"],
            detail=row["detail"],
        )


@attrs.frozen
class WithdrawalDraft:
    """A validated request, ready to be checked against policy and balance and stored."""

    id: str
    app_id: str
    user_id: str
    asset: str
    decimals: int
    amount: int
    destination_kind: str
    destination: str
    payment_hash: str | None
    fee_reserved: int
    state: str = PENDING


@attrs.frozen
class Created:
    withdrawal: Withdrawal
    created: bool  # False: an identical request within the double-click window


# --- helpers ----------------------------------------------------------------------------


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:DETAIL_MAX_CHARS]


def _add_event(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    now_ms: int,
    from_state: str | None,
    to_state: str,
    detail: str | None,
) -> None:
    conn.execute(
        "INSERT INTO withdrawal_events (withdrawal_id, at, from_state, to_state, detail)"
        " VALUES (?, ?, ?, ?, ?)",
        (withdrawal_id, now_ms, from_state, to_state, _clip(detail)),
    )


add_event = _add_event  # for fiberlinkd.ledger.onchain, which shares the timeline


def get_withdrawal(conn: sqlite3.Connection, withdrawal_id: str) -> Withdrawal | None:
    row = conn.execute("SELECT * FROM withdrawals WHERE id = ?", (withdrawal_id,)).fetchone()
    return Withdrawal.from_row(row) if row else None


def _require(conn: sqlite3.Connection, withdrawal_id: str) -> Withdrawal:
    found = get_withdrawal(conn, withdrawal_id)
    if found is None:
        raise LookupError(f"withdrawal {withdrawal_id} not found")
    return found


def reservation_round(conn: sqlite3.Connection, withdrawal_id: str) -> int:
    """How many reservations this withdrawal has opened (1 after the request)."""
    row = conn.execute(
        "SELECT count(*) FROM ledger_entries WHERE ref = ? AND kind = ?",
        (withdrawal_id, EntryKind.WITHDRAWAL_RESERVE),
    ).fetchone()
    return int(row[0])


def reserve_key(withdrawal_id: str, round_no: int) -> str:
    base = f"withdrawal:reserve:{withdrawal_id}"
    return base if round_no <= 1 else f"{base}:{round_no}"


def release_key(withdrawal_id: str, round_no: int) -> str:
    base = f"withdrawal:release:{withdrawal_id}"
    return base if round_no <= 1 else f"{base}:{round_no}"


def debit_key(withdrawal_id: str) -> str:
    return f"withdrawal:debit:{withdrawal_id}"


def _release_all(conn: sqlite3.Connection, w: Withdrawal, now_ms: int) -> None:
    round_no = reservation_round(conn, w.id)
    append_entry(
        conn,
        app_id=w.app_id,
        user_id=w.user_id,
        asset=w.asset,
        amount=0,
        reserved_delta=-w.reservation,
        kind=EntryKind.WITHDRAWAL_RELEASE,
        ref=w.id,
        idempotency_key=release_key(w.id, round_no),
        now_ms=now_ms,
    )


require_withdrawal = _require


# --- usage windows (indexed; cost follows the rows inside the window) -------------------


@attrs.frozen
class Usage:
    user_total: int
    app_total: int
    last_request_at: int | None


def usage(
    conn: sqlite3.Connection, app_id: str, user_id: str, asset: str, now_ms: int, cooldown_ms: int
) -> Usage:
    """Rolling-24 h totals of non-FAILED withdrawals of ``asset`` and the user's last request.

    Uses ``withdrawals_user (app_id, user_id, created_at)`` and
    ``withdrawals_app (app_id, created_at)``: each query reads only rows inside its window.
    """
    since = now_ms - DAY_MS
    user_total = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM withdrawals INDEXED BY withdrawals_user"
        " WHERE app_id = ? AND user_id = ? AND created_at >= ? AND asset = ?"
        " AND state != 'FAILED'",
        (app_id, user_id, since, asset),
    ).fetchone()[0]
    app_total = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM withdrawals INDEXED BY withdrawals_app"
        " WHERE app_id = ? AND created_at >= ? AND asset = ? AND state != 'FAILED'",
        (app_id, since, asset),
    ).fetchone()[0]
    last = conn.execute(
        "SELECT max(created_at) FROM withdrawals INDEXED BY withdrawals_user"
        " WHERE app_id = ? AND user_id = ? AND created_at >= ? AND state != 'FAILED'",
        (app_id, user_id, now_ms - max(cooldown_ms, DAY_MS)),
    ).fetchone()[0]
    return Usage(int(user_total), int(app_total), None if last is None else int(last))


# --- policies ---------------------------------------------------------------------------


def get_policy(conn: sqlite3.Connection, app_id: str, defaults: Policy) -> Policy:
    """The app's policy (row merged over ``defaults``). Errors: ``PolicyError`` for a bad row."""
    row = conn.execute(
        "SELECT policy_json FROM withdrawal_policies WHERE app_id = ?", (app_id,)
    ).fetchone()
    return Policy.from_json(row["policy_json"] if row else None, defaults)


def has_policy_row(conn: sqlite3.Connection, app_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM withdrawal_policies WHERE app_id = ?", (app_id,)).fetchone()
        is not None
    )


def put_policy(conn: sqlite3.Connection, app_id: str, policy: Policy, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO withdrawal_policies (app_id, policy_json, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (app_id) DO UPDATE SET policy_json = excluded.policy_json,"
        " updated_at = excluded.updated_at",
        (app_id, policy.to_json(), now_ms),
    )


# --- request ----------------------------------------------------------------------------


def _find_duplicate(
    conn: sqlite3.Connection, draft: WithdrawalDraft, now_ms: int
) -> Withdrawal | None:
    row = conn.execute(
        "SELECT * FROM withdrawals INDEXED BY withdrawals_user"
        " WHERE app_id = ? AND user_id = ? AND created_at >= ? AND asset = ? AND amount = ?"
        " AND destination_kind = ? AND destination = ? AND cancelled = 0"
        " ORDER BY created_at DESC LIMIT 1",
        (
            draft.app_id,
            draft.user_id,
            now_ms - DUPLICATE_WINDOW_MS,
            draft.asset,
            draft.amount,
            draft.destination_kind,
            draft.destination,
        ),
    ).fetchone()
    return Withdrawal.from_row(row) if row else None


def check_request(
    conn: sqlite3.Connection, draft: WithdrawalDraft, *, defaults: Policy, now_ms: int
) -> Withdrawal | None:
    """Every check a request must pass, writing nothing; the quote runs it read-only.

    Order: double click (returns the earlier withdrawal) → kill switch → payment hash not
    used before → policy (asset, minimum, per request, user and app 24 h totals,
    cooldown) → available balance ≥ amount + fee cap.

    Errors: :class:`WithdrawalRefused` naming the first problem; ``PolicyError`` for a
    stored policy row that does not validate.
    """
    if draft.amount <= 0:
        raise WithdrawalRefused("Amount must be greater than zero", "amount")
    duplicate = _find_duplicate(conn, draft, now_ms)
    if duplicate is not None:
        return duplicate
    frozen, _reason = is_frozen(conn)
    if frozen:
        raise WithdrawalRefused(PAUSED_MESSAGE)
    if draft.payment_hash is not None:
        used = conn.execute(
            "SELECT id FROM withdrawals WHERE payment_hash = ?", (draft.payment_hash,)
        ).fetchone()
        if used is not None:
            raise WithdrawalRefused(
                "This invoice was already used for a withdrawal; create a new invoice",
                "destination",
            )
    policy = get_policy(conn, draft.app_id, defaults)
    limits = policy.limits_for(draft.asset, draft.decimals)

    def show(units: int) -> str:
        return f"{format_amount(units, draft.decimals)} {draft.asset}"

    if not limits.asset_allowed:
        raise WithdrawalRefused(f"{draft.asset} withdrawals are not allowed here", "asset")
    if draft.amount < limits.min_amount:
        raise WithdrawalRefused(f"Minimum withdrawal is {show(limits.min_amount)}", "amount")
    if draft.amount > limits.max_per_request:
        raise WithdrawalRefused(
            f"Maximum per withdrawal is {show(limits.max_per_request)}", "amount"
        )
    used_now = usage(conn, draft.app_id, draft.user_id, draft.asset, now_ms, limits.cooldown_ms)
    if used_now.user_total + draft.amount > limits.user_daily_limit:
        left = max(0, limits.user_daily_limit - used_now.user_total)
        raise WithdrawalRefused(
            f"Daily withdrawal limit reached: {show(left)} left in the last 24 hours", "amount"
        )
    if used_now.app_total + draft.amount > limits.app_daily_limit:
        raise WithdrawalRefused(
            "This forum's daily withdrawal limit is reached; try again later", "amount"
        )
    if limits.cooldown_ms and used_now.last_request_at is not None:
        remaining_ms = used_now.last_request_at + limits.cooldown_ms - now_ms
        if remaining_ms > 0:
            raise WithdrawalRefused(
                f"Please wait {-(-remaining_ms // 1000)} s before the next withdrawal"
            )
    balance = get_balance(conn, draft.app_id, draft.user_id, draft.asset)
    if balance.available < draft.amount + draft.fee_reserved:
        raise WithdrawalRefused(INSUFFICIENT_MESSAGE, "amount")
    return None


def create_withdrawal(
    conn: sqlite3.Connection, draft: WithdrawalDraft, *, defaults: Policy, now_ms: int
) -> Created:
    """Check everything and create the withdrawal with its reservation, in one transaction.

    The checks are :func:`check_request`. Because this runs under ``BEGIN IMMEDIATE``,
    concurrent requests are serialised and cannot jointly overdraw or slip past a limit;
    the reservation entry moves the balance row in the same transaction (its CHECKs are
    the last line of defence).

    Errors: :class:`WithdrawalRefused` (nothing written); ``PolicyError``.
    """
    duplicate = check_request(conn, draft, defaults=defaults, now_ms=now_ms)
    if duplicate is not None:
        return Created(duplicate, created=False)
    conn.execute(
        "INSERT INTO withdrawals (id, app_id, user_id, asset, amount, destination_kind,"
        " destination, state, payment_hash, fee_reserved, attempts, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
        (
            draft.id,
            draft.app_id,
            draft.user_id,
            draft.asset,
            draft.amount,
            draft.destination_kind,
            draft.destination,
            draft.state,
            draft.payment_hash,
            draft.fee_reserved,
            now_ms,
            now_ms,
            now_ms,
        ),
    )
    _add_event(conn, draft.id, now_ms, None, draft.state, "requested")
    append_entry(
        conn,
        app_id=draft.app_id,
        user_id=draft.user_id,
        asset=draft.asset,
        amount=0,
        reserved_delta=draft.amount + draft.fee_reserved,
        kind=EntryKind.WITHDRAWAL_RESERVE,
        ref=draft.id,
        idempotency_key=reserve_key(draft.id, 1),
        now_ms=now_ms,
    )
    return Created(_require(conn, draft.id), created=True)


# --- the executor's transitions ---------------------------------------------------------


def due_work(
    conn: sqlite3.Connection, now_ms: int, limit: int, kind: str = PAYMENT_REQUEST
) -> list[Withdrawal]:
    """PENDING, due RETRY_PENDING, and PROCESSING rows whose check is due, oldest first.

    ``next_attempt_at`` is set on every open row (PENDING: its creation time; PROCESSING:
    when the node must next be asked), so one index range serves the whole schedule.
    """
    rows = conn.execute(
        "SELECT * FROM withdrawals INDEXED BY withdrawals_due"
        " WHERE state IN ('PENDING', 'RETRY_PENDING', 'PROCESSING') AND next_attempt_at <= ?"
        " AND destination_kind = ? ORDER BY next_attempt_at, id LIMIT ?",
        (now_ms, kind, limit),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]


def next_due_at(conn: sqlite3.Connection, kind: str = PAYMENT_REQUEST) -> int | None:
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM withdrawals INDEXED BY withdrawals_due"
        " WHERE state IN ('PENDING', 'RETRY_PENDING', 'PROCESSING')"
        " AND destination_kind = ?",
        (kind,),
    ).fetchone()
    return None if row[0] is None else int(row[0])


def list_processing(conn: sqlite3.Connection, kind: str = PAYMENT_REQUEST) -> list[Withdrawal]:
    rows = conn.execute(
        "SELECT * FROM withdrawals WHERE state = 'PROCESSING' AND destination_kind = ?"
        " ORDER BY created_at, id",
        (kind,),
    ).fetchall()
    return [Withdrawal.from_row(r) for r in rows]


def claim_withdrawal(
    conn: sqlite3.Connection, withdrawal_id: str, now_ms: int, lease_ms: int
) -> Withdrawal | None:
    """PENDING / due RETRY_PENDING → PROCESSING, attempts + 1, unless payouts are frozen.

    This commit happens *before* ``send_payment``; the payment hash was recorded when the
    request was created. ``next_attempt_at`` becomes a lease: if nobody records an outcome
    by then, the schedule asks the node about this row again. Returns ``None`` when the
    row is not claimable (another state, not due, frozen).
    """
    if is_frozen(conn)[0]:
        return None
    w = get_withdrawal(conn, withdrawal_id)
    if w is None or w.payment_hash is None:
        return None
    due = w.state == PENDING or (w.state == RETRY_PENDING and (w.next_attempt_at or 0) <= now_ms)
    if not due:
        return None
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'PROCESSING', attempts = attempts + 1,"
        " sent_at = coalesce(sent_at, ?), next_attempt_at = ?, updated_at = ?,"
        " prior_session = NULL WHERE id = ? AND state = ?",
        (now_ms, now_ms + lease_ms, now_ms, w.id, w.state),
    )
    if cursor.rowcount != 1:
        return None
    _add_event(conn, w.id, now_ms, w.state, PROCESSING, f"attempt {w.attempts + 1}")
    return _require(conn, w.id)


def record_prior_session(
    conn: sqlite3.Connection, withdrawal_id: str, session: str | None, now_ms: int
) -> bool:
    """Remember, before sending, which Failed session the node already shows (or none).

    Committed before ``send_payment`` so that, after a crash mid-resend, that old session
    is never read as this attempt's outcome. Returns whether the row is still ours
    (PROCESSING).
    """
    cursor = conn.execute(
        "UPDATE withdrawals SET prior_session = ?, updated_at = ?"
        " WHERE id = ? AND state = 'PROCESSING'",
        (session, now_ms, withdrawal_id),
    )
    return cursor.rowcount == 1


def note_processing(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    detail: str,
    next_check_at: int,
    now_ms: int,
    error: str | None = None,
    event: bool = True,
) -> bool:
    """Keep a PROCESSING row, reschedule its next node check, and record what we learnt."""
    cursor = conn.execute(
        "UPDATE withdrawals SET next_attempt_at = ?, last_error = coalesce(?, last_error),"
        " updated_at = ? WHERE id = ? AND state = 'PROCESSING'",
        (next_check_at, _clip(error), now_ms, withdrawal_id),
    )
    if cursor.rowcount != 1:
        return False
    if event:
        _add_event(conn, withdrawal_id, now_ms, PROCESSING, PROCESSING, detail)
    return True


def complete_withdrawal(
    conn: sqlite3.Connection, withdrawal_id: str, *, fee_paid: int, now_ms: int
) -> Withdrawal | None:
    """PROCESSING → COMPLETED with the debit and the release of the unused fee reservation.

    The user pays amount + fee, but never more than the fee cap they reserved: a node that
    charged more than ``max_fee_amount`` broke its contract, and the operator absorbs the
    excess (``fee_paid`` still records what the node reported).
    """
    w = get_withdrawal(conn, withdrawal_id)
    if w is None or w.state != PROCESSING:
        return None
    charged_fee = min(fee_paid, w.fee_reserved)
    conn.execute(
        "UPDATE withdrawals SET state = 'COMPLETED', fee_paid = ?, completed_at = ?,"
        " updated_at = ?, next_attempt_at = NULL, last_error = NULL"
        " WHERE id = ? AND state = 'PROCESSING'",
        (fee_paid, now_ms, now_ms, w.id),
    )
    append_entry(
        conn,
        app_id=w.app_id,
        user_id=w.user_id,
        asset=w.asset,
        amount=-(w.amount + charged_fee),
        reserved_delta=-(w.amount + charged_fee),
        kind=EntryKind.WITHDRAWAL_DEBIT,
        ref=w.id,
        idempotency_key=debit_key(w.id),
        now_ms=now_ms,
    )
    rest = w.fee_reserved - charged_fee
    if rest > 0:
        append_entry(
            conn,
            app_id=w.app_id,
            user_id=w.user_id,
            asset=w.asset,
            amount=0,
            reserved_delta=-rest,
            kind=EntryKind.WITHDRAWAL_RELEASE,
            ref=w.id,
            idempotency_key=release_key(w.id, reservation_round(conn, w.id)),
            now_ms=now_ms,
        )
    _add_event(
        conn,
        w.id,
        now_ms,
        PROCESSING,
        COMPLETED,
        f"paid; tx_hash={w.tx_hash} fee={fee_paid}"
        if w.destination_kind == CKB_ADDRESS
        else f"paid; payment_hash={w.payment_hash} fee={fee_paid}",
    )
    return _require(conn, w.id)


def fail_withdrawal(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    reason: str,
    now_ms: int,
    from_states: Sequence[str] = (PROCESSING,),
    cancelled: bool = False,
    expect_updated_at: int | None = None,
) -> Withdrawal | None:
    """→ FAILED and release the whole reservation.

    ``None`` (nothing written) if the state is not in ``from_states``, or the row changed
    since the caller looked at it (``expect_updated_at``; admin cancel uses it so that the
    node evidence it gathered is still about the row it cancels).
    """
    w = get_withdrawal(conn, withdrawal_id)
    if w is None or w.state not in from_states:
        return None
    if expect_updated_at is not None and w.updated_at != expect_updated_at:
        return None
    conn.execute(
        "UPDATE withdrawals SET state = 'FAILED', failure_reason = ?, cancelled = ?,"
        " next_attempt_at = NULL, updated_at = ? WHERE id = ? AND state = ?",
        (_clip(reason), int(cancelled), now_ms, w.id, w.state),
    )
    _release_all(conn, w, now_ms)
    _add_event(conn, w.id, now_ms, w.state, FAILED, reason)
    return _require(conn, w.id)


def retry_withdrawal_later(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    error: str,
    next_attempt_at: int,
    now_ms: int,
) -> Withdrawal | None:
    """PROCESSING → RETRY_PENDING (the reservation stays)."""
    cursor = conn.execute(
        "UPDATE withdrawals SET state = 'RETRY_PENDING', last_error = ?, next_attempt_at = ?,"
        " updated_at = ? WHERE id = ? AND state = 'PROCESSING'",
        (_clip(error), next_attempt_at, now_ms, withdrawal_id),
    )
    if cursor.rowcount != 1:
        return None
    _add_event(conn, withdrawal_id, now_ms, PROCESSING, RETRY_PENDING, error)
    return _require(conn, withdrawal_id)


def reopen_failed(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    *,
    now_ms: int,
    by: str,
    expect_updated_at: int | None = None,
) -> Withdrawal:
    """FAILED (not cancelled) → PENDING with a new reservation round (admin retry).

    Errors: ``LookupError`` (no such withdrawal); :class:`WithdrawalRefused` when it is not
    a FAILED, non-cancelled Fiber withdrawal or the balance cannot cover it again.
    """
    w = _require(conn, withdrawal_id)
    if w.state != FAILED:
        raise WithdrawalRefused(f"only a FAILED withdrawal can be retried (it is {w.state})")
    if w.cancelled:
        raise WithdrawalRefused("a cancelled withdrawal cannot be retried; ask for a new request")
    if w.destination_kind != PAYMENT_REQUEST:
        raise WithdrawalRefused("only Fiber withdrawals can be retried here")
    if expect_updated_at is not None and w.updated_at != expect_updated_at:
        raise WithdrawalRefused("the withdrawal changed meanwhile; look at it again")
    if get_balance(conn, w.app_id, w.user_id, w.asset).available < w.reservation:
        raise WithdrawalRefused(INSUFFICIENT_MESSAGE)
    round_no = reservation_round(conn, w.id) + 1
    conn.execute(
        "UPDATE withdrawals SET state = 'PENDING', attempts = 0, next_attempt_at = ?,"
        " failure_reason = NULL, updated_at = ? WHERE id = ? AND state = 'FAILED'",
        (now_ms, now_ms, w.id),
    )
    append_entry(
        conn,
        app_id=w.app_id,
        user_id=w.user_id,
        asset=w.asset,
        amount=0,
        reserved_delta=w.reservation,
        kind=EntryKind.WITHDRAWAL_RESERVE,
        ref=w.id,
        idempotency_key=reserve_key(w.id, round_no),
        now_ms=now_ms,
    )
    _add_event(conn, w.id, now_ms, FAILED, PENDING, f"retried by {by}")
    return _require(conn, w.id)


# --- views ------------------------------------------------------------------------------


def list_events(conn: sqlite3.Connection, withdrawal_id: str) -> list[WithdrawalEvent]:
    rows = conn.execute(
        "SELECT * FROM withdrawal_events WHERE withdrawal_id = ? ORDER BY id", (withdrawal_id,)
    ).fetchall()
    return [WithdrawalEvent.from_row(r) for r in rows]


def list_withdrawals(
    conn: sqlite3.Connection,
    *,
    app_ids: Sequence[str] | None,
    state: str | None = None,
    user_id: str | None = None,
    limit: int = 50,
) -> list[Withdrawal]:
    """Newest first. ``app_ids=None`` means every app."""
    where: list[str] = []
    params: list[object] = []
    if app_ids is not None:
        if not app_ids:
            return []
        where.append(f"app_id IN ({', '.join('?' for _ in app_ids)})")
        params.extend(app_ids)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    sql = "SELECT * FROM withdrawals"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    params.append(limit)
    return [Withdrawal.from_row(r) for r in conn.execute(sql, params).fetchall()]


def counts_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for row in conn.execute(
        "SELECT state, count(*) AS n FROM withdrawals INDEXED BY withdrawals_due GROUP BY state"
    ):
        counts[row["state"]] = int(row["n"])
    return counts
