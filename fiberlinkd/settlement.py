"""The settlement poller: finds out which tip invoices were paid and credits each exactly once.

FNN has no invoice event stream, so detection is polling, arranged so that it is fast where
someone is waiting and cheap everywhere else:

- *watched* tips (a plugin modal polled ``tip.status`` within the last few seconds) are
  re-checked every ``WATCH_RECHECK_MS`` and go first, least recently checked first; while
  scheduled checks are due they may take at most ``WATCHED_SHARE`` of the rate, so no
  unwatched tip can starve however many modals are open;
- every other unpaid tip follows its persisted schedule (``next_check_at``): soon after
  creation, then backing off with age (2 s, 4 s, 8 s … ``max_check_interval_s``) with
  jitter, until expiry + grace, when the invoice is cancelled on the node;
- node load is bounded however many tips are open: at most ``max_concurrent_checks`` calls
  in flight and ``max_checks_per_s`` ``get_invoice`` calls in any one-second window.

Choosing work walks the partial index on ``next_check_at``; it never scans history.
Crediting is one transaction (:func:`fiberlinkd.ledger.tips.settle_tip`), idempotent by key.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

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
WATCH_ERROR_RECHECK_MS = 2_000  # a watched tip whose check failed waits this long
WATCHED_SHARE = 0.8  # of max_checks_per_s, for watched re-checks while scheduled ones are due
PICK_BATCH = 32
BACKLOG_REFRESH_S = 1.0
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
class RateLimiter:
    """At most ``rate_per_s`` calls in any one-second window *as the node sees them*.

    ``await acquire()`` before a call, ``release()`` when it has finished (also on error).
    A call counts against the window from its grant until one second after it finished:
    the node receives it somewhere in between, so however the network delays or bunches
    requests, no one-second window at the node holds more than the limit (a window keyed
    on grant times alone lets up to ``max_concurrent_checks`` more through). Bursts up to
    the limit are allowed after idling; a token bucket with a one-second burst would let
    twice the rate through then. Rates below one per second use a ``1 / rate`` window.
    """

    rate_per_s: float
    _finished: deque[float] = attrs.field(factory=deque)  # trio times, within the window
    _open: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def window_s(self) -> float:
        return max(1.0, 1.0 / self.rate_per_s)

    @property
    def limit(self) -> int:
        return max(1, math.floor(self.rate_per_s * self.window_s + 1e-9))

    async def acquire(self) -> None:
        while True:
            now = trio.current_time()
            while self._finished and self._finished[0] + self.window_s <= now:
                self._finished.popleft()
            if self._open + len(self._finished) < self.limit:
                self._open += 1
                return
            if self._finished:
                await trio.sleep(max(1e-6, self._finished[0] + self.window_s - now))
            else:  # every slot of the window is a call still in flight
                await self._changed.wait()
                self._changed = trio.Event()

    def release(self) -> None:
        self._open -= 1
        self._finished.append(trio.current_time())
        self._changed.set()


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
    _watch_next_ms: dict[str, int] = attrs.field(factory=dict)  # earliest next watched check
    _watched_grants: deque[float] = attrs.field(factory=deque)  # trio times, last second
    _backlog_refreshed: float | None = None
    _recent_latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=1000))

    def _settings(self) -> tuple[int, float]:
        cfg = self.rt.config.settlement
        return cfg.max_concurrent_checks, cfg.max_checks_per_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled. Cancellation mid-check leaves the tip as it was (due)."""
        concurrency, rate = self._settings()
        slots = trio.Semaphore(concurrency)
        limiter = RateLimiter(rate)
        self._inflight.clear()
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = self.rt.clock.now_ms()
                picked = await self._pick(now)
                for tip, kind in picked:
                    if kind == "scheduled" and self._watched_waiting(self.rt.clock.now_ms()):
                        break  # a watched tip fell due meanwhile: re-pick so it goes first
                    await slots.acquire()
                    await limiter.acquire()
                    self._dispatched(tip.id, kind)
                    nursery.start_soon(self._check_and_release, tip, kind, slots, limiter)
                if not picked:
                    await self.rt.watch_list.wakeup.wait(await self._idle_for(now))

    def _dispatched(self, tip_id: str, kind: str) -> None:
        self._inflight.add(tip_id)
        if kind == "watched":
            self._watched_allowance()  # prunes the window, so it stays bounded
            self._watched_grants.append(trio.current_time())
            self._watch_next_ms[tip_id] = self.rt.clock.now_ms() + WATCH_RECHECK_MS

    def _watched_allowance(self) -> int:
        """Watched re-checks still allowed in this second while scheduled checks are due."""
        cutoff = trio.current_time() - 1.0
        while self._watched_grants and self._watched_grants[0] <= cutoff:
            self._watched_grants.popleft()
        share = max(1, math.floor(self._settings()[1] * WATCHED_SHARE))
        return max(0, share - len(self._watched_grants))

    def _watched_due(self, now: int) -> list[str]:
        """Watched tips due for a re-check, least recently checked first."""
        active = self.rt.watch_list.active(now)
        if len(self._watch_next_ms) > 2 * len(active) + 100:
            keep = set(active)
            for tip_id in [t for t in self._watch_next_ms if t not in keep]:
                del self._watch_next_ms[tip_id]
        due = [
            t for t in active if t not in self._inflight and self._watch_next_ms.get(t, 0) <= now
        ]
        due.sort(key=lambda t: self._watch_next_ms.get(t, 0))
        return due

    def _watched_waiting(self, now: int) -> bool:
        return bool(self._watched_due(now)) and self._watched_allowance() > 0

    async def _idle_for(self, now: int) -> float:
        next_due = await self.rt.ledger.read(tipsql.next_due_at)
        waits = [IDLE_SLEEP_MAX_S]
        if next_due is not None:
            waits.append(max(0.02, (next_due - now) / 1000))
        watched = [
            self._watch_next_ms.get(t, 0)
            for t in self.rt.watch_list.active(now)
            if t not in self._inflight
        ]
        if watched:
            waits.append(max(0.005, (min(watched) - now) / 1000))
        elif self._inflight:
            waits.append(WATCH_RECHECK_MS / 1000)  # a finishing check may free a watched tip
        if self._backlog_refreshed is None or (
            trio.current_time() - self._backlog_refreshed >= BACKLOG_REFRESH_S
        ):
            self._backlog_refreshed = trio.current_time()
            BACKLOG.set(await self.rt.ledger.read(tipsql.unpaid_backlog))
        return min(waits)

    async def _pick(self, now: int) -> list[tuple[tipsql.Tip, str]]:
        """Due watched tips first (within their share), then tips whose schedule is due."""
        due = [
            tip
            for tip in await self.rt.ledger.read(
                tipsql.due_tips, now, PICK_BATCH + len(self._inflight)
            )
            if tip.id not in self._inflight
        ]
        watched_ids = self._watched_due(now)
        if due:
            watched_ids = watched_ids[: self._watched_allowance()]
        watched_ids = watched_ids[:PICK_BATCH]
        picked: list[tuple[tipsql.Tip, str]] = []
        if watched_ids:
            rows = {
                t.id: t for t in await self.rt.ledger.read(tipsql.unpaid_tips_by_id, watched_ids)
            }
            picked.extend((rows[t], "watched") for t in watched_ids if t in rows)
            for gone in set(watched_ids) - set(rows):
                self.rt.watch_list.forget(gone)
                self._watch_next_ms.pop(gone, None)
        chosen = {t.id for t, _ in picked}
        for tip in due:
            if len(picked) >= PICK_BATCH:
                break
            if tip.id not in chosen:
                picked.append((tip, "scheduled"))
        return picked

    async def _check_and_release(
        self, tip: tipsql.Tip, kind: str, slots: trio.Semaphore, limiter: RateLimiter
    ) -> None:
        try:
            CHECKS.labels(kind).inc()
            await self.check(tip)
        finally:  # the node call is over (counting the record-keeping too: conservative)
            limiter.release()
            self._inflight.discard(tip.id)
            slots.release()

    async def check(self, tip: tipsql.Tip) -> None:
        """Ask the node about one tip and record what it said. Never raises for node trouble."""
        rt = self.rt
        grace_ms = int(rt.config.settlement.expiry_grace_s * 1000)
        try:
            with trio.fail_after(rt.config.fnn.call_timeout_s):
                info = await rt.node.get_invoice(tip.payment_hash)
        except (FnnError, trio.TooSlowError) as exc:
            # Back off from now, not from before the call: a timeout took call_timeout_s.
            await self._node_trouble(tip, exc, rt.clock.now_ms())
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
        if tip.id in self._watch_next_ms:  # a watched tip backs off too, more gently
            self._watch_next_ms[tip.id] = now + WATCH_ERROR_RECHECK_MS
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
        self._watch_next_ms.pop(tip.id, None)
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
        self._watch_next_ms.pop(tip.id, None)
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


