"""SQL for the reconciler: bounded chunk reads, node-parity slices, runs and findings.

Every reader returns at most ``limit`` primary rows after a keyset cursor, so the
reconciler can run each chunk in its own ``Ledger.read`` snapshot and never blocks the
writer. Each chunk carries everything its checks need *from the same snapshot* (a balance
row with the sums of its entries; a tip with its credits; a withdrawal with its entries), so
a write that lands between two chunks can never produce a false finding.

Writers: :func:`start_run`, :func:`finish_run`, :func:`mark_interrupted_runs`, and the
parity cursors in ``settings`` (:func:`get_cursor` / :func:`put_cursor`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from fiberlinkd.ledger.admin import get_setting, put_setting
from fiberlinkd.ledger.entries import LedgerEntry

INFO = "INFO"
WARNING = "WARNING"
CRITICAL = "CRITICAL"
SEVERITIES = (INFO, WARNING, CRITICAL)

# Withdrawal states whose reservation must still be held.
IN_FLIGHT_STATES = ("LIQUIDITY_PENDING", "PENDING", "PROCESSING", "RETRY_PENDING")
_IN_FLIGHT_SQL = "('LIQUIDITY_PENDING', 'PENDING', 'PROCESSING', 'RETRY_PENDING')"
WITHDRAWAL_KINDS_SQL = "('WITHDRAWAL_RESERVE', 'WITHDRAWAL_DEBIT', 'WITHDRAWAL_RELEASE')"

CURSOR_PREFIX = "reconciler.cursor."
CHAIN_ANCHOR_KEY = "reconciler.chain_anchor"


@attrs.frozen
class Finding:
    """One problem (or note) a run found. ``refs`` holds affected ids and amounts (JSON)."""

    severity: str  # INFO | WARNING | CRITICAL
    code: str  # stable, SCREAMING_SNAKE: BALANCE_MISMATCH, CHAIN_BROKEN, ...
    message: str
    refs: Mapping[str, Any] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "refs": dict(self.refs),
        }


# --- internal-check chunks ----------------------------------------------------------------


@attrs.frozen
class BalanceSums:
    """A balance row beside the sums of its entries and its in-flight withdrawals."""

    app_id: str
    user_id: str
    asset: str
    settled: int
    reserved: int
    entry_count: int
    entries_amount: int  # SUM(amount)
    entries_reserved: int  # SUM(reserved_delta)
    in_flight_reserved: int  # SUM(amount + fee_reserved) of in-flight withdrawals

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.app_id, self.user_id, self.asset)


def balance_sums_chunk(
    conn: sqlite3.Connection, after: tuple[str, str, str] | None, limit: int
) -> list[BalanceSums]:
    """Up to ``limit`` balance rows after ``after`` (keyset on the primary key)."""
    where = "" if after is None else "WHERE (app_id, user_id, asset) > (?, ?, ?)"
    params: tuple[Any, ...] = () if after is None else after
    rows = conn.execute(
        "SELECT b.app_id, b.user_id, b.asset, b.settled, b.reserved,"
        " COUNT(e.id) AS entry_count,"
        " COALESCE(SUM(e.amount), 0) AS entries_amount,"
        " COALESCE(SUM(e.reserved_delta), 0) AS entries_reserved,"
        " (SELECT COALESCE(SUM(w.amount + w.fee_reserved), 0) FROM withdrawals w"
        "   WHERE w.app_id = b.app_id AND w.user_id = b.user_id AND w.asset = b.asset"
        f"   AND w.state IN {_IN_FLIGHT_SQL} AND w.cancelled = 0) AS in_flight_reserved"
        " FROM (SELECT app_id, user_id, asset, settled, reserved FROM balances"
        f"       {where} ORDER BY app_id, user_id, asset LIMIT ?) b"
        " LEFT JOIN ledger_entries e"
        "   ON e.app_id = b.app_id AND e.user_id = b.user_id AND e.asset = b.asset"
        " GROUP BY b.app_id, b.user_id, b.asset"
        " ORDER BY b.app_id, b.user_id, b.asset",
        (*params, limit),
    ).fetchall()
    return [
        BalanceSums(
            app_id=r["app_id"],
            user_id=r["user_id"],
            asset=r["asset"],
            settled=r["settled"],
            reserved=r["reserved"],
            entry_count=r["entry_count"],
            entries_amount=r["entries_amount"],
            entries_reserved=r["entries_reserved"],
            in_flight_reserved=r["in_flight_reserved"],
        )
        for r in rows
    ]


@attrs.frozen
class EntryCheckRow(LedgerEntry):
    """A ledger entry with what its checks need to know about its owner and its ref."""

    has_balance: bool = False
    ref_exists: bool | None = None  # None: the kind has no ref table

    @classmethod
    def from_check_row(cls, row: sqlite3.Row) -> EntryCheckRow:
        fields = attrs.asdict(LedgerEntry.from_row(row), recurse=False)
        return cls(
            **fields,
            has_balance=bool(row["has_balance"]),
            ref_exists=None if row["ref_exists"] is None else bool(row["ref_exists"]),
        )


def entries_chunk(conn: sqlite3.Connection, after_id: int, limit: int) -> list[EntryCheckRow]:
    """Up to ``limit`` entries with ``id > after_id`` in id order."""
    rows = conn.execute(
        "SELECT e.*,"
        " EXISTS (SELECT 1 FROM balances b WHERE b.app_id = e.app_id"
        "         AND b.user_id = e.user_id AND b.asset = e.asset) AS has_balance,"
        " CASE WHEN e.kind = 'TIP_CREDIT'"
        "      THEN EXISTS (SELECT 1 FROM tip_intents t WHERE t.id = e.ref)"
        f"     WHEN e.kind IN {WITHDRAWAL_KINDS_SQL}"
        "      THEN EXISTS (SELECT 1 FROM withdrawals w WHERE w.id = e.ref)"
        " END AS ref_exists"
        " FROM ledger_entries e WHERE e.id > ? ORDER BY e.id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [EntryCheckRow.from_check_row(r) for r in rows]


@attrs.frozen
class RefEntry:
    """An entry as seen from the tip or withdrawal it references."""

    id: int
    app_id: str
    user_id: str
    asset: str
    amount: int
    reserved_delta: int
    kind: str
    idempotency_key: str


@attrs.frozen
class TipWithCredits:
    id: str
    app_id: str
    to_user_id: str
    asset: str
    amount: int
    state: str
    settled_at: int | None
    expires_at: int
    credits: tuple[RefEntry, ...]


def _ref_entry(r: sqlite3.Row) -> RefEntry:
    return RefEntry(
        id=r["e_id"],
        app_id=r["e_app"],
        user_id=r["e_user"],
        asset=r["e_asset"],
        amount=r["e_amount"],
        reserved_delta=r["e_reserved"],
        kind=r["e_kind"],
        idempotency_key=r["e_key"],
    )


_ENTRY_COLUMNS = (
    "e.id AS e_id, e.app_id AS e_app, e.user_id AS e_user, e.asset AS e_asset,"
    " e.amount AS e_amount, e.reserved_delta AS e_reserved, e.kind AS e_kind,"
    " e.idempotency_key AS e_key"
)


def tips_chunk(conn: sqlite3.Connection, after_id: str, limit: int) -> list[TipWithCredits]:
    """Up to ``limit`` tips with ``id > after_id``, each with its TIP_CREDIT entries."""
    rows = conn.execute(
        "SELECT t.id, t.app_id, t.to_user_id, t.asset, t.amount, t.state, t.settled_at,"
        f" t.expires_at, {_ENTRY_COLUMNS}"
        " FROM (SELECT id, app_id, to_user_id, asset, amount, state, settled_at, expires_at"
        "       FROM tip_intents WHERE id > ? ORDER BY id LIMIT ?) t"
        " LEFT JOIN ledger_entries e ON e.ref = t.id AND e.kind = 'TIP_CREDIT'"
        " ORDER BY t.id, e.id",
        (after_id, limit),
    ).fetchall()
    tips: list[TipWithCredits] = []
    for tip_id, group in _group_by_id(rows):
        first = group[0]
        tips.append(
            TipWithCredits(
                id=tip_id,
                app_id=first["app_id"],
                to_user_id=first["to_user_id"],
                asset=first["asset"],
                amount=first["amount"],
                state=first["state"],
                settled_at=first["settled_at"],
                expires_at=first["expires_at"],
                credits=tuple(_ref_entry(r) for r in group if r["e_id"] is not None),
            )
        )
    return tips


@attrs.frozen
class WithdrawalWithEntries:
    id: str
    app_id: str
    user_id: str
    asset: str
    amount: int
    destination_kind: str
    state: str
    cancelled: bool
    payment_hash: str | None
    tx_hash: str | None
    fee_reserved: int
    fee_paid: int | None
    updated_at: int
    processing_since: int  # when it last entered PROCESSING (its timeline), else updated_at
    entries: tuple[RefEntry, ...]


def withdrawals_chunk(
    conn: sqlite3.Connection, after_id: str, limit: int
) -> list[WithdrawalWithEntries]:
    """Up to ``limit`` withdrawals with ``id > after_id``, each with its ledger entries."""
    rows = conn.execute(
        "SELECT w.id, w.app_id, w.user_id, w.asset, w.amount, w.destination_kind, w.state,"
        " w.cancelled, w.payment_hash, w.tx_hash, w.fee_reserved, w.fee_paid, w.updated_at,"
        " CASE WHEN w.state = 'PROCESSING' THEN coalesce("
        "   (SELECT max(ev.at) FROM withdrawal_events ev WHERE ev.withdrawal_id = w.id"
        "     AND ev.to_state = 'PROCESSING' AND coalesce(ev.from_state, '') != 'PROCESSING'),"
        "   w.sent_at, w.updated_at) ELSE w.updated_at END AS processing_since,"
        f" {_ENTRY_COLUMNS}"
        " FROM (SELECT * FROM withdrawals WHERE id > ? ORDER BY id LIMIT ?) w"
        f" LEFT JOIN ledger_entries e ON e.ref = w.id AND e.kind IN {WITHDRAWAL_KINDS_SQL}"
        " ORDER BY w.id, e.id",
        (after_id, limit),
    ).fetchall()
    result: list[WithdrawalWithEntries] = []
    for withdrawal_id, group in _group_by_id(rows):
        w = group[0]
        result.append(
            WithdrawalWithEntries(
                id=withdrawal_id,
                app_id=w["app_id"],
                user_id=w["user_id"],
                asset=w["asset"],
                amount=w["amount"],
                destination_kind=w["destination_kind"],
                state=w["state"],
                cancelled=bool(w["cancelled"]),
                payment_hash=w["payment_hash"],
                tx_hash=w["tx_hash"],
                fee_reserved=w["fee_reserved"],
                fee_paid=w["fee_paid"],
                updated_at=w["updated_at"],
                processing_since=w["processing_since"],
                entries=tuple(_ref_entry(r) for r in group if r["e_id"] is not None),
            )
        )
    return result


def _group_by_id(rows: Iterable[sqlite3.Row]) -> list[tuple[str, list[sqlite3.Row]]]:
    groups: list[tuple[str, list[sqlite3.Row]]] = []
    for row in rows:
        if groups and groups[-1][0] == row["id"]:
            groups[-1][1].append(row)
        else:
            groups.append((row["id"], [row]))
    return groups


def entry_at(conn: sqlite3.Connection, entry_id: int) -> tuple[int, str] | None:
    """``(id, entry_hash)`` of one entry, or ``None``."""
    row = conn.execute(
        "SELECT id, entry_hash FROM ledger_entries WHERE id = ?", (entry_id,)
    ).fetchone()
    return (row["id"], row["entry_hash"]) if row else None


# --- node parity slices ---------------------------------------------------------------------


@attrs.frozen
class SettledTipRef:
    id: str
    payment_hash: str
    amount: int
    asset: str


def settled_tips_after(conn: sqlite3.Connection, after_id: str, limit: int) -> list[SettledTipRef]:
    rows = conn.execute(
        "SELECT id, payment_hash, amount, asset FROM tip_intents"
        " WHERE state = 'SETTLED' AND id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [SettledTipRef(r["id"], r["payment_hash"], r["amount"], r["asset"]) for r in rows]


@attrs.frozen
class CompletedPayout:
    id: str
    destination: str  # the Fiber invoice
    payment_hash: str | None
    amount: int
    fee_paid: int | None


def completed_fiber_withdrawals_after(
    conn: sqlite3.Connection, after_id: str, limit: int
) -> list[CompletedPayout]:
    rows = conn.execute(
        "SELECT id, destination, payment_hash, amount, fee_paid FROM withdrawals"
        " WHERE state = 'COMPLETED' AND destination_kind = 'PAYMENT_REQUEST' AND id > ?"
        " ORDER BY id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [
        CompletedPayout(r["id"], r["destination"], r["payment_hash"], r["amount"], r["fee_paid"])
        for r in rows
    ]


def overdue_unpaid_tips(
    conn: sqlite3.Connection, before_ms: int, sample: int
) -> tuple[int, list[str]]:
    """How many UNPAID tips expired before ``before_ms``, and the ids of the oldest few."""
    count = conn.execute(
        "SELECT COUNT(*) FROM tip_intents WHERE state = 'UNPAID' AND expires_at < ?",
        (before_ms,),
    ).fetchone()[0]
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM tip_intents WHERE state = 'UNPAID' AND expires_at < ?"
            " ORDER BY expires_at LIMIT ?",
            (before_ms, sample),
        )
    ]
    return int(count), ids


def withdrawals_by_payment_hash(
    conn: sqlite3.Connection, hashes: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """payment hash → (withdrawal id, state) for the hashes a withdrawal row knows."""
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(hashes), 500):
        part = list(hashes[start : start + 500])
        marks = ",".join("?" * len(part))
        for r in conn.execute(
            f"SELECT id, state, payment_hash FROM withdrawals WHERE payment_hash IN ({marks})",
            part,
        ):
            found[r["payment_hash"]] = (r["id"], r["state"])
    return found


@attrs.frozen
class Owed:
    """What fiberlinkd owes in one asset (base units)."""

    settled: int  # SUM(balances.settled): reservations are inside it
    processing: int  # amount + fee_reserved of PROCESSING withdrawals (maybe already sent)

    @property
    def floor(self) -> int:
        """The least the node must hold even if every PROCESSING payout has left already."""
        return max(0, self.settled - self.processing)


def owed_per_asset(conn: sqlite3.Connection) -> dict[str, Owed]:
    settled = {
        r["asset"]: int(r["total"])
        for r in conn.execute("SELECT asset, SUM(settled) AS total FROM balances GROUP BY asset")
    }
    processing = {
        r["asset"]: int(r["total"])
        for r in conn.execute(
            "SELECT asset, SUM(amount + fee_reserved) AS total FROM withdrawals"
            " WHERE state = 'PROCESSING' GROUP BY asset"
        )
    }
    return {
        asset: Owed(settled.get(asset, 0), processing.get(asset, 0))
        for asset in sorted(settled.keys() | processing.keys())
    }


def get_cursor(conn: sqlite3.Connection, name: str) -> str:
    """A parity cursor (``""`` when unset: start from the beginning)."""
    setting = get_setting(conn, CURSOR_PREFIX + name)
    return setting[0] if setting else ""


def put_cursor(conn: sqlite3.Connection, name: str, value: str, now_ms: int) -> None:
    put_setting(conn, CURSOR_PREFIX + name, value, now_ms)


def get_chain_anchor(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The ``(entry id, entry hash)`` the last clean chain check ended at."""
    setting = get_setting(conn, CHAIN_ANCHOR_KEY)
    if setting is None:
        return None
    entry_id, _, digest = setting[0].partition(":")
    return int(entry_id), digest


