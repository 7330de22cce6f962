"""GroupCall: concurrent callers share one batch, each gets its own outcome.

Rules under test:
- a lone call runs as a batch of one; calls arriving while a batch is in flight are
  coalesced into the next batch, at most ``max_batch`` items per batch;
- each caller gets its own item's outcome: one item's error is not another's; if
  ``run_batch`` raises, every item of that batch fails with it and later calls still work;
- a caller cancelled while still queued withdraws its item (``run_batch`` never sees it);
- the flusher being cancelled mid-batch does not fail the other items of its batch;
- ``run_batch`` returning the wrong number of outcomes fails every item of the batch with
  RuntimeError and strands no caller.

Batch composition is controlled with a recording ``run_batch`` that waits on an Event the
test sets; ``trio.testing.wait_all_tasks_blocked`` orders arrivals. Tests that could hang if
the rule broke run under ``trio.fail_after`` on trio's fake clock (``autojump_clock``).
"""

from __future__ import annotations

from collections.abc import Sequence

import outcome
import pytest
import trio
import trio.testing

from fiberlinkd.groupcall import GroupCall

HANG_GUARD_S = 60.0  # virtual seconds: with autojump_clock a hang fails at once
RUNAWAY_BATCHES = 100  # no test here needs more; more means a flush loop spinning


class Boom(Exception):
    pass


class Recorder:
    """A ``run_batch`` that records each batch and answers ``item * 10``.

    While ``gate`` is set to an Event, each batch waits on it before answering (the Event
    is read when the batch starts, so a new gate holds only later batches). Items in
    ``failing`` get an ``outcome.Error(ValueError(item))``. With ``raise_next`` set, the
    next batch to pass its gate raises Boom instead (and clears the flag).
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: trio.Event | None = None
        self.failing: set[int] = set()
        self.raise_next = False

    def hold(self) -> trio.Event:
        self.gate = trio.Event()
        return self.gate

    async def __call__(self, items: list[int]) -> list[outcome.Outcome[int]]:
        if not items or len(self.batches) > RUNAWAY_BATCHES:
            # BaseException: escapes GroupCall and fails the test instead of spinning
            pytest.fail(f"run_batch called with {items} after {len(self.batches)} batches")
        self.batches.append(list(items))
        gate = self.gate
        if gate is not None:
            with trio.fail_after(HANG_GUARD_S):  # a test that failed midway never opens it
                await gate.wait()
        if self.raise_next:
            self.raise_next = False
            raise Boom(f"batch {items}")
        return [
            outcome.Error(ValueError(i)) if i in self.failing else outcome.Value(i * 10)
            for i in items
        ]


class Callers:
    """Starts callers of ``group`` and keeps each caller's outcome by item."""

    def __init__(self, nursery: trio.Nursery, group: GroupCall[int, int]) -> None:
        self.nursery = nursery
        self.group = group
        self.outcomes: dict[int, outcome.Outcome[int]] = {}

    async def _call(self, item: int, scope: trio.CancelScope | None) -> None:
        with scope or trio.CancelScope():
            # not outcome.acapture: that would capture Cancelled too
            try:
                value = await self.group(item)
            except Exception as exc:
                self.outcomes[item] = outcome.Error(exc)
            else:
                self.outcomes[item] = outcome.Value(value)

    async def start(self, item: int, scope: trio.CancelScope | None = None) -> None:
        """Start one caller and wait until it is parked (queued, or inside run_batch)."""
        self.nursery.start_soon(self._call, item, scope)
        await trio.testing.wait_all_tasks_blocked()

    def value(self, item: int) -> int:
        return self.outcomes[item].unwrap()


def sizes(batches: Sequence[Sequence[int]]) -> list[int]:
    return [len(b) for b in batches]


async def test_a_lone_call_is_a_batch_of_one() -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    assert await group(7) == 70
    assert run.batches == [[7]]
    assert (group.batches, group.items) == (1, 1)


