"""The settlement poller, settle_tip and backfill, on trio's fake clock with a fake node.

Rules under test (virtual time; exact virtual times where the schedule fixes them):
- a watched tip (a plugin modal polling tip.status) is re-checked every 250 ms: a payment
  is credited within 0.5 s; an unwatched one at its next persisted scheduled check;
- however many tips are open, get_invoice calls stay within max_checks_per_s in any
  one-second window (also right after an idle spell) and within max_concurrent_checks in
  flight; watched tips go first but cannot starve scheduled ones;
- a restart mid-backlog resumes from the persisted schedule: every paid tip is credited
  exactly once, none is lost, nothing unpaid is credited;
- expiry + grace → cancel_invoice → FAILED (EXPIRED); a payment racing the cancel →
  SETTLED; a payment found after FAILED → credited once, with a LATE_SETTLEMENT event;
- settling is one transaction: a crash injected at any step (an SQLite trigger that
  aborts the statement) leaves nothing written; replaying a settlement changes nothing;
  a poller cancelled mid-check leaves the tip due, and the next poller settles it once;
- node errors back that one tip off while others keep going; an invoice the node does not
  know fails (NODE_INVOICE_MISSING) only after a confirming re-check.

Real SQLite files in tmp_path (ledger ``inline=True`` so the fake clock cannot jump during
a transaction); the node is :class:`tests.fakes.FakeNode`; no mocks.
"""

from __future__ import annotations

import itertools
import logging
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from fiberlinkd.admin.protocol import AdminError
from fiberlinkd.admin.registry import CommandContext
from fiberlinkd.admin.roles import Caller, Role
from fiberlinkd.clock import TrioClock
from fiberlinkd.config import Config
from fiberlinkd.fnn.errors import FnnConnectError, FnnTimeout
from fiberlinkd.fnn.types import InvoiceStatus
from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.ledger.store import open_ledger
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.settlement import (
    RECEIVED_RECHECK_MS,
    RISE_IN_FLIGHT,
    RISE_MAX_CHECKS,
    SCHEDULED_SHARE,
    RateLimiter,
    SettlementPoller,
    backfill,
)
from fiberlinkd.settlement_admin import backfill_command, parse_time_ms, settlement_status
from fiberlinkd.supervisor import Supervisor
from tests.conftest import make_config
from tests.fakes import FakeNode, error, max_calls_in_any_window

EPOCH_MS = TrioClock().epoch_ms
APP = "forum"


@attrs.define
class Env:
    rt: Runtime
    node: FakeNode
    clock: TrioClock

    @property
    def ledger(self) -> Ledger:
        return self.rt.ledger

    def t(self) -> float:
        """Virtual seconds since the test started."""
        return trio.current_time()

    async def open_tip(
        self,
        amount: int = 100,
        *,
        to_user: str = "67",
        expiry_s: int | None = 3600,
        app_id: str = APP,
        first_check_in_ms: int | None = None,
    ) -> tipsql.Tip:
        """What tip.create does: an invoice on the node, then the row (schedule included)."""
        record = self.node.add_invoice(amount, expiry_s=expiry_s)
        now = self.clock.now_ms()
        first = self.rt.config.settlement.first_check_after_s * 1000
        tip = new_tip(
            app_id,
            to_user,
            amount,
            record.address,
            record.payment_hash,
            now,
            record.timestamp_ms + (expiry_s or 10**9) * 1000,
            now + int(first if first_check_in_ms is None else first_check_in_ms),
        )
        await self.ledger.transact(tipsql.insert_tip, tip)
        return tip

    async def tip(self, tip_id: str) -> tipsql.Tip:
        tip = await self.ledger.read(tipsql.get_tip, tip_id)
        assert tip is not None
        return tip

    async def wait_state(self, tip_id: str, state: str, *, within_s: float) -> tipsql.Tip:
        with trio.fail_after(within_s):
            while (tip := await self.tip(tip_id)).state != state:
                await trio.sleep(0.01)
        return tip


def new_tip(
    app_id: str,
    to_user: str,
    amount: int,
    invoice: str,
    payment_hash: str,
    now: int,
    expires_at: int,
    next_check_at: int,
) -> tipsql.Tip:
    return tipsql.Tip(
        id=uuid.uuid4().hex,
        app_id=app_id,
        post_id="123",
        from_user_id="45",
        to_user_id=to_user,
        asset="CKB",
        amount=amount,
        invoice=invoice,
        payment_hash=payment_hash,
        state=tipsql.UNPAID,
        message=None,
        created_at=now,
        expires_at=expires_at,
        settled_at=None,
        next_check_at=next_check_at,
        check_count=0,
        last_error=None,
        failure_reason=None,
    )


def settlement_config(tmp_path: Path, **settlement: Any) -> Config:
    return make_config(tmp_path, settlement={"expiry_grace_s": 5.0, **settlement})


def runtime(config: Config, ledger: Ledger, node: FakeNode, clock: TrioClock) -> Runtime:
    return Runtime(
        config=config,
        ledger=ledger,
        node=node,
        node_state=NodeState(),
        clock=clock,
        supervisor=Supervisor(),
        started_at_ms=clock.now_ms(),
        watch_list=WatchList(ttl_ms=int(config.settlement.watch_ttl_s * 1000)),
    )


