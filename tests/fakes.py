"""A small stateful fake Fiber node for fake-clock tests (a fake, not a mock).

:class:`FakeNode` implements the :class:`fiberlinkd.fnn.types.FiberNode` protocol over an
in-memory invoice store, with FNN's rules where the settlement code branches on them:

- stored statuses ``Open``/``Received``/``Paid``/``Cancelled``; ``Expired`` is computed at
  read time (``now > timestamp + expiry``) and never stored (``fnn-rpc.md`` §5.4);
- ``cancel_invoice`` is allowed from Open, Expired and Received and refused from Paid or
  Cancelled with FNN's exact text ``invoice can not be canceled, current status: <S>``; an
  unknown hash answers ``invoice not found`` (-32000, §4.2).

Test hooks:

- ``calls``: every call as ``(trio time, method, payment_hash)``, for rate assertions;
  ``in_flight`` / ``max_in_flight`` for concurrency assertions; ``latency_s`` makes every
  call take that long on trio's clock;
- :meth:`FakeNode.fail_next`: the next ``count`` calls of a method (optionally for one
  hash) raise the given FNN error (``FnnTimeout``, ``FnnConnectError``, ...);
- :meth:`FakeNode.on_call`: run a callback when a method is called, before it answers:
  pay an invoice "just before" ``cancel_invoice`` sees it, or raise to simulate a crash;
- :meth:`FakeNode.block`: calls of a method hang until the returned event is set (a poller
  can be cancelled mid-check);
- :meth:`FakeNode.pay`, :meth:`FakeNode.forget`, :meth:`FakeNode.restore`: a payer pays,
  the node loses an invoice (a restore lagging behind), and gets it back.

Channels: a new node has none (``list_channels`` answers ``[]``, as an old or fresh node
would). :meth:`FakeNode.open_channel` adds a ready CKB channel; from then on a payment
moves the amount from the channel's remote side to ``local_balance`` (FNN settles a normal
invoice at once), :meth:`FakeNode.hold` leaves it as a received TLC
(``received_tlc_balance``, invoice ``Received``) and :meth:`FakeNode.send_out` spends from
``local_balance`` (our own withdrawal or fee).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable

import attrs
import trio

from fiberlinkd.clock import Clock
from fiberlinkd.fnn.errors import BUSINESS_ERROR_CODE, FnnError, FnnNodeError
from fiberlinkd.fnn.types import (
    Channel,
    Currency,
    Invoice,
    InvoiceInfo,
    InvoiceStatus,
    NewInvoiceResult,
    NodeInfo,
    Payment,
    PaymentPage,
    PaymentStatus,
    Script,
)

FAKE_CHAIN_HASH = "0x" + "d" * 64
FAKE_PUBKEY = "02" + "ab" * 32
FAKE_PEER_PUBKEY = "03" + "cd" * 32


@attrs.define
class FakeInvoice:
    payment_hash: str
    address: str
    amount: int
    timestamp_ms: int
    expiry_s: int | None
    description: str | None
    status: InvoiceStatus = InvoiceStatus.OPEN  # stored status: never EXPIRED
    paid_at_ms: int | None = None

    def decoded(self, currency: Currency) -> Invoice:
        return Invoice(
            currency=currency,
            amount=self.amount,
            payment_hash=self.payment_hash,
            timestamp_ms=self.timestamp_ms,
            expiry_s=self.expiry_s,
            description=self.description,
            payee_pubkey=FAKE_PUBKEY,
            udt_script=None,
        )


@attrs.define
class FakeChannel:
    """A ready CKB channel to a peer; balances in shannons."""

    channel_id: str
    local_balance: int
    remote_balance: int
    received_tlc_balance: int = 0
    offered_tlc_balance: int = 0
    state_name: str = "ChannelReady"

    def as_channel(self) -> Channel:
        return Channel(
            channel_id=self.channel_id,
            pubkey=FAKE_PEER_PUBKEY,
            is_public=True,
            state_name=self.state_name,
            funding_udt_type_script=None,
            local_balance=self.local_balance,
            offered_tlc_balance=self.offered_tlc_balance,
            remote_balance=self.remote_balance,
            received_tlc_balance=self.received_tlc_balance,
            enabled=True,
        )


@attrs.define
class _Fault:
    method: str
    payment_hash: str | None
    make: Callable[[], BaseException]
    count: int


def invoice_not_found(payment_hash: str) -> FnnNodeError:
    return FnnNodeError(BUSINESS_ERROR_CODE, "invoice not found", {"payment_hash": payment_hash})


class FakeNode:
    """See the module docstring. ``clock`` decides read-time expiry (use ``TrioClock``)."""

    def __init__(self, clock: Clock, *, currency: Currency = Currency.FIBD) -> None:
        self.clock = clock
        self.currency = currency
        self.invoices: dict[str, FakeInvoice] = {}
        self._forgotten: dict[str, FakeInvoice] = {}
        self.by_address: dict[str, str] = {}
        self.calls: list[tuple[float, str, str | None]] = []
        self.latency_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[_Fault] = []
        self._hooks: dict[str, list[Callable[[str | None], None]]] = {}
        self._blocks: dict[str, trio.Event] = {}
        self._serial = itertools.count(1)
        self.channels: list[FakeChannel] = []

    # -- test controls (synchronous, not logged as calls) ---------------------------------

    def add_invoice(self, amount: int, *, expiry_s: int | None = 3600) -> FakeInvoice:
        """An invoice as ``new_invoice`` would store it, created now."""
        payment_hash = "0x" + secrets.token_hex(32)
        serial = next(self._serial)
        address = f"{self.currency.value.lower()}{amount}1fake{serial:08d}{payment_hash[2:18]}"
        record = FakeInvoice(
            payment_hash=payment_hash,
            address=address,
            amount=amount,
            timestamp_ms=self.clock.now_ms(),
            expiry_s=expiry_s,
            description=None,
        )
        self.invoices[payment_hash] = record
        self.by_address[address] = payment_hash
        return record

    def open_channel(
        self, *, local: int = 10**12, remote: int = 10**12, state_name: str = "ChannelReady"
    ) -> FakeChannel:
        """A CKB channel; payments to our invoices arrive through the first ready one."""
        channel = FakeChannel("0x" + secrets.token_hex(32), local, remote, state_name=state_name)
        self.channels.append(channel)
        return channel

    def _inbound(self) -> FakeChannel | None:
        return next((c for c in self.channels if c.state_name == "ChannelReady"), None)

    def pay(self, payment_hash: str) -> None:
        """A remote payer pays the invoice in full (Open → Paid, as FNN's normal invoices).

        With a channel, the amount moves to its ``local_balance`` (from the held TLC if
        :meth:`hold` received it first).
        """
        record = self.invoices[payment_hash]
        status = self.status_of(record)
        if status is not InvoiceStatus.OPEN and status is not InvoiceStatus.RECEIVED:
            raise AssertionError(f"cannot pay an invoice that is {status}")
        channel = self._inbound()
        if channel is not None:
            if status is InvoiceStatus.RECEIVED:
                channel.received_tlc_balance -= record.amount
            else:
                channel.remote_balance -= record.amount
            channel.local_balance += record.amount
        record.status = InvoiceStatus.PAID
        record.paid_at_ms = self.clock.now_ms()

    def hold(self, payment_hash: str) -> None:
        """The payer's TLC arrived and is held: Open → Received, ``received_tlc_balance`` up."""
        record = self.invoices[payment_hash]
        if self.status_of(record) is not InvoiceStatus.OPEN:
            raise AssertionError("only an Open invoice can receive a TLC")
        channel = self._inbound()
        if channel is not None:
            channel.remote_balance -= record.amount
            channel.received_tlc_balance += record.amount
        record.status = InvoiceStatus.RECEIVED

    def send_out(self, amount: int) -> None:
        """Our node pays ``amount`` out through its channel (a withdrawal, with its fee)."""
        channel = self._inbound()
        if channel is None:
            raise AssertionError("no channel to pay through")
        channel.local_balance -= amount
        channel.remote_balance += amount

    def force_status(self, payment_hash: str, status: InvoiceStatus) -> None:
        """Set a stored status directly (e.g. a TLC that arrived just before expiry)."""
        self.invoices[payment_hash].status = status
        if status is InvoiceStatus.PAID:
            self.invoices[payment_hash].paid_at_ms = self.clock.now_ms()

    def forget(self, payment_hash: str) -> None:
        """The node no longer knows this invoice (e.g. restored from an older backup)."""
        self._forgotten[payment_hash] = self.invoices.pop(payment_hash)

    def restore(self, payment_hash: str) -> None:
        self.invoices[payment_hash] = self._forgotten.pop(payment_hash)

    def fail_next(
        self,
        method: str,
        error: Callable[[], BaseException],
        *,
        count: int = 1,
        payment_hash: str | None = None,
    ) -> None:
        """The next ``count`` calls of ``method`` (for ``payment_hash`` if given) raise."""
        self._faults.append(_Fault(method, payment_hash, error, count))

    def on_call(self, method: str, hook: Callable[[str | None], None]) -> None:
        """Run ``hook(payment_hash)`` when ``method`` is called, before it answers."""
        self._hooks.setdefault(method, []).append(hook)

    def block(self, method: str) -> trio.Event:
        """Calls of ``method`` hang until the returned event is set."""
        event = trio.Event()
        self._blocks[method] = event
        return event

    def calls_of(self, method: str) -> list[tuple[float, str | None]]:
        return [(at, h) for at, m, h in self.calls if m == method]

    def status_of(self, record: FakeInvoice) -> InvoiceStatus:
        """The status FNN reports: a stored Open past its expiry reads as Expired."""
        if (
            record.status is InvoiceStatus.OPEN
            and record.expiry_s is not None
            and self.clock.now_ms() > record.timestamp_ms + record.expiry_s * 1000
        ):
            return InvoiceStatus.EXPIRED
        return record.status

    # -- plumbing -------------------------------------------------------------------------

    async def _enter(self, method: str, payment_hash: str | None) -> None:
        self.calls.append((trio.current_time(), method, payment_hash))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await trio.sleep(self.latency_s)
            blocked = self._blocks.get(method)
            if blocked is not None:
                await blocked.wait()
            for hook in self._hooks.get(method, []):
                hook(payment_hash)
            for fault in self._faults:
                if fault.method == method and fault.payment_hash in (None, payment_hash):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    raise fault.make()
        finally:
            self.in_flight -= 1

    def _info(self, record: FakeInvoice) -> InvoiceInfo:
        return InvoiceInfo(
            invoice_address=record.address,
            invoice=record.decoded(self.currency),
            status=self.status_of(record),
        )

    # -- the FiberNode protocol ----------------------------------------------------------

    async def node_info(self) -> NodeInfo:
        await self._enter("node_info", None)
        return NodeInfo(version="0.8.0", pubkey=FAKE_PUBKEY, chain_hash=FAKE_CHAIN_HASH)

    async def new_invoice(
        self,
        *,
        amount: int,
        currency: Currency,
        description: str | None = None,
        expiry_s: int | None = None,
        payment_preimage: str | None = None,
        payment_hash: str | None = None,
        udt_type_script: Script | None = None,
    ) -> NewInvoiceResult:
        del payment_preimage, payment_hash, udt_type_script
        await self._enter("new_invoice", None)
        if currency is not self.currency:
            raise FnnNodeError(
                BUSINESS_ERROR_CODE,
                f"Currency must be {self.currency.value} with the chain network",
            )
        record = self.add_invoice(amount, expiry_s=expiry_s)
        record.description = description
        return NewInvoiceResult(record.address, record.decoded(self.currency))

    async def parse_invoice(self, invoice: str) -> Invoice:
        await self._enter("parse_invoice", None)
        payment_hash = self.by_address.get(invoice)
        if payment_hash is None:
            raise FnnNodeError(BUSINESS_ERROR_CODE, "Bech32 error: invalid checksum")
        record = self.invoices.get(payment_hash) or self._forgotten[payment_hash]
        return record.decoded(self.currency)

    async def get_invoice(self, payment_hash: str) -> InvoiceInfo:
        await self._enter("get_invoice", payment_hash)
        record = self.invoices.get(payment_hash)
        if record is None:
            raise invoice_not_found(payment_hash)
        return self._info(record)

    async def cancel_invoice(self, payment_hash: str) -> InvoiceInfo:
        await self._enter("cancel_invoice", payment_hash)
        record = self.invoices.get(payment_hash)
        if record is None:
            raise invoice_not_found(payment_hash)
        if record.status in (InvoiceStatus.PAID, InvoiceStatus.CANCELLED):
            raise FnnNodeError(
                BUSINESS_ERROR_CODE,
                f"invoice can not be canceled, current status: {record.status.value}",
                {"payment_hash": payment_hash},
            )
        record.status = InvoiceStatus.CANCELLED
        return self._info(record)

    async def send_payment(
        self, *, invoice: str, max_fee_amount: int | None = None, dry_run: bool = False
    ) -> Payment:
        del invoice, max_fee_amount, dry_run
        await self._enter("send_payment", None)
        raise FnnNodeError(
            BUSINESS_ERROR_CODE,
            "Send payment error: Failed to build route, PathFind error: no path found",
        )

    async def get_payment(self, payment_hash: str) -> Payment:
        await self._enter("get_payment", payment_hash)
        raise FnnNodeError(
            BUSINESS_ERROR_CODE,
            f"InvalidParameter: Payment session not found: Hash256({payment_hash})",
        )

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage:
        del status, limit, after
        await self._enter("list_payments", None)
        return PaymentPage(payments=(), last_cursor=None)

    async def list_channels(self) -> tuple[Channel, ...]:
        await self._enter("list_channels", None)
        return tuple(c.as_channel() for c in self.channels)


def max_calls_in_any_window(times: list[float], window_s: float = 1.0) -> int:
    """The most calls that fall in any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, at in enumerate(ordered):
        while ordered[start] + window_s <= at:  # the same arithmetic as the limiter
            start += 1
        best = max(best, end - start + 1)
    return best


def error(kind: type[FnnError], message: str = "simulated") -> Callable[[], BaseException]:
    """A factory for :meth:`FakeNode.fail_next`: ``error(FnnTimeout)``."""
    return lambda: kind(message)
