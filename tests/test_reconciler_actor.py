"""The reconciler actor: schedule, wake-ups, crash leftovers, errors, metrics.

Rules: trio's fake clock (``autojump_clock``) with the ledger's inline mode, exact virtual
times; a fake FiberNode; a bug (not a node outage) propagates to the supervisor after the
run is stored as ERROR.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from fiberlinkd.ledger.reconcile import get_run, latest_run_id, start_run
from fiberlinkd.reconciler.actor import FIRST_RUN_DELAY_S, Reconciler
from tests.test_reconciler_support import FakeNode, open_runtime, seed_clean, tamper


async def _run_spans(rt: object) -> list[tuple[int, int, str]]:
    return await rt.ledger.read(  # type: ignore[attr-defined, no-any-return]
        lambda c: [
            tuple(r)
            for r in c.execute(
                "SELECT started_at, finished_at, trigger FROM reconcile_runs ORDER BY id"
            )
        ]
    )


async def test_the_actor_runs_soon_after_start_then_every_interval_and_when_woken(
    tmp_path: Path, autojump_clock: object
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node, interval_s=300.0) as rt:
        await seed_clean(rt, node)
        t0 = rt.clock.now_ms()
        async with trio.open_nursery() as nursery:
            await nursery.start(Reconciler(rt).run)
            await trio.sleep(FIRST_RUN_DELAY_S + 300 + 1)
            rt.reconcile_wakeup.set()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        (s1, e1, k1), (s2, _, k2), (s3, _, k3) = await _run_spans(rt)
        assert (s1 - t0, k1) == (10_000, "schedule")
        assert k2 == "schedule"
        assert s2 - e1 == pytest.approx(300_000, abs=1)  # the interval is the pause between runs
        assert (s3 - t0, k3) == (311_000, "on-demand")


async def test_runs_left_running_by_a_crash_are_marked_error_when_the_actor_starts(
    tmp_path: Path, autojump_clock: object
) -> None:
    async with open_runtime(tmp_path) as rt:
        run_id = await rt.ledger.transact(start_run, rt.clock.now_ms(), "schedule")
        async with trio.open_nursery() as nursery:
            await nursery.start(Reconciler(rt).run)
            nursery.cancel_scope.cancel()
        run = await rt.ledger.read(get_run, run_id)
        assert run is not None
        assert run.status == "ERROR"
        assert "interrupted" in run.summary["error"]


async def test_a_bug_during_a_run_is_stored_as_error_and_propagates(tmp_path: Path) -> None:
    node = FakeNode(bug="list_channels")
    async with open_runtime(tmp_path, node) as rt:
        with pytest.raises(RuntimeError, match="bug in list_channels"):
            await Reconciler(rt).run_once("test")
        run = await rt.ledger.read(get_run, await rt.ledger.read(latest_run_id))
        assert run is not None
        assert run.status == "ERROR"
        assert run.summary["error"] == "RuntimeError: bug in list_channels"


async def test_runs_never_overlap(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node, inline=False) as rt:
        await seed_clean(rt, node)
        reconciler = Reconciler(rt)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(reconciler.run_once, "test")
        spans = await rt.ledger.read(
            lambda c: c.execute(
                "SELECT started_at, finished_at FROM reconcile_runs ORDER BY id"
            ).fetchall()
        )
        assert len(spans) == 3
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


async def test_metrics_follow_the_last_run(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        before = (
            REGISTRY.get_sample_value("fiberlinkd_reconcile_runs_total", {"status": "PROBLEMS"})
            or 0
        )
        await tamper(rt, "UPDATE balances SET settled = settled + 1 WHERE user_id = 'bob'")
        run = await Reconciler(rt).run_once("test")
        assert (
            REGISTRY.get_sample_value("fiberlinkd_reconcile_runs_total", {"status": "PROBLEMS"})
            == before + 1
        )
        assert (
            REGISTRY.get_sample_value("fiberlinkd_reconcile_findings", {"severity": "CRITICAL"})
            == 1
        )
        assert (
            REGISTRY.get_sample_value("fiberlinkd_reconcile_last_run_timestamp_seconds")
            == (run.finished_at or 0) / 1000
        )
        assert REGISTRY.get_sample_value("fiberlinkd_payouts_frozen") == 1
        assert (REGISTRY.get_sample_value("fiberlinkd_reconcile_duration_seconds_count") or 0) >= 1
