"""The settlement poller: finds out which tip invoices were paid and credits each exactly once.

FNN has no invoice event stream, so detection is polling, arranged so that it is fast where
someone is waiting and cheap everywhere else. The main detector is a cheap "did anything
arrive" signal; per-invoice polling follows it:

- *arrival signal*: every ``ARRIVAL_POLL_S`` (``ARRIVAL_BUSY_POLL_S`` for a few seconds after
  a rise: payments come in bursts) one ``list_channels`` (one call in flight, its own
  budget, not counted in the ``get_invoice`` rate) gives, per ready channel, what it
  received: ``local_balance + received_tlc_balance``. A rise Δ in one asset's channels
  (CKB: no ``funding_udt_type_script``; UDT channels keyed by their script) means payments
  arrived. The poller *explains* the rise: it checks unpaid tips of that asset with
  ``amount == Δ`` (watched ones first, then newest first), then ``amount <= Δ``, and
  subtracts every tip found Paid (or Received) until nothing is left to explain; a
  remainder restarts the search at ``amount == remainder``. At most ``RISE_MAX_CHECKS``
  checks per rise (``RISE_UP_TO_MAX_CHECKS`` of them on ``amount <= Δ``: among many open
  tips that is a guess, worth a little), at most ``MAX_PENDING_RISES`` rises at once; what
  is not explained then is left to the schedule;
- *watched* tips (a plugin modal polled ``tip.status`` within the last few seconds) lead
  every explanation and otherwise get a floor check every ``WATCH_FLOOR_MS``;
- every other unpaid tip follows its persisted schedule (``next_check_at``): soon after
  creation, then backing off with age (2 s, 4 s, 8 s … ``max_check_interval_s``, default
  300 s) with jitter, until expiry + grace, when the invoice is cancelled on the node.
  It is the safety net: it finds what the signal cannot see.

What the signal cannot see: a decrease in the same channel within one poll interval (our
own withdrawal, fees) hides a rise of the same size or smaller, and a rise that is only
partly explained stops at the check cap; forwarded payments look like rises that nothing
explains (they cost at most ``RISE_MAX_CHECKS`` checks each). The schedule and the watched
floor find those tips. A payment that arrives while the signal is down (the node does not
answer ``list_channels``) is seen when it comes back: the new reading is compared with the
last good one, per channel. Payments that arrived while the daemon was stopped are found by
the schedule.

Fallback: while ``list_channels`` fails or lists no ready channel of a tip's asset (an old
node, no channel yet), that asset is polled as before the signal existed: watched tips every
``WATCH_RECHECK_MS``, the schedule capped at ``FALLBACK_MAX_CHECK_INTERVAL_S``. The change is
logged once each way.

Node load is bounded however many tips are open: at most ``max_concurrent_checks`` calls in
flight (the ``list_channels`` poll included) and ``max_checks_per_s`` ``get_invoice`` calls
in any one-second window. Explanations and watched checks go first, but while scheduled
checks are due they take at most ``FAST_SHARE`` of the rate, so no tip can starve; scheduled
checks leave ``1 - SCHEDULED_SHARE`` of the window free (headroom), so a backlog never makes
a rise wait for the window to move on.

Choosing work walks the partial indexes on ``next_check_at`` and on ``(asset, amount,
created_at)`` of unpaid tips; it never scans history. Crediting is one transaction
(:func:`fiberlinkd.ledger.tips.settle_tip`), idempotent by key.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
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
from fiberlinkd.fnn.types import Channel, InvoiceStatus, NodeInfo, Script
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.ledger.admin import get_setting, put_setting
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

WATCH_RECHECK_MS = 250  # watched tips of an asset the arrival signal does not cover
WATCH_FLOOR_MS = 2_000  # watched tips of an asset it covers (a rise checks them at once)
WATCH_ERROR_RECHECK_MS = 2_000  # a watched tip whose check failed waits this long
FAST_SHARE = 0.8  # of max_checks_per_s, for explanations and watched checks while others wait
PICK_BATCH = 32
SCHEDULED_SHARE = 0.8  # of the rate window the schedule may fill; the rest is headroom
SCHEDULE_WAIT_S = 0.02  # a scheduled check waiting for room looks again this often
SCHEDULED_BURST_S = 0.1  # scheduled checks may catch up this much time at once
BACKLOG_REFRESH_S = 1.0
IDLE_SLEEP_MAX_S = 5.0
NODE_MISSING = "NODE_INVOICE_MISSING"
ERROR_BACKOFF_MAX_MS = 30_000
RECEIVED_RECHECK_MS = 500  # a Received invoice (TLC held) turns Paid soon: look again then

ARRIVAL_POLL_S = 0.25  # list_channels while the signal works
ARRIVAL_BUSY_POLL_S = 0.1  # … and for ARRIVAL_BUSY_S after a rise: payments come in bursts,
ARRIVAL_BUSY_S = 5.0  # and one payment per interval is a cheap exact match, two are not
ARRIVAL_RETRY_S = 5.0  # list_channels while it fails or lists no ready channel
ARRIVAL_CALL_BOUND_S = 2.0  # one list_channels, at most (and at most fnn.call_timeout_s)
FALLBACK_MAX_CHECK_INTERVAL_S = 60.0  # schedule cap for assets the signal does not cover
RISE_MAX_CHECKS = 64  # get_invoice calls spent explaining one rise, at most
RISE_UP_TO_MAX_CHECKS = 16  # of which on ``amount <= remainder`` (a guess: newest first)
RISE_BATCH = 16  # candidates fetched at a time
RISE_IN_FLIGHT = 2  # checks of one rise at once: fast, yet wastes at most one when explained
RISE_WATCHED_MAX = 256  # watched tips considered as candidates of one rise
MAX_PENDING_RISES = 64  # rises being explained at once; the oldest is dropped beyond
READY_STATE = "ChannelReady"

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
ARRIVAL_SIGNAL = prometheus_client.Gauge(
    "fiberlinkd_settlement_arrival_signal",
    "1 while list_channels gives the arrival signal, 0 while detection falls back to polling",
)
LIST_CHANNELS = prometheus_client.Counter(
    "fiberlinkd_settlement_list_channels_total", "list_channels polls for the arrival signal"
)
RISES = prometheus_client.Counter(
    "fiberlinkd_settlement_rises_total",
    "Rises of what the channels received, by outcome (explained, unexplained, dropped)",
    ["outcome"],
)


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

    def _prune(self, now: float) -> None:
        while self._finished and self._finished[0] + self.window_s <= now:
            self._finished.popleft()

    def try_acquire(self, *, keep: int = 0) -> bool:
        """Grant a call now if that leaves ``keep`` grants of the window free."""
        self._prune(trio.current_time())
        if self._open + len(self._finished) < self.limit - keep:
            self._open += 1
            return True
        return False

    def wait_s(self) -> float:
        """Until the oldest finished call leaves the window (``window_s`` if none has)."""
        now = trio.current_time()
        self._prune(now)
        if self._finished:
            return max(1e-6, self._finished[0] + self.window_s - now)
        return self.window_s

    async def acquire(self) -> None:
        while True:
            now = trio.current_time()
            self._prune(now)
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


# --- the arrival signal -------------------------------------------------------------------


def channel_asset(script: Script | None, info: NodeInfo | None) -> str:
    """The asset a channel carries: ``CKB``, a UDT the node names, else its script."""
    if script is None:
        return "CKB"
    for name, known in info.udt_scripts if info else ():
        if (known.code_hash, known.hash_type) == (script.code_hash, script.hash_type):
            return name.upper()
    return f"udt:{script.code_hash}:{script.hash_type}:{script.args}"


@attrs.define
class ArrivalSignal:
    """What each ready channel has received (``local_balance + received_tlc_balance``).

    :meth:`observe` compares a ``list_channels`` answer with the last good one, channel by
    channel, and returns the rises per asset: a channel that appears (opened) or leaves
    ``ChannelReady`` sets a baseline, never a rise; a decrease in one channel does not mask a
    rise in another. ``covered`` is the set of assets with a ready channel, ``None`` while
    the signal is unavailable (:meth:`lost`); the last reading is kept across an outage so
    that what arrived meanwhile shows as a rise when the node answers again.
    """

    _last: dict[str, tuple[str, int]] = attrs.field(factory=dict)  # channel id -> (asset, sum)
    covered: frozenset[str] | None = None

    def observe(self, channels: Iterable[Channel], info: NodeInfo | None) -> dict[str, int]:
        current = {
            c.channel_id: (
                channel_asset(c.funding_udt_type_script, info),
                c.local_balance + c.received_tlc_balance,
            )
            for c in channels
            if c.state_name == READY_STATE
        }
        rises: dict[str, int] = {}
        for channel_id, (asset, received) in current.items():
            before = self._last.get(channel_id)
            if before is not None and received > before[1]:
                rises[asset] = rises.get(asset, 0) + received - before[1]
        self._last = current
        self.covered = frozenset(asset for asset, _ in current.values()) or None
        return rises

    def lost(self) -> None:
        self.covered = None

    def reading(self) -> dict[str, tuple[str, int]]:
        """The last good reading (channel id -> (asset, received)), to persist."""
        return dict(self._last)

    def restore(self, reading: dict[str, tuple[str, int]]) -> None:
        """Start from a reading saved before a restart, so money that arrived while the
        daemon was down shows as a rise on the first poll (not only on the schedule)."""
        if not self._last:
            self._last = dict(reading)

    def covers(self, asset: str) -> bool:
        return self.covered is not None and asset in self.covered


CHANNEL_READING_KEY = "settlement.channel_reading"


def save_reading(
    conn: sqlite3.Connection, reading: dict[str, tuple[str, int]], now_ms: int
) -> None:
    value = json.dumps({cid: [asset, total] for cid, (asset, total) in sorted(reading.items())})
    put_setting(conn, CHANNEL_READING_KEY, value, now_ms)


def load_reading(conn: sqlite3.Connection) -> dict[str, tuple[str, int]]:
    stored = get_setting(conn, CHANNEL_READING_KEY)
    if stored is None:
        return {}
    try:
        data = json.loads(stored[0])
        return {str(cid): (str(v[0]), int(v[1])) for cid, v in data.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        log.warning("ignoring an unreadable saved channel reading")
        return {}


@attrs.define(eq=False)
class Rise:
    """One unexplained rise of ``asset`` by ``amount``, and the search for the tips behind it.

    The search runs in two stages for the current ``remainder``: tips for exactly the
    remainder, then tips for at most it; watched tips lead each stage, the others follow
    newest first. A tip found Paid (or Received) is subtracted; if something is left, the
    search restarts at ``amount == remainder``. Each tip is checked once per rise.
    """

    asset: str
    amount: int
    seen_ms: int
    remainder: int = attrs.field()
    exact: bool = True
    queue: deque[tuple[tipsql.Tip, bool]] = attrs.field(factory=deque)  # (tip, watched)
    tried: set[str] = attrs.field(factory=set)
    exhausted: bool = False
    checks: int = 0
    up_to_checks: int = 0  # of them, in the ``amount <= remainder`` stage
    inflight: int = 0

    @remainder.default
    def _remainder(self) -> int:
        return self.amount

    @property
    def explained(self) -> bool:
        return self.remainder <= 0

    @property
    def searching(self) -> bool:
        """Still wants candidates checked (queued, or to be fetched)."""
        if self.explained or self.exhausted or self.checks >= RISE_MAX_CHECKS:
            return False
        return self.exact or self.up_to_checks < RISE_UP_TO_MAX_CHECKS

    @property
    def finished(self) -> bool:
        return self.explained or (not self.searching and self.inflight == 0)

    def found(self, amount: int) -> None:
        """A tip for ``amount`` explains part of the rise."""
        self.remainder -= amount
        self.exact = True
        self.exhausted = False
        self.queue.clear()

    def drop(self, tip: tipsql.Tip) -> bool:
        """Remove a queued candidate; returns whether it was queued."""
        for item in self.queue:
            if item[0].id == tip.id:
                self.queue.remove(item)
                return True
        return False

    def take(self, tip: tipsql.Tip) -> bool:
        """Move a queued candidate to checking; False if it is no longer wanted."""
        if not self.searching or not self.drop(tip):
            return False
        self.tried.add(tip.id)
        self.checks += 1
        self.up_to_checks += 0 if self.exact else 1
        self.inflight += 1
        return True


# --- the poller ---------------------------------------------------------------------------

Picked = tuple[tipsql.Tip, str, Rise | None]  # (tip, kind, the rise it may explain)


@attrs.define
class SettlementPoller:
    rt: Runtime
    rng: random.Random = attrs.field(factory=random.Random)
    signal: ArrivalSignal = attrs.field(factory=ArrivalSignal)
    _inflight: set[str] = attrs.field(factory=set)
    _last_unpaid_ms: dict[str, int] = attrs.field(factory=dict)
    _watch_next_ms: dict[str, int] = attrs.field(factory=dict)  # earliest next watched check
    _fast_grants: deque[float] = attrs.field(factory=deque)  # trio times, last second
    _scheduled_grants: deque[float] = attrs.field(factory=deque)  # trio times, last second
    _scheduled_next: float = -math.inf  # trio time of the next paced scheduled grant
    _rises: list[Rise] = attrs.field(factory=list)  # oldest first
    _received: set[str] = attrs.field(factory=set)  # Received tips already counted for a rise
    _signal_state: str = "unknown"  # "ok" | "lost" (logged once per change)
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
        self._rises.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_arrivals, slots)
            task_status.started()
            while True:
                now = self.rt.clock.now_ms()
                picked = await self._pick(now)
                for tip, kind, rise in picked:
                    if tip.id in self._inflight:  # checked meanwhile by another path
                        if rise is not None:
                            rise.drop(tip)
                        continue
                    if kind == "scheduled":
                        # Re-pick when a watched tip or a rise is waiting, so it goes first;
                        # leave headroom in the rate window, so it never waits for the window.
                        if self._fast_waiting(self.rt.clock.now_ms()):
                            break
                        if not await self._acquire_for_schedule(limiter, slots):
                            break
                    else:
                        if kind == "watched" and self._rise_waiting():
                            break  # a rise goes before the watched floor: re-pick
                        if rise is not None and not rise.take(tip):
                            continue
                        await slots.acquire()
                        await limiter.acquire()
                    self._dispatched(tip, kind, rise)
                    nursery.start_soon(self._check_and_release, tip, kind, rise, slots, limiter)
                if not picked:
                    await self.rt.watch_list.wakeup.wait(await self._idle_for(now))

    # -- the arrival signal

    async def _watch_arrivals(self, slots: trio.Semaphore) -> None:
        """Poll ``list_channels``; queue a :class:`Rise` per asset whose channels received."""
        rt = self.rt
        bound_s = min(ARRIVAL_CALL_BOUND_S, rt.config.fnn.call_timeout_s)
        next_at = trio.current_time()
        busy_until = -math.inf
        self.signal.restore(await rt.ledger.read(load_reading))
        saved = self.signal.reading()
        while True:
            channels: tuple[Channel, ...] | None = None
            problem = "the node lists no ready channel"
            async with slots:  # one of the node calls in flight
                LIST_CHANNELS.inc()
                try:
                    with trio.fail_after(bound_s):
                        channels = await rt.node.list_channels()
                except (FnnError, trio.TooSlowError) as exc:
                    FNN_ERRORS.labels(type(exc).__name__).inc()
                    problem = f"list_channels failed: {type(exc).__name__}: {exc}"
            if channels is None:
                self.signal.lost()
            else:
                rises = self.signal.observe(channels, rt.node_state.info)
                now = rt.clock.now_ms()
                if self.signal.reading() != saved:  # only when money moved: rare writes
                    saved = self.signal.reading()
                    await rt.ledger.transact(save_reading, saved, now)
                for asset, amount in sorted(rises.items()):
                    self._add_rise(Rise(asset, amount, now))
                if rises:
                    busy_until = trio.current_time() + ARRIVAL_BUSY_S
            self._signal_changed(problem)
            if not self.signal.covered:
                next_at += ARRIVAL_RETRY_S
            elif trio.current_time() < busy_until:
                next_at += ARRIVAL_BUSY_POLL_S
            else:
                next_at += ARRIVAL_POLL_S
            next_at = max(next_at, trio.current_time())
            await trio.sleep_until(next_at)

    def _signal_changed(self, problem: str) -> None:
        state = "ok" if self.signal.covered else "lost"
        if state == self._signal_state:
            return
        self._signal_state = state
        ARRIVAL_SIGNAL.set(1 if state == "ok" else 0)
        if state == "ok":
            log.info(
                "arrival signal available",
                extra=kv(assets=",".join(sorted(self.signal.covered or ()))),
            )
        else:
            log.warning(
                "arrival signal unavailable; polling invoices as before",
                extra=kv(reason=problem),
            )

    def _add_rise(self, rise: Rise) -> None:
        self._rises.append(rise)
        while len(self._rises) > MAX_PENDING_RISES:
            dropped = self._rises.pop(0)
            dropped.queue.clear()
            RISES.labels("dropped").inc()
            log.info(
                "arrival left to the schedule",
                extra=kv(asset=dropped.asset, amount=dropped.amount, reason="too many rises"),
            )
        self.rt.watch_list.wakeup.set()  # the poller's wake-up: a rise is waiting

    def _arrived(self, tip: tipsql.Tip, rise: Rise | None, status: InvoiceStatus) -> None:
        """Subtract a tip found Paid or Received from the rise it explains (once)."""
        if tip.id in self._received:
            if status is InvoiceStatus.PAID:
                self._received.discard(tip.id)
            return  # counted when its TLC arrived; settling it moves nothing
        if rise is None or rise.explained or rise not in self._rises:
            rise = next(
                (
                    r
                    for r in self._rises
                    if r.asset == tip.asset and not r.explained and tip.amount <= r.remainder
                ),
                None,
            )
        if rise is None:
            return
        if status is InvoiceStatus.RECEIVED:
            if len(self._received) >= 10 * MAX_PENDING_RISES * RISE_MAX_CHECKS:
                self._received.clear()  # bounded: forgetting only risks a wasted search
            self._received.add(tip.id)
        rise.found(tip.amount)

    def _retire_rises(self) -> None:
        for rise in [r for r in self._rises if r.finished]:
            self._rises.remove(rise)
            RISES.labels("explained" if rise.explained else "unexplained").inc()
            if not rise.explained:
                log.info(
                    "arrival left to the schedule",
                    extra=kv(
                        asset=rise.asset,
                        amount=rise.amount,
                        unexplained=rise.remainder,
                        checks=rise.checks,
                    ),
                )

    async def _refill(self, rise: Rise, watched: list[tipsql.Tip]) -> None:
        """Queue the next candidates of a rise, moving to the next stage when one runs dry."""
        while not rise.queue and rise.searching:
            wanted = rise.remainder
            if rise.exact:
                matches = [t for t in watched if t.asset == rise.asset and t.amount == wanted]
            else:
                matches = [t for t in watched if t.asset == rise.asset and t.amount <= wanted]
            watched_ids = {t.id for t in matches}
            limit = len(rise.tried) + len(self._inflight) + RISE_BATCH
            query = tipsql.unpaid_with_amount if rise.exact else tipsql.unpaid_up_to_amount
            others = await self.rt.ledger.read(query, rise.asset, wanted, limit)
            seen: set[str] = set()
            for tip in sorted(matches, key=lambda t: t.created_at, reverse=True) + others:
                if tip.id in seen or tip.id in rise.tried or tip.id in self._inflight:
                    continue
                seen.add(tip.id)
                rise.queue.append((tip, tip.id in watched_ids))
                if len(rise.queue) >= RISE_BATCH + len(matches):
                    break
            if not rise.queue:
                if rise.exact:
                    rise.exact = False
                else:
                    rise.exhausted = True

    async def _arrival_candidates(self, now: int, limit: int) -> list[Picked]:
        """Candidates of the waiting rises: watched ones of every rise, then oldest rise first."""
        self._retire_rises()
        if not self._rises or limit <= 0:
            return []
        if any(not r.queue and r.searching for r in self._rises):
            active = self.rt.watch_list.active(now)[:RISE_WATCHED_MAX]
            watched = await self.rt.ledger.read(tipsql.unpaid_tips_by_id, active)
            for rise in self._rises:
                await self._refill(rise, watched)
            self._retire_rises()
        picked: list[Picked] = []
        chosen: set[str] = set()
        for watched_only in (True, False):  # watched candidates of every rise go first
            for rise in self._rises:
                if not rise.searching:
                    continue
                room = min(RISE_MAX_CHECKS - rise.checks, RISE_IN_FLIGHT - rise.inflight)
                room -= sum(1 for _, _, r in picked if r is rise)
                for tip, is_watched in rise.queue:
                    if room <= 0 or len(picked) >= limit:
                        break
                    if tip.id in chosen or (watched_only and not is_watched):
                        continue
                    picked.append((tip, "arrival", rise))
                    chosen.add(tip.id)
                    room -= 1
                    if is_watched:  # this check counts as its watched check too
                        self._watch_next_ms.setdefault(tip.id, 0)
        return picked

    def _covers(self, asset: str) -> bool:
        return self.signal.covers(asset)

    def _max_interval_s(self, asset: str) -> float:
        cap = self.rt.config.settlement.max_check_interval_s
        return cap if self._covers(asset) else min(cap, FALLBACK_MAX_CHECK_INTERVAL_S)

    # -- choosing work

    async def _acquire_for_schedule(self, limiter: RateLimiter, slots: trio.Semaphore) -> bool:
        """A slot and a grant for a scheduled check, or False if fast work is waiting.

        Scheduled checks are paced at ``SCHEDULED_SHARE`` of the rate (no bursts beyond
        ``SCHEDULED_BURST_S`` worth) and fill the rate window only up to that share, unless
        they had less than ``1 - FAST_SHARE`` of it in the last second; the rest stays free
        for rises and watched tips, and frees up steadily rather than once a second. Without
        the arrival signal, they simply wait for the window.
        """
        rate = self._settings()[1]
        headroom = max(1, math.ceil(limiter.limit * (1 - SCHEDULED_SHARE)))
        minimum = max(1, math.floor(rate * (1 - FAST_SHARE)))
        await slots.acquire()
        if not self.signal.covered:  # no rises to make room for: as before the signal
            await limiter.acquire()
            return True
        while True:
            cutoff = trio.current_time() - 1.0
            while self._scheduled_grants and self._scheduled_grants[0] <= cutoff:
                self._scheduled_grants.popleft()
            if len(self._scheduled_grants) < minimum:  # its share: wait in line, no headroom
                await limiter.acquire()
                self._scheduled_grants.append(trio.current_time())
                return True
            now = trio.current_time()
            if now >= self._scheduled_next and limiter.try_acquire(keep=headroom):
                self._scheduled_grants.append(now)
                spacing = 1 / (rate * SCHEDULED_SHARE)
                earliest = now - SCHEDULED_BURST_S  # a short burst after an idle spell
                self._scheduled_next = max(self._scheduled_next, earliest) + spacing
                return True
            if self._fast_waiting(self.rt.clock.now_ms()):
                slots.release()
                return False
            wait = max(self._scheduled_next - now, 0.0) or limiter.wait_s()
            await trio.sleep(min(SCHEDULE_WAIT_S, wait))

    def _dispatched(self, tip: tipsql.Tip, kind: str, rise: Rise | None) -> None:
        self._inflight.add(tip.id)
        if kind == "scheduled":
            return
        self._fast_allowance()  # prunes the window, so it stays bounded
        self._fast_grants.append(trio.current_time())
        if kind == "watched" or tip.id in self._watch_next_ms:
            interval = WATCH_FLOOR_MS if self._covers(tip.asset) else WATCH_RECHECK_MS
            self._watch_next_ms[tip.id] = self.rt.clock.now_ms() + interval

    def _fast_allowance(self) -> int:
        """Explanation and watched checks still allowed in this second while others wait."""
        cutoff = trio.current_time() - 1.0
        while self._fast_grants and self._fast_grants[0] <= cutoff:
            self._fast_grants.popleft()
        share = max(1, math.floor(self._settings()[1] * FAST_SHARE))
        return max(0, share - len(self._fast_grants))

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

    def _rise_waiting(self) -> bool:
        return any(r.searching and r.inflight < RISE_IN_FLIGHT for r in self._rises)

    def _fast_waiting(self, now: int) -> bool:
        rise_waiting = self._rise_waiting()
        return (rise_waiting or bool(self._watched_due(now))) and self._fast_allowance() > 0

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
        if self._rise_waiting():
            waits.append(0.02)  # the rate window is full: look again shortly
        if self._backlog_refreshed is None or (
            trio.current_time() - self._backlog_refreshed >= BACKLOG_REFRESH_S
        ):
            self._backlog_refreshed = trio.current_time()
            BACKLOG.set(await self.rt.ledger.read(tipsql.unpaid_backlog))
        return min(waits)

    async def _pick(self, now: int) -> list[Picked]:
        """Explanations of rises, then due watched tips (within their share), then the schedule."""
        due = [
            tip
            for tip in await self.rt.ledger.read(
                tipsql.due_tips, now, PICK_BATCH + len(self._inflight)
            )
            if tip.id not in self._inflight
        ]
        allowance = min(PICK_BATCH, self._fast_allowance() if due else PICK_BATCH)
        picked = await self._arrival_candidates(now, allowance)
        chosen = {t.id for t, _, _ in picked}
        watched_ids = [t for t in self._watched_due(now) if t not in chosen]
        watched_ids = watched_ids[: max(0, allowance - len(picked))]
        if watched_ids:
            rows = {
                t.id: t for t in await self.rt.ledger.read(tipsql.unpaid_tips_by_id, watched_ids)
            }
            picked.extend((rows[t], "watched", None) for t in watched_ids if t in rows)
            for gone in set(watched_ids) - set(rows):
                self.rt.watch_list.forget(gone)
                self._watch_next_ms.pop(gone, None)
        chosen = {t.id for t, _, _ in picked}
        for tip in due:
            if len(picked) >= PICK_BATCH:
                break
            if tip.id not in chosen:
                picked.append((tip, "scheduled", None))
        return picked

    async def _check_and_release(
        self,
        tip: tipsql.Tip,
        kind: str,
        rise: Rise | None,
        slots: trio.Semaphore,
        limiter: RateLimiter,
    ) -> None:
        try:
            CHECKS.labels(kind).inc()
            status = await self.check(tip)
        finally:  # the node call is over (counting the record-keeping too: conservative)
            limiter.release()
            self._inflight.discard(tip.id)
            slots.release()
            if rise is not None:
                rise.inflight -= 1
                self.rt.watch_list.wakeup.set()  # the rise may want its next candidates
        if status is InvoiceStatus.PAID or status is InvoiceStatus.RECEIVED:
            self._arrived(tip, rise, status)

    # -- one check

    async def check(self, tip: tipsql.Tip) -> InvoiceStatus | None:
        """Ask the node about one tip and record what it said. Never raises for node trouble.

        Returns the status the node reported, or None when it could not be asked.
        """
        rt = self.rt
        grace_ms = int(rt.config.settlement.expiry_grace_s * 1000)
        try:
            with trio.fail_after(rt.config.fnn.call_timeout_s):
                info = await rt.node.get_invoice(tip.payment_hash)
        except (FnnError, trio.TooSlowError) as exc:
            # Back off from now, not from before the call: a timeout took call_timeout_s.
            await self._node_trouble(tip, exc, rt.clock.now_ms())
            return None
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
            if status is InvoiceStatus.RECEIVED:
                delay = RECEIVED_RECHECK_MS
            else:
                delay = schedule_after(
                    tip.check_count,
                    rt.config.settlement.first_check_after_s,
                    self._max_interval_s(tip.asset),
                    self.rng,
                )
            next_at = min(now + delay, tip.expires_at + grace_ms)
            # A small write many checks make at once: share commits (group commit).
            await rt.ledger.transact_grouped(
                tipsql.reschedule, tip.id, next_check_at=max(next_at, now + 100)
            )
        return status

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
