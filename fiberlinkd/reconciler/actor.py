"""The reconciler actor: every ``[reconciler] interval_s`` (and when ``rt.reconcile_wakeup``
is set) it proves the ledger against itself and the node, stores the run, and freezes
payouts on a CRITICAL finding.

One run (:meth:`Reconciler.run_once`):

1. ``reconcile_runs`` row (RUNNING).
2. Internal checks in chunks of ``[reconciler] chunk_rows``, each chunk its own
   read snapshot on the reconciler's own read-only connection (writers are never blocked,
   and the API's reads never queue behind a chunk): balances, entries + hash chain,
   tips, withdrawals (:mod:`.checks`).
3. Node parity and solvency, rate-limited (:mod:`.parity`); with on-chain payouts the hot
   wallet counts toward CKB solvency, and :mod:`.onchain` checks COMPLETED on-chain
   withdrawals against the CKB node and warns when the wallet is underfunded.
4. One transaction: findings, status (CLEAN when nothing above INFO, else PROBLEMS), and —
   if any finding is CRITICAL and payouts are not frozen yet — the freeze, with the first
   critical finding as the reason. Only ``fiberlinkd admin unfreeze`` lifts it.

A run that raises is stored as ERROR (shielded, bounded) and the error propagates to the
supervisor. RUNNING rows left by a crash are marked ERROR when the actor starts.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio
from prometheus_client import Counter, Gauge, Histogram

from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.reconcile import (
    CRITICAL,
    INFO,
    Finding,
    StoredRun,
    balance_sums_chunk,
    entries_chunk,
    entry_at,
    finish_run,
    get_chain_anchor,
    get_run,
    mark_interrupted_runs,
    put_chain_anchor,
    start_run,
    tips_chunk,
    withdrawals_chunk,
)
from fiberlinkd.ledger.store import connect
from fiberlinkd.logsetup import kv
from fiberlinkd.payouts import frozen_state, set_frozen
from fiberlinkd.reconciler.checks import (
    ChainState,
    FindingSink,
    check_anchor,
    check_balances,
    check_entries,
    check_tips,
    check_withdrawals,
    verify_chain,
)
from fiberlinkd.reconciler.onchain import OnchainChecks
from fiberlinkd.reconciler.parity import CallPacer, NodeChecks
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_RUN_DELAY_S = 10.0  # after start, so a restart soon has a fresh report
RECORD_BOUND_S = 10.0  # storing an ERROR outcome while being cancelled

ReconcileReport = StoredRun

LAST_RUN_TIMESTAMP = Gauge(
    "fiberlinkd_reconcile_last_run_timestamp_seconds",
    "Unix time at which the last reconcile run finished",
)
LAST_RUN_FINDINGS = Gauge(
    "fiberlinkd_reconcile_findings",
    "Findings of the last finished reconcile run, by severity",
    ["severity"],
)
RUN_DURATION = Histogram(
    "fiberlinkd_reconcile_duration_seconds",
    "Wall time of one reconcile run",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
RUNS = Counter("fiberlinkd_reconcile_runs", "Reconcile runs by outcome", ["status"])


@attrs.define
class ChunkReader:
    """The reconciler's own read-only connection for its bulk chunk reads.

    The ledger's shared reader serves the API one read at a time; bulk chunks queued on it
    would add their duration to API latency. A separate WAL reader runs beside it instead.
    In the ledger's inline mode (fake-clock tests) it defers to ``ledger.read``.
    """

    ledger: Ledger
    _conn: sqlite3.Connection | None = None
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        if self.ledger.inline:
            return await self.ledger.read(fn, *args)
        if self._conn is None:
            self._conn = connect(self.ledger.path, read_only=True)
        conn = self._conn
        return await trio.to_thread.run_sync(
            lambda: _snapshot(conn, fn, *args), limiter=self._limiter
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _snapshot(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


@attrs.define
class Reconciler:
    rt: Runtime
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: a run shortly after start, then on schedule or wake-up."""
        interrupted = await self.rt.ledger.transact(mark_interrupted_runs, self.rt.clock.now_ms())
        if interrupted:
            log.warning("reconciler: marked interrupted runs as ERROR", extra=kv(runs=interrupted))
        task_status.started()
        woken = await self.rt.reconcile_wakeup.wait(FIRST_RUN_DELAY_S)
        while True:
            await self.run_once("on-demand" if woken else "schedule")
            woken = await self.rt.reconcile_wakeup.wait(self.rt.config.reconciler.interval_s)

    async def run_once(self, trigger: str) -> ReconcileReport:
        """One full run; returns the stored report. Runs never overlap.

        Errors: database errors and bugs propagate (the run is stored as ERROR first); the
        node being down is a ``NODE_UNAVAILABLE`` finding, not an error.
        """
        async with self._lock:
            return await self._run_locked(trigger)

    async def _run_locked(self, trigger: str) -> ReconcileReport:
        ledger, clock = self.rt.ledger, self.rt.clock
        started_s = trio.current_time()
        run_id = await ledger.transact(start_run, clock.now_ms(), trigger)
        sink = FindingSink()
        stats: dict[str, Any] = {}
        try:
            reader = ChunkReader(ledger)
            try:
                head = await self._internal_checks(reader, sink, stats)
            finally:
                reader.close()
            pacer = CallPacer(self.rt.config.reconciler.max_node_calls_per_s)
            onchain_checks: OnchainChecks | None = None
            hot_wallet: int | None = None
            if self.rt.onchain is not None:
                onchain_checks = OnchainChecks(self.rt.onchain, ledger, clock, pacer, stats)
                view = await onchain_checks.wallet(sink)
                hot_wallet = None if view is None else view.balance
            node_checks = NodeChecks(
                node=self.rt.node,
                ledger=ledger,
                clock=clock,
                pacer=pacer,
                node_info=self.rt.node_state.info,
                expiry_grace_ms=int(self.rt.config.settlement.expiry_grace_s * 1000),
                stats=stats,
                onchain_enabled=onchain_checks is not None,
                hot_wallet_shannons=hot_wallet,
            )
            await node_checks.run(sink)
            if onchain_checks is not None:
                await onchain_checks.run(sink)
        except BaseException as exc:
            await self._record_error(run_id, exc, trio.current_time() - started_s)
            raise
        findings = sink.findings()
        counts = sink.counts()
        status = "CLEAN" if all(f.severity == INFO for f in findings) else "PROBLEMS"
        duration_s = trio.current_time() - started_s
        summary = {
            "findings": counts,
            "duration_ms": int(duration_s * 1000),
            "chain_head": {"entry_id": head.last_id, "entry_hash": head.last_hash},
            **stats,
        }
        critical = [f for f in findings if f.severity == CRITICAL]
        froze = False
        with trio.CancelScope(shield=True):  # the outcome of a finished run is not torn
            froze = await ledger.transact(
                _record_outcome,
                run_id,
                clock.now_ms(),
                status,
                summary,
                findings,
                critical[0] if critical else None,
                head if stats["chain_ok"] else None,
            )
            report = await ledger.read(get_run, run_id)
        assert report is not None
        self._observe(report, duration_s)
        self._log(report, critical, froze)
        return report

    async def _internal_checks(
        self, ledger: ChunkReader, sink: FindingSink, stats: dict[str, Any]
    ) -> ChainState:
        cfg = self.rt.config.reconciler
        chunk = cfg.chunk_rows

        rows_seen = 0
        after_balance: tuple[str, str, str] | None = None
        while True:  # fetch and check run together on the worker thread, chunk by chunk
            count, after_balance, found = await ledger.read(_balances_step, after_balance, chunk)
            sink.extend(found)
            rows_seen += count
            if count < chunk:
                break
        stats["balances_checked"] = rows_seen

        anchor = await ledger.read(get_chain_anchor)
        anchor_finding = None
        if anchor is not None:
            anchor_finding = check_anchor(anchor, await ledger.read(entry_at, anchor[0]))
            if anchor_finding is not None:
                sink.add(anchor_finding)
        chain = ChainState()
        rows_seen = 0
        after_entry = 0
        while True:
            count, after_entry, chain, found = await ledger.read(
                _entries_step, chain, after_entry, chunk
            )
            sink.extend(found)
            rows_seen += count
            if count < chunk:
                break
        stats["entries_checked"] = rows_seen
        stats["chain_ok"] = chain.broken_at is None and anchor_finding is None

        now_ms = self.rt.clock.now_ms()
        stuck_ms = int(cfg.stuck_processing_s * 1000)
        rows_seen = 0
        after = ""
        while True:
            count, after, found = await ledger.read(_tips_step, after, chunk)
            sink.extend(found)
            rows_seen += count
            if count < chunk:
                break
        stats["tips_checked"] = rows_seen

        rows_seen = 0
        after = ""
        while True:
            count, after, found = await ledger.read(
                _withdrawals_step, after, chunk, now_ms, stuck_ms
            )
            sink.extend(found)
            rows_seen += count
            if count < chunk:
                break
        stats["withdrawals_checked"] = rows_seen
        return chain

    async def _record_error(self, run_id: int, exc: BaseException, duration_s: float) -> None:
        summary = {
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "duration_ms": int(duration_s * 1000),
        }
        with trio.move_on_after(RECORD_BOUND_S) as scope:
            scope.shield = True
            try:
                await self.rt.ledger.transact(
                    finish_run,
                    run_id,
                    now_ms=self.rt.clock.now_ms(),
                    status="ERROR",
                    summary=summary,
                    findings=[],
                )
            except sqlite3.Error:
                log.exception("reconciler: could not store the failed run", extra=kv(run=run_id))
        RUNS.labels(status="ERROR").inc()
        if not isinstance(exc, trio.Cancelled):
            log.error("reconciler: run failed", extra=kv(run=run_id, error=summary["error"]))

    def _observe(self, report: StoredRun, duration_s: float) -> None:
        RUNS.labels(status=report.status).inc()
        RUN_DURATION.observe(duration_s)
        LAST_RUN_TIMESTAMP.set((report.finished_at or 0) / 1000)
        for severity, count in report.summary.get("findings", {}).items():
            LAST_RUN_FINDINGS.labels(severity=severity).set(count)

    def _log(self, report: StoredRun, critical: list[Finding], froze: bool) -> None:
        fields = kv(
            run=report.id,
            status=report.status,
            trigger=report.trigger,
            duration_ms=report.summary.get("duration_ms"),
            findings=report.summary.get("findings"),
        )
        if critical:
            for finding in critical[:20]:
                log.critical(
                    "reconciler: %s",
                    finding.message,
                    extra=kv(run=report.id, code=finding.code, refs=dict(finding.refs)),
                )
            log.critical(
                "reconciler: payouts frozen"
                if froze
                else "reconciler: critical findings (payouts already frozen)",
                extra=fields,
            )
        elif report.status == "PROBLEMS":
            log.warning("reconciler: run found problems", extra=fields)
        else:
            log.info("reconciler: run clean", extra=fields)