async def test_calls_arriving_during_a_batch_share_the_next_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    gate = run.hold()
    async with trio.open_nursery() as nursery:
        callers = Callers(nursery, group)
        await callers.start(1)
        assert run.batches == [[1]]  # the first caller flushes at once, alone
        for item in (2, 3, 4):
            await callers.start(item)
        assert run.batches == [[1]]  # the others wait behind the batch in flight
        run.gate = None
        gate.set()
    assert run.batches == [[1], [2, 3, 4]]
    assert {item: callers.value(item) for item in (1, 2, 3, 4)} == {1: 10, 2: 20, 3: 30, 4: 40}
    assert (group.batches, group.items) == (2, 4)


async def test_one_items_error_is_only_its_callers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    run.failing = {2, 4}
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    gate = run.hold()
    async with trio.open_nursery() as nursery:
        callers = Callers(nursery, group)
        for item in (0, 1, 2, 3, 4):
            await callers.start(item)
        run.gate = None
        gate.set()
    assert run.batches == [[0], [1, 2, 3, 4]]
    assert [callers.value(item) for item in (0, 1, 3)] == [0, 10, 30]
    for item in (2, 4):
        with pytest.raises(ValueError, match=rf"^{item}$"):
            callers.value(item)


async def test_callers_queued_behind_a_raising_batch_still_get_results(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    gate = run.hold()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            callers = Callers(nursery, group)
            for item in (1, 2, 3):
                await callers.start(item)
            run.raise_next = True  # batch [1], still held, raises once released
            run.gate = None
            gate.set()
    assert run.batches == [[1], [2, 3]]
    with pytest.raises(Boom, match=r"batch \[1\]"):
        callers.value(1)
    assert (callers.value(2), callers.value(3)) == (20, 30)


async def test_run_batch_raising_fails_every_item_of_that_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    first = run.hold()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            callers = Callers(nursery, group)
            await callers.start(1)
            second = run.hold()  # holds the next batch, [2, 3], once it starts
            for item in (2, 3):
                await callers.start(item)
            first.set()
            await trio.testing.wait_all_tasks_blocked()
            assert run.batches == [[1], [2, 3]]
            run.raise_next = True
            run.gate = None
            second.set()
    assert callers.value(1) == 10
    for item in (2, 3):
        with pytest.raises(Boom, match=r"batch \[2, 3\]"):
            callers.value(item)
    assert await group(5) == 50
    assert run.batches[-1] == [5]


async def test_max_batch_is_respected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=2)
    gate = run.hold()
    async with trio.open_nursery() as nursery:
        callers = Callers(nursery, group)
        await callers.start(0)
        for item in (1, 2, 3, 4, 5):  # five queued behind the batch in flight
            await callers.start(item)
        run.gate = None
        gate.set()
    assert sizes(run.batches) == [1, 2, 2, 1]
    assert sorted(i for b in run.batches for i in b) == [0, 1, 2, 3, 4, 5]
    assert run.batches[1:] == [[1, 2], [3, 4], [5]]  # queue order is arrival order
    assert all(callers.value(item) == item * 10 for item in range(6))
    assert (group.batches, group.items) == (4, 6)


async def test_a_caller_cancelled_while_queued_is_never_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    gate = run.hold()
    leaver = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        callers = Callers(nursery, group)
        await callers.start(1)
        await callers.start(2, leaver)
        await callers.start(3)
        leaver.cancel()
        await trio.testing.wait_all_tasks_blocked()
        run.gate = None
        gate.set()
    assert leaver.cancelled_caught
    assert 2 not in callers.outcomes
    assert run.batches == [[1], [3]]
    assert (callers.value(1), callers.value(3)) == (10, 30)
    assert group.items == 2


