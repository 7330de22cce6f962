"""The settlement poller: finds out which tip invoices were paid and credits each exactly once.

FNN has no invoice event stream, so detection is polling, arranged so that it is fast where
someone is waiting and cheap everywhere else:

- *watched* tips (a plugin modal polled ``tip.status`` within the last few seconds) are
  re-checked every ``WATCH_RECHECK_MS`` and always go first;
- every other unpaid tip follows its persisted schedule (``next_check_at``): soon after
  creation, then backing off with age (2 s, 4 s, 8 s … ``max_check_interval_s``) with
  jitter, until expiry + grace, when the invoice is cancelled on the node;
- node load is bounded however many tips are open: at most ``max_concurrent_checks`` calls
  in flight and ``max_checks_per_s`` ``get_invoice`` calls per second (a token bucket).

Choosing work walks the partial index on ``next_check_at``; it never scans history.
Crediting is one transaction (:func:`fiberlinkd.ledger.tips.settle_tip`), idempotent by key.
"""

from __future__ import annotations

import logging
import random
from collections import deque

import attrs
import prometheus_client
import trio

from fiberlinkd.fnn.errors import (
    FnnContractError,
    FnnError,
    FnnNodeError,
    is_invoice_not_cancellable,
    is_invoice_not_found,
)
from fiberlinkd.fnn.types import InvoiceStatus
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

WATCH_RECHECK_MS = 250
PICK_BATCH = 32
IDLE_SLEEP_MAX_S = 5.0
NODE_MISSING = "NODE_INVOICE_MISSING"
ERROR_BACKOFF_MAX_MS = 30_000

