"""Errors raised by the FNN client.

The tree, and what money code may conclude from each branch::

    FnnError                      base; never raised itself
    ├── FnnTransportError         the call may or may not have reached the node
    │   ├── FnnConnectError       connection refused, or broke before the reply (sent or not)
    │   ├── FnnTimeout            no complete reply within the bound
    │   └── FnnHttpError          HTTP status >= 500 (or another non-200), body not JSON-RPC
    ├── FnnNodeError              the node answered with a JSON-RPC error (code, message, data)
    └── FnnContractError          the node answered, but the reply does not parse as FNN's
                                  documented shape (wrong hex, unknown status, missing field)

A transport error after ``send_payment`` means *unknown*, never *failed*: only
``get_payment`` answering "Payment session not found" proves nothing was sent.

The ``is_*`` helpers recognise the node answers that money code branches on. They match
FNN 0.6-0.8's exact texts (``fnn-rpc.md`` §4.2).
"""

from __future__ import annotations

from typing import Any


class FnnError(Exception):
    """Base of every error the FNN client raises."""


class FnnTransportError(FnnError):
    """The request may not have reached the node, or its reply was lost."""


class FnnConnectError(FnnTransportError):
    """The connection failed or broke. The request may still have reached the node."""


class FnnTimeout(FnnTransportError):
    """No complete reply arrived within the client's bound."""


class FnnHttpError(FnnTransportError):
    """The node answered with an HTTP status other than 200."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"FNN answered HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body

    def __reduce__(self) -> tuple[type[FnnHttpError], tuple[int, str]]:  # copy and pickle
        return type(self), (self.status, self.body)


class FnnNodeError(FnnError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"FNN error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def __reduce__(self) -> tuple[type[FnnNodeError], tuple[int, str, Any]]:  # copy and pickle
        return type(self), (self.code, self.message, self.data)


class FnnContractError(FnnError):
    """The node's reply does not match FNN's documented shape."""


UNAUTHORIZED_CODE = -32999
INVALID_PARAMS_CODE = -32602
BUSINESS_ERROR_CODE = -32000


def is_invoice_not_found(exc: BaseException) -> bool:
    """get_invoice / cancel_invoice / settle_invoice on a hash the node never issued."""
    return isinstance(exc, FnnNodeError) and exc.message.lower() == "invoice not found"


def is_invoice_already_exists(exc: BaseException) -> bool:
    """new_invoice with a payment hash (or preimage) the node already holds."""
    return isinstance(exc, FnnNodeError) and exc.message == "invoice already exists"


def is_payment_session_not_found(exc: BaseException) -> bool:
    """get_payment for a hash this node never sent: proof that nothing was paid."""
    return isinstance(exc, FnnNodeError) and "Payment session not found" in exc.message


def is_payment_session_exists(exc: BaseException) -> bool:
    """send_payment for a hash whose session is Created/Inflight/Success (not Failed)."""
    return isinstance(exc, FnnNodeError) and "Payment session already exists" in exc.message


def is_unknown_method(exc: BaseException) -> bool:
    """FNN answers an unknown method (e.g. list_payments before 0.8) with -32999."""
    return isinstance(exc, FnnNodeError) and exc.code == UNAUTHORIZED_CODE


def is_invoice_not_cancellable(exc: BaseException) -> bool:
    """cancel_invoice on a Paid or Cancelled invoice; the message names the status."""
    return isinstance(exc, FnnNodeError) and exc.message.startswith(
        "invoice can not be canceled, current status:"
    )