@asynccontextmanager
async def environment(
    tmp_path: Path, *, channel: bool = False, **settlement: Any
) -> AsyncIterator[Env]:
    """A fresh ledger and fake node; ``channel`` gives the node a channel (the signal)."""
    config = settlement_config(tmp_path, **settlement)
    clock = TrioClock()
    async with open_ledger(config.state_path, inline=True) as ledger:
        await ledger.transact(insert_app, APP, "s" * 64, clock.now_ms())
        await ledger.transact(insert_app, "other", "t" * 64, clock.now_ms())
        node = FakeNode(clock)
        if channel:
            node.open_channel()
        yield Env(runtime(config, ledger, node, clock), node, clock)


@asynccontextmanager
async def running(rt: Runtime, seed: int = 1) -> AsyncIterator[SettlementPoller]:
    poller = SettlementPoller(rt, rng=random.Random(seed))
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        yield poller
        nursery.cancel_scope.cancel()


async def modal(rt: Runtime, tip_id: str) -> None:
    """The plugin's modal: tip.status once a second until cancelled."""
    while True:
        rt.watch_list.watch(tip_id, rt.clock.now_ms())
        await trio.sleep(1.0)


async def modal_from(start_s: float, rt: Runtime, tip_id: str) -> None:
    await trio.sleep_until(start_s)
    await modal(rt, tip_id)


# --- reading the ledger for assertions --------------------------------------------------


def _money_snapshot(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
        for table in ("tip_intents", "tip_events", "ledger_entries", "balances")
    }


