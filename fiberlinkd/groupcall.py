"""Group calls: concurrent callers share one batched operation (a commit, an RPC batch).

The pattern is group commit. The first caller to find no batch in flight becomes the
flusher: it takes every queued item (up to ``max_batch``) and runs them as one batch while
later callers queue behind it. When that batch ends, the next waiter flushes whatever queued
meanwhile. A lone caller pays no added latency; under load, batches grow by themselves.

Each caller gets its own item's outcome: one item's failure is not another's. The batch
runs shielded from the flusher's cancellation, so a flusher whose client went away does not
fail the other callers' items; ``run_batch`` must therefore bound its own duration. A caller
cancelled before its item was taken withdraws the item; one cancelled after may still see
it done (as with any call whose reply is lost).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import attrs
import outcome
import prometheus_client
import trio

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = prometheus_client.Histogram(
    "fiberlinkd_group_batch_size",
    "Items per batch of a group call (ledger group commits, FNN JSON-RPC batches)",
    ["group"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)

RunBatch = Callable[[list[T]], Awaitable[Sequence[outcome.Outcome[R]]]]


@attrs.define(eq=False)  # identity: two callers with equal items are still two slots
class _Slot(Generic[T, R]):
    item: T
    result: outcome.Outcome[R] | None = None
    taken: bool = False  # by a batch: no longer in the queue


@attrs.define
class GroupCall(Generic[T, R]):
    """``await group(item)`` runs ``item`` as part of a batch and returns its own result.

    ``run_batch(items)`` returns one :class:`outcome.Outcome` per item, in order; if it
    raises instead, every item of that batch fails with the exception.
    """

    run_batch: RunBatch[T, R]
    max_batch: int = 64
    name: str = "-"  # the ``group`` label of the batch-size metric
    _queue: list[_Slot[T, R]] = attrs.field(factory=list, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    batches: int = attrs.field(default=0, init=False)  # for tests and metrics
    items: int = attrs.field(default=0, init=False)

    async def __call__(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        self._queue.append(slot)
        try:
            while slot.result is None:
                async with self._lock:
                    if slot.result is None:
                        if slot.taken:  # by a batch that ended without a result: never spin
                            raise RuntimeError("group call item lost by its batch")
                        await self._flush()
        finally:
            if not slot.taken:  # cancelled while queued: withdraw the item (by identity)
                self._queue[:] = [queued for queued in self._queue if queued is not slot]
        return slot.result.unwrap()

    async def _flush(self) -> None:
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        for slot in batch:
            slot.taken = True
        self.batches += 1
        self.items += len(batch)
        BATCH_SIZE.labels(self.name).observe(len(batch))
        results: Sequence[outcome.Outcome[R]]
        try:
            with trio.CancelScope(shield=True):
                try:
                    results = await self.run_batch([slot.item for slot in batch])
                except Exception as exc:
                    results = [outcome.Error(exc) for _ in batch]
        except BaseException as exc:  # KeyboardInterrupt and the like: fail the batch, go on
            for slot in batch:
                slot.result = outcome.Error(RuntimeError(f"batch interrupted: {exc!r}"))
            raise
        if len(results) != len(batch):  # a bug in run_batch: fail the items, never strand them
            bug = RuntimeError(f"run_batch returned {len(results)} outcomes for {len(batch)}")
            results = [outcome.Error(bug) for _ in batch]
        for slot, result in zip(batch, results, strict=True):
            slot.result = result