def put_chain_anchor(conn: sqlite3.Connection, entry_id: int, digest: str, now_ms: int) -> None:
    put_setting(conn, CHAIN_ANCHOR_KEY, f"{entry_id}:{digest}", now_ms)


# --- runs -------------------------------------------------------------------------------------


@attrs.frozen
class StoredRun:
    id: int
    started_at: int
    finished_at: int | None
    status: str  # RUNNING | CLEAN | PROBLEMS | ERROR
    trigger: str
    summary: dict[str, Any]
    findings: tuple[Finding, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at_ms": self.started_at,
            "finished_at_ms": self.finished_at,
            "status": self.status,
            "trigger": self.trigger,
            "summary": self.summary,
            "findings": [f.as_dict() for f in self.findings],
        }


def start_run(conn: sqlite3.Connection, now_ms: int, trigger: str) -> int:
    cursor = conn.execute(
        "INSERT INTO reconcile_runs (started_at, status, trigger) VALUES (?, 'RUNNING', ?)",
        (now_ms, trigger),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def finish_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    now_ms: int,
    status: str,
    summary: Mapping[str, Any],
    findings: Sequence[Finding],
) -> None:
    conn.execute(
        "UPDATE reconcile_runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
        (now_ms, status, json.dumps(summary, sort_keys=True), run_id),
    )
    conn.executemany(
        "INSERT INTO reconcile_findings (run_id, severity, code, message, refs_json)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (run_id, f.severity, f.code, f.message, json.dumps(dict(f.refs), sort_keys=True))
            for f in findings
        ],
    )


