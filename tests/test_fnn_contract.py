"""Contract tests: ``FnnClient`` against an FNN node over loopback.

By default the node is the simulator, started in-process on 127.0.0.1 port 0. Set
``FIBERLINKD_TEST_FNN_URL`` (and ``FIBERLINKD_TEST_FNN_TOKEN`` if the node wants a biscuit
token) to run the same module against a real FNN; steps that need the simulator's control
surface (``sim_*``: paying our invoice as a remote payer, remote invoices, faults,
liquidity) are skipped there, everything else must hold for the real node too. The real
node should be a disposable dev/test node: the tests create invoices on it (never pay).

Rules: only what FNN documents is asserted (statuses, codes, messages); amounts are in
base units; time bounds are real (loopback), kept short.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from fiberlinkd.ckb.hashing import ckb_hash
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.errors import (
    FnnConnectError,
    FnnContractError,
    FnnHttpError,
    FnnNodeError,
    FnnTimeout,
    FnnTransportError,
    is_invoice_already_exists,
    is_invoice_not_cancellable,
    is_invoice_not_found,
    is_payment_session_exists,
    is_payment_session_not_found,
    is_unknown_method,
)
from fiberlinkd.fnn.simulator import Simulator, open_simulator
from fiberlinkd.fnn.types import Currency, InvoiceStatus, Payment, PaymentStatus

REAL_URL = os.environ.get("FIBERLINKD_TEST_FNN_URL")
REAL_TOKEN = os.environ.get("FIBERLINKD_TEST_FNN_TOKEN")
CKB = 100_000_000
POLL_S = 0.02


@attrs.frozen
class Target:
    client: FnnClient
    sim: Simulator | None
    currency: Currency

    def require_sim(self) -> Simulator:
        if self.sim is None:
            pytest.skip("needs the simulator's control surface (sim_*)")
        return self.sim

    async def control(self, control_method: str, /, **params: Any) -> Any:
        """A ``sim_*`` control call over the wire."""
        self.require_sim()
        return await self.client.call(control_method, [params])


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with httpx.AsyncClient(timeout=10) as http:
        if REAL_URL:
            client = FnnClient(http, REAL_URL, token=REAL_TOKEN, call_timeout_s=10)
            info = await client.node_info()
            yield Target(client, None, info.currency)
            return
        async with open_simulator(network="Fibd", host="127.0.0.1", port=0) as sim:
            client = FnnClient(http, sim.url, call_timeout_s=2)
            yield Target(client, sim, Currency.FIBD)


def _preimage() -> str:
    return "0x" + secrets.token_bytes(32).hex()


def _hash_of(preimage: str) -> str:
    return "0x" + ckb_hash(bytes.fromhex(preimage[2:])).hex()


async def _wait_payment(client: FnnClient, payment_hash: str, *statuses: PaymentStatus) -> Payment:
    with trio.fail_after(5):
        while True:
            payment = await client.get_payment(payment_hash)
            if payment.status in statuses:
                return payment
            await trio.sleep(POLL_S)


async def _local_balance(client: FnnClient) -> int:
    (channel,) = await client.list_channels()
    return channel.local_balance


# --- invoices (real node and simulator) ----------------------------------------------------


async def test_node_info_names_its_network(target: Target) -> None:
    info = await target.client.node_info()
    assert info.currency is target.currency
    assert len(info.pubkey) == 66
    assert info.version.startswith("0.")


async def test_invoice_create_get_pay_paid(target: Target) -> None:
    preimage = _preimage()
    created = await target.client.new_invoice(
        amount=CKB,
        currency=target.currency,
        description="contract tip",
        expiry_s=3600,
        payment_preimage=preimage,
    )
    invoice = created.invoice
    assert created.invoice_address.startswith(target.currency.lower() + "1000000001")
    assert invoice.payment_hash == _hash_of(preimage)
    assert (invoice.amount, invoice.expiry_s, invoice.description) == (CKB, 3600, "contract tip")
    parsed = await target.client.parse_invoice(created.invoice_address)
    assert parsed == invoice
    got = await target.client.get_invoice(invoice.payment_hash)
    assert got.status is InvoiceStatus.OPEN
    assert got.invoice == invoice

    target.require_sim()
    before = await _local_balance(target.client)
    paid = await target.control("sim_pay_invoice", invoice=created.invoice_address)
    assert paid["invoice_status"] == "Paid"
    assert (await target.client.get_invoice(invoice.payment_hash)).status is InvoiceStatus.PAID
    assert await _local_balance(target.client) == before + CKB
    with pytest.raises(FnnNodeError) as info:
        await target.client.cancel_invoice(invoice.payment_hash)
    assert is_invoice_not_cancellable(info.value)
    assert info.value.message == "invoice can not be canceled, current status: Paid"


async def test_invoice_expiry_is_computed_at_read_time(target: Target) -> None:
    created = await target.client.new_invoice(amount=100, currency=target.currency, expiry_s=1)
    payment_hash = created.invoice.payment_hash
    assert (await target.client.get_invoice(payment_hash)).status is InvoiceStatus.OPEN
    if target.sim is not None:
        await target.control("sim_advance_time", seconds=2)
    else:
        await trio.sleep(2.1)
    assert (await target.client.get_invoice(payment_hash)).status is InvoiceStatus.EXPIRED
    if target.sim is not None:
        with pytest.raises(FnnNodeError, match="InvoiceExpired"):
            await target.control("sim_pay_invoice", invoice=created.invoice_address)
    cancelled = await target.client.cancel_invoice(payment_hash)
    assert cancelled.status is InvoiceStatus.CANCELLED


async def test_cancel_then_cancel_again(target: Target) -> None:
    created = await target.client.new_invoice(amount=100, currency=target.currency)
    payment_hash = created.invoice.payment_hash
    assert created.invoice.expiry_s is None  # no default expiry
    cancelled = await target.client.cancel_invoice(payment_hash)
    assert cancelled.status is InvoiceStatus.CANCELLED
    assert (await target.client.get_invoice(payment_hash)).status is InvoiceStatus.CANCELLED
    with pytest.raises(FnnNodeError) as info:
        await target.client.cancel_invoice(payment_hash)
    assert is_invoice_not_cancellable(info.value)
    if target.sim is not None:
        with pytest.raises(FnnNodeError, match="InvoiceCancelled"):
            await target.control("sim_pay_invoice", invoice=created.invoice_address)


async def test_duplicate_hash_is_refused(target: Target) -> None:
    preimage = _preimage()
    await target.client.new_invoice(amount=100, currency=target.currency, payment_preimage=preimage)
    for kwargs in ({"payment_preimage": preimage}, {"payment_hash": _hash_of(preimage)}):
        with pytest.raises(FnnNodeError) as info:
            await target.client.new_invoice(amount=100, currency=target.currency, **kwargs)
        assert is_invoice_already_exists(info.value)
        assert info.value.code == -32000
        assert info.value.data["currency"] == str(target.currency)


async def test_wrong_currency_is_refused(target: Target) -> None:
    other = Currency.FIBB if target.currency is not Currency.FIBB else Currency.FIBT
    with pytest.raises(FnnNodeError) as info:
        await target.client.new_invoice(amount=100, currency=other)
    assert info.value.message == f"Currency must be {target.currency} with the chain network"


async def test_unknown_hashes(target: Target) -> None:
    unknown = _hash_of(_preimage())
    with pytest.raises(FnnNodeError) as info:
        await target.client.get_invoice(unknown)
    assert is_invoice_not_found(info.value)
    assert info.value.data == {"payment_hash": unknown}
    with pytest.raises(FnnNodeError) as info:
        await target.client.get_payment(unknown)
    assert is_payment_session_not_found(info.value)
    assert info.value.message == f"InvalidParameter: Payment session not found: Hash256({unknown})"


async def test_unknown_method_is_unauthorized(target: Target) -> None:
    with pytest.raises(FnnNodeError) as info:
        await target.client.call("no_such_method", [{}])
    assert is_unknown_method(info.value)
    assert (info.value.code, info.value.message) == (-32999, "Unauthorized")


async def test_paying_own_invoice_is_refused(target: Target) -> None:
    created = await target.client.new_invoice(amount=100, currency=target.currency)
    with pytest.raises(FnnNodeError) as info:
        await target.client.send_payment(invoice=created.invoice_address)
    assert info.value.message == (
        "Send payment error: Failed to build route, Feature not enabled: "
        "allow_self_payment is not enabled, can not pay to self"
    )


async def test_hold_invoice_settles_only_when_received(target: Target) -> None:
    preimage = _preimage()
    payment_hash = _hash_of(preimage)
    created = await target.client.new_invoice(
        amount=1000, currency=target.currency, payment_hash=payment_hash
    )
    with pytest.raises(FnnNodeError, match="Invoice is still open"):
        await target.client.settle_invoice(payment_hash, preimage)
    target.require_sim()
    held = await target.control("sim_pay_invoice", invoice=created.invoice_address)
    assert held["invoice_status"] == "Received"
    assert (await target.client.get_invoice(payment_hash)).status is InvoiceStatus.RECEIVED
    (channel,) = await target.client.list_channels()
    assert channel.received_tlc_balance == 1000
    with pytest.raises(FnnNodeError, match="Hash mismatch"):
        await target.client.settle_invoice(payment_hash, _preimage())
    await target.client.settle_invoice(payment_hash, preimage)
    assert (await target.client.get_invoice(payment_hash)).status is InvoiceStatus.PAID
    (channel,) = await target.client.list_channels()
    assert channel.received_tlc_balance == 0


# --- payments (simulator: a real node would spend money) -----------------------------------


async def test_send_created_then_success(target: Target) -> None:
    remote = await target.control("sim_remote_invoice", amount=CKB)
    before = await _local_balance(target.client)
    sent = await target.client.send_payment(invoice=remote["invoice"])
    assert sent.status is PaymentStatus.CREATED
    assert sent.payment_hash == remote["payment_hash"]
    assert sent.fee == 100_000  # one hop at 1000 ppm (fnn-rpc.md §8.3)
    (channel,) = await target.client.list_channels()
    assert channel.offered_tlc_balance == CKB + 100_000
    done = await _wait_payment(target.client, sent.payment_hash, PaymentStatus.SUCCESS)
    assert done.fee == 100_000
    assert done.failed_error is None
    assert done.created_at_ms == sent.created_at_ms
    assert done.last_updated_at_ms > sent.created_at_ms
    assert await _local_balance(target.client) == before - CKB - 100_000
    with pytest.raises(FnnNodeError) as info:
        await target.client.send_payment(invoice=remote["invoice"])
    assert is_payment_session_exists(info.value)
    assert info.value.message.endswith("with payment session status: Success")
    successes = (await target.control("sim_list_successful_payments"))["payments"]
    assert [s["payment_hash"] for s in successes] == [sent.payment_hash]


async def test_fee_cap_too_low_fails_and_may_be_resent(target: Target) -> None:
    remote = await target.control("sim_remote_invoice", amount=CKB)
    with pytest.raises(FnnNodeError) as info:
        await target.client.send_payment(invoice=remote["invoice"], max_fee_amount=99_999)
    message = "Send payment error: Failed to build route, PathFind error: no path found"
    assert info.value.message == message
    failed = await target.client.get_payment(remote["payment_hash"])
    assert (failed.status, failed.failed_error, failed.fee) == (PaymentStatus.FAILED, message, 0)
    resent = await target.client.send_payment(invoice=remote["invoice"], max_fee_amount=100_000)
    assert resent.status is PaymentStatus.CREATED
    await _wait_payment(target.client, resent.payment_hash, PaymentStatus.SUCCESS)


async def test_default_fee_cap_is_half_a_percent(target: Target) -> None:
    # 100 shannons: the hop fee ceil(100 * 1000 / 1e6) = 1 fits ceil(100 * 5 / 1000) = 1.
    small = await target.control("sim_remote_invoice", amount=100)
    assert (await target.client.send_payment(invoice=small["invoice"], dry_run=True)).fee == 1
    # A large max_fee_amount does not lift the 0.5 % cap.
    remote = await target.control("sim_remote_invoice", amount=CKB)
    quote = await target.client.send_payment(invoice=remote["invoice"], max_fee_amount=CKB)
    assert quote.fee == 100_000


async def test_dry_run_persists_nothing(target: Target) -> None:
    remote = await target.control("sim_remote_invoice", amount=CKB)
    quote = await target.client.send_payment(invoice=remote["invoice"], dry_run=True)
    assert (quote.status, quote.fee) == (PaymentStatus.CREATED, 100_000)
    with pytest.raises(FnnNodeError) as info:
        await target.client.get_payment(remote["payment_hash"])
    assert is_payment_session_not_found(info.value)


async def test_insufficient_liquidity_reports_decimal_amounts(target: Target) -> None:
    await target.control("sim_set_liquidity", outbound=1000)
    remote = await target.control("sim_remote_invoice", amount=CKB)
    with pytest.raises(FnnNodeError) as info:
        await target.client.send_payment(invoice=remote["invoice"])
    assert info.value.message == (
        "Send payment error: Failed to build route, Insufficient balance: "
        "max outbound liquidity 1000 is insufficient, required amount: 100000000"
    )
    assert (await target.client.get_payment(remote["payment_hash"])).status is (
        PaymentStatus.FAILED
    )


async def test_list_payments_ascending_with_cursor(target: Target) -> None:
    hashes = []
    for _ in range(3):
        remote = await target.control("sim_remote_invoice", amount=1000, payee="peer")
        payment = await target.client.send_payment(invoice=remote["invoice"])
        assert payment.fee == 0  # paying the channel peer directly
        hashes.append(payment.payment_hash)
    first = await target.client.list_payments(limit=2)
    assert [p.payment_hash for p in first.payments] == sorted(hashes)[:2]
    assert first.last_cursor == sorted(hashes)[1]
    rest = await target.client.list_payments(after=first.last_cursor)
    assert [p.payment_hash for p in rest.payments] == sorted(hashes)[2:]
    empty = await target.client.list_payments(after=rest.last_cursor)
    assert (empty.payments, empty.last_cursor) == ((), None)


# --- faults surface as the right client errors ----------------------------------------------


async def test_fault_timeout_is_a_client_timeout(target: Target) -> None:
    sim = target.require_sim()
    await target.control("sim_fault", method="node_info", kind="timeout")
    client = attrs.evolve(target.client, call_timeout_s=0.3)
    with pytest.raises(FnnTimeout):
        await client.node_info()
    assert (await target.client.node_info()).pubkey == sim.node.pubkey  # one call only


async def test_fault_http_500(target: Target) -> None:
    await target.control("sim_fault", method="get_invoice", kind="http_500", count=2)
    for _ in range(2):
        with pytest.raises(FnnHttpError) as info:
            await target.client.get_invoice(_hash_of(_preimage()))
        assert info.value.status == 500
    with pytest.raises(FnnNodeError):
        await target.client.get_invoice(_hash_of(_preimage()))


async def test_fault_bad_json(target: Target) -> None:
    await target.control("sim_fault", method="list_channels", kind="bad_json")
    with pytest.raises(FnnContractError):
        await target.client.list_channels()


async def test_fault_node_error(target: Target) -> None:
    await target.control("sim_fault", method="new_invoice", kind="node_error", message="boom")
    with pytest.raises(FnnNodeError) as info:
        await target.client.new_invoice(amount=1, currency=target.currency)
    assert (info.value.code, info.value.message) == (-32000, "boom")


async def test_drop_reply_on_send_payment_still_pays(target: Target) -> None:
    sim = target.require_sim()
    remote = await target.control("sim_remote_invoice", amount=CKB)
    sim.node.add_fault("send_payment", "drop_reply")
    with pytest.raises(FnnTransportError) as info:
        await target.client.send_payment(invoice=remote["invoice"])
    assert isinstance(info.value, FnnConnectError)
    # The reply was lost, but the node executed the call: the session exists.
    payment = await _wait_payment(target.client, remote["payment_hash"], PaymentStatus.SUCCESS)
    assert payment.fee == 100_000
    with pytest.raises(FnnNodeError) as again:
        await target.client.send_payment(invoice=remote["invoice"])
    assert is_payment_session_exists(again.value)
    assert len(sim.node.successful_payments()) == 1


async def test_payment_fails_fault_then_resend(target: Target) -> None:
    remote = await target.control("sim_remote_invoice", amount=CKB)
    await target.control(
        "sim_fault", method="send_payment", kind="payment_fails", failed_error="InvoiceExpired"
    )
    before = await _local_balance(target.client)
    sent = await target.client.send_payment(invoice=remote["invoice"])
    assert sent.status is PaymentStatus.CREATED
    failed = await _wait_payment(target.client, sent.payment_hash, PaymentStatus.FAILED)
    assert (failed.failed_error, failed.fee) == ("InvoiceExpired", 0)
    assert await _local_balance(target.client) == before
    (channel,) = await target.client.list_channels()
    assert channel.offered_tlc_balance == 0
    resent = await target.client.send_payment(invoice=remote["invoice"])
    assert resent.status is PaymentStatus.CREATED
    await _wait_payment(target.client, sent.payment_hash, PaymentStatus.SUCCESS)


async def test_payment_goes_through_inflight(target: Target) -> None:
    sim = target.require_sim()
    remote = await target.control("sim_remote_invoice", amount=1000)
    sent = await target.client.send_payment(invoice=remote["invoice"])
    seen = {sent.status}
    with trio.fail_after(5):
        while PaymentStatus.SUCCESS not in seen:
            seen.add((await target.client.get_payment(sent.payment_hash)).status)
            await trio.sleep(0.01)
    assert PaymentStatus.INFLIGHT in seen
    session = sim.node.payment(sent.payment_hash)
    assert session is not None
    assert session.status == "Success"
