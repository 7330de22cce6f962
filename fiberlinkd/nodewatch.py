"""Know the node: its network (from ``chain_hash``), pubkey and version, and whether it answers.

The invoice currency and the CKB address network follow the node, never configuration
(architecture.md §4b). :class:`NodeWatcher` learns them at startup, retrying while the node
is down, and refreshes them periodically; until they are known, tips are refused.
"""

from __future__ import annotations

import logging

import attrs
import trio

from fiberlinkd.clock import Clock
from fiberlinkd.fnn.errors import FnnError
from fiberlinkd.fnn.types import Currency, FiberNode, NodeInfo
from fiberlinkd.logsetup import kv

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 30.0
RETRY_MAX_S = 10.0
NODE_INFO_BOUND_S = 5.0


@attrs.define
class NodeState:
    """What the daemon currently knows about its node. Written only by the watcher."""

    info: NodeInfo | None = None
    last_ok_ms: int | None = None
    last_error: str | None = None

    @property
    def currency(self) -> Currency | None:
        return self.info.currency if self.info else None

    @property
    def reachable(self) -> bool:
        return self.info is not None and self.last_error is None


@attrs.define
class NodeWatcher:
    node: FiberNode
    state: NodeState
    clock: Clock
    refresh_interval_s: float = REFRESH_INTERVAL_S

    async def refresh(self) -> bool:
        """One bounded ``node_info``; returns whether the node answered."""
        try:
            with trio.fail_after(NODE_INFO_BOUND_S):
                info = await self.node.node_info()
        except (FnnError, trio.TooSlowError) as exc:
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self.state.info and self.state.info.chain_hash != info.chain_hash:
            log.critical(
                "the node's chain changed under us; refusing to continue",
                extra=kv(was=self.state.info.chain_hash, now=info.chain_hash),
            )
            raise RuntimeError("FNN chain_hash changed while running")
        if self.state.info is None:
            log.info(
                "node identified",
                extra=kv(version=info.version, currency=info.currency, pubkey=info.pubkey),
            )
        self.state.info = info
        self.state.last_ok_ms = self.clock.now_ms()
        self.state.last_error = None
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = 0.5
        while True:
            if await self.refresh():
                delay = 0.5
                await trio.sleep(self.refresh_interval_s)
            else:
                log.warning(
                    "FNN not answering node_info; retrying",
                    extra=kv(error=self.state.last_error, retry_s=delay),
                )
                await trio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