def mark_interrupted_runs(conn: sqlite3.Connection, now_ms: int) -> int:
    """RUNNING rows left by a crash become ERROR. Call once when the reconciler starts."""
    return conn.execute(
        "UPDATE reconcile_runs SET status = 'ERROR', finished_at = ?,"
        ' summary = \'{"error": "interrupted (daemon stopped during the run)"}\''
        " WHERE status = 'RUNNING'",
        (now_ms,),
    ).rowcount


def latest_run_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(id) FROM reconcile_runs").fetchone()
    return int(row[0] or 0)


def get_run(conn: sqlite3.Connection, run_id: int) -> StoredRun | None:
    row = conn.execute("SELECT * FROM reconcile_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    findings = tuple(
        Finding(f["severity"], f["code"], f["message"], json.loads(f["refs_json"]))
        for f in conn.execute(
            "SELECT severity, code, message, refs_json FROM reconcile_findings"
            " WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
    )
    return StoredRun(
        id=row["id"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        status=row["status"],
        trigger=row["trigger"],
        summary=json.loads(row["summary"]) if row["summary"] else {},
        findings=findings,
    )


def last_finished_run(conn: sqlite3.Connection) -> StoredRun | None:
    """The newest run that is no longer RUNNING, with its findings."""
    row = conn.execute(
        "SELECT id FROM reconcile_runs WHERE status != 'RUNNING' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return get_run(conn, row["id"]) if row else None


def finished_run_after(conn: sqlite3.Connection, after_id: int) -> StoredRun | None:
    """The first run with ``id > after_id`` that has finished, or ``None`` yet."""
    row = conn.execute(
        "SELECT id FROM reconcile_runs WHERE id > ? AND status != 'RUNNING' ORDER BY id LIMIT 1",
        (after_id,),
    ).fetchone()
    return get_run(conn, row["id"]) if row else None


# --- exports ----------------------------------------------------------------------------------

# kind -> (table, columns, time column). Keyset order is (time column, id) for tips and
# withdrawals, id for the ledger (ids follow time there).
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "ledger": (
        "id",
        "created_at",
        "app_id",
        "user_id",
        "asset",
        "kind",
        "amount",
        "reserved_delta",
        "ref",
        "idempotency_key",
        "prev_hash",
        "entry_hash",
    ),
    "tips": (
        "id",
        "created_at",
        "app_id",
        "post_id",
        "from_user_id",
        "to_user_id",
        "asset",
        "amount",
        "state",
        "payment_hash",
        "expires_at",
        "settled_at",
        "failure_reason",
        "message",
    ),
    "withdrawals": (
        "id",
        "created_at",
        "updated_at",
        "completed_at",
        "app_id",
        "user_id",
        "asset",
        "amount",
        "fee_reserved",
        "fee_paid",
        "destination_kind",
        "destination",
        "state",
        "cancelled",
        "payment_hash",
        "tx_hash",
        "attempts",
        "failure_reason",
    ),
}
_EXPORT_TABLE = {"ledger": "ledger_entries", "tips": "tip_intents", "withdrawals": "withdrawals"}


@attrs.frozen
class ExportFilter:
    kind: str  # ledger | tips | withdrawals
    app_id: str | None = None
    since_ms: int | None = None  # created_at >= since
    until_ms: int | None = None  # created_at < until

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.app_id is not None:
            clauses.append("app_id = ?")
            params.append(self.app_id)
        if self.since_ms is not None:
            clauses.append("created_at >= ?")
            params.append(self.since_ms)
        if self.until_ms is not None:
            clauses.append("created_at < ?")
            params.append(self.until_ms)
        return clauses, params


def export_count(conn: sqlite3.Connection, spec: ExportFilter) -> int:
    clauses, params = spec.where()
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    row = conn.execute(f"SELECT COUNT(*) FROM {_EXPORT_TABLE[spec.kind]}{where}", params)
    return int(row.fetchone()[0])


def export_chunk(
    conn: sqlite3.Connection, spec: ExportFilter, after: tuple[Any, ...] | None, limit: int
) -> list[dict[str, Any]]:
    """The next ``limit`` rows after the keyset ``after`` (from the previous chunk's last
    row: ``(id,)`` for the ledger, ``(created_at, id)`` otherwise)."""
    clauses, params = spec.where()
    if after is not None:
        if spec.kind == "ledger":
            clauses.append("id > ?")
        else:
            clauses.append("(created_at, id) > (?, ?)")
        params.extend(after)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "id" if spec.kind == "ledger" else "created_at, id"
    columns = ", ".join(EXPORT_COLUMNS[spec.kind])
    rows = conn.execute(
        f"SELECT {columns} FROM {_EXPORT_TABLE[spec.kind]}{where} ORDER BY {order} LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [dict(zip(EXPORT_COLUMNS[spec.kind], tuple(r), strict=True)) for r in rows]


def export_keyset(kind: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["id"],) if kind == "ledger" else (row["created_at"], row["id"])