# Chunk steps: one read snapshot each, fetching and checking on the worker thread so the
# event loop (the API) does not run the hashing and the checks.


def _balances_step(
    conn: sqlite3.Connection, after: tuple[str, str, str] | None, limit: int
) -> tuple[int, tuple[str, str, str] | None, list[Finding]]:
    rows = balance_sums_chunk(conn, after, limit)
    return len(rows), rows[-1].key if rows else after, check_balances(rows)


def _entries_step(
    conn: sqlite3.Connection, chain: ChainState, after: int, limit: int
) -> tuple[int, int, ChainState, list[Finding]]:
    entries = entries_chunk(conn, after, limit)
    chain, broken = verify_chain(chain, entries)
    found = ([broken] if broken is not None else []) + check_entries(entries)
    return len(entries), entries[-1].id if entries else after, chain, found


def _tips_step(conn: sqlite3.Connection, after: str, limit: int) -> tuple[int, str, list[Finding]]:
    tips = tips_chunk(conn, after, limit)
    return len(tips), tips[-1].id if tips else after, check_tips(tips)


def _withdrawals_step(
    conn: sqlite3.Connection, after: str, limit: int, now_ms: int, stuck_ms: int
) -> tuple[int, str, list[Finding]]:
    rows = withdrawals_chunk(conn, after, limit)
    found = check_withdrawals(rows, now_ms=now_ms, stuck_processing_ms=stuck_ms)
    return len(rows), rows[-1].id if rows else after, found


def _record_outcome(
    conn: sqlite3.Connection,
    run_id: int,
    now_ms: int,
    status: str,
    summary: dict[str, Any],
    findings: list[Finding],
    freeze_for: Finding | None,
    clean_chain: ChainState | None,
) -> bool:
    """Store the run; freeze payouts for ``freeze_for`` unless already frozen. Returns
    whether this run froze them."""
    finish_run(conn, run_id, now_ms=now_ms, status=status, summary=summary, findings=findings)
    if clean_chain is not None and clean_chain.last_id > 0:
        put_chain_anchor(conn, clean_chain.last_id, clean_chain.last_hash, now_ms)
    already = frozen_state(conn)  # also refreshes the payouts-frozen gauge
    if freeze_for is None or already is not None:
        return False
    set_frozen(
        conn,
        f"reconciler run {run_id}: {freeze_for.code}: {freeze_for.message}",
        now_ms,
        by="reconciler",
    )
    return True
