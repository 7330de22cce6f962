"""Helpers for the withdrawal tests (no tests here): a runtime on a real SQLite file wired to
the FNN simulator over loopback, funding, and a node wrapper that "crashes" mid-step.

Rules: real SQLite files in tmp_path, the simulator on 127.0.0.1 port 0, fakes not mocks.
A crash is simulated by cancelling the executor while a call hangs, then starting a fresh
executor on the same database (all it knows is what was committed).
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from fiberlinkd.clock import Clock, WallClock
from fiberlinkd.config import AssetsConfig, Config, WithdrawalsConfig
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.simulator import Simulator, open_simulator
from fiberlinkd.fnn.types import (
    Channel,
    FiberNode,
    Invoice,
    InvoiceInfo,
    NewInvoiceResult,
    NodeInfo,
    Payment,
    PaymentPage,
    PaymentStatus,
)
from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.ledger.entries import EntryKind, append_entry, get_balance
from fiberlinkd.ledger.withdrawals import Withdrawal, get_withdrawal
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.supervisor import Supervisor

APP = "forum"
CKB = 100_000_000  # shannons per CKB

FAST_WITHDRAWALS = WithdrawalsConfig(
    min_amount="1",
    payment_poll_s=0.05,
    retry_base_s=0.1,
    retry_budget=3,
    invoice_min_remaining_s=600,
)

_funding = itertools.count(1)


@attrs.define
class ManualClock:
    """Unix ms that tests move by hand (policy windows, cooldowns)."""

    now: int = attrs.field(factory=lambda: WallClock().now_ms())

    def now_ms(self) -> int:
        return self.now

    def advance_s(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@attrs.define
class StallingNode:
    """Delegates to ``inner``; can hang ``send_payment`` before or after it reaches the node.

    ``stall_before``: the call never reaches the node (a crash after the PROCESSING commit).
    ``stall_after``: the node executes it, then the reply never comes (a crash before the
    outcome is recorded). Each flag applies once; ``stalled`` is set when a call hangs.
    """

    inner: FiberNode
    stall_before: bool = False
    stall_after: bool = False
    stalled: trio.Event = attrs.field(factory=trio.Event)
    sends: int = 0

    async def send_payment(
        self, *, invoice: str, max_fee_amount: int | None = None, dry_run: bool = False
    ) -> Payment:
        if not dry_run:
            self.sends += 1
            if self.stall_before:
                self.stall_before = False
                self.stalled.set()
                await trio.sleep_forever()
        payment = await self.inner.send_payment(
            invoice=invoice, max_fee_amount=max_fee_amount, dry_run=dry_run
        )
        if not dry_run and self.stall_after:
            self.stall_after = False
            self.stalled.set()
            await trio.sleep_forever()
        return payment

    async def node_info(self) -> NodeInfo:
        return await self.inner.node_info()

    async def new_invoice(self, **kwargs: Any) -> NewInvoiceResult:
        return await self.inner.new_invoice(**kwargs)

    async def parse_invoice(self, invoice: str) -> Invoice:
        return await self.inner.parse_invoice(invoice)

    async def get_invoice(self, payment_hash: str) -> InvoiceInfo:
        return await self.inner.get_invoice(payment_hash)

    async def cancel_invoice(self, payment_hash: str) -> InvoiceInfo:
        return await self.inner.cancel_invoice(payment_hash)

    async def get_payment(self, payment_hash: str) -> Payment:
        return await self.inner.get_payment(payment_hash)

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage:
        return await self.inner.list_payments(status=status, limit=limit, after=after)

    async def list_channels(self) -> tuple[Channel, ...]:
        return await self.inner.list_channels()


def make_config(
    tmp_path: Path,
    withdrawals: WithdrawalsConfig = FAST_WITHDRAWALS,
    assets: AssetsConfig | None = None,
) -> Config:
    return Config(
        state_dir=str(tmp_path / "state"),
        withdrawals=withdrawals,
        assets=assets or AssetsConfig(),
    )


@contextlib.asynccontextmanager
async def open_runtime(
    tmp_path: Path,
    node: Any,
    *,
    clock: Clock | None = None,
    config: Config | None = None,
    inline: bool = False,
    identify: bool = True,
) -> AsyncIterator[Runtime]:
    """A runtime on ``tmp_path/state`` with app ``forum`` and the node identified."""
    config = config or make_config(tmp_path)
    clock = clock or WallClock()
    async with open_ledger(config.state_path, inline=inline) as ledger:
        if (await ledger.read(_app_exists, APP)) is False:
            await ledger.transact(insert_app, APP, "s" * 32, clock.now_ms())
        state = NodeState()
        if identify:
            state.info = await node.node_info()
        yield Runtime(
            config=config,
            ledger=ledger,
            node=node,
            node_state=state,
            clock=clock,
            supervisor=Supervisor(),
            started_at_ms=clock.now_ms(),
            watch_list=WatchList(),
        )


def _app_exists(conn: sqlite3.Connection, app_id: str) -> bool:
    return conn.execute("SELECT 1 FROM apps WHERE app_id = ?", (app_id,)).fetchone() is not None


@contextlib.asynccontextmanager
async def sim_node(call_timeout_s: float = 1.0) -> AsyncIterator[tuple[Simulator, FnnClient]]:
    """The FNN simulator on loopback and a real client for it."""
    async with (
        open_simulator(network="Fibd", host="127.0.0.1", port=0) as sim,
        httpx.AsyncClient() as http,
    ):
        yield sim, FnnClient(http, sim.url, call_timeout_s=call_timeout_s)


async def fund(rt: Runtime, user: str, amount: int, asset: str = "CKB") -> None:
    """Credit ``user`` as a settled tip would."""
    key = f"test:fund:{next(_funding)}"
    await rt.ledger.transact(
        lambda conn: append_entry(
            conn,
            app_id=APP,
            user_id=user,
            asset=asset,
            amount=amount,
            kind=EntryKind.TIP_CREDIT,
            ref=key,
            idempotency_key=key,
            now_ms=rt.clock.now_ms(),
        )
    )


async def balance(rt: Runtime, user: str, asset: str = "CKB") -> tuple[int, int]:
    """(settled, reserved)."""
    b = await rt.ledger.read(get_balance, APP, user, asset)
    return b.settled, b.reserved


async def withdrawal(rt: Runtime, wid: str) -> Withdrawal:
    w = await rt.ledger.read(get_withdrawal, wid)
    assert w is not None
    return w


async def wait_for(
    rt: Runtime, wid: str, done: Callable[[Withdrawal], bool], timeout_s: float = 10.0
) -> Withdrawal:
    with trio.fail_after(timeout_s):
        while True:
            w = await withdrawal(rt, wid)
            if done(w):
                return w
            await trio.sleep(0.02)


def ledger_keys(conn: sqlite3.Connection, ref: str) -> list[tuple[str, str, int, int]]:
    rows = conn.execute(
        "SELECT kind, idempotency_key, amount, reserved_delta FROM ledger_entries"
        " WHERE ref = ? ORDER BY id",
        (ref,),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def payment_request(invoice: str) -> dict[str, str]:
    return {"kind": "PAYMENT_REQUEST", "paymentRequest": invoice}


def params(user: str, amount: str, invoice: str, asset: str = "CKB") -> dict[str, Any]:
    return {
        "userId": user,
        "amount": amount,
        "asset": asset,
        "destination": payment_request(invoice),
    }


def remote_invoice(sim: Simulator, amount: int, **kwargs: Any) -> tuple[str, str]:
    result = sim.node.remote_invoice(amount, **kwargs)
    return result["invoice"], result["payment_hash"]


def successes_for(sim: Simulator, payment_hash: str) -> int:
    return sum(1 for s in sim.node.successful_payments() if s.payment_hash == payment_hash)