BACKLOG = prometheus_client.Gauge(
    "fiberlinkd_settlement_unpaid_backlog", "Unpaid tips being watched for payment"
)
CHECKS = prometheus_client.Counter(
    "fiberlinkd_settlement_checks_total", "get_invoice checks by kind", ["kind"]
)
FNN_ERRORS = prometheus_client.Counter(
    "fiberlinkd_settlement_fnn_errors_total", "FNN errors seen by the settlement poller", ["error"]
)
DETECTION = prometheus_client.Histogram(
    "fiberlinkd_settlement_detection_seconds",
    "Time from the last unpaid observation (or creation) to the credit",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
SETTLED = prometheus_client.Counter("fiberlinkd_tips_settled_total", "Tips credited", ["source"])
FAILED = prometheus_client.Counter("fiberlinkd_tips_failed_total", "Tips failed", ["reason"])


@attrs.define
class TokenBucket:
    """At most ``rate_per_s`` acquisitions per second on trio's clock (burst of one second)."""

    rate_per_s: float
    _tokens: float = 0.0
    _updated: float | None = None

    async def acquire(self) -> None:
        while True:
            now = trio.current_time()
            if self._updated is None:
                self._updated, self._tokens = now, 1.0
            self._tokens = min(
                self.rate_per_s, self._tokens + (now - self._updated) * self.rate_per_s
            )
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await trio.sleep((1.0 - self._tokens) / self.rate_per_s)


def schedule_after(check_count: int, first_s: float, cap_s: float, rng: random.Random) -> int:
    """Milliseconds until the next unwatched check: doubling from ``first_s``, capped, ±10 %."""
    base = min(cap_s, first_s * 2 ** min(check_count, 20))
    return int(base * 1000 * rng.uniform(0.9, 1.1))


@attrs.define
class SettlementPoller:
    rt: Runtime
    rng: random.Random = attrs.field(factory=random.Random)
    _inflight: set[str] = attrs.field(factory=set)
    _last_unpaid_ms: dict[str, int] = attrs.field(factory=dict)
    _recent_latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=1000))

    def _settings(self) -> tuple[int, float]:
        cfg = self.rt.config.settlement
        return cfg.max_concurrent_checks, cfg.max_checks_per_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        concurrency, rate = self._settings()
        slots = trio.Semaphore(concurrency)
        bucket = TokenBucket(rate)
        self._inflight.clear()
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = self.rt.clock.now_ms()
                picked = await self._pick(now)
                for tip, kind in picked:
                    await slots.acquire()
                    await bucket.acquire()
                    self._inflight.add(tip.id)
                    nursery.start_soon(self._check_and_release, tip, kind, slots)
                if not picked:
                    await self.rt.watch_list.wakeup.wait(await self._idle_for(now))

    async def _idle_for(self, now: int) -> float:
        next_due = await self.rt.ledger.read(tipsql.next_due_at)
        waits = [IDLE_SLEEP_MAX_S]
        if next_due is not None:
            waits.append(max(0.02, (next_due - now) / 1000))
        if self.rt.watch_list.active(now):
            waits.append(WATCH_RECHECK_MS / 1000)
        BACKLOG.set(await self.rt.ledger.read(tipsql.unpaid_backlog))
        return min(waits)

    async def _pick(self, now: int) -> list[tuple[tipsql.Tip, str]]:
        """Watched tips due for a re-check first, then tips whose schedule is due."""
        watched_ids = [
            t
            for t in self.rt.watch_list.active(now)
            if t not in self._inflight and self._last_unpaid_ms.get(t, 0) + WATCH_RECHECK_MS <= now
        ][:PICK_BATCH]
        picked: list[tuple[tipsql.Tip, str]] = []
        if watched_ids:
            rows = await self.rt.ledger.read(tipsql.unpaid_tips_by_id, watched_ids)
            picked.extend((tip, "watched") for tip in rows)
            for gone in set(watched_ids) - {t.id for t, _ in picked}:
                self.rt.watch_list.forget(gone)
        room = PICK_BATCH - len(picked)
        if room > 0:
            chosen = {t.id for t, _ in picked}
            due = await self.rt.ledger.read(tipsql.due_tips, now, room + len(self._inflight))
            for tip in due:
                if (
                    tip.id not in self._inflight
                    and tip.id not in chosen
                    and len(picked) < PICK_BATCH
                ):
                    picked.append((tip, "scheduled"))
        return picked

    async def _check_and_release(self, tip: tipsql.Tip, kind: str, slots: trio.Semaphore) -> None:
        try:
            CHECKS.labels(kind).inc()
            await self.check(tip)
        finally:
            self._inflight.discard(tip.id)
            slots.release()

    async def check(self, tip: tipsql.Tip) -> None:
        """Ask the node about one tip and record what it said. Never raises for node trouble."""
        rt = self.rt
        now = rt.clock.now_ms()
        grace_ms = int(rt.config.settlement.expiry_grace_s * 1000)
        try:
            with trio.fail_after(rt.config.fnn.call_timeout_s):
                info = await rt.node.get_invoice(tip.payment_hash)
        except (FnnError, trio.TooSlowError) as exc:
            await self._node_trouble(tip, exc, now)
            return
        now = rt.clock.now_ms()
        status = info.status
        if status is InvoiceStatus.PAID:
            await self._settle(tip, now, "SETTLEMENT_POLLER")
        elif status is InvoiceStatus.CANCELLED:
            await self._fail(tip, now, "INVOICE_CANCELLED")
        elif now >= tip.expires_at + grace_ms:
            await self._expire(tip, now)
        else:  # Open, Received or (read-time) Expired: look again later
            self._last_unpaid_ms[tip.id] = now
            delay = schedule_after(
                tip.check_count,
                rt.config.settlement.first_check_after_s,
                rt.config.settlement.max_check_interval_s,
                self.rng,
            )
            next_at = min(now + delay, tip.expires_at + grace_ms)
            await rt.ledger.transact(
                tipsql.reschedule, tip.id, next_check_at=max(next_at, now + 100)
            )

    async def _node_trouble(self, tip: tipsql.Tip, exc: BaseException, now: int) -> None:
        FNN_ERRORS.labels(type(exc).__name__).inc()
        if is_invoice_not_found(exc):
            if tip.last_error == NODE_MISSING:
                await self._fail(tip, now, NODE_MISSING)
                return
            # Confirm with one more look before failing: a node restore may lag.
            await self.rt.ledger.transact(
                tipsql.reschedule, tip.id, next_check_at=now + 2_000, last_error=NODE_MISSING
            )
            return
        if isinstance(exc, FnnNodeError | FnnContractError):
            log.warning("unexpected node answer", extra=kv(tip=tip.id, error=str(exc)))
        backoff = min(ERROR_BACKOFF_MAX_MS, 1_000 * 2 ** min(tip.check_count, 5))
        await self.rt.ledger.transact(
            tipsql.reschedule,
            tip.id,
            next_check_at=now + int(backoff * self.rng.uniform(0.9, 1.1)),
            last_error=f"{type(exc).__name__}: {exc}"[:500],
        )

    async def _expire(self, tip: tipsql.Tip, now: int) -> None:
        """Past expiry + grace: cancel on the node; a Paid answer settles instead."""
        try:
            with trio.fail_after(self.rt.config.fnn.call_timeout_s):
                info = await self.rt.node.cancel_invoice(tip.payment_hash)
        except (FnnError, trio.TooSlowError) as exc:
            if is_invoice_not_cancellable(exc):
                # Paid or already Cancelled: the next get_invoice tells which.
                await self.rt.ledger.transact(tipsql.reschedule, tip.id, next_check_at=now)
                if isinstance(exc, FnnNodeError) and exc.message.endswith("Paid"):
                    await self._settle(tip, now, "SETTLEMENT_CANCEL_RACE")
                elif isinstance(exc, FnnNodeError) and exc.message.endswith("Cancelled"):
                    await self._fail(tip, now, "EXPIRED")
                return
            await self._node_trouble(tip, exc, now)
            return
        if info.status is InvoiceStatus.PAID:
            await self._settle(tip, now, "SETTLEMENT_CANCEL_RACE")
        else:
            await self._fail(tip, now, "EXPIRED")

    async def _settle(self, tip: tipsql.Tip, now: int, source: str) -> None:
        done = await self.rt.ledger.transact(tipsql.settle_tip, tip.id, now_ms=now, source=source)
        self.rt.watch_list.forget(tip.id)
        seen = self._last_unpaid_ms.pop(tip.id, tip.created_at)
        if done:
            latency = max(0.0, (now - seen) / 1000)
            DETECTION.observe(latency)
            self._recent_latencies.append(latency)
            SETTLED.labels(source).inc()
            log.info("tip settled", extra=kv(tip=tip.id, app=tip.app_id, source=source))

    async def _fail(self, tip: tipsql.Tip, now: int, reason: str) -> None:
        done = await self.rt.ledger.transact(
            tipsql.fail_tip, tip.id, now_ms=now, reason=reason, source="SETTLEMENT_POLLER"
        )
        self.rt.watch_list.forget(tip.id)
        self._last_unpaid_ms.pop(tip.id, None)
        if done:
            FAILED.labels(reason).inc()
            log.info("tip failed", extra=kv(tip=tip.id, reason=reason))

    def latency_percentiles(self) -> dict[str, float | None]:
        values = sorted(self._recent_latencies)
        if not values:
            return {"p50": None, "p95": None}
        return {
            "p50": values[len(values) // 2],
            "p95": values[min(len(values) - 1, int(len(values) * 0.95))],
        }


async def backfill(
    rt: Runtime,
    *,
    app_id: str | None,
    since_ms: int,
    until_ms: int,
    calls_per_s: float = 20.0,
    on_progress: object = None,
) -> dict[str, int]:
    """Re-check every tip created in [since, until) against the node; settle what was paid.

    Settles UNPAID and FAILED tips the node reports Paid (a FAILED one gets a
    LATE_SETTLEMENT event). Returns counts of what it looked at and changed.
    """
    bucket = TokenBucket(calls_per_s)
    summary = {"checked": 0, "settled": 0, "late_settled": 0, "errors": 0}
    after = ""
    while True:
        page = await rt.ledger.read(
            tipsql.tips_in_window,
            app_id=app_id,
            since_ms=since_ms,
            until_ms=until_ms,
            after_id=after,
            limit=200,
        )
        if not page:
            return summary
        for tip in page:
            after = tip.id
            if tip.state == tipsql.SETTLED:
                continue
            await bucket.acquire()
            summary["checked"] += 1
            try:
                with trio.fail_after(rt.config.fnn.call_timeout_s):
                    info = await rt.node.get_invoice(tip.payment_hash)
            except (FnnError, trio.TooSlowError):
                summary["errors"] += 1
                continue
            if info.status is InvoiceStatus.PAID:
                done = await rt.ledger.transact(
                    tipsql.settle_tip, tip.id, now_ms=rt.clock.now_ms(), source="BACKFILL"
                )
                if done:
                    summary["late_settled" if tip.state == tipsql.FAILED else "settled"] += 1
            if callable(on_progress):
                on_progress(summary)
