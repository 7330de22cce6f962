"""Append-only ledger entries, the hash chain over them, and the balance rows they move.

Every money write goes through :func:`append_entry` inside the caller's transaction. An
entry is idempotent by its key: replaying it returns ``False`` and changes nothing.
"""

from __future__ import annotations

import hashlib
import sqlite3

import attrs

GENESIS_HASH = "0" * 64


class EntryKind:
    TIP_CREDIT = "TIP_CREDIT"
    WITHDRAWAL_RESERVE = "WITHDRAWAL_RESERVE"
    WITHDRAWAL_DEBIT = "WITHDRAWAL_DEBIT"
    WITHDRAWAL_RELEASE = "WITHDRAWAL_RELEASE"


@attrs.frozen
class LedgerEntry:
    id: int
    app_id: str
    user_id: str
    asset: str
    amount: int
    reserved_delta: int
    kind: str
    ref: str
    idempotency_key: str
    created_at: int
    prev_hash: str
    entry_hash: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> LedgerEntry:
        return cls(
            id=row["id"],
            app_id=row["app_id"],
            user_id=row["user_id"],
            asset=row["asset"],
            amount=row["amount"],
            reserved_delta=row["reserved_delta"],
            kind=row["kind"],
            ref=row["ref"],
            idempotency_key=row["idempotency_key"],
            created_at=row["created_at"],
            prev_hash=row["prev_hash"],
            entry_hash=row["entry_hash"],
        )

    def expected_hash(self) -> str:
        """What ``entry_hash`` must be, recomputed from the entry's own fields."""
        return entry_hash(
            prev_hash=self.prev_hash,
            entry_id=self.id,
            app_id=self.app_id,
            user_id=self.user_id,
            asset=self.asset,
            amount=self.amount,
            reserved_delta=self.reserved_delta,
            kind=self.kind,
            ref=self.ref,
            idempotency_key=self.idempotency_key,
            created_at=self.created_at,
        )


def entry_hash(
    *,
    prev_hash: str,
    entry_id: int,
    app_id: str,
    user_id: str,
    asset: str,
    amount: int,
    reserved_delta: int,
    kind: str,
    ref: str,
    idempotency_key: str,
    created_at: int,
) -> str:
    """blake2b-256 over a canonical, length-prefixed encoding of the entry and its parent."""
    fields = (
        prev_hash,
        str(entry_id),
        app_id,
        user_id,
        asset,
        str(amount),
        str(reserved_delta),
        kind,
        ref,
        idempotency_key,
        str(created_at),
    )
    digest = hashlib.blake2b(digest_size=32, person=b"fiberlinkd-ledgr")
    for field in fields:
        data = field.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()


def append_entry(
    conn: sqlite3.Connection,
    *,
    app_id: str,
    user_id: str,
    asset: str,
    amount: int,
    kind: str,
    ref: str,
    idempotency_key: str,
    now_ms: int,
    reserved_delta: int = 0,
) -> bool:
    """Write one entry and move the owner's balance row in the caller's transaction.

    Returns ``False`` (and writes nothing) when the idempotency key already exists.
    Errors: ``sqlite3.IntegrityError`` when the balance would go negative or the
    reservation would exceed the balance (the CHECK constraints); the caller's
    transaction then rolls back whole.
    """
    if conn.execute(
        "SELECT 1 FROM ledger_entries WHERE idempotency_key = ?", (idempotency_key,)
    ).fetchone():
        return False
    last = conn.execute(
        "SELECT id, entry_hash FROM ledger_entries ORDER BY id DESC LIMIT 1"
    ).fetchone()
    prev_hash = last["entry_hash"] if last else GENESIS_HASH
    entry_id = (last["id"] + 1) if last else 1
    digest = entry_hash(
        prev_hash=prev_hash,
        entry_id=entry_id,
        app_id=app_id,
        user_id=user_id,
        asset=asset,
        amount=amount,
        reserved_delta=reserved_delta,
        kind=kind,
        ref=ref,
        idempotency_key=idempotency_key,
        created_at=now_ms,
    )
    conn.execute(
        "INSERT INTO ledger_entries (id, app_id, user_id, asset, amount, reserved_delta, kind,"
        " ref, idempotency_key, created_at, prev_hash, entry_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry_id,
            app_id,
            user_id,
            asset,
            amount,
            reserved_delta,
            kind,
            ref,
            idempotency_key,
            now_ms,
            prev_hash,
            digest,
        ),
    )
    # Not an UPSERT: SQLite checks the CHECK constraints on the candidate row *before* the
    # conflict turns it into an update, so a debit or a reservation against an existing
    # balance would be refused as if the balance were zero.
    moved = conn.execute(
        "UPDATE balances SET settled = settled + ?, reserved = reserved + ?, updated_at = ?"
        " WHERE app_id = ? AND user_id = ? AND asset = ?",
        (amount, reserved_delta, now_ms, app_id, user_id, asset),
    )
    if moved.rowcount == 0:
        conn.execute(
            "INSERT INTO balances (app_id, user_id, asset, settled, reserved, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (app_id, user_id, asset, amount, reserved_delta, now_ms),
        )
    return True


@attrs.frozen
class Balance:
    settled: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.settled - self.reserved


def get_balance(conn: sqlite3.Connection, app_id: str, user_id: str, asset: str) -> Balance:
    row = conn.execute(
        "SELECT settled, reserved FROM balances WHERE app_id = ? AND user_id = ? AND asset = ?",
        (app_id, user_id, asset),
    ).fetchone()
    return Balance(row["settled"], row["reserved"]) if row else Balance()
