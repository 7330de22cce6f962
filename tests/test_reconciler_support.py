"""Shared pieces for the reconciler tests (no tests here): a small stateful fake FiberNode,
a Runtime on a real SQLite file in ``tmp_path``, and seeders that write rows through the
real ledger functions (tips settle with ``settle_tip``, withdrawals move with the
withdrawal module's transitions), so a clean seed is a correct ledger by construction.

Tests then break invariants *behind the daemon's back* with raw SQL (:func:`raw`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

from fiberlinkd.clock import TrioClock
from fiberlinkd.config import Config, ReconcilerConfig, SettlementConfig
from fiberlinkd.fnn.errors import FnnConnectError, FnnNodeError
from fiberlinkd.fnn.types import (
    Channel,
    Currency,
    Invoice,
    InvoiceInfo,
    InvoiceStatus,
    NodeInfo,
    Payment,
    PaymentPage,
    PaymentStatus,
    Script,
)
from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.ledger.entries import EntryKind, append_entry
from fiberlinkd.ledger.reconcile import Finding, StoredRun
from fiberlinkd.ledger.tips import Tip, fail_tip, insert_tip, settle_tip
from fiberlinkd.ledger.withdrawals import (
    claim_withdrawal,
    complete_withdrawal,
    fail_withdrawal,
    reopen_failed,
    reserve_key,
)
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.payouts import frozen_state
from fiberlinkd.reconciler.actor import Reconciler
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.supervisor import Supervisor

APP = "forum"
CKB = 100_000_000  # shannons per CKB
PUBKEY = "02" + "11" * 32
USDI_SCRIPT = Script(code_hash="0x" + "ab" * 32, hash_type="type", args="0x" + "cd" * 32)


def phash(label: str) -> str:
    return "0x" + label.encode().hex().ljust(64, "0")[:64]


def ready_channel(
    spendable: int, udt: Script | None = None, state: str = "ChannelReady"
) -> Channel:
    return Channel(
        channel_id=phash(f"chan{spendable}{state}"),
        pubkey=PUBKEY,
        is_public=True,
        state_name=state,
        funding_udt_type_script=udt,
        local_balance=spendable,
        offered_tlc_balance=0,
        remote_balance=0,
        received_tlc_balance=0,
        enabled=True,
    )


@attrs.define
class FakeNode:
    """The node as the reconciler sees it: invoices it issued, payments it sent, channels.

    Hooks: ``down`` (every call fails to connect), ``list_payments_supported`` (FNN < 0.8
    answers -32999), ``bug`` (a method name that raises RuntimeError, for propagation).
    """

    invoices: dict[str, tuple[int, InvoiceStatus]] = attrs.field(factory=dict)
    payments: dict[str, Payment] = attrs.field(factory=dict)
    parsed: dict[str, Invoice] = attrs.field(factory=dict)
    channels: list[Channel] = attrs.field(factory=list)
    list_payments_supported: bool = True
    down: bool = False
    bug: str | None = None
    calls: list[str] = attrs.field(factory=list)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self.down:
            raise FnnConnectError("connection refused")
        if self.bug == method:
            raise RuntimeError(f"bug in {method}")

    def issue(self, payment_hash: str, amount: int, status: InvoiceStatus) -> None:
        self.invoices[payment_hash] = (amount, status)

    def paid_out(
        self,
        payment_hash: str,
        invoice: str,
        amount: int,
        fee: int,
        status: PaymentStatus = PaymentStatus.SUCCESS,
    ) -> None:
        self.payments[payment_hash] = Payment(payment_hash, status, 1, 2, None, fee)
        self.parsed[invoice] = _invoice(payment_hash, amount)

    async def get_invoice(self, payment_hash: str) -> InvoiceInfo:
        self._enter("get_invoice")
        if payment_hash not in self.invoices:
            raise FnnNodeError(-32000, "invoice not found")
        amount, status = self.invoices[payment_hash]
        return InvoiceInfo("fibd1fake", _invoice(payment_hash, amount), status)

    async def get_payment(self, payment_hash: str) -> Payment:
        self._enter("get_payment")
        if payment_hash not in self.payments:
            raise FnnNodeError(
                -32602, f"InvalidParameter: Payment session not found: Hash256({payment_hash})"
            )
        return self.payments[payment_hash]

    async def parse_invoice(self, invoice: str) -> Invoice:
        self._enter("parse_invoice")
        if invoice not in self.parsed:
            raise FnnNodeError(-32602, "Bech32 error: invalid checksum")
        return self.parsed[invoice]

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage:
        self._enter("list_payments")
        if not self.list_payments_supported:
            raise FnnNodeError(-32999, "Unauthorized")
        ordered = sorted(
            (p for p in self.payments.values() if status is None or p.status == status),
            key=lambda p: p.payment_hash,
        )
        if after is not None:
            ordered = [p for p in ordered if p.payment_hash > after]
        page = ordered[: limit or 15]
        return PaymentPage(tuple(page), page[-1].payment_hash if page else None)

    async def list_channels(self) -> tuple[Channel, ...]:
        self._enter("list_channels")
        return tuple(self.channels)

    async def node_info(self) -> NodeInfo:
        self._enter("node_info")
        return NODE_INFO


NODE_INFO = NodeInfo(
    version="0.8.0",
    pubkey=PUBKEY,
    chain_hash="0x" + "00" * 32,
    udt_scripts=(("USDI", USDI_SCRIPT),),
)


def _invoice(payment_hash: str, amount: int) -> Invoice:
    return Invoice(Currency.FIBD, amount, payment_hash, 1, 3600, None, PUBKEY, None)


def make_config(tmp_path: Path, **reconciler: Any) -> Config:
    settings = {"chunk_rows": 3, "max_node_calls_per_s": 1000.0, **reconciler}
    return Config(
        state_dir=str(tmp_path / "state"),
        reconciler=ReconcilerConfig(**settings),
        settlement=SettlementConfig(expiry_grace_s=300.0),
    )


@contextlib.asynccontextmanager
async def open_runtime(
    tmp_path: Path, node: FakeNode | None = None, *, inline: bool = True, **reconciler: Any
) -> AsyncIterator[Runtime]:
    config = make_config(tmp_path, **reconciler)
    async with open_ledger(config.state_path, inline=inline) as ledger:
        clock = TrioClock()
        rt = Runtime(
            config=config,
            ledger=ledger,
            node=node or FakeNode(),
            node_state=NodeState(info=NODE_INFO),
            clock=clock,
            supervisor=Supervisor(),
            started_at_ms=clock.now_ms(),
            watch_list=WatchList(),
        )
        await ledger.transact(insert_app, APP, "s" * 32, clock.now_ms())
        yield rt


# --- seeding through the real ledger functions ------------------------------------------------


def add_tip(
    conn: sqlite3.Connection,
    tip_id: str,
    amount: int,
    *,
    to_user: str = "bob",
    now_ms: int,
    state: str = "SETTLED",
    asset: str = "CKB",
    expires_in_ms: int = 3_600_000,
) -> Tip:
    tip = Tip(
        id=tip_id,
        app_id=APP,
        post_id="p1",
        from_user_id="alice",
        to_user_id=to_user,
        asset=asset,
        amount=amount,
        invoice=f"fibd{tip_id}",
        payment_hash=phash(tip_id),
        state="UNPAID",
        message=None,
        created_at=now_ms,
        expires_at=now_ms + expires_in_ms,
        settled_at=None,
        next_check_at=now_ms + 1000,
        check_count=0,
        last_error=None,
        failure_reason=None,
    )
    insert_tip(conn, tip)
    if state == "SETTLED":
        settle_tip(conn, tip_id, now_ms=now_ms, source="TEST")
    elif state == "FAILED":
        fail_tip(conn, tip_id, now_ms=now_ms, reason="expired", source="TEST")
    return tip


def add_withdrawal(
    conn: sqlite3.Connection,
    withdrawal_id: str,
    amount: int,
    *,
    user: str = "bob",
    fee_reserved: int = 1_000,
    now_ms: int,
    state: str = "PENDING",
    fee_paid: int = 400,
    cancelled: bool = False,
) -> None:
    """A Fiber withdrawal taken through the real transitions up to ``state``."""
    conn.execute(
        "INSERT INTO withdrawals (id, app_id, user_id, asset, amount, destination_kind,"
        " destination, state, payment_hash, fee_reserved, attempts, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, 'CKB', ?, 'PAYMENT_REQUEST', ?, 'PENDING',"
        " ?, ?, 0, ?, ?, ?)",
        (
            withdrawal_id,
            APP,
            user,
            amount,
            f"fibd{withdrawal_id}",
            phash(withdrawal_id),
            fee_reserved,
            now_ms,
            now_ms,
            now_ms,
        ),
    )
    append_entry(
        conn,
        app_id=APP,
        user_id=user,
        asset="CKB",
        amount=0,
        reserved_delta=amount + fee_reserved,
        kind=EntryKind.WITHDRAWAL_RESERVE,
        ref=withdrawal_id,
        idempotency_key=reserve_key(withdrawal_id, 1),
        now_ms=now_ms,
    )
    if state == "PENDING":
        return
    if state == "FAILED" and cancelled:
        fail_withdrawal(
            conn,
            withdrawal_id,
            reason="cancelled",
            now_ms=now_ms,
            from_states=("PENDING",),
            cancelled=True,
        )
        return
    assert claim_withdrawal(conn, withdrawal_id, now_ms, 60_000) is not None
    if state == "PROCESSING":
        return
    if state == "COMPLETED":
        complete_withdrawal(conn, withdrawal_id, fee_paid=fee_paid, now_ms=now_ms)
    elif state == "FAILED":
        fail_withdrawal(conn, withdrawal_id, reason="no route", now_ms=now_ms)


def raw(conn: sqlite3.Connection, sql: str, *params: Any) -> None:
    """An edit behind the daemon's back (inside a transaction, like any writer)."""
    conn.execute(sql, params)


