"""JSON-RPC errors the plugin's API answers with (always HTTP 200, see the wire contract).

Domain code raises :class:`RpcError` (or a subclass); the envelope layer turns it into
``{"jsonrpc": "2.0", "id": …, "error": {"code", "message"[, "data"]}}``.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVICE_UNAVAILABLE = -32000  # the node is unreachable; the plugin treats it as transient
UNAUTHORIZED = -32001
TIP_NOT_FOUND = -32004
RATE_LIMITED = -32005


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def invalid_params(message: str, field: str | None = None) -> RpcError:
    """-32602 with ``data`` naming the field, e.g. ``{"field": "amount"}``."""
    return RpcError(INVALID_PARAMS, message, {"field": field} if field else None)


def unavailable(message: str = "Service unavailable: the Fiber node did not answer") -> RpcError:
    return RpcError(SERVICE_UNAVAILABLE, message)
