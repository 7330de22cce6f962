"""Supervision: restart a crashed actor with exponential backoff, give up past a limit.

Each actor runs under :meth:`Supervisor.supervise`. An exception escaping an actor is
logged with the actor's name and the actor is restarted after a backoff (0.5 s, 1 s, 2 s, …
capped). More than ``max_restarts`` crashes within ``window_s`` raises :class:`GaveUp`,
which ends the daemon with a non-zero exit so systemd restarts the whole process.
Cancellation is never caught.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from fiberlinkd.logsetup import kv

log = logging.getLogger(__name__)


class ActorRun(Protocol):
    def __call__(self, *, task_status: trio.TaskStatus[Any] = ...) -> Awaitable[None]: ...


class FatalActorError(Exception):
    """An actor cannot work at all and retrying will not help (e.g. its socket path is taken
    by another process). The supervisor stops the daemon at once with the actor's message."""


class GaveUp(Exception):
    """An actor crashed too often; the daemon must stop."""

    def __init__(
        self, actor: str, crashes: int, window_s: float, last: BaseException, *, fatal: bool = False
    ) -> None:
        if fatal:
            message = f"actor {actor} cannot run: {last}"
        else:
            message = (
                f"actor {actor} crashed {crashes} times within {window_s:g} s; last error: "
                f"{type(last).__name__}: {last}"
            )
        super().__init__(message)
        self.actor = actor


@attrs.define
class ActorStatus:
    name: str
    state: str = "starting"  # starting | running | restarting | stopped
    restarts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


class _StartedProxy:
    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started

    def started(self, value: object = None) -> None:
        self._on_started()


@attrs.define
class Supervisor:
    max_restarts: int = 5
    window_s: float = 60.0
    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    statuses: dict[str, ActorStatus] = attrs.field(factory=dict)

    async def supervise(
        self,
        name: str,
        run: ActorRun,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``run`` until it returns, restarting it when it raises.

        Reports started (for ``nursery.start``) the first time the actor does, or when it
        first crashes before starting, so one failing actor cannot block startup.
        Errors: :class:`GaveUp` past the restart-intensity limit.
        """
        status = self.statuses.setdefault(name, ActorStatus(name))
        crashes: deque[float] = deque()
        reported = False

        def on_started() -> None:
            nonlocal reported
            status.state = "running"
            if not reported:
                reported = True
                task_status.started()

        while True:
            try:
                await run(task_status=_StartedProxy(on_started))  # type: ignore[arg-type,unused-ignore]
            except FatalActorError as exc:
                status.state = "stopped"
                status.last_error = str(exc)
                log.critical(
                    "actor cannot run; stopping the daemon", extra=kv(actor=name, error=str(exc))
                )
                raise GaveUp(name, 1, self.window_s, exc, fatal=True) from exc
            except Exception as exc:
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - self.window_s:
                    crashes.popleft()
                status.last_error = f"{type(exc).__name__}: {exc}"
                if len(crashes) > self.max_restarts:
                    status.state = "stopped"
                    log.critical(
                        "actor crashed too often; stopping the daemon",
                        extra=kv(actor=name, crashes=len(crashes), error=status.last_error),
                    )
                    raise GaveUp(name, len(crashes), self.window_s, exc) from exc
                backoff = min(self.max_backoff_s, self.base_backoff_s * 2 ** (len(crashes) - 1))
                log.exception(
                    "actor crashed; restarting",
                    extra=kv(actor=name, backoff_s=backoff, restarts=status.restarts + 1),
                )
                status.state = "restarting"
                status.restarts += 1
                if not reported:
                    reported = True
                    task_status.started()
                await trio.sleep(backoff)
            else:
                status.state = "stopped"
                if not reported:
                    task_status.started()
                return