async def test_a_cancelled_flusher_does_not_fail_the_rest_of_its_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    first = run.hold()
    flusher = trio.CancelScope()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            callers = Callers(nursery, group)
            await callers.start(0)
            second = run.hold()
            await callers.start(1, flusher)  # first in line: flushes the next batch
            await callers.start(2)
            await callers.start(3)
            first.set()
            await trio.testing.wait_all_tasks_blocked()
            assert run.batches == [[0], [1, 2, 3]]  # caller 1 is running this batch
            flusher.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not flusher.cancelled_caught  # shielded inside run_batch, not parked
            run.gate = None
            second.set()
    assert run.batches == [[0], [1, 2, 3]]  # the batch ran once, to its end
    assert (callers.value(2), callers.value(3)) == (20, 30)
    # The flusher's own item ran; it sees its result or its cancellation, nothing else.
    assert 1 not in callers.outcomes or callers.value(1) == 10


async def test_wrong_outcome_count_fails_every_item_and_strands_no_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[list[int]] = []
    gate = trio.Event()

    async def short_by_one(items: list[int]) -> list[outcome.Outcome[int]]:
        if not items:  # a stranded caller would flush empty batches forever
            pytest.fail("run_batch called with no items")
        calls.append(list(items))
        if len(calls) == 1:
            await gate.wait()
        return [outcome.Value(i) for i in items[1:]]

    group: GroupCall[int, int] = GroupCall(short_by_one, max_batch=8)
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            callers = Callers(nursery, group)
            for item in (1, 2, 3):
                await callers.start(item)
            gate.set()
    assert calls == [[1], [2, 3]]
    for item in (1, 2, 3):
        with pytest.raises(RuntimeError, match=r"run_batch returned \d outcomes for \d"):
            callers.value(item)
    assert set(callers.outcomes) == {1, 2, 3}


async def test_a_leaving_caller_withdraws_its_own_item_not_an_equal_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two callers with equal items are two slots: the one that leaves takes only its own.

    (Slots once compared by value, so the leaver could withdraw the stayer's slot: the
    stayer's item never ran and it spun on empty batches.)
    """
    run = Recorder()
    group: GroupCall[int, int] = GroupCall(run, max_batch=8)
    gate = run.hold()
    leaver = trio.CancelScope()
    got: list[int] = []

    async def stay() -> None:
        got.append(await group(5))

    async def leave() -> None:
        with leaver:
            await group(5)

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            callers = Callers(nursery, group)
            await callers.start(1)  # its batch holds at the gate
            nursery.start_soon(stay)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(leave)
            await trio.testing.wait_all_tasks_blocked()
            leaver.cancel()
            await trio.testing.wait_all_tasks_blocked()
            run.gate = None
            gate.set()
    assert got == [50]
    assert run.batches == [[1], [5]]


class Abort(BaseException):
    """Stands for KeyboardInterrupt and the like, which ``except Exception`` lets through."""


async def test_a_base_exception_in_run_batch_fails_that_batch_and_strands_no_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()
    release = trio.Event()

    async def run_batch(items: list[int]) -> list[outcome.Outcome[int]]:
        if not items:
            pytest.fail("run_batch called with no items (a caller is spinning)")
        started.set()
        await release.wait()
        raise Abort

    group: GroupCall[int, int] = GroupCall(run_batch, max_batch=8)
    results: dict[str, BaseException] = {}

    async def caller(name: str, item: int) -> None:
        try:
            await group(item)
        except BaseException as exc:
            results[name] = exc

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, "first", 1)  # flushes batch [1], held
            await started.wait()
            nursery.start_soon(caller, "second", 2)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(caller, "third", 3)
            await trio.testing.wait_all_tasks_blocked()
            release.set()  # every batch now raises Abort
    # Each flusher sees the Abort itself; "second" flushed [2, 3], so "third" got a
    # RuntimeError naming the interruption instead of hanging.
    assert isinstance(results["first"], Abort)
    assert isinstance(results["second"], Abort)
    assert isinstance(results["third"], RuntimeError)
    assert "interrupted" in str(results["third"])
