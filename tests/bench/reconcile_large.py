"""Benchmark: a clean reconcile over 100,000 tips, and API-like read latency meanwhile.

Run: ``python tests/bench/reconcile_large.py [--tips N] [--users N]``

1. Fills a fresh database (in a temporary directory) with N tips — 95 % SETTLED with their
   TIP_CREDIT entries (the hash chain computed exactly as ``append_entry`` does), 5 % UNPAID —
   and the matching balance rows, in batched inserts.
2. Measures API-like reads through ``ledger.read`` (a balance lookup and a tip-status
   lookup, as ``tip.status`` / the dashboard do) for a few seconds while idle.
3. Runs the reconciler twice while the same probe keeps reading: once with the node
   "down" (internal checks only: every row, every hash), once fully (node parity paced at
   the default ``max_node_calls_per_s``), with an in-memory node that agrees.
4. Prints run durations and the probe's median / p99 latency side by side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fiberlinkd.clock import WallClock
from fiberlinkd.config import Config
from fiberlinkd.fnn.types import InvoiceStatus
from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.entries import GENESIS_HASH, EntryKind, entry_hash, get_balance
from fiberlinkd.ledger.store import connect, db_path, migrate
from fiberlinkd.ledger.tips import get_tip
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.reconciler.actor import Reconciler
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.supervisor import Supervisor
from tests.test_reconciler_support import NODE_INFO, FakeNode, ready_channel

APP = "forum"
BATCH = 10_000
IDLE_PROBE_S = 3.0


def fill(state_dir: Path, tips: int, users: int, now_ms: int) -> dict[str, int]:
    """Batched inserts; returns payment hash -> amount of the SETTLED tips."""
    conn = connect(db_path(state_dir))
    migrate(conn)
    rng = random.Random(7)
    paid: dict[str, int] = {}
    balances: dict[str, int] = {}
    prev = GENESIS_HASH
    entry_id = 0
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
        (APP, "s" * 32, now_ms),
    )
    for start in range(0, tips, BATCH):
        tip_rows = []
        entry_rows = []
        for i in range(start, min(start + BATCH, tips)):
            tip_id = f"tip{i:07d}"
            user = f"u{i % users}"
            amount = rng.randint(1, 1000) * 1_000_000
            payment_hash = "0x" + f"{i:064x}"
            settled = i % 20 != 0
            created = now_ms - (tips - i) * 1000
            tip_rows.append(
                (
                    tip_id,
                    APP,
                    f"p{i % 5000}",
                    f"f{i % 777}",
                    user,
                    "CKB",
                    amount,
                    f"fibd{tip_id}",
                    payment_hash,
                    "SETTLED" if settled else "UNPAID",
                    created,
                    created + 3_600_000 if settled else now_ms + 3_600_000,
                    created + 5000 if settled else None,
                    None if settled else now_ms + 60_000,
                )
            )
            if settled:
                paid[payment_hash] = amount
                balances[user] = balances.get(user, 0) + amount
                entry_id += 1
                key = f"settlement:tip_intent:{tip_id}"
                digest = entry_hash(
                    prev_hash=prev,
                    entry_id=entry_id,
                    app_id=APP,
                    user_id=user,
                    asset="CKB",
                    amount=amount,
                    reserved_delta=0,
                    kind=EntryKind.TIP_CREDIT,
                    ref=tip_id,
                    idempotency_key=key,
                    created_at=created + 5000,
                )
                entry_rows.append(
                    (
                        entry_id,
                        APP,
                        user,
                        "CKB",
                        amount,
                        0,
                        EntryKind.TIP_CREDIT,
                        tip_id,
                        key,
                        created + 5000,
                        prev,
                        digest,
                    )
                )
                prev = digest
        conn.executemany(
            "INSERT INTO tip_intents (id, app_id, post_id, from_user_id, to_user_id, asset,"
            " amount, invoice, payment_hash, state, created_at, expires_at, settled_at,"
            " next_check_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tip_rows,
        )
        conn.executemany(
            "INSERT INTO ledger_entries (id, app_id, user_id, asset, amount, reserved_delta,"
            " kind, ref, idempotency_key, created_at, prev_hash, entry_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            entry_rows,
        )
    conn.executemany(
        "INSERT INTO balances (app_id, user_id, asset, settled, reserved, updated_at)"
        " VALUES (?, ?, 'CKB', ?, 0, ?)",
        [(APP, user, total, now_ms) for user, total in balances.items()],
    )
    conn.execute("COMMIT")
    conn.close()
    return paid


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return f"median {median * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms  (n={len(ordered)})"


async def probe(rt: Runtime, tips: int, users: int, out: list[float], stop: trio.Event) -> None:
    rng = random.Random(11)
    while not stop.is_set():
        t0 = time.perf_counter()
        await rt.ledger.read(get_balance, APP, f"u{rng.randrange(users)}", "CKB")
        out.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await rt.ledger.read(get_tip, f"tip{rng.randrange(tips):07d}")
        out.append(time.perf_counter() - t0)
        await trio.sleep(0.002)


async def measure(
    rt: Runtime, tips: int, users: int, trigger: str
) -> tuple[float, list[float], str]:
    samples: list[float] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, rt, tips, users, samples, stop)
        t0 = time.perf_counter()
        report = await Reconciler(rt).run_once(trigger)
        elapsed = time.perf_counter() - t0
        stop.set()
    return elapsed, samples, f"{report.status} {report.summary.get('findings')}"


async def main(tips: int, users: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        clock = WallClock()
        t0 = time.perf_counter()
        paid = await trio.to_thread.run_sync(fill, state, tips, users, clock.now_ms())
        print(
            f"filled {tips} tips, {len(paid)} credit entries, {users} users"
            f" in {time.perf_counter() - t0:.1f} s"
        )
        node = FakeNode()
        for payment_hash, amount in paid.items():
            node.issue(payment_hash, amount, InvoiceStatus.PAID)
        node.channels = [ready_channel(10**15)]
        config = Config(state_dir=str(state))
        async with open_ledger(state) as ledger:
            rt = Runtime(
                config=config,
                ledger=ledger,
                node=node,
                node_state=NodeState(info=NODE_INFO),
                clock=clock,
                supervisor=Supervisor(),
                started_at_ms=clock.now_ms(),
                watch_list=WatchList(),
            )
            idle: list[float] = []
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe, rt, tips, users, idle, stop)
                await trio.sleep(IDLE_PROBE_S)
                stop.set()
            node.down = True
            internal_s, internal, internal_result = await measure(rt, tips, users, "bench")
            node.down = False
            full_s, full, full_result = await measure(rt, tips, users, "bench")
        print(f"internal checks only (node down): {internal_s:6.2f} s  -> {internal_result}")
        print(
            f"full run (node parity paced at {config.reconciler.max_node_calls_per_s:g}/s):"
            f" {full_s:6.2f} s  -> {full_result}"
        )
        print("API-like reads via ledger.read (balance + tip status):")
        print(f"  idle                  {summary(idle)}")
        print(f"  during internal run   {summary(internal)}")
        print(f"  during full run       {summary(full)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tips", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    ns = parser.parse_args()
    trio.run(main, ns.tips, ns.users)
