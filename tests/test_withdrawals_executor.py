"""The withdrawal executor against the FNN simulator: every fault on every step.

Rules under test (see fiberlinkd/withdrawals/executor.py):
- the node shows at most one successful payment per withdrawal, always for the hash stored
  at request time;
- a success debits the user exactly once (amount + fee) and releases the rest of the
  reservation; a failure debits nothing and releases everything;
- a timeout, an HTTP 500 or a lost reply leaves the row PROCESSING until get_payment
  answers; "Payment session not found" is the only proof that nothing was sent;
- a crash (the executor cancelled mid-step, a fresh one started on the same database)
  is resolved by asking the node before anything new is sent;
- no row is left unresolved once the node answers.

Real SQLite files in tmp_path, the simulator on 127.0.0.1 port 0, wall-clock time with
short intervals (the simulator runs on the wall clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio

from fiberlinkd.ledger.withdrawals import (
    COMPLETED,
    FAILED,
    PROCESSING,
    RETRY_PENDING,
    list_events,
)
from fiberlinkd.payouts import clear_frozen, set_frozen
from fiberlinkd.runtime import Runtime
from fiberlinkd.withdrawals import executor as executor_module
from fiberlinkd.withdrawals.executor import WithdrawalExecutor, is_permanent_failure
from fiberlinkd.withdrawals.service import request
from tests.test_withdrawals_support import (
    CKB,
    FAST_WITHDRAWALS,
    StallingNode,
    balance,
    fund,
    ledger_keys,
    make_config,
    open_runtime,
    params,
    remote_invoice,
    sim_node,
    successes_for,
    wait_for,
    withdrawal,
)

AMOUNT = 100 * CKB
FEE_CAP = AMOUNT * 5000 // 1_000_000  # 0.5 %
SIM_FEE = AMOUNT * 1000 // 1_000_000  # one hop at 1000 ppm


def _final(w: Any) -> bool:
    return w.state in (COMPLETED, FAILED)


async def _request(rt: Runtime, sim: Any, user: str = "alice") -> tuple[str, str]:
    invoice, payment_hash = remote_invoice(sim, AMOUNT, expiry_s=3600)
    result = await request(rt, "forum", params(user, "100", invoice))
    return result["id"], payment_hash


async def _run_until_final(rt: Runtime, wid: str, timeout_s: float = 10.0) -> Any:
    async with trio.open_nursery() as nursery:
        await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
        w = await wait_for(rt, wid, _final, timeout_s)
        nursery.cancel_scope.cancel()
    return w


async def _assert_paid_once(rt: Runtime, sim: Any, wid: str, payment_hash: str) -> None:
    w = await withdrawal(rt, wid)
    assert w.state == COMPLETED
    assert w.fee_paid == SIM_FEE
    assert successes_for(sim, payment_hash) == 1
    assert await balance(rt, "alice") == (1000 * CKB - AMOUNT - SIM_FEE, 0)
    keys = await rt.ledger.read(ledger_keys, wid)
    assert keys == [
        ("WITHDRAWAL_RESERVE", f"withdrawal:reserve:{wid}", 0, AMOUNT + FEE_CAP),
        ("WITHDRAWAL_DEBIT", f"withdrawal:debit:{wid}", -(AMOUNT + SIM_FEE), -(AMOUNT + SIM_FEE)),
        ("WITHDRAWAL_RELEASE", f"withdrawal:release:{wid}", 0, -(FEE_CAP - SIM_FEE)),
    ]


async def _assert_failed_and_released(rt: Runtime, sim: Any, wid: str, payment_hash: str) -> None:
    w = await withdrawal(rt, wid)
    assert w.state == FAILED
    assert successes_for(sim, payment_hash) == 0
    assert await balance(rt, "alice") == (1000 * CKB, 0)
    keys = await rt.ledger.read(ledger_keys, wid)
    assert [k[0] for k in keys] == ["WITHDRAWAL_RESERVE", "WITHDRAWAL_RELEASE"]
    assert keys[1][1] == f"withdrawal:release:{wid}"


async def test_executor_pays_a_requested_withdrawal_and_debits_amount_plus_fee(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        assert await balance(rt, "alice") == (1000 * CKB, AMOUNT + FEE_CAP)
        w = await _run_until_final(rt, wid)
        assert w.payment_hash == payment_hash
        assert w.attempts == 1
        await _assert_paid_once(rt, sim, wid, payment_hash)


async def test_executor_resends_the_same_invoice_after_a_send_timeout_that_never_reached_the_node(
    tmp_path: Path,
) -> None:
    async with sim_node(call_timeout_s=0.3) as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "timeout")
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)
        assert (await withdrawal(rt, wid)).attempts == 2


async def test_executor_resends_after_http_500_on_send_payment(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "http_500")
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)


async def test_executor_keeps_processing_when_reply_is_lost_and_completes_from_get_payment(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "drop_reply")
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)
        assert (await withdrawal(rt, wid)).attempts == 1  # never sent twice


async def test_executor_retries_a_retryable_failure_with_the_same_hash(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "payment_fails", failed_error="TemporaryChannelFailure")
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)
        w = await withdrawal(rt, wid)
        assert w.attempts == 2


async def test_executor_fails_and_releases_on_a_permanent_failure(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault(
            "send_payment", "payment_fails", failed_error="IncorrectOrUnknownPaymentDetails"
        )
        w = await _run_until_final(rt, wid)
        assert w.failure_reason == "IncorrectOrUnknownPaymentDetails"
        assert w.attempts == 1
        await _assert_failed_and_released(rt, sim, wid, payment_hash)


async def test_executor_fails_after_the_retry_budget_and_releases(tmp_path: Path) -> None:
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_budget=1))
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, config=config) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "payment_fails", count=5)
        w = await _run_until_final(rt, wid)
        assert w.attempts == 2
        assert "retry budget" in (w.failure_reason or "")
        await _assert_failed_and_released(rt, sim, wid, payment_hash)


async def test_executor_fails_when_the_node_refuses_the_send_and_has_no_session(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault(
            "send_payment",
            "node_error",
            message='InvalidParameter: Failed to validate payment request: "invoice is expired"',
        )
        await _run_until_final(rt, wid)
        await _assert_failed_and_released(rt, sim, wid, payment_hash)


async def test_executor_rides_out_get_payment_faults(tmp_path: Path) -> None:
    async with sim_node(call_timeout_s=0.3) as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        sim.node.add_fault("get_payment", "timeout")
        sim.node.add_fault("get_payment", "http_500", count=2)
        sim.node.add_fault("get_payment", "bad_json")
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)


async def test_crash_after_the_processing_commit_before_send_is_resolved_and_paid_once(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client):
        node = StallingNode(client, stall_before=True)
        async with open_runtime(tmp_path, node) as rt:
            await fund(rt, "alice", 1000 * CKB)
            wid, payment_hash = await _request(rt, sim)
            async with trio.open_nursery() as nursery:
                await nursery.start(WithdrawalExecutor(rt).run)
                await node.stalled.wait()
                nursery.cancel_scope.cancel()  # the process dies here
            assert (await withdrawal(rt, wid)).state == PROCESSING
            assert sim.node.payment(payment_hash) is None
            await _run_until_final(rt, wid)
            await _assert_paid_once(rt, sim, wid, payment_hash)
            events = await rt.ledger.read(list_events, wid)
            assert [(e.from_state, e.to_state) for e in events if e.from_state != e.to_state] == [
                (None, "PENDING"),
                ("PENDING", PROCESSING),
                (PROCESSING, RETRY_PENDING),
                (RETRY_PENDING, PROCESSING),
                (PROCESSING, COMPLETED),
            ]
            retry = next(e for e in events if e.to_state == RETRY_PENDING)
            assert "nothing was sent" in (retry.detail or "")


async def test_crash_after_send_before_recording_completes_without_sending_again(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client):
        node = StallingNode(client, stall_after=True)
        async with open_runtime(tmp_path, node) as rt:
            await fund(rt, "alice", 1000 * CKB)
            wid, payment_hash = await _request(rt, sim)
            async with trio.open_nursery() as nursery:
                await nursery.start(WithdrawalExecutor(rt).run)
                await node.stalled.wait()
                nursery.cancel_scope.cancel()  # the node paid; we never recorded it
            assert (await withdrawal(rt, wid)).state == PROCESSING
            await _run_until_final(rt, wid)
            await _assert_paid_once(rt, sim, wid, payment_hash)
            assert node.sends == 1


async def test_crash_with_the_node_down_at_restart_sends_nothing_until_it_answers(
    tmp_path: Path,
) -> None:
    async with sim_node(call_timeout_s=0.3) as (sim, client):
        node = StallingNode(client, stall_after=True)
        async with open_runtime(tmp_path, node) as rt:
            await fund(rt, "alice", 1000 * CKB)
            wid, payment_hash = await _request(rt, sim)
            other, other_hash = await _request(rt, sim, user="alice")
            async with trio.open_nursery() as nursery:
                await nursery.start(WithdrawalExecutor(rt, max_concurrent=1).run)
                await node.stalled.wait()
                nursery.cancel_scope.cancel()
            sim.node.add_fault("get_payment", "http_500", count=3)
            async with trio.open_nursery() as nursery:
                await nursery.start(WithdrawalExecutor(rt).run)
                await wait_for(rt, wid, _final)
                await wait_for(rt, other, _final)
                nursery.cancel_scope.cancel()
            assert successes_for(sim, payment_hash) == 1
            assert successes_for(sim, other_hash) == 1
            assert (await withdrawal(rt, wid)).attempts == 1


async def test_frozen_payouts_send_nothing_and_rows_wait(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        await rt.ledger.transact(set_frozen, "test", rt.clock.now_ms(), "test")
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt).run)
            await trio.sleep(0.5)
            assert (await withdrawal(rt, wid)).state == "PENDING"
            assert sim.node.payment(payment_hash) is None
            await rt.ledger.transact(clear_frozen, rt.clock.now_ms())
            rt.withdrawals_wakeup.set()
            await wait_for(rt, wid, _final)
            nursery.cancel_scope.cancel()
        await _assert_paid_once(rt, sim, wid, payment_hash)


async def test_processing_payment_still_in_flight_is_handed_to_the_schedule(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(executor_module, "FOLLOW_INLINE_S", 0.0)
    monkeypatch.setattr(executor_module, "RECHECK_S", 0.2)
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, payment_hash = await _request(rt, sim)
        await _run_until_final(rt, wid)
        await _assert_paid_once(rt, sim, wid, payment_hash)


async def test_many_withdrawals_are_paid_concurrently_each_exactly_once(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        users = [f"user{i}" for i in range(10)]
        hashes: dict[str, str] = {}
        for user in users:
            await fund(rt, user, 1000 * CKB)
            invoice, payment_hash = remote_invoice(sim, AMOUNT, expiry_s=3600)
            result = await request(rt, "forum", params(user, "100", invoice))
            hashes[result["id"]] = payment_hash
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.0).run)
            for wid in hashes:
                await wait_for(rt, wid, _final)
            nursery.cancel_scope.cancel()
        for wid, payment_hash in hashes.items():
            assert (await withdrawal(rt, wid)).state == COMPLETED
            assert successes_for(sim, payment_hash) == 1
        for user in users:
            assert await balance(rt, user) == (1000 * CKB - AMOUNT - SIM_FEE, 0)


async def test_a_retry_pending_row_waits_for_its_backoff(tmp_path: Path) -> None:
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_base_s=0.6))
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, config=config) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid, _payment_hash = await _request(rt, sim)
        sim.node.add_fault("send_payment", "payment_fails")
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.999).run)
            w = await wait_for(rt, wid, lambda w: w.state == RETRY_PENDING)
            assert w.next_attempt_at is not None
            assert 550 <= w.next_attempt_at - w.updated_at <= 600  # 0.6 s x (0.5 + 0.5 x j)
            await wait_for(rt, wid, _final)
            nursery.cancel_scope.cancel()


def test_failure_classification_names_the_hopeless_errors() -> None:
    assert is_permanent_failure("InvoiceExpired")
    assert is_permanent_failure("InvoiceCancelled")
    assert is_permanent_failure("IncorrectOrUnknownPaymentDetails")
    assert is_permanent_failure(
        'InvalidParameter: Failed to validate payment request: "invoice is expired"'
    )
    assert not is_permanent_failure("TemporaryChannelFailure")
    assert not is_permanent_failure(
        "Send payment error: Failed to build route, PathFind error: no path found"
    )
    assert not is_permanent_failure(
        "Send payment error: Failed to build route, Insufficient balance: max outbound "
        "liquidity 1 is insufficient, required amount: 2"
    )
    assert not is_permanent_failure(None)
