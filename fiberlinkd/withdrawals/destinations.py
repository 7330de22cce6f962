"""Where a withdrawal goes: parse the plugin's ``destination`` and check it against the node.

Two kinds (``plugin-wire-contract.md`` §3.1, §4.4):

- ``{"kind": "PAYMENT_REQUEST", "paymentRequest": "<Fiber invoice>"}`` — checked with the
  node's ``parse_invoice``: exactly the requested amount in base units, the same asset (no
  UDT script for CKB; the node's USDI script for USDI), the node's network, not expiring
  within ``withdrawals.invoice_min_remaining_s``, and not issued by our own node.
- ``{"kind": "CKB_ADDRESS", "address": "ckt1…"}`` — on-chain payouts from the hot wallet,
  checked by :meth:`fiberlinkd.onchain.service.OnchainService.check_address` (an
  :class:`OnchainCheck`); without ``[onchain] enabled`` the destination is refused with
  :data:`ONCHAIN_DISABLED_MESSAGE`.

The legacy ``toAddress`` string maps as the plugin's proxy does: a ``ckt1``/``ckb1``
prefix (case-sensitive) is a CKB address, anything else a payment request. When both
``destination`` and ``toAddress`` are present, ``destination`` wins.

Errors: :class:`DestinationInvalid` for a destination the user must fix (the quote shows
its message with ``destinationValid: false``); ``RpcError`` -32602 for malformed params;
``RpcError`` -32000 when the node cannot be asked.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from fiberlinkd.amounts import format_amount
from fiberlinkd.api.errors import RpcError, invalid_params, unavailable
from fiberlinkd.ckb.address import Script as CkbScript
from fiberlinkd.ckb.molecule import serialize_script
from fiberlinkd.fnn.errors import FnnContractError, FnnNodeError, FnnTransportError
from fiberlinkd.fnn.types import Currency, FiberNode, Invoice, NodeInfo
from fiberlinkd.fnn.types import Script as FnnScript
from fiberlinkd.ledger.withdrawals import CKB_ADDRESS, PAYMENT_REQUEST

PARSE_INVOICE_BOUND_S = 5.0
DESTINATION_MAX_CHARS = 4096  # real invoices run to hundreds of characters
ONCHAIN_DISABLED_MESSAGE = (
    "On-chain withdrawals to a CKB address are not enabled on this server; "
    "paste a Fiber invoice instead"
)


class DestinationInvalid(Exception):
    """A destination the user has to change; ``message`` is shown in the plugin's panel."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class Destination:
    kind: str  # PAYMENT_REQUEST | CKB_ADDRESS
    value: str  # the invoice string or the address


@attrs.frozen
class OnchainCheck:
    """What the on-chain payout service says about an address."""

    minimum_amount: int  # base units the recipient cell needs
    network_fee: int  # base units reserved for the transaction fee (an upper bound)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_params(f"{field} must be a non-empty string", field)
    text = value.strip()
    if len(text) > DESTINATION_MAX_CHARS:
        raise invalid_params(f"{field} is longer than {DESTINATION_MAX_CHARS} characters", field)
    return text


def destination_from_params(params: dict[str, Any]) -> Destination:
    """The destination union or the legacy ``toAddress``. Errors: -32602 naming the field."""
    raw = params.get("destination")
    if raw is not None:
        if not isinstance(raw, dict):
            raise invalid_params("destination must be an object", "destination")
        kind = raw.get("kind")
        if kind == PAYMENT_REQUEST:
            return Destination(PAYMENT_REQUEST, _text(raw.get("paymentRequest"), "paymentRequest"))
        if kind == CKB_ADDRESS:
            return Destination(CKB_ADDRESS, _text(raw.get("address"), "address"))
        raise invalid_params(
            "destination.kind must be PAYMENT_REQUEST or CKB_ADDRESS", "destination"
        )
    if "toAddress" in params:
        legacy = _text(params.get("toAddress"), "toAddress")
        if legacy.startswith(("ckt1", "ckb1")):
            return Destination(CKB_ADDRESS, legacy)
        return Destination(PAYMENT_REQUEST, legacy)
    raise invalid_params("destination is required", "destination")


