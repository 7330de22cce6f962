"""Adversarial review of the payout paths: each test pins one defect found in review.

Real SQLite files in tmp_path, the FNN simulator / CKB dev chain on loopback, fakes not mocks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fiberlinkd.admin.protocol import AdminError
from fiberlinkd.admin.registry import CommandContext
from fiberlinkd.admin.roles import Caller, Role
from fiberlinkd.fnn.errors import FnnError, FnnTimeout
from fiberlinkd.fnn.types import Payment
from fiberlinkd.ledger.withdrawals import COMPLETED, FAILED, RETRY_PENDING
from fiberlinkd.withdrawals import admin_commands as cmds
from fiberlinkd.withdrawals.executor import WithdrawalExecutor
from fiberlinkd.withdrawals.service import request
from tests.test_withdrawals_support import (
    CKB,
    FAST_WITHDRAWALS,
    StallingNode,
    balance,
    fund,
    make_config,
    open_runtime,
    params,
    remote_invoice,
    sim_node,
    successes_for,
    wait_for,
)

AMOUNT = 100 * CKB
SIM_FEE = AMOUNT * 1000 // 1_000_000  # one hop at 1000 ppm
ROOT = Caller(uid=0, name="root", role=Role.SUPER_ADMIN, app_ids=frozenset(), source="root")


@attrs.define
class LateSendNode(StallingNode):
    """``send_payment`` number ``late_on_send`` times out at the client, but the node executes
    it ``delay_s`` later (a slow node: the request was queued when the client gave up)."""

    nursery: trio.Nursery | None = None
    late_on_send: int = 0
    delay_s: float = 0.6
    landed: trio.Event = attrs.field(factory=trio.Event)

    async def send_payment(
        self, *, invoice: str, max_fee_amount: int | None = None, dry_run: bool = False
    ) -> Payment:
        if not dry_run:
            self.sends += 1
            if self.sends == self.late_on_send:
                assert self.nursery is not None
                self.nursery.start_soon(self._land, invoice, max_fee_amount)
                raise FnnTimeout("no reply within the bound")
        return await self.inner.send_payment(
            invoice=invoice, max_fee_amount=max_fee_amount, dry_run=dry_run
        )

    async def _land(self, invoice: str, max_fee_amount: int | None) -> None:
        await trio.sleep(self.delay_s)
        with contextlib.suppress(FnnError):
            await self.inner.send_payment(invoice=invoice, max_fee_amount=max_fee_amount)
        self.landed.set()


def _final(w: Any) -> bool:
    return w.state in (COMPLETED, FAILED)


async def test_a_resend_that_lands_late_is_not_failed_on_the_previous_failed_session(
    tmp_path: Path,
) -> None:
    """Attempt 1 fails at the node (session Failed). Attempt 2's send times out at the client
    but the node executes it later and it succeeds. get_payment right after the timeout still
    shows attempt 1's Failed session: that must not be taken as attempt 2's outcome (with the
    retry budget spent it would mark the row FAILED and release the reservation while the
    payment is still on its way: the user is paid and keeps the money)."""
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_budget=1))
    async with sim_node() as (sim, client):
        node = LateSendNode(client, late_on_send=2)
        async with open_runtime(tmp_path, node, config=config) as rt:
            await fund(rt, "alice", 1000 * CKB)
            invoice, payment_hash = remote_invoice(sim, AMOUNT, expiry_s=3600)
            wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
            sim.node.add_fault(
                "send_payment", "payment_fails", failed_error="TemporaryChannelFailure"
            )
            async with trio.open_nursery() as nursery:
                node.nursery = nursery
                await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
                await node.landed.wait()
                w = await wait_for(rt, wid, _final)
                nursery.cancel_scope.cancel()
            await trio.sleep(0.3)
            sim.node.advance()  # let the late payment resolve at the node
            assert successes_for(sim, payment_hash) == 1
            assert w.state == COMPLETED, w.failure_reason
            assert await balance(rt, "alice") == (1000 * CKB - AMOUNT - SIM_FEE, 0)


async def test_cancel_refuses_a_retry_pending_row_whose_send_may_still_land(
    tmp_path: Path,
) -> None:
    """Same late send as above: the row is RETRY_PENDING and the node still shows the earlier
    Failed session. An admin cancel right then would release the reservation while the
    payment is still on its way; Failed evidence needs the same quiet period as "not found"."""
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_base_s=1.0))
    async with sim_node() as (sim, client):
        node = LateSendNode(client, late_on_send=2)
        async with open_runtime(tmp_path, node, config=config) as rt:
            await fund(rt, "alice", 1000 * CKB)
            invoice, payment_hash = remote_invoice(sim, AMOUNT, expiry_s=3600)
            wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
            sim.node.add_fault(
                "send_payment", "payment_fails", failed_error="TemporaryChannelFailure"
            )
            async with trio.open_nursery() as nursery:
                node.nursery = nursery
                await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
                await wait_for(rt, wid, lambda w: w.state == RETRY_PENDING and w.attempts == 2)
                with pytest.raises(AdminError) as info:
                    await cmds.withdrawals_cancel(CommandContext(rt, ROOT), {"id": wid})
                assert info.value.code == "conflict"
                await node.landed.wait()
                w = await wait_for(rt, wid, _final)
                nursery.cancel_scope.cancel()
            await trio.sleep(0.3)
            sim.node.advance()
            assert successes_for(sim, payment_hash) == 1
            assert w.state == COMPLETED
            assert await balance(rt, "alice") == (1000 * CKB - AMOUNT - SIM_FEE, 0)


@attrs.define
class CrashMidResendNode(LateSendNode):
    """Send number ``late_on_send`` reaches the node ``delay_s`` later; meanwhile the daemon
    "dies" mid-call (the test cancels the executor while this send is in flight)."""

    in_flight: trio.Event = attrs.field(factory=trio.Event)

    async def send_payment(
        self, *, invoice: str, max_fee_amount: int | None = None, dry_run: bool = False
    ) -> Payment:
        if not dry_run and self.sends + 1 == self.late_on_send:
            self.sends += 1
            assert self.nursery is not None
            self.nursery.start_soon(self._land, invoice, max_fee_amount)
            self.in_flight.set()
            await trio.sleep_forever()
        return await super().send_payment(
            invoice=invoice, max_fee_amount=max_fee_amount, dry_run=dry_run
        )


async def test_a_crash_mid_resend_never_reads_the_earlier_failed_session_as_the_outcome(
    tmp_path: Path,
) -> None:
    """Attempt 1 fails at the node. Attempt 2 is sent and the process dies before recording
    anything; the send lands only after the restart. Recovery sees attempt 1's Failed session:
    the session committed before the send says it is the old one, so the row must go back to
    RETRY_PENDING with its reservation, not FAILED (the retry budget is spent) and released."""
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_budget=1))
    async with sim_node() as (sim, client):
        node = CrashMidResendNode(client, late_on_send=2, delay_s=1.0)
        async with open_runtime(tmp_path, node, config=config) as rt, trio.open_nursery() as outer:
            node.nursery = outer  # the late send outlives the "crashed" executor
            await fund(rt, "alice", 1000 * CKB)
            invoice, payment_hash = remote_invoice(sim, AMOUNT, expiry_s=3600)
            wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
            sim.node.add_fault(
                "send_payment", "payment_fails", failed_error="TemporaryChannelFailure"
            )
            async with trio.open_nursery() as first_life:
                await first_life.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
                await node.in_flight.wait()
                first_life.cancel_scope.cancel()  # the process dies mid-send
            async with trio.open_nursery() as second_life:
                await second_life.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
                w = await wait_for(rt, wid, _final)
                second_life.cancel_scope.cancel()
            await node.landed.wait()
            await trio.sleep(0.3)
            sim.node.advance()
            assert successes_for(sim, payment_hash) == 1
            assert w.state == COMPLETED, w.failure_reason
            assert await balance(rt, "alice") == (1000 * CKB - AMOUNT - SIM_FEE, 0)
