"""Typed FNN results and the :class:`FiberNode` protocol the actors depend on.

Values are decoded at the client boundary: amounts and timestamps are ``int`` (base units,
milliseconds, seconds as named), hashes are lowercase ``0x``-prefixed 64-hex strings,
pubkeys are 66 lowercase hex characters without ``0x`` (FNN's output form).
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

MAINNET_CHAIN_HASH = "0x92b197aa1fba0f63633922c61c92375c9c074a93e85963554f5499fe1450d0e5"
TESTNET_CHAIN_HASH = "0x10639e0895502b5688a6be8cf69460d76541bfa4821629d86d62ba0aae3f9606"


class Currency(enum.StrEnum):
    """Invoice currency; it follows the node's chain (architecture.md §4b)."""

    FIBB = "Fibb"  # mainnet
    FIBT = "Fibt"  # testnet
    FIBD = "Fibd"  # any other (dev) chain

    @classmethod
    def for_chain_hash(cls, chain_hash: str) -> Currency:
        if chain_hash.lower() == MAINNET_CHAIN_HASH:
            return cls.FIBB
        if chain_hash.lower() == TESTNET_CHAIN_HASH:
            return cls.FIBT
        return cls.FIBD

    @property
    def address_hrp(self) -> str:
        """CKB address prefix of the same network: ``ckb`` on mainnet, ``ckt`` elsewhere."""
        return "ckb" if self is Currency.FIBB else "ckt"


class InvoiceStatus(enum.StrEnum):
    OPEN = "Open"
    CANCELLED = "Cancelled"
    EXPIRED = "Expired"
    RECEIVED = "Received"
    PAID = "Paid"


class PaymentStatus(enum.StrEnum):
    CREATED = "Created"
    INFLIGHT = "Inflight"
    SUCCESS = "Success"
    FAILED = "Failed"


@attrs.frozen
class Script:
    """A CKB script as FNN's JSON carries it (``udt_type_script`` and friends)."""

    code_hash: str
    hash_type: str
    args: str


@attrs.frozen
class NodeInfo:
    version: str
    pubkey: str
    chain_hash: str
    node_name: str | None = None
    udt_scripts: tuple[tuple[str, Script], ...] = ()  # (name, script) from udt_cfg_infos

    @property
    def currency(self) -> Currency:
        return Currency.for_chain_hash(self.chain_hash)


@attrs.frozen
class Invoice:
    """A decoded ``CkbInvoice`` (fnn-rpc.md §7.2)."""

    currency: Currency
    amount: int | None  # base units; FNN allows amount-less invoices
    payment_hash: str
    timestamp_ms: int
    expiry_s: int | None  # None: never expires
    description: str | None
    payee_pubkey: str | None
    udt_script: str | None  # 0x-hex molecule Script, as FNN prints it

    @property
    def expires_at_ms(self) -> int | None:
        return None if self.expiry_s is None else self.timestamp_ms + self.expiry_s * 1000


@attrs.frozen
class NewInvoiceResult:
    invoice_address: str
    invoice: Invoice


@attrs.frozen
class InvoiceInfo:
    """``get_invoice`` / ``cancel_invoice`` result."""

    invoice_address: str
    invoice: Invoice
    status: InvoiceStatus


@attrs.frozen
class Payment:
    """``GetPaymentCommandResult``: send_payment, get_payment and list_payments items."""

    payment_hash: str
    status: PaymentStatus
    created_at_ms: int
    last_updated_at_ms: int
    failed_error: str | None
    fee: int


@attrs.frozen
class PaymentPage:
    payments: tuple[Payment, ...]
    last_cursor: str | None


@attrs.frozen
class Channel:
    channel_id: str
    pubkey: str
    is_public: bool
    state_name: str
    funding_udt_type_script: Script | None
    local_balance: int
    offered_tlc_balance: int
    remote_balance: int
    received_tlc_balance: int
    enabled: bool

    @property
    def spendable(self) -> int:
        """What we can send through this channel now (fnn-rpc.md §9.1)."""
        return max(0, self.local_balance - self.offered_tlc_balance)


class FiberNode(Protocol):
    """What the actors need from a Fiber node. The HTTP client implements it; tests fake it.

    Every method raises the errors of :mod:`fiberlinkd.fnn.errors`. Callers bound time.
    """

    async def node_info(self) -> NodeInfo: ...

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
    ) -> NewInvoiceResult: ...

    async def parse_invoice(self, invoice: str) -> Invoice: ...

    async def get_invoice(self, payment_hash: str) -> InvoiceInfo: ...

    async def cancel_invoice(self, payment_hash: str) -> InvoiceInfo: ...

    async def send_payment(
        self,
        *,
        invoice: str,
        max_fee_amount: int | None = None,
        dry_run: bool = False,
    ) -> Payment: ...

    async def get_payment(self, payment_hash: str) -> Payment: ...

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage: ...

    async def list_channels(self) -> tuple[Channel, ...]: ...