def fee_cap(amount: int, max_fee_ppm: int) -> int:
    """``ceil(amount * ppm / 1e6)``: the most the payer may pay in routing fees."""
    return -(-amount * max_fee_ppm // 1_000_000)


def molecule_hex(script: FnnScript) -> str:
    """The ``0x``-hex molecule serialisation FNN prints as an invoice's ``udt_script``."""
    ckb_script = CkbScript(
        code_hash=bytes.fromhex(script.code_hash.removeprefix("0x")),
        hash_type=script.hash_type,
        args=bytes.fromhex(script.args.removeprefix("0x")),
    )
    return "0x" + serialize_script(ckb_script).hex()


def udt_script_for(info: NodeInfo, asset: str) -> str | None:
    """The molecule hex of the node's script for UDT ``asset`` (matched by name)."""
    for name, script in info.udt_scripts:
        if name.upper() == asset.upper():
            return molecule_hex(script)
    return None


async def parse_invoice_bounded(node: FiberNode, text: str) -> Invoice:
    """``parse_invoice`` within :data:`PARSE_INVOICE_BOUND_S`.

    Errors: :class:`DestinationInvalid` when the node rejects the string; -32000 when the
    node does not answer (or answers nonsense).
    """
    try:
        with trio.fail_after(PARSE_INVOICE_BOUND_S):
            return await node.parse_invoice(text)
    except FnnNodeError as exc:
        raise DestinationInvalid(f"This is not a valid Fiber invoice ({exc.message})") from None
    except (FnnTransportError, FnnContractError, trio.TooSlowError) as exc:
        raise unavailable(
            f"Service unavailable: the Fiber node did not check the invoice ({type(exc).__name__})"
        ) from None


def check_invoice(
    invoice: Invoice,
    *,
    info: NodeInfo,
    currency: Currency,
    asset: str,
    decimals: int,
    amount: int,
    now_ms: int,
    min_remaining_s: int,
) -> None:
    """Errors: :class:`DestinationInvalid` naming the first problem."""
    if invoice.currency != currency:
        raise DestinationInvalid(
            f"This invoice is for the {invoice.currency} network; this server pays on {currency}"
        )
    if invoice.amount is None:
        raise DestinationInvalid(
            f"The invoice has no amount; create one for exactly "
            f"{format_amount(amount, decimals)} {asset}"
        )
    if asset == "CKB":
        if invoice.udt_script is not None:
            raise DestinationInvalid("This invoice asks for a token, not CKB")
    else:
        expected = udt_script_for(info, asset)
        if expected is None:
            raise DestinationInvalid(f"{asset} is not available on this server's Fiber node")
        if invoice.udt_script is None or invoice.udt_script.lower() != expected:
            raise DestinationInvalid(f"This invoice is not for {asset}")
    if invoice.amount != amount:
        raise DestinationInvalid(
            f"The invoice is for {format_amount(invoice.amount, decimals)} {asset} but the "
            f"withdrawal is {format_amount(amount, decimals)} {asset}; they must match"
        )
    expires_at = invoice.expires_at_ms
    if expires_at is not None:
        if expires_at <= now_ms:
            raise DestinationInvalid("The invoice has expired; create a new one")
        if expires_at - now_ms < min_remaining_s * 1000:
            raise DestinationInvalid(
                f"The invoice expires too soon; create one valid for at least "
                f"{-(-min_remaining_s // 60)} minutes"
            )
    if invoice.payee_pubkey is None:
        raise DestinationInvalid("The invoice does not name its payee (it is not signed)")
    if invoice.payee_pubkey.lower() == info.pubkey.lower():
        raise DestinationInvalid("This invoice was issued by this server's own node")


def node_identity(info: NodeInfo | None) -> tuple[NodeInfo, Currency]:
    """Errors: -32000 until the node watcher has identified the node."""
    if info is None:
        raise RpcError(-32000, "Service unavailable: the Fiber node has not been identified yet")
    return info, info.currency
