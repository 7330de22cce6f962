"""withdrawal.quote and withdrawal.request (plugin-wire-contract.md §4.4-4.5), against the
FNN simulator on loopback.

Rules under test:
- results carry exactly the contract's fields, amounts as canonical decimal strings;
- a destination the user must fix → quote ``destinationValid: false`` + message, request
  -32602 with ``data.field == "destination"``; other problems keep destinationValid true,
  explain in validationMessage, and the request is refused;
- the invoice must be for exactly the amount and asset, on the node's network, not
  expiring soon, not our own; CKB addresses are refused until on-chain payouts exist;
- every policy check and the balance check run inside the write transaction, so many
  simultaneous requests never overdraw or exceed a daily limit;
- an identical request within 60 s returns the same withdrawal; an invoice is never used
  by two withdrawals; frozen payouts refuse new requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fiberlinkd.api.errors import RpcError
from fiberlinkd.fnn.types import Currency
from fiberlinkd.ledger.withdrawals import put_policy
from fiberlinkd.payouts import set_frozen
from fiberlinkd.runtime import Runtime
from fiberlinkd.withdrawals.policy import Policy
from fiberlinkd.withdrawals.service import quote, request
from tests.test_withdrawals_support import (
    CKB,
    FAST_WITHDRAWALS,
    ManualClock,
    balance,
    fund,
    make_config,
    open_runtime,
    params,
    remote_invoice,
    sim_node,
    withdrawal,
)

QUOTE_KEYS = {
    "asset",
    "amount",
    "minimumAmount",
    "availableBalance",
    "lockedBalance",
    "networkFee",
    "receiveAmount",
    "destinationValid",
    "validationMessage",
}


async def _refused(coro: Any) -> RpcError:
    with pytest.raises(RpcError) as info:
        await coro
    return info.value


async def _set_policy(rt: Runtime, **changes: Any) -> None:
    policy = Policy.defaults(rt.config.withdrawals).updated(changes)
    await rt.ledger.transact(put_policy, "forum", policy, rt.clock.now_ms())


async def test_quote_reports_balance_fee_cap_and_a_valid_destination(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        result = await quote(rt, "forum", params("alice", "100", invoice))
        assert set(result) == QUOTE_KEYS
        assert result == {
            "asset": "CKB",
            "amount": "100",
            "minimumAmount": "1",
            "availableBalance": "1000",
            "lockedBalance": "0",
            "networkFee": "0.1",  # the simulator's dry-run route fee (1000 ppm), under the cap
            "receiveAmount": "100",
            "destinationValid": True,
            "validationMessage": None,
        }
        assert await balance(rt, "alice") == (1000 * CKB, 0)  # no side effects


async def test_quote_over_the_balance_keeps_destination_valid_and_request_is_refused(
    tmp_path: Path,
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 100 * CKB)  # the 0.5 % fee cap does not fit on top
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        result = await quote(rt, "forum", params("alice", "100", invoice))
        assert result["destinationValid"] is True
        assert result["validationMessage"] == "Amount exceeds your available balance."
        assert result["networkFee"] == "0.5"
        error = await _refused(request(rt, "forum", params("alice", "100", invoice)))
        assert (error.code, error.message) == (-32602, "Insufficient balance for withdrawal")


async def test_quote_marks_an_unparsable_invoice_invalid(tmp_path: Path) -> None:
    async with sim_node() as (_sim, client), open_runtime(tmp_path, client) as rt:
        result = await quote(rt, "forum", params("alice", "100", "fibd1notaninvoice"))
        assert result["destinationValid"] is False
        assert "not a valid Fiber invoice" in result["validationMessage"]
        error = await _refused(request(rt, "forum", params("alice", "100", "fibd1notaninvoice")))
        assert error.code == -32602
        assert error.data == {"field": "destination"}


@pytest.mark.parametrize(
    ("invoice_kwargs", "amount", "message"),
    [
        ({"amount": 50 * CKB, "expiry_s": 3600}, "100", "they must match"),
        ({"amount": 100 * CKB, "expiry_s": 3600, "currency": "Fibt"}, "100", "Fibt network"),
        ({"amount": 100 * CKB, "expiry_s": 60}, "100", "expires too soon"),
    ],
)
async def test_request_refuses_an_invoice_that_does_not_fit(
    tmp_path: Path, invoice_kwargs: dict[str, Any], amount: str, message: str
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, _ = remote_invoice(sim, **invoice_kwargs)
        q = await quote(rt, "forum", params("alice", amount, invoice))
        assert q["destinationValid"] is False
        assert message in q["validationMessage"]
        error = await _refused(request(rt, "forum", params("alice", amount, invoice)))
        assert error.code == -32602
        assert message in error.message
        assert await balance(rt, "alice") == (1000 * CKB, 0)


async def test_request_refuses_an_invoice_issued_by_our_own_node(tmp_path: Path) -> None:
    async with sim_node() as (_sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        own = await client.new_invoice(amount=100 * CKB, currency=Currency.FIBD, expiry_s=3600)
        error = await _refused(request(rt, "forum", params("alice", "100", own.invoice_address)))
        assert "own node" in error.message


async def test_ckb_address_is_refused_until_onchain_payouts_exist(tmp_path: Path) -> None:
    async with sim_node() as (_sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        p = {
            "userId": "alice",
            "amount": "100",
            "asset": "CKB",
            "destination": {"kind": "CKB_ADDRESS", "address": "ckt1qexample"},
        }
        q = await quote(rt, "forum", p)
        assert q["destinationValid"] is False
        assert "not enabled" in q["validationMessage"]
        error = await _refused(request(rt, "forum", p))
        assert (error.code, error.message) == (-32602, q["validationMessage"])
        legacy = {"userId": "alice", "amount": "100", "asset": "CKB", "toAddress": "ckt1qexample"}
        assert (await _refused(request(rt, "forum", legacy))).message == q["validationMessage"]


async def test_legacy_to_address_without_a_ckb_prefix_is_a_payment_request(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, payment_hash = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        p = {"userId": "alice", "amount": "100", "asset": "CKB", "toAddress": invoice}
        result = await request(rt, "forum", p)
        assert result["state"] == "PENDING"
        w = await withdrawal(rt, result["id"])
        assert (w.destination_kind, w.payment_hash) == ("PAYMENT_REQUEST", payment_hash)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"userId": ""}, "userId"),
        ({"userId": "x" * 65}, "userId"),
        ({"amount": "1.000000001"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": 100}, "amount"),
        ({"asset": "BTC"}, "asset"),
        ({"asset": "USDI"}, "asset"),  # not enabled in this config
        ({"destination": {"kind": "EMAIL"}}, "destination"),
        ({"destination": {"kind": "PAYMENT_REQUEST", "paymentRequest": " "}}, "paymentRequest"),
        ({"destination": None}, "destination"),
    ],
)
async def test_invalid_params_name_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    async with sim_node() as (_sim, client), open_runtime(tmp_path, client) as rt:
        p = params("alice", "100", "fibd1x") | change
        for method in (quote, request):
            error = await _refused(method(rt, "forum", p))
            assert (error.code, error.data) == (-32602, {"field": field})


async def test_unknown_node_network_is_service_unavailable(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, identify=False) as rt:
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        error = await _refused(request(rt, "forum", params("alice", "100", invoice)))
        assert error.code == -32000
        assert error.message.startswith("Service unavailable")


async def test_double_click_returns_the_same_withdrawal_and_reserves_once(tmp_path: Path) -> None:
    clock = ManualClock()
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, clock=clock) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        first = await request(rt, "forum", params("alice", "100", invoice))
        clock.advance_s(30)
        second = await request(rt, "forum", params("alice", "100", invoice))
        assert second == first
        assert await balance(rt, "alice") == (1000 * CKB, 100 * CKB + CKB // 2)
        clock.advance_s(31)
        error = await _refused(request(rt, "forum", params("alice", "100", invoice)))
        assert "already used" in error.message
        assert error.data == {"field": "destination"}


async def test_frozen_payouts_refuse_new_requests(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        await rt.ledger.transact(set_frozen, "audit", rt.clock.now_ms(), "test")
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        q = await quote(rt, "forum", params("alice", "100", invoice))
        assert q["validationMessage"] == "Withdrawals are paused by the operator"
        error = await _refused(request(rt, "forum", params("alice", "100", invoice)))
        assert error.message == "Withdrawals are paused by the operator"


@pytest.mark.parametrize(
    ("policy", "amount", "message"),
    [
        ({"allowed_assets": ["USDI"]}, "100", "CKB withdrawals are not allowed here"),
        ({"min_amount": "200"}, "100", "Minimum withdrawal is 200 CKB"),
        ({"max_per_request": "50"}, "100", "Maximum per withdrawal is 50 CKB"),
    ],
)
async def test_policy_refusals_explain_themselves(
    tmp_path: Path, policy: dict[str, Any], amount: str, message: str
) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        await _set_policy(rt, **policy)
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        q = await quote(rt, "forum", params("alice", amount, invoice))
        assert q["destinationValid"] is True
        assert q["validationMessage"] == message
        error = await _refused(request(rt, "forum", params("alice", amount, invoice)))
        assert (error.code, error.message) == (-32602, message)


async def test_daily_limits_and_cooldown_roll_with_the_window(tmp_path: Path) -> None:
    clock = ManualClock()
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, clock=clock) as rt:
        await fund(rt, "alice", 10_000 * CKB)
        await fund(rt, "bob", 10_000 * CKB)
        await _set_policy(
            rt, max_per_request="100", user_daily_limit="200", app_daily_limit="300", cooldown_s=60
        )

        async def ask(user: str) -> dict[str, Any]:
            invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=7 * 24 * 3600)
            return await request(rt, "forum", params(user, "100", invoice))

        await ask("alice")
        error = await _refused(ask("alice"))
        assert error.message == "Please wait 60 s before the next withdrawal"
        clock.advance_s(60)
        await ask("alice")
        clock.advance_s(60)
        error = await _refused(ask("alice"))
        assert error.message.startswith("Daily withdrawal limit reached: 0 CKB left")
        await ask("bob")
        error = await _refused(ask("bob"))
        assert "forum's daily withdrawal limit" in error.message
        clock.advance_s(24 * 3600)
        await ask("alice")


async def test_simultaneous_requests_never_overdraw_the_balance(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoices = [remote_invoice(sim, 100 * CKB, expiry_s=3600)[0] for _ in range(20)]
        accepted: list[str] = []
        refused: list[str] = []

        async def one(invoice: str) -> None:
            try:
                accepted.append((await request(rt, "forum", params("alice", "100", invoice)))["id"])
            except RpcError as exc:
                refused.append(exc.message)

        async with trio.open_nursery() as nursery:
            for invoice in invoices:
                nursery.start_soon(one, invoice)
        assert len(accepted) == 9  # 9 x 100.5 CKB fit in 1000; a 10th does not
        assert set(refused) == {"Insufficient balance for withdrawal"}
        settled, reserved = await balance(rt, "alice")
        assert (settled, reserved) == (1000 * CKB, 9 * (100 * CKB + CKB // 2))


async def test_simultaneous_requests_never_exceed_the_daily_limit(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, attrs.evolve(FAST_WITHDRAWALS, max_per_request="100", user_daily_limit="500")
    )
    async with sim_node() as (sim, client), open_runtime(tmp_path, client, config=config) as rt:
        await fund(rt, "alice", 100_000 * CKB)
        invoices = [remote_invoice(sim, 100 * CKB, expiry_s=3600)[0] for _ in range(12)]
        accepted = 0
        refusals: set[str] = set()

        async def one(invoice: str) -> None:
            nonlocal accepted
            try:
                await request(rt, "forum", params("alice", "100", invoice))
                accepted += 1
            except RpcError as exc:
                refusals.add(exc.message.split(":")[0])

        async with trio.open_nursery() as nursery:
            for invoice in invoices:
                nursery.start_soon(one, invoice)
        assert accepted == 5
        assert refusals == {"Daily withdrawal limit reached"}
