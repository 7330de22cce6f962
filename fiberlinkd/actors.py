"""Builds the daemon's actors from the runtime (called by ``daemon.py`` only)."""

from __future__ import annotations

import importlib

import trio

from fiberlinkd.api.server import ApiServer
from fiberlinkd.runtime import Runtime
from fiberlinkd.settlement import SettlementPoller
from fiberlinkd.supervisor import ActorRun


async def _idle(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


def _optional(module: str, name: str, rt: Runtime) -> ActorRun:
    """An actor whose capability may be absent from a partial build: idle stand-in then."""
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        return _idle
    run: ActorRun = cls(rt).run
    return run


def build_actors(rt: Runtime, stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
    """The actors in start order; the daemon starts the API last, once the rest runs."""
    poller = SettlementPoller(rt)
    rt.settlement_stats = poller
    return [
        ("settlement", poller.run),
        ("withdrawals", _optional("fiberlinkd.withdrawals.executor", "WithdrawalExecutor", rt)),
        ("reconciler", _optional("fiberlinkd.reconciler.actor", "Reconciler", rt)),
        ("admin", _optional("fiberlinkd.admin.server", "AdminServer", rt)),
        ("api", ApiServer(rt, stop_accepting).run),
    ]