BACKFILL_PAGE = 200
BACKFILL_CHANGES_LISTED = 100  # the summary lists at most this many changed tips
BackfillProgress = Callable[[dict[str, Any]], Awaitable[None]]


async def backfill(
    rt: Runtime,
    *,
    app_id: str | None,
    since_ms: int,
    until_ms: int,
    calls_per_s: float = 20.0,
    on_progress: BackfillProgress | None = None,
) -> dict[str, Any]:
    """Re-check every tip created in [since, until) against the node; settle what was paid.

    Settles UNPAID and FAILED tips the node reports Paid (a FAILED one gets a
    LATE_SETTLEMENT event); SETTLED tips are skipped without a node call. At most
    ``calls_per_s`` ``get_invoice`` calls in any second. ``on_progress`` is awaited after
    each page of ``BACKFILL_PAGE`` tips with ``done_pages``/``total_pages`` and the counts.
    Returns the counts and the first ``BACKFILL_CHANGES_LISTED`` changes
    (``{tip_id, app_id, from, to}``). Safe to re-run: a replay changes nothing.

    Errors: node trouble is counted (``errors``, ``missing_on_node``), never raised.
    """
    limiter = RateLimiter(calls_per_s)
    total = await rt.ledger.read(
        tipsql.count_tips_in_window, app_id=app_id, since_ms=since_ms, until_ms=until_ms
    )
    counts = {
        "total": total,
        "examined": 0,
        "already_settled": 0,
        "checked": 0,
        "settled": 0,
        "late_settled": 0,
        "unchanged": 0,
        "missing_on_node": 0,
        "errors": 0,
    }
    changes: list[dict[str, str]] = []
    total_pages = math.ceil(total / BACKFILL_PAGE)
    done_pages = 0
    after = ""
    while True:
        page = await rt.ledger.read(
            tipsql.tips_in_window,
            app_id=app_id,
            since_ms=since_ms,
            until_ms=until_ms,
            after_id=after,
            limit=BACKFILL_PAGE,
        )
        if not page:
            break
        for tip in page:
            after = tip.id
            counts["examined"] += 1
            if tip.state == tipsql.SETTLED:
                counts["already_settled"] += 1
                continue
            await limiter.acquire()
            counts["checked"] += 1
            try:
                with trio.fail_after(rt.config.fnn.call_timeout_s):
                    info = await rt.node.get_invoice(tip.payment_hash)
            except (FnnError, trio.TooSlowError) as exc:
                limiter.release()
                FNN_ERRORS.labels(type(exc).__name__).inc()
                counts["missing_on_node" if is_invoice_not_found(exc) else "errors"] += 1
                log.warning("backfill: node check failed", extra=kv(tip=tip.id, error=repr(exc)))
                continue
            limiter.release()
            if info.status is not InvoiceStatus.PAID:
                counts["unchanged"] += 1
                continue
            done = await rt.ledger.transact(
                tipsql.settle_tip, tip.id, now_ms=rt.clock.now_ms(), source="BACKFILL"
            )
            if not done:  # settled meanwhile (by the poller): nothing changed here
                counts["unchanged"] += 1
                continue
            late = tip.state == tipsql.FAILED
            counts["late_settled" if late else "settled"] += 1
            SETTLED.labels("BACKFILL").inc()
            log.info("backfill settled a tip", extra=kv(tip=tip.id, app=tip.app_id, late=late))
            if len(changes) < BACKFILL_CHANGES_LISTED:
                changes.append(
                    {"tip_id": tip.id, "app_id": tip.app_id, "from": tip.state, "to": "SETTLED"}
                )
        done_pages += 1
        if on_progress is not None:
            await on_progress(
                {"done_pages": done_pages, "total_pages": max(total_pages, done_pages), **counts}
            )
    return {**counts, "changes": changes}
