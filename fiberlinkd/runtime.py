"""The collaborators every actor and request handler shares, wired once by ``daemon.py``.

It holds references, not behaviour. The ledger is the truth; the ``Wakeup`` objects only
nudge an actor to re-read its pending work from SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from fiberlinkd.clock import Clock
from fiberlinkd.config import Config
from fiberlinkd.fnn.types import FiberNode
from fiberlinkd.ledger import Ledger
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.supervisor import Supervisor

if TYPE_CHECKING:
    from fiberlinkd.onchain.service import OnchainService


class SettlementStats(Protocol):
    def latency_percentiles(self) -> dict[str, float | None]: ...


@attrs.define
class Wakeup:
    """A level-triggered nudge: many ``set()`` calls before a ``wait()`` wake it once.

    Nothing is queued, so it can never grow; the woken actor re-reads SQLite.
    """

    _event: trio.Event = attrs.field(factory=trio.Event)

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for a nudge or ``timeout_s``; returns whether a nudge arrived."""
        with trio.move_on_after(timeout_s):
            await self._event.wait()
        woken = self._event.is_set()
        if woken:
            self._event = trio.Event()
        return woken


@attrs.define
class WatchList:
    """Invoices a plugin modal is polling right now (``tip.status``), with an expiry.

    Written by the API, read by the settlement poller; bounded by ``max_size``.
    """

    ttl_ms: int = 5_000
    max_size: int = 10_000
    _until: dict[str, int] = attrs.field(factory=dict)  # tip id -> unix ms
    wakeup: Wakeup = attrs.field(factory=Wakeup)

    def watch(self, tip_id: str, now_ms: int) -> None:
        if tip_id not in self._until and len(self._until) >= self.max_size:
            self.prune(now_ms)
            if len(self._until) >= self.max_size:
                return  # the schedule still checks it; we just cannot watch more
        new = tip_id not in self._until
        self._until[tip_id] = now_ms + self.ttl_ms
        if new:
            self.wakeup.set()

    def prune(self, now_ms: int) -> None:
        for tip_id in [t for t, until in self._until.items() if until <= now_ms]:
            del self._until[tip_id]

    def active(self, now_ms: int) -> list[str]:
        self.prune(now_ms)
        return list(self._until)

    def forget(self, tip_id: str) -> None:
        self._until.pop(tip_id, None)


@attrs.define
class Runtime:
    config: Config
    ledger: Ledger
    node: FiberNode
    node_state: NodeState
    clock: Clock
    supervisor: Supervisor
    started_at_ms: int
    watch_list: WatchList
    withdrawals_wakeup: Wakeup = attrs.field(factory=Wakeup)
    reconcile_wakeup: Wakeup = attrs.field(factory=Wakeup)
    api_urls: list[str] = attrs.field(factory=list)  # filled by the API once it listens
    settlement_stats: SettlementStats | None = None  # the running poller, for `admin status`
    onchain: OnchainService | None = None  # on-chain payouts ([onchain] enabled)
