"""Builds the daemon's actors from the runtime (called by ``daemon.py`` only)."""

from __future__ import annotations

import trio

from fiberlinkd.runtime import Runtime
from fiberlinkd.supervisor import ActorRun


async def _idle(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


def build_actors(rt: Runtime, stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
    """The actors in start order; the API is started last by the daemon."""
    del rt, stop_accepting
    return [
        ("settlement", _idle),
        ("withdrawals", _idle),
        ("reconciler", _idle),
        ("admin", _idle),
        ("api", _idle),
    ]