async def tamper(rt: Runtime, sql: str, *params: Any) -> None:
    await rt.ledger.transact(raw, sql, *params)


def codes(run: StoredRun | list[Finding]) -> set[str]:
    findings = run.findings if isinstance(run, StoredRun) else run
    return {f.code for f in findings}


def first(run: StoredRun, code: str) -> Finding:
    return next(f for f in run.findings if f.code == code)


async def frozen_reason(rt: Runtime) -> str | None:
    state = await rt.ledger.read(frozen_state)
    return state.reason if state else None


async def reconcile(rt: Runtime, trigger: str = "test") -> StoredRun:
    return await Reconciler(rt).run_once(trigger)


async def seed_clean(rt: Runtime, node: FakeNode) -> None:
    """A varied, correct world: settled, unpaid, failed and late-settled tips (CKB and
    USDI), withdrawals in every state (one retried after failing), and a node that agrees."""
    now = rt.clock.now_ms()

    def seed(conn: sqlite3.Connection) -> None:
        for i in range(7):
            add_tip(conn, f"tip{i}", (i + 1) * CKB, to_user="bob" if i % 2 else "carol", now_ms=now)
        add_tip(conn, "tip-unpaid", 5 * CKB, now_ms=now, state="UNPAID")
        add_tip(conn, "tip-failed", 5 * CKB, now_ms=now, state="FAILED")
        add_tip(conn, "tip-late", 2 * CKB, now_ms=now, state="FAILED")
        settle_tip(conn, "tip-late", now_ms=now, source="TEST")
        add_tip(conn, "tip-usdi", 7_000_000, to_user="dave", now_ms=now, asset="USDI")
        add_withdrawal(conn, "w-pending", CKB, now_ms=now)
        add_withdrawal(conn, "w-done", CKB, now_ms=now, state="COMPLETED", fee_paid=400)
        add_withdrawal(conn, "w-failed", CKB, now_ms=now, state="FAILED")
        add_withdrawal(conn, "w-cancelled", CKB, now_ms=now, state="FAILED", cancelled=True)
        add_withdrawal(conn, "w-retried", CKB, now_ms=now, state="FAILED")
        reopen_failed(conn, "w-retried", now_ms=now, by="test")
        add_withdrawal(conn, "w-flight", CKB, now_ms=now, state="PROCESSING")
        add_withdrawal(
            conn, "w-carol", 2 * CKB, user="carol", now_ms=now, state="COMPLETED", fee_paid=1_500
        )  # the node charged more than the cap: capped debit

    await rt.ledger.transact(seed)
    for i in range(7):
        node.issue(phash(f"tip{i}"), (i + 1) * CKB, InvoiceStatus.PAID)
    node.issue(phash("tip-unpaid"), 5 * CKB, InvoiceStatus.OPEN)
    node.issue(phash("tip-failed"), 5 * CKB, InvoiceStatus.CANCELLED)
    node.issue(phash("tip-late"), 2 * CKB, InvoiceStatus.PAID)
    node.issue(phash("tip-usdi"), 7_000_000, InvoiceStatus.PAID)
    node.paid_out(phash("w-done"), "fibdw-done", CKB, 400)
    node.paid_out(phash("w-carol"), "fibdw-carol", 2 * CKB, 1_500)
    node.paid_out(phash("w-failed"), "fibdw-failed", CKB, 0, PaymentStatus.FAILED)
    node.channels = [ready_channel(500 * CKB), ready_channel(10_000_000, USDI_SCRIPT)]
