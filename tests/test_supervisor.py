"""The supervisor: restart a crashed actor with exponential backoff, give up past a limit.

Rules under test (all on trio's fake clock, with exact virtual times):
- an actor that raises is restarted after 0.5 s, 1 s, 2 s, … (doubling, capped);
- more than ``max_restarts`` crashes within ``window_s`` raises :class:`GaveUp` naming the
  actor and the last error, and a critical log line says which actor and why;
- crashes spread wider than the window never add up to giving up;
- an actor that returns normally is stopped, not restarted;
- ``nursery.start`` returns when the actor reports started, or when it crashes first, so
  one failing actor cannot block startup;
- cancellation is never caught or counted as a crash; other BaseExceptions propagate.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from fiberlinkd.supervisor import ActorStatus, FatalActorError, GaveUp, Supervisor


class Broken(RuntimeError):
    pass


class Actor:
    """A fake actor that records when it started and crashes its first ``crashes`` runs."""

    def __init__(self, *, crashes: int, then: str = "serve", crash_after_s: float = 0.0) -> None:
        self.crashes = crashes
        self.then = then  # serve | return
        self.crash_after_s = crash_after_s
        self.starts: list[float] = []
        self.report_started = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(trio.current_time())
        if len(self.starts) <= self.crashes:
            if self.crash_after_s:
                if self.report_started:
                    task_status.started()
                await trio.sleep(self.crash_after_s)
            raise Broken(f"crash number {len(self.starts)}")
        if self.report_started:
            task_status.started()
        if self.then == "serve":
            await trio.sleep_forever()


def crash_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fiberlinkd.supervisor" and r.levelno == level]


async def test_a_crashing_actor_is_restarted_with_exponential_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    actor = Actor(crashes=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "settlement", actor.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert actor.starts == [0.0, 0.5, 1.5, 3.5]
    status = supervisor.statuses["settlement"]
    assert status.restarts == 3
    assert status.last_error == "Broken: crash number 3"
    errors = crash_records(caplog, logging.ERROR)
    assert [r.getMessage() for r in errors] == ["actor crashed; restarting"] * 3
    assert [r.fields["backoff_s"] for r in errors] == [0.5, 1.0, 2.0]  # type: ignore[attr-defined]
    assert {r.fields["actor"] for r in errors} == {"settlement"}  # type: ignore[attr-defined]
    assert all(r.exc_info and r.exc_info[0] is Broken for r in errors)


async def test_backoff_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(max_restarts=100, window_s=1_000, base_backoff_s=1, max_backoff_s=5)
    actor = Actor(crashes=6)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "reconciler", actor.run)
        await trio.sleep(1_000)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(actor.starts, actor.starts[1:], strict=False)]
    assert gaps == [1, 2, 4, 5, 5, 5]


async def test_an_actor_that_keeps_crashing_gives_up_naming_the_actor(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(max_restarts=5, window_s=60)
    actor = Actor(crashes=1_000)
    with pytest.raises(GaveUp) as info:
        await supervisor.supervise("withdrawals", actor.run)
    # five restarts (0.5 + 1 + 2 + 4 + 8 s), the sixth crash within 60 s gives up
    assert actor.starts == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5]
    assert trio.current_time() == 15.5
    assert info.value.actor == "withdrawals"
    message = str(info.value)
    assert "actor withdrawals crashed 6 times within 60 s" in message
    assert "Broken: crash number 6" in message
    assert isinstance(info.value.__cause__, Broken)
    assert supervisor.statuses["withdrawals"].state == "stopped"
    (critical,) = crash_records(caplog, logging.CRITICAL)
    assert critical.getMessage() == "actor crashed too often; stopping the daemon"
    fields: dict[str, Any] = critical.fields  # type: ignore[attr-defined]
    assert fields["actor"] == "withdrawals"
    assert fields["error"] == "Broken: crash number 6"


async def test_giving_up_inside_a_nursery_stops_the_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(max_restarts=2, window_s=60)
    healthy = Actor(crashes=0)
    doomed = Actor(crashes=1_000)
    with pytest.RaisesGroup(GaveUp):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.supervise, "healthy", healthy.run)
            await nursery.start(supervisor.supervise, "doomed", doomed.run)
    assert healthy.starts == [0.0]
    assert len(doomed.starts) == 3


async def test_crashes_spread_wider_than_the_window_never_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(max_restarts=2, window_s=60)
    actor = Actor(crashes=20, crash_after_s=100)  # crashes once every ~100 s
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "api", actor.run)
        await trio.sleep(20 * 101)
        nursery.cancel_scope.cancel()
    assert len(actor.starts) == 21
    # each crash is alone in its window, so the backoff never grows past the first step
    gaps = [b - a for a, b in zip(actor.starts, actor.starts[1:], strict=False)]
    assert gaps == [100.5] * 20
    assert supervisor.statuses["api"].restarts == 20


async def test_a_normally_returning_actor_is_stopped_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor()
    actor = Actor(crashes=0, then="return")
    await supervisor.supervise("admin", actor.run)
    assert actor.starts == [0.0]
    assert supervisor.statuses["admin"].state == "stopped"
    assert supervisor.statuses["admin"].restarts == 0


async def test_start_waits_for_the_actor_to_report_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor()

    async def slow_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(3)
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        assert supervisor.statuses == {}
        await nursery.start(supervisor.supervise, "slow", slow_start)
        assert trio.current_time() == 3
        assert supervisor.statuses["slow"].state == "running"
        nursery.cancel_scope.cancel()


async def test_an_actor_crashing_before_it_started_does_not_block_startup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor()
    actor = Actor(crashes=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "nodewatch", actor.run)
        assert trio.current_time() == 0  # start returned at the first crash
        assert supervisor.statuses["nodewatch"].state == "restarting"
        await trio.sleep(10)
        assert supervisor.statuses["nodewatch"].state == "running"
        nursery.cancel_scope.cancel()
    assert actor.starts == [0.0, 0.5, 1.5]


async def test_an_actor_returning_without_reporting_started_does_not_block_startup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor()
    actor = Actor(crashes=0, then="return")
    actor.report_started = False
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "oneshot", actor.run)
    assert supervisor.statuses["oneshot"].state == "stopped"


async def test_cancellation_propagates_and_is_not_a_crash(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    actor = Actor(crashes=0)
    with trio.move_on_after(5) as scope:
        await supervisor.supervise("settlement", actor.run)
    assert scope.cancelled_caught
    assert actor.starts == [0.0]
    assert supervisor.statuses["settlement"].restarts == 0
    assert crash_records(caplog, logging.ERROR) == []


async def test_cancellation_during_backoff_stops_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(base_backoff_s=10)
    actor = Actor(crashes=1)
    with trio.move_on_after(5) as scope:
        await supervisor.supervise("settlement", actor.run)
    assert scope.cancelled_caught
    assert actor.starts == [0.0]
    assert trio.current_time() == 5


async def test_base_exceptions_are_not_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    class Fatal(BaseException):
        pass

    async def fatal(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise Fatal

    supervisor = Supervisor()
    with pytest.raises(Fatal):
        await supervisor.supervise("fatal", fatal)
    assert supervisor.statuses["fatal"].restarts == 0


def test_status_is_plain_data_for_the_admin_socket() -> None:
    status = ActorStatus("api", state="restarting", restarts=2, last_error="Broken: x")
    assert status.as_dict() == {
        "name": "api",
        "state": "restarting",
        "restarts": 2,
        "last_error": "Broken: x",
    }


async def test_a_fatal_actor_error_stops_the_daemon_at_once_with_its_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retrying cannot fix e.g. an admin socket path held by another process: no backoff."""

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise FatalActorError("admin socket /run/x.sock is in use by another process")

    supervisor = Supervisor()
    with pytest.raises(GaveUp) as info:
        await supervisor.supervise("admin", run)
    assert trio.current_time() == 0.0
    assert str(info.value) == (
        "actor admin cannot run: admin socket /run/x.sock is in use by another process"
    )
    assert supervisor.statuses["admin"].state == "stopped"