def _credits(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return [
        (r["ref"], r["idempotency_key"], r["amount"])
        for r in conn.execute("SELECT * FROM ledger_entries WHERE kind = 'TIP_CREDIT'")
    ]


def _events(conn: sqlite3.Connection, tip_id: str) -> list[tuple[Any, ...]]:
    return [
        (r["from_state"], r["to_state"], r["source"], r["detail"])
        for r in conn.execute("SELECT * FROM tip_events WHERE tip_id = ? ORDER BY id", (tip_id,))
    ]


def _balance(conn: sqlite3.Connection, user_id: str) -> int:
    row = conn.execute(
        "SELECT settled FROM balances WHERE app_id = ? AND user_id = ? AND asset = 'CKB'",
        (APP, user_id),
    ).fetchone()
    return int(row["settled"]) if row else 0


def _unpaid_without_schedule(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute(
            "SELECT count(*) FROM tip_intents WHERE state = 'UNPAID' AND next_check_at IS NULL"
        ).fetchone()[0]
    )


def execute_sql(db: Path, sql: str) -> None:
    """Change the schema from outside the daemon (fault injection), like an operator would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


# --- detection ---------------------------------------------------------------------------


async def test_watched_paid_tip_settles_within_half_a_second_of_virtual_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env, trio.open_nursery() as nursery:
        tip = await env.open_tip(31)
        nursery.start_soon(modal, env.rt, tip.id)
        async with running(env.rt):
            await trio.sleep(3.1)
            env.node.pay(tip.payment_hash)
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=1)
        nursery.cancel_scope.cancel()
    # Watched checks run at 0, 0.25, 0.5, …: the first one after the payment is at 3.25 s.
    assert settled.settled_at == EPOCH_MS + 3250
    checks = [at for at, h in env.node.calls_of("get_invoice") if h == tip.payment_hash]
    assert checks == [pytest.approx(0.25 * i) for i in range(14)]


async def test_unwatched_paid_tip_settles_at_its_next_scheduled_check(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(50)
        async with running(env.rt):
            await trio.sleep(10.0)
            env.node.pay(tip.payment_hash)
            due = (await env.tip(tip.id)).next_check_at
            assert due is not None
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=60)
    assert settled.settled_at is not None
    assert 0 <= settled.settled_at - due <= 1  # float seconds → int ms may round down once
    checks = [at for at, _ in env.node.calls_of("get_invoice")]
    # First check first_check_after_s (2 s) after creation, then doubling intervals ±10 %.
    assert checks[0] == 2.0
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    for n, gap in enumerate(gaps[:-1]):
        assert 0.9 * 2.0 * 2**n - 0.001 <= gap <= 1.1 * 2.0 * 2**n + 0.001


@pytest.mark.parametrize("channel", [False, True], ids=["polling", "arrival-signal"])
async def test_ten_thousand_open_invoices_never_exceed_the_rate_or_concurrency_limits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, channel: bool
) -> None:
    async with environment(
        tmp_path, channel=channel, max_checks_per_s=50.0, max_concurrent_checks=4
    ) as env:
        env.node.latency_s = 0.03
        first = await env.open_tip(first_check_in_ms=0)
        now = env.clock.now_ms()
        tips = []
        for _ in range(10_000):  # all due together after an idle spell of 3 s
            record = env.node.add_invoice(10)
            tips.append(
                new_tip(
                    APP,
                    "67",
                    10,
                    record.address,
                    record.payment_hash,
                    now,
                    now + 3_600_000,
                    now + 3_000,
                )
            )

        def insert_all(conn: sqlite3.Connection) -> None:
            for tip in tips:
                tipsql.insert_tip(conn, tip)

        await env.ledger.transact(insert_all)
        watched = tips[:100]
        async with trio.open_nursery() as nursery:
            for tip in watched[:60]:
                nursery.start_soon(modal_from, 3.0, env.rt, tip.id)
            async with running(env.rt):
                await trio.sleep(20.0)
            nursery.cancel_scope.cancel()
    times = [at for at, _ in env.node.calls_of("get_invoice")]
    assert times[0] == 0.0  # the lone early tip primes the limiter; then idle until 3 s
    assert first.payment_hash == env.node.calls_of("get_invoice")[0][1]
    assert max_calls_in_any_window(times) <= 50
    assert env.node.max_in_flight <= 4
    # The limit is used, not just respected: ~50/s for the 17 s of work after the idle spell.
    # With the arrival signal, scheduled checks leave a fifth of the window free for rises.
    used = SCHEDULED_SHARE if channel else 1.0
    assert len([t for t in times if t >= 3.0]) >= 0.95 * 50 * 17 * used
    # Watched tips go first, yet scheduled ones keep at least a fifth of the rate.
    watched_ids = {t.payment_hash for t in watched[:60]}
    after_idle = [(at, h) for at, h in env.node.calls_of("get_invoice") if at >= 4.0]
    scheduled = [h for _, h in after_idle if h not in watched_ids]
    assert len(scheduled) >= 0.19 * len(after_idle)


async def test_rate_limiter_grants_at_most_the_limit_in_any_window_even_after_idling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(50.0)
    grants: list[float] = []

    async def instant_call() -> None:
        await limiter.acquire()
        grants.append(trio.current_time())
        limiter.release()

    await instant_call()
    await trio.sleep(5.0)  # a token bucket would have saved up a second's burst here
    for _ in range(400):
        await instant_call()
    assert max_calls_in_any_window(grants) == 50
    assert grants[-1] == pytest.approx(5.0 + 7.0)  # 400 grants: 8 windows of 50 from 5.0 s
    slow = RateLimiter(0.5)
    await slow.acquire()
    slow.release()
    start = trio.current_time()
    await slow.acquire()
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_rate_limiter_counts_a_call_until_a_second_after_it_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The node may receive a call any time before it finishes: a slow call holds its place."""
    limiter = RateLimiter(2.0)
    await limiter.acquire()
    await limiter.acquire()
    with trio.move_on_after(10.0):
        await limiter.acquire()  # both calls still in flight: no third one
        raise AssertionError("granted a third call in the window")
    limiter.release()  # the first call finished at 10 s
    await limiter.acquire()
    assert trio.current_time() == pytest.approx(11.0)


async def test_watched_tips_beyond_the_budget_are_served_round_robin_and_do_not_starve_others(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, max_checks_per_s=20.0) as env:
        watched = [await env.open_tip(5) for _ in range(40)]  # wants 160 checks/s
        plain = await env.open_tip(7, to_user="88")
        async with trio.open_nursery() as nursery:
            for tip in watched:
                nursery.start_soon(modal, env.rt, tip.id)
            async with running(env.rt):
                await trio.sleep(10.0)
                env.node.pay(plain.payment_hash)
                env.node.pay(watched[-1].payment_hash)
                await env.wait_state(watched[-1].id, tipsql.SETTLED, within_s=3)
                await env.wait_state(plain.id, tipsql.SETTLED, within_s=40)
            nursery.cancel_scope.cancel()
    times = [at for at, _ in env.node.calls_of("get_invoice")]
    assert max_calls_in_any_window(times) <= 20
    per_tip = {t.id: 0 for t in watched}
    hashes = {t.payment_hash: t.id for t in watched}
    for at, h in env.node.calls_of("get_invoice"):
        if h in hashes and 1.0 <= at < 10.0:
            per_tip[hashes[h]] += 1
    # 16 watched checks/s (80 % of 20) shared by 40 tips: each ~3.6 times in 9 s, none left out.
    assert min(per_tip.values()) >= 3
    assert max(per_tip.values()) - min(per_tip.values()) <= 1


# --- the arrival signal (list_channels) ---------------------------------------------------


async def open_backlog(
    env: Env, count: int, *, amount: Callable[[int], int], spread_ms: int = 300_000
) -> list[tipsql.Tip]:
    """``count`` unpaid tips created earlier, schedules spread over the next ``spread_ms``."""
    now = env.clock.now_ms()
    tips = []
    for i in range(count):
        record = env.node.add_invoice(amount(i))
        tips.append(
            new_tip(
                APP,
                "67",
                amount(i),
                record.address,
                record.payment_hash,
                now - 3_000_000 + i,
                now + 3_600_000,
                now + 1 + (i * 7919) % spread_ms,
            )
        )

    def insert_all(conn: sqlite3.Connection) -> None:
        for tip in tips:
            tipsql.insert_tip(conn, tip)

        # Steady state: checked for a while, backoff at its cap (a test-only shortcut).
        conn.execute("UPDATE tip_intents SET check_count = 8 WHERE state = 'UNPAID'")

    await env.ledger.transact(insert_all)
    return [attrs.evolve(t, check_count=8) for t in tips]


def checks_of(env: Env, tip: tipsql.Tip) -> list[float]:
    return [at for at, h in env.node.calls_of("get_invoice") if h == tip.payment_hash]


async def test_a_payment_to_one_unwatched_tip_among_ten_thousand_is_found_by_the_balance_rise(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        env.node.latency_s = 0.01
        backlog = await open_backlog(env, 10_000, amount=lambda i: (1 + i % 500) * 1000)
        paid = backlog[4_321]  # 20 open tips ask for this amount; it is the 12th newest
        async with running(env.rt):
            await trio.sleep(10.1)
            before = len(env.node.calls_of("get_invoice"))
            env.node.pay(paid.payment_hash)
            settled = await env.wait_state(paid.id, tipsql.SETTLED, within_s=1)
            after = len(env.node.calls_of("get_invoice"))
    # list_channels at 10.0 s and 10.25 s: the rise is seen at 10.25 s, then the 12 newest
    # tips for that exact amount are checked, four at a time (10 ms a call).
    assert settled.settled_at is not None
    assert EPOCH_MS + 10_250 <= settled.settled_at <= EPOCH_MS + 10_350
    assert settled.settled_at - (EPOCH_MS + 10_100) <= 500
    same_amount = [t for t in backlog if t.amount == paid.amount]
    explained = [at for t in same_amount for at in checks_of(env, t) if at >= 10.25]
    assert len(explained) <= 12 + 3  # the newest first; at most a batch in flight overshoots
    assert after - before <= 12 + 3 + 10  # + the schedule's own checks meanwhile (~33/s)


async def test_two_payments_in_one_interval_are_found_by_the_up_to_delta_search(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        env.node.latency_s = 0.01
        await open_backlog(env, 10_000, amount=lambda i: (1 + i % 500) * 1000)
        await trio.sleep(9.0)
        recent = [
            await env.open_tip(amount, first_check_in_ms=600_000) for amount in (3_000, 5_000)
        ]
        async with running(env.rt):
            await trio.sleep(1.1)
            for tip in recent:
                env.node.pay(tip.payment_hash)  # both land in the interval ending at 10.25 s
            settled = [await env.wait_state(t.id, tipsql.SETTLED, within_s=5) for t in recent]
    # No open tip asks for 8000 beyond the 20 old ones: after them, the newest tips for at most
    # 8000 are checked: the 5000 one first; the remainder 3000 is then an exact match.
    for tip in settled:
        assert tip.settled_at is not None
        assert tip.settled_at - (EPOCH_MS + 10_100) <= 500


async def test_a_watched_tip_is_checked_at_the_floor_without_a_rise_and_at_once_with_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env, trio.open_nursery() as nursery:
        tip = await env.open_tip(31, first_check_in_ms=600_000)
        others = [await env.open_tip(31, first_check_in_ms=600_000) for _ in range(5)]
        nursery.start_soon(modal, env.rt, tip.id)
        async with running(env.rt):
            await trio.sleep(10.1)
            env.node.pay(tip.payment_hash)
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=1)
        nursery.cancel_scope.cancel()
    # Without a rise, only the floor: every 2 s (4 checks in 10 s, the fallback makes 40).
    # The rise at 10.25 s checks it at once, and the watched exact match explains it.
    # (Its own schedule, 2 s after its first check, may add one.)
    checks = checks_of(env, tip)
    assert checks[0] == 0.0
    assert 4 <= len([t for t in checks if 1.0 <= t < 10.0]) <= 5
    assert checks[-1] == 10.25
    assert settled.settled_at == EPOCH_MS + 10_250
    # Beside it, at most one other candidate in flight at a time (finishing in any order).
    assert sum(len(checks_of(env, t)) for t in others) <= RISE_IN_FLIGHT
    assert [at for at, _ in env.node.calls_of("list_channels")][:3] == [0.0, 0.25, 0.5]


async def test_with_no_rise_the_get_invoice_rate_stays_low(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env, trio.open_nursery() as nursery:
        watched = [await env.open_tip(5, first_check_in_ms=600_000) for _ in range(10)]
        for tip in watched:
            nursery.start_soon(modal, env.rt, tip.id)
        async with running(env.rt):
            await trio.sleep(60.0)
        nursery.cancel_scope.cancel()
    times = [at for at, _ in env.node.calls_of("get_invoice")]
    # 10 watched tips at the 2 s floor: 5 checks/s (the fallback would want 40/s).
    assert len([t for t in times if t >= 1.0]) <= 10 * 30
    assert max_calls_in_any_window(times) <= 10 + 10  # the first round (250 ms) + the floor
    assert len(env.node.calls_of("list_channels")) == pytest.approx(240, abs=2)


async def test_a_rise_nothing_explains_costs_a_bounded_number_of_checks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        await open_backlog(env, 2_000, amount=lambda i: 1000 + i)
        async with running(env.rt):
            await trio.sleep(10.1)
            before = len(env.node.calls_of("get_invoice"))
            env.node.channels[0].local_balance += 10**6  # e.g. a payment forwarded through us
            await trio.sleep(10.0)
            after = len(env.node.calls_of("get_invoice"))
    scheduled = 2_000 * 10 / 300  # the schedule's share meanwhile (~67)
    assert after - before <= RISE_MAX_CHECKS + scheduled * 1.2


async def test_a_received_tlc_explains_the_rise_and_the_tip_settles_when_it_turns_paid(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        decoys = [await env.open_tip(40, first_check_in_ms=600_000) for _ in range(3)]
        await trio.sleep(1.0)
        tip = await env.open_tip(40, first_check_in_ms=600_000)
        async with running(env.rt):
            await trio.sleep(5.1)
            env.node.hold(tip.payment_hash)  # the TLC is in: received_tlc_balance rises
            await trio.sleep(1.0)
            env.node.pay(tip.payment_hash)  # settled: local up, received down, no new rise
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=2)
            await trio.sleep(5.0)
    # The poller started at 1 s: the TLC arrived at 6.1 s, the rise is seen at 6.25 s and the
    # newest tip for 40 is the first candidate; Received, it is looked at again every 0.5 s.
    assert checks_of(env, tip)[:3] == [6.25, 6.75, 7.25]
    assert settled.settled_at == EPOCH_MS + 7_100 + 150  # paid at 7.1 s, next look 7.25 s
    assert RECEIVED_RECHECK_MS == 500
    # At most one decoy in flight beside it at a time (then they follow their own schedule).
    assert sum(1 for d in decoys for at in checks_of(env, d) if at < 7.0) <= RISE_IN_FLIGHT


async def test_a_withdrawal_masking_a_payment_is_caught_by_the_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        tip = await env.open_tip(100)
        async with running(env.rt):
            await trio.sleep(60.1)
            due = (await env.tip(tip.id)).next_check_at
            env.node.pay(tip.payment_hash)
            env.node.send_out(150)  # in the same 250 ms: the channel's sum goes down by 50
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=300)
    assert due is not None
    assert settled.settled_at is not None
    assert 0 <= settled.settled_at - due <= 1  # found by its scheduled check, not the signal
    checks = checks_of(env, tip)
    assert checks[0] == 2.0  # 2 s, 4 s, 8 s … (±10 %): the 6th check is the one after 60 s
    assert all(b - a <= 300 * 1.1 + 0.001 for a, b in itertools.pairwise(checks))


async def test_the_schedule_backs_off_to_the_long_cap_while_the_signal_works(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        tip = await env.open_tip(100)
        async with running(env.rt):
            await trio.sleep(1_500)
    gaps = [b - a for a, b in itertools.pairwise(checks_of(env, tip))]
    assert max(gaps) == pytest.approx(300, rel=0.11)
    assert max(gaps) > 60 * 1.1


async def test_when_list_channels_fails_polling_falls_back_and_the_change_is_logged_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fiberlinkd.settlement")
    async with environment(tmp_path, channel=True) as env, trio.open_nursery() as nursery:
        tip = await env.open_tip(31, first_check_in_ms=600_000)
        slow = await env.open_tip(32)
        nursery.start_soon(modal, env.rt, tip.id)
        env.node.fail_next("list_channels", error(FnnConnectError), count=100)
        async with running(env.rt):
            await trio.sleep(520.1)  # 100 failures 5 s apart, then it answers from 500 s on
            env.node.pay(slow.payment_hash)
            settled = await env.wait_state(slow.id, tipsql.SETTLED, within_s=5)
        nursery.cancel_scope.cancel()
    watched_checks = checks_of(env, tip)
    assert [t for t in watched_checks if t < 9.99] == [
        pytest.approx(0.25 * i, abs=0.002) for i in range(40)
    ]
    # The signal is back at 500 s: then the 2 s floor, and the rise at 520.25 s.
    assert len([t for t in watched_checks if 501.0 <= t < 520.0]) == pytest.approx(9, abs=1)
    # Meanwhile the schedule was capped at 60 s (the fallback), not 300 s.
    slow_checks = [t for t in checks_of(env, slow) if t < 500.0]
    assert max(b - a for a, b in itertools.pairwise(slow_checks)) == pytest.approx(60, rel=0.11)
    assert settled.settled_at == EPOCH_MS + 520_250
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (
        messages.count((logging.WARNING, "arrival signal unavailable; polling invoices as before"))
        == 1
    )
    assert messages.count((logging.INFO, "arrival signal available")) == 1


async def test_a_payment_while_list_channels_failed_shows_as_a_rise_when_it_answers_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path, channel=True) as env:
        tip = await env.open_tip(64, first_check_in_ms=600_000)
        async with running(env.rt):
            await trio.sleep(1.1)
            env.node.fail_next("list_channels", error(FnnTimeout), count=1)
            await trio.sleep(0.2)  # the poll at 1.25 s fails; the next one is at 6.25 s
            env.node.pay(tip.payment_hash)
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=10)
    assert settled.settled_at == EPOCH_MS + 6_250


# --- restart ------------------------------------------------------------------------------


async def test_a_payment_made_while_the_daemon_was_down_shows_as_a_rise_after_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The last channel reading is saved when it changes, so the first poll after a
    restart sees what arrived meanwhile instead of taking it as the new baseline."""
    async with environment(tmp_path, channel=True) as env:
        earlier = await env.open_tip(32, first_check_in_ms=600_000)
        tip = await env.open_tip(64, first_check_in_ms=600_000)
        async with running(env.rt):
            await trio.sleep(1.0)
            env.node.pay(earlier.payment_hash)  # a rise: the reading changes and is saved
            await env.wait_state(earlier.id, tipsql.SETTLED, within_s=2)
            await trio.sleep(1.0)
        env.node.pay(tip.payment_hash)  # while the daemon is down
        await trio.sleep(30.0)
        restarted_at = trio.current_time()
        async with running(env.rt):
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=2)
        assert trio.current_time() - restarted_at < 1.0
        assert settled.state == tipsql.SETTLED


@pytest.mark.parametrize("channel", [False, True], ids=["polling", "arrival-signal"])
async def test_restart_mid_backlog_credits_every_paid_tip_exactly_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, channel: bool
) -> None:
    rng = random.Random(42)
    config = settlement_config(tmp_path, max_checks_per_s=50.0)
    clock = TrioClock()
    node = FakeNode(clock)
    if channel:
        node.open_channel()
    node.latency_s = 0.02
    paid: dict[str, int] = {}  # tip id -> amount
    tips: list[tipsql.Tip] = []
    async with open_ledger(config.state_path, inline=True) as ledger:
        await ledger.transact(insert_app, APP, "s" * 64, clock.now_ms())
        env = Env(runtime(config, ledger, node, clock), node, clock)
        for i in range(800):
            tips.append(await env.open_tip(1 + i % 97, to_user=f"u{i % 20}"))
            await trio.sleep(0.01)
        to_pay = rng.sample(tips, 120)

        async def payer() -> None:
            for tip in sorted(to_pay, key=lambda _: rng.random()):
                await trio.sleep(rng.uniform(0.0, 0.4))
                node.pay(tip.payment_hash)
                paid[tip.id] = tip.amount

        async with trio.open_nursery() as nursery:
            nursery.start_soon(payer)
            async with running(env.rt, seed=1):
                await trio.sleep(20.0)  # stopped mid-backlog, checks in flight
            nursery.cancel_scope.cancel()
        first_run_settled = len([1 for t in await ledger.read(_credits)])
        assert 0 < first_run_settled < 120
    await trio.sleep(1.0)  # the process restarts
    restart_at = trio.current_time()
    async with open_ledger(config.state_path, inline=True) as ledger:
        assert await ledger.read(_unpaid_without_schedule) == 0
        env = Env(runtime(config, ledger, node, clock), node, clock)
        for tip in to_pay:
            if tip.id not in paid:
                node.pay(tip.payment_hash)
                paid[tip.id] = tip.amount
        async with running(env.rt, seed=2):
            # Paid while stopped: no rise shows them (the new reading is the baseline), so the
            # schedule finds them: within its cap, 60 s polling, 300 s with the signal.
            with trio.fail_after(400 if channel else 200):
                while len(await ledger.read(_credits)) < len(paid):
                    await trio.sleep(1.0)
            await trio.sleep(70.0)  # long enough for any duplicate to show up
        credits = await ledger.read(_credits)
        assert sorted(ref for ref, _, _ in credits) == sorted(paid)
        assert {key for _, key, _ in credits} == {f"settlement:tip_intent:{t}" for t in paid}
        for user in {t.to_user_id for t in tips}:
            expected = sum(t.amount for t in tips if t.id in paid and t.to_user_id == user)
            assert await ledger.read(_balance, user) == expected
        unpaid = [t for t in tips if t.id not in paid]
        for tip in unpaid[:50]:
            assert (await env.tip(tip.id)).state == tipsql.UNPAID
        assert await ledger.read(_unpaid_without_schedule) == 0
    times = [at for at, _ in node.calls_of("get_invoice")]
    assert max_calls_in_any_window(times) <= 50
    # Resumed from the persisted schedule: no burst of every open tip at start-up.
    assert len([t for t in times if restart_at <= t < restart_at + 1.0]) <= 50


# --- expiry and late payments -----------------------------------------------------------


async def test_expired_invoice_is_cancelled_after_grace_and_the_tip_fails(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(expiry_s=60)
        async with running(env.rt):
            failed = await env.wait_state(tip.id, tipsql.FAILED, within_s=120)
        events = await env.ledger.read(_events, tip.id)
        credits = await env.ledger.read(_credits)
    # expiry 60 s + grace 5 s: the schedule lands exactly there, then cancel_invoice.
    assert env.node.calls_of("cancel_invoice") == [(pytest.approx(65.0), tip.payment_hash)]
    assert env.node.invoices[tip.payment_hash].status is InvoiceStatus.CANCELLED
    assert failed.failure_reason == "EXPIRED"
    assert failed.next_check_at is None
    assert events[-1] == (tipsql.UNPAID, tipsql.FAILED, "SETTLEMENT_POLLER", "EXPIRED")
    assert credits == []


async def test_payment_racing_the_cancel_settles_the_tip(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(77, expiry_s=60)
        # The payer's TLC was held before expiry and is fulfilled as we cancel.
        env.node.on_call(
            "cancel_invoice", lambda h: env.node.force_status(h or "", InvoiceStatus.PAID)
        )
        async with running(env.rt):
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=120)
            await trio.sleep(30)
        events = await env.ledger.read(_events, tip.id)
        credits = await env.ledger.read(_credits)
    assert settled.settled_at == EPOCH_MS + 65_000
    assert events[-1] == (tipsql.UNPAID, tipsql.SETTLED, "SETTLEMENT_CANCEL_RACE", None)
    assert credits == [(tip.id, f"settlement:tip_intent:{tip.id}", 77)]


async def test_late_payment_after_failed_is_credited_once_by_backfill(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(90)
        env.node.forget(tip.payment_hash)  # e.g. the node was restored from an old backup
        async with running(env.rt):
            failed = await env.wait_state(tip.id, tipsql.FAILED, within_s=10)
        assert failed.failure_reason == "NODE_INVOICE_MISSING"
        env.node.restore(tip.payment_hash)
        env.node.pay(tip.payment_hash)
        window = {"app_id": None, "since_ms": 0, "until_ms": env.clock.now_ms() + 1}
        first = await backfill(env.rt, **window)
        again = await backfill(env.rt, **window)
        events = await env.ledger.read(_events, tip.id)
        credits = await env.ledger.read(_credits)
        balance = await env.ledger.read(_balance, "67")
    assert first["late_settled"] == 1
    assert first["changes"] == [
        {"tip_id": tip.id, "app_id": APP, "from": "FAILED", "to": "SETTLED"}
    ]
    assert again["late_settled"] == again["settled"] == 0
    assert again["already_settled"] == 1
    assert again["checked"] == 0
    assert events[-1] == (tipsql.FAILED, tipsql.SETTLED, "BACKFILL", "LATE_SETTLEMENT")
    assert credits == [(tip.id, f"settlement:tip_intent:{tip.id}", 90)]
    assert balance == 90


async def test_backfill_checks_only_the_window_and_app_and_respects_its_rate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        before = await env.open_tip(1)
        await trio.sleep(10)
        inside = [await env.open_tip(2) for _ in range(30)]
        other_app = await env.open_tip(3, app_id="other")
        await trio.sleep(10)
        after = await env.open_tip(4)
        for tip in (before, inside[3], inside[17], other_app, after):
            env.node.pay(tip.payment_hash)
        env.node.forget(inside[5].payment_hash)
        env.node.fail_next("get_invoice", error(FnnTimeout), payment_hash=inside[6].payment_hash)
        progress: list[dict[str, Any]] = []

        async def on_progress(data: dict[str, Any]) -> None:
            progress.append(data)

        started = trio.current_time()
        summary = await backfill(
            env.rt,
            app_id=APP,
            since_ms=EPOCH_MS + 10_000,
            until_ms=EPOCH_MS + 20_000,
            calls_per_s=10.0,
            on_progress=on_progress,
        )
        elapsed = trio.current_time() - started
    assert summary["total"] == summary["examined"] == summary["checked"] == 30
    assert summary["settled"] == 2
    assert summary["missing_on_node"] == 1
    assert summary["errors"] == 1
    assert summary["unchanged"] == 26
    assert {c["tip_id"] for c in summary["changes"]} == {inside[3].id, inside[17].id}
    assert progress[-1]["done_pages"] == progress[-1]["total_pages"] == 1
    assert elapsed == pytest.approx(2.0)  # 30 calls at 10/s: three windows
    times = [at for at, _ in env.node.calls_of("get_invoice")]
    assert max_calls_in_any_window(times) <= 10


# --- crash safety -------------------------------------------------------------------------

CRASH_POINTS = {
    "tip state change": "BEFORE UPDATE OF state ON tip_intents WHEN NEW.state = 'SETTLED'",
    "ledger entry": "BEFORE INSERT ON ledger_entries",
    "balance row": "BEFORE INSERT ON balances",
    "timeline event": "BEFORE INSERT ON tip_events WHEN NEW.to_state = 'SETTLED'",
    "after the last write": "AFTER INSERT ON tip_events WHEN NEW.to_state = 'SETTLED'",
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
async def test_a_crash_at_any_step_of_settling_leaves_nothing_and_a_retry_settles_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, point: str
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(25)
        before = await env.ledger.read(_money_snapshot)
        execute_sql(
            env.ledger.path,
            f"CREATE TRIGGER crash {CRASH_POINTS[point]} BEGIN SELECT RAISE(ABORT, 'crash'); END",
        )
        with pytest.raises(sqlite3.IntegrityError, match="crash"):
            await env.ledger.transact(
                tipsql.settle_tip, tip.id, now_ms=env.clock.now_ms(), source="TEST"
            )
        assert await env.ledger.read(_money_snapshot) == before
        execute_sql(env.ledger.path, "DROP TRIGGER crash")
        assert await env.ledger.transact(
            tipsql.settle_tip, tip.id, now_ms=env.clock.now_ms(), source="TEST"
        )
        assert (await env.tip(tip.id)).state == tipsql.SETTLED
        assert await env.ledger.read(_credits) == [(tip.id, f"settlement:tip_intent:{tip.id}", 25)]
        assert await env.ledger.read(_balance, "67") == 25


async def test_a_poller_crashing_inside_the_settlement_writes_nothing_and_the_next_settles_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(25)
        env.node.pay(tip.payment_hash)
        before = await env.ledger.read(_money_snapshot)
        execute_sql(
            env.ledger.path,
            f"CREATE TRIGGER crash {CRASH_POINTS['balance row']} "
            "BEGIN SELECT RAISE(ABORT, 'crash'); END",
        )
        with pytest.raises(ExceptionGroup) as crashed:  # not node trouble: it propagates
            async with running(env.rt):
                await trio.sleep(10)
        assert crashed.group_contains(sqlite3.IntegrityError, match="crash", depth=None)
        assert await env.ledger.read(_money_snapshot) == before
        execute_sql(env.ledger.path, "DROP TRIGGER crash")
        async with running(env.rt):
            await env.wait_state(tip.id, tipsql.SETTLED, within_s=5)
            await trio.sleep(10)
        assert await env.ledger.read(_credits) == [(tip.id, f"settlement:tip_intent:{tip.id}", 25)]


async def test_a_poller_cancelled_mid_check_leaves_the_tip_due_and_the_next_settles_it_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(12)
        release = env.node.block("get_invoice")
        async with running(env.rt):
            await trio.sleep(3.0)  # the check started at 2 s and hangs
            env.node.pay(tip.payment_hash)
        assert env.node.calls_of("get_invoice") == [(2.0, tip.payment_hash)]
        unchanged = await env.tip(tip.id)
        assert (unchanged.state, unchanged.next_check_at, unchanged.check_count) == (
            tipsql.UNPAID,
            EPOCH_MS + 2_000,
            0,
        )
        release.set()
        async with running(env.rt):
            settled = await env.wait_state(tip.id, tipsql.SETTLED, within_s=1)
            await trio.sleep(10)
        assert settled.settled_at == EPOCH_MS + 3_000  # due, so checked at once
        assert await env.ledger.read(_credits) == [(tip.id, f"settlement:tip_intent:{tip.id}", 12)]


async def test_replaying_a_settlement_changes_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(40)
        assert await env.ledger.transact(
            tipsql.settle_tip, tip.id, now_ms=env.clock.now_ms(), source="TEST"
        )
        after_first = await env.ledger.read(_money_snapshot)
        await trio.sleep(5)
        for source in ("TEST", "BACKFILL", "SETTLEMENT_POLLER"):
            assert not await env.ledger.transact(
                tipsql.settle_tip, tip.id, now_ms=env.clock.now_ms(), source=source
            )
        assert await env.ledger.read(_money_snapshot) == after_first
        assert not await env.ledger.transact(
            tipsql.fail_tip, tip.id, now_ms=env.clock.now_ms(), reason="EXPIRED", source="TEST"
        )
        assert await env.ledger.read(_money_snapshot) == after_first


# --- node trouble -------------------------------------------------------------------------


async def test_node_errors_back_off_that_invoice_while_others_keep_going(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        flaky = await env.open_tip(1)
        healthy = await env.open_tip(2, to_user="88")
        env.node.fail_next(
            "get_invoice", error(FnnConnectError), count=3, payment_hash=flaky.payment_hash
        )
        env.node.pay(healthy.payment_hash)
        async with running(env.rt):
            await trio.sleep(2.5)
            assert (await env.tip(healthy.id)).settled_at == EPOCH_MS + 2_000
            backed_off = await env.tip(flaky.id)
            assert backed_off.last_error == "FnnConnectError: simulated"
            await trio.sleep(20)
            env.node.pay(flaky.payment_hash)
            await env.wait_state(flaky.id, tipsql.SETTLED, within_s=40)
    checks = [at for at, h in env.node.calls_of("get_invoice") if h == flaky.payment_hash]
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    # Error backoff: 1 s, 2 s, 4 s (±10 %), then the normal schedule resumes.
    assert checks[0] == 2.0
    assert [round(g) for g in gaps[:3]] == [1, 2, 4]


async def test_a_hanging_node_call_is_bounded_and_backed_off(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tip = await env.open_tip(3)
        env.node.latency_s = 1000.0
        async with running(env.rt):
            await trio.sleep(2.0 + 2.0 + 0.001)  # first check at 2 s, call_timeout_s = 2 s
            stuck = await env.tip(tip.id)
            env.node.latency_s = 0.0
            env.node.pay(tip.payment_hash)
            await env.wait_state(tip.id, tipsql.SETTLED, within_s=5)
    assert stuck.state == tipsql.UNPAID
    assert stuck.last_error is not None
    assert stuck.last_error.startswith("TooSlowError")
    assert stuck.next_check_at is not None
    assert stuck.next_check_at >= EPOCH_MS + 4_900  # backed off from when the call gave up


async def test_an_invoice_the_node_does_not_know_fails_only_after_a_confirming_recheck(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        gone = await env.open_tip(1)
        lagging = await env.open_tip(2)
        env.node.forget(gone.payment_hash)
        env.node.forget(lagging.payment_hash)
        async with running(env.rt):
            await trio.sleep(2.5)
            first = await env.tip(gone.id)
            assert (first.state, first.last_error) == (tipsql.UNPAID, "NODE_INVOICE_MISSING")
            env.node.restore(lagging.payment_hash)  # the node caught up before the re-check
            failed = await env.wait_state(gone.id, tipsql.FAILED, within_s=5)
            await trio.sleep(1)
            recovered = await env.tip(lagging.id)
    assert failed.failure_reason == "NODE_INVOICE_MISSING"
    assert [at for at, h in env.node.calls_of("get_invoice") if h == gone.payment_hash] == [
        2.0,
        4.0,
    ]
    assert (recovered.state, recovered.last_error) == (tipsql.UNPAID, None)


# --- the admin command --------------------------------------------------------------------


def test_backfill_times_accept_iso_and_unix_seconds() -> None:
    assert parse_time_ms("1772366400") == 1_772_366_400_000
    assert parse_time_ms("1772366400.5") == 1_772_366_400_500
    assert parse_time_ms("2026-03-01") == 1_772_323_200_000
    assert parse_time_ms("2026-03-01T12:00:00Z") == 1_772_366_400_000
    assert parse_time_ms("2026-03-01T14:00:00+02:00") == 1_772_366_400_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time_ms("yesterday")


def caller(role: Role | None, apps: frozenset[str] = frozenset()) -> Caller:
    return Caller(uid=1001, name="alice", role=role, app_ids=apps, source="grant")


async def test_backfill_command_settles_and_reports_progress_and_a_summary(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with environment(tmp_path) as env:
        tips = [await env.open_tip(5) for _ in range(3)]
        env.node.pay(tips[1].payment_hash)
        sent: list[dict[str, Any]] = []

        async def progress(data: dict[str, Any]) -> None:
            sent.append(data)

        ctx = CommandContext(env.rt, caller(Role.COMMUNITY_ADMIN, frozenset({APP})), progress)
        result = await backfill_command(ctx, {"app_id": APP, "calls_per_s": 5})
        with pytest.raises(AdminError, match="SUPER_ADMIN"):
            await backfill_command(ctx, {})
        with pytest.raises(AdminError, match="window is empty"):
            await backfill_command(ctx, {"app_id": APP, "since_ms": 5, "until_ms": 5})
        with pytest.raises(AdminError, match="at most 50"):
            await backfill_command(ctx, {"app_id": APP, "calls_per_s": 500})
        status = await settlement_status(env.rt)
    assert result["ok"] is True
    assert (result["settled"], result["checked"], result["unchanged"]) == (1, 3, 2)
    assert result["changes"] == [
        {"tip_id": tips[1].id, "app_id": APP, "from": "UNPAID", "to": "SETTLED"}
    ]
    assert sent[-1]["done_pages"] == sent[-1]["total_pages"] == 1
    assert status["unpaid_backlog"] == 2
