"""``FnnClient``: FNN's JSON-RPC over an injected ``httpx.AsyncClient``.

Wire rules (``fnn-rpc.md`` §1-§2): one POST per call to the node's URL (concurrent
``new_invoice`` or ``get_invoice`` calls share one POST as a JSON-RPC batch), a fresh
integer ``id`` on every request, params as a one-object array (``[{}]`` when every field is
optional, ``[]`` for ``node_info``), an optional ``Authorization: Bearer <token>``.

Error mapping (see :mod:`fiberlinkd.fnn.errors` for the tree):

- no complete reply within ``call_timeout_s`` (``trio.fail_after``) or an httpx timeout
  → :class:`FnnTimeout`;
- any other httpx transport failure → :class:`FnnConnectError`. This includes a connection
  that broke *after* the request was sent (the reply was lost): as for every transport
  error, the call's effect on the node is unknown;
- HTTP status other than 200 → :class:`FnnHttpError`;
- a JSON-RPC ``error`` object → :class:`FnnNodeError` (code, message, data);
- a reply that is not JSON-RPC or whose ``result`` does not decode strictly (bad hex,
  unknown status, missing key) → :class:`FnnContractError`.

Decoding is explicit: one ``*_from_rpc`` function per result type, building the frozen
models of :mod:`fiberlinkd.fnn.types`. v0.6/0.7 spellings (``node_id``, ``peer_id``,
SCREAMING_SNAKE channel states) are accepted (§12).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import outcome
import trio
from outcome import Outcome

from fiberlinkd.groupcall import GroupCall

from . import hexcodec
from .errors import (
    FnnConnectError,
    FnnContractError,
    FnnError,
    FnnHttpError,
    FnnNodeError,
    FnnTimeout,
)
from .types import (
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

DEFAULT_CALL_TIMEOUT_S = 30.0
# Calls made by many tasks at once (tips being created, invoices being checked): concurrent
# calls of one method share one POST as a JSON-RPC batch (fnn-rpc.md §1), at most MAX_BATCH.
BATCHED_METHODS = ("new_invoice", "get_invoice")
MAX_BATCH = 32

_T = TypeVar("_T")


# --- decoding ---------------------------------------------------------------------------


class _Bad(Exception):
    """Internal: a reply field does not decode. Turned into FnnContractError at the edge."""


def _field(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise _Bad(f"missing key {key!r}")
    return obj[key]


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not an object: {value!r:.100}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string: {value!r:.100}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{what} is not a boolean: {value!r:.100}")
    return value


def _uint(value: Any, what: str, bits: int = hexcodec.U128_BITS) -> int:
    try:
        return hexcodec.decode_uint(value, bits)
    except hexcodec.HexDecodeError as exc:
        raise _Bad(f"{what}: {exc}") from None


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise _Bad(f"{what} is not a 0x-prefixed Hash256: {value!r:.100}")
    try:
        return hexcodec.decode_hash256(value)
    except hexcodec.HexDecodeError as exc:
        raise _Bad(f"{what}: {exc}") from None


def _pubkey(value: Any, what: str) -> str:
    try:
        return hexcodec.decode_pubkey(value)
    except hexcodec.HexDecodeError as exc:
        raise _Bad(f"{what}: {exc}") from None


def _enum(cls: Callable[[str], _T], value: Any, what: str) -> _T:
    try:
        return cls(_str(value, what))
    except ValueError:
        raise _Bad(f"{what}: unknown value {value!r:.100}") from None


def script_from_rpc(obj: Any) -> Script:
    o = _obj(obj, "script")
    return Script(
        code_hash=_str(_field(o, "code_hash"), "code_hash"),
        hash_type=_str(_field(o, "hash_type"), "hash_type"),
        args=_str(_field(o, "args"), "args"),
    )


def script_to_rpc(script: Script) -> dict[str, str]:
    return {"code_hash": script.code_hash, "hash_type": script.hash_type, "args": script.args}


def node_info_from_rpc(obj: Any) -> NodeInfo:
    o = _obj(obj, "node_info")
    key = "pubkey" if "pubkey" in o else "node_id"  # node_id before 0.8 (§12)
    udts: list[tuple[str, Script]] = []
    for item in o.get("udt_cfg_infos") or ():
        u = _obj(item, "udt_cfg_info")
        udts.append((_str(_field(u, "name"), "udt name"), script_from_rpc(_field(u, "script"))))
    return NodeInfo(
        version=_str(_field(o, "version"), "version"),
        pubkey=_pubkey(_field(o, key), key),
        chain_hash=_hash(_field(o, "chain_hash"), "chain_hash"),
        node_name=_opt_str(o.get("node_name"), "node_name"),
        udt_scripts=tuple(udts),
    )


def invoice_from_rpc(obj: Any) -> Invoice:
    """A ``CkbInvoice`` JSON object (``fnn-rpc.md`` §7.2)."""
    o = _obj(obj, "invoice")
    data = _obj(_field(o, "data"), "invoice.data")
    amount_raw = o.get("amount")
    expiry_s: int | None = None
    description: str | None = None
    payee: str | None = None
    udt_script: str | None = None
    attrs_list = _field(data, "attrs")
    if not isinstance(attrs_list, list):
        raise _Bad("invoice.data.attrs is not a list")
    for attr in attrs_list:
        a = _obj(attr, "invoice attr")
        for key, value in a.items():
            if key == "expiry_time":
                expiry_s = _uint(value, "expiry_time", hexcodec.U64_BITS)
            elif key == "description":
                description = _str(value, "description")
            elif key == "payee_public_key":
                payee = _pubkey(value, "payee_public_key")
            elif key == "udt_script":
                udt_script = _str(value, "udt_script")
    return Invoice(
        currency=_enum(Currency, _field(o, "currency"), "currency"),
        amount=None if amount_raw is None else _uint(amount_raw, "amount"),
        payment_hash=_hash(_field(data, "payment_hash"), "payment_hash"),
        timestamp_ms=_uint(_field(data, "timestamp"), "timestamp"),
        expiry_s=expiry_s,
        description=description,
        payee_pubkey=payee,
        udt_script=udt_script,
    )


def new_invoice_result_from_rpc(obj: Any) -> NewInvoiceResult:
    o = _obj(obj, "new_invoice result")
    return NewInvoiceResult(
        invoice_address=_str(_field(o, "invoice_address"), "invoice_address"),
        invoice=invoice_from_rpc(_field(o, "invoice")),
    )


def invoice_info_from_rpc(obj: Any) -> InvoiceInfo:
    o = _obj(obj, "invoice result")
    return InvoiceInfo(
        invoice_address=_str(_field(o, "invoice_address"), "invoice_address"),
        invoice=invoice_from_rpc(_field(o, "invoice")),
        status=_enum(InvoiceStatus, _field(o, "status"), "invoice status"),
    )


def payment_from_rpc(obj: Any) -> Payment:
    """A ``GetPaymentCommandResult`` (``fnn-rpc.md`` §8.2)."""
    o = _obj(obj, "payment")
    return Payment(
        payment_hash=_hash(_field(o, "payment_hash"), "payment_hash"),
        status=_enum(PaymentStatus, _field(o, "status"), "payment status"),
        created_at_ms=_uint(_field(o, "created_at"), "created_at", hexcodec.U64_BITS),
        last_updated_at_ms=_uint(
            _field(o, "last_updated_at"), "last_updated_at", hexcodec.U64_BITS
        ),
        failed_error=_opt_str(o.get("failed_error"), "failed_error"),
        fee=_uint(_field(o, "fee"), "fee"),
    )


def payment_page_from_rpc(obj: Any) -> PaymentPage:
    o = _obj(obj, "list_payments result")
    items = _field(o, "payments")
    if not isinstance(items, list):
        raise _Bad("payments is not a list")
    cursor = o.get("last_cursor")
    return PaymentPage(
        payments=tuple(payment_from_rpc(p) for p in items),
        last_cursor=None if cursor is None else _hash(cursor, "last_cursor"),
    )


def _pascal_state_name(name: str) -> str:
    """``CHANNEL_READY`` (0.6/0.7) → ``ChannelReady`` (0.8); PascalCase passes through."""
    if "_" in name or name.isupper():
        return "".join(part.capitalize() for part in name.split("_") if part)
    return name


def channel_from_rpc(obj: Any) -> Channel:
    """A ``Channel`` (``fnn-rpc.md`` §9.1); ``peer_id`` (0.6/0.7) is kept as is."""
    o = _obj(obj, "channel")
    if "pubkey" in o:
        counterparty = _pubkey(o["pubkey"], "pubkey")
    else:
        counterparty = _str(_field(o, "peer_id"), "peer_id")
    state = _obj(_field(o, "state"), "channel state")
    udt = o.get("funding_udt_type_script")
    return Channel(
        channel_id=_hash(_field(o, "channel_id"), "channel_id"),
        pubkey=counterparty,
        is_public=_bool(_field(o, "is_public"), "is_public"),
        state_name=_pascal_state_name(_str(_field(state, "state_name"), "state_name")),
        funding_udt_type_script=None if udt is None else script_from_rpc(udt),
        local_balance=_uint(_field(o, "local_balance"), "local_balance"),
        offered_tlc_balance=_uint(_field(o, "offered_tlc_balance"), "offered_tlc_balance"),
        remote_balance=_uint(_field(o, "remote_balance"), "remote_balance"),
        received_tlc_balance=_uint(_field(o, "received_tlc_balance"), "received_tlc_balance"),
        enabled=_bool(o.get("enabled", True), "enabled"),
    )


def channels_from_rpc(obj: Any) -> tuple[Channel, ...]:
    o = _obj(obj, "list_channels result")
    items = _field(o, "channels")
    if not isinstance(items, list):
        raise _Bad("channels is not a list")
    return tuple(channel_from_rpc(c) for c in items)


def _empty_object(obj: Any) -> None:
    _obj(obj, "settle_invoice result")


# --- the client -------------------------------------------------------------------------


@attrs.define
class FnnClient:
    """JSON-RPC client for one FNN node; implements :class:`~fiberlinkd.fnn.types.FiberNode`.

    ``http`` is owned by the caller (lifetimes nest: open it outside the tasks that use this
    client). ``token`` is the biscuit bearer token, already read from its file.
    ``call_timeout_s`` bounds each POST end to end. A ``new_invoice`` or ``get_invoice`` call
    may first wait for the batch already in flight, so a caller that needs a hard bound
    wraps the call in its own ``trio.fail_after`` (every caller in fiberlinkd does).

    Errors: see the module docstring. Cancellation: a cancelled call may or may not have
    reached the node.
    """

    http: httpx.AsyncClient
    url: str
    token: str | None = None
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _groups: dict[str, GroupCall[dict[str, Any], Any]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._groups = {
            method: GroupCall(
                functools.partial(self._batch_of, method), max_batch=MAX_BATCH, name=method
            )
            for method in BATCHED_METHODS
        }

    async def call(self, method: str, params: list[Any]) -> Any:
        """One raw JSON-RPC call; returns the ``result`` member as parsed JSON."""
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        return _unwrap(method, request_id, await self._exchange(method, body))

    async def call_batch(self, method: str, params_list: list[list[Any]]) -> list[Outcome[Any]]:
        """Several calls of ``method`` as one JSON-RPC batch (``fnn-rpc.md`` §1).

        One POST under one ``call_timeout_s`` bound; each entry gets its own result or
        error. A transport, HTTP or framing failure fails every entry. A single call is
        sent as a plain request, exactly as :meth:`call` would.
        """
        if len(params_list) == 1:
            try:
                return [outcome.Value(await self.call(method, params_list[0]))]
            except Exception as exc:  # not BaseException: cancellation must propagate
                return [outcome.Error(exc)]
        ids = [next(self._ids) for _ in params_list]
        body = [
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            for request_id, params in zip(ids, params_list, strict=True)
        ]
        try:
            reply = await self._exchange(f"{method} (batch of {len(ids)})", body)
            if not isinstance(reply, list):  # a batch refused as a whole: one error object
                _unwrap(method, None, reply)
                raise FnnContractError(f"{method}: batch reply is not an array: {reply!r:.200}")
        except FnnError as exc:
            return [outcome.Error(copy.copy(exc)) for _ in ids]
        by_id = {r["id"]: r for r in reply if isinstance(r, dict) and isinstance(r.get("id"), int)}
        results: list[Outcome[Any]] = []
        for request_id in ids:
            entry = by_id.get(request_id)
            if entry is None:
                missing = FnnContractError(f"{method}: batch reply lacks id {request_id}")
                results.append(outcome.Error(missing))
            else:
                results.append(outcome.capture(_unwrap, method, request_id, entry))
        return results

    async def _exchange(self, label: str, body: Any) -> Any:
        """POST ``body`` and return the parsed JSON reply (errors: see the module docstring)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with trio.fail_after(self.call_timeout_s):
                response = await self.http.post(
                    self.url, content=json.dumps(body).encode(), headers=headers
                )
        except trio.TooSlowError:
            raise FnnTimeout(f"{label}: no reply within {self.call_timeout_s} s") from None
        except httpx.TimeoutException as exc:
            raise FnnTimeout(f"{label}: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise FnnConnectError(f"{label}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise FnnHttpError(response.status_code, response.text)
        try:
            return json.loads(response.content)
        except ValueError:
            raise FnnContractError(
                f"{label}: reply is not JSON: {response.content[:200]!r}"
            ) from None

    async def _batch_of(self, method: str, params: list[dict[str, Any]]) -> list[Outcome[Any]]:
        return await self.call_batch(method, [[p] for p in params])

    async def _batched(
        self, method: str, params: dict[str, Any], decode: Callable[[Any], _T]
    ) -> _T:
        """Like :meth:`_typed`, but concurrent calls of ``method`` share one batch."""
        result = await self._groups[method](params)
        try:
            return decode(result)
        except _Bad as exc:
            raise FnnContractError(f"{method}: {exc}") from None

    async def _typed(self, method: str, params: list[Any], decode: Callable[[Any], _T]) -> _T:
        result = await self.call(method, params)
        try:
            return decode(result)
        except _Bad as exc:
            raise FnnContractError(f"{method}: {exc}") from None

    async def node_info(self) -> NodeInfo:
        return await self._typed("node_info", [], node_info_from_rpc)

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
        hash_algorithm: str | None = None,
        final_expiry_delta_ms: int | None = None,
        allow_mpp: bool | None = None,
    ) -> NewInvoiceResult:
        params: dict[str, Any] = {
            "amount": hexcodec.encode_uint(amount),
            "currency": str(currency),
        }
        if description is not None:
            params["description"] = description
        if expiry_s is not None:
            params["expiry"] = hexcodec.encode_uint(expiry_s)
        if payment_preimage is not None:
            params["payment_preimage"] = payment_preimage
        if payment_hash is not None:
            params["payment_hash"] = payment_hash
        if udt_type_script is not None:
            params["udt_type_script"] = script_to_rpc(udt_type_script)
        if hash_algorithm is not None:
            params["hash_algorithm"] = hash_algorithm
        if final_expiry_delta_ms is not None:
            params["final_expiry_delta"] = hexcodec.encode_uint(final_expiry_delta_ms)
        if allow_mpp is not None:
            params["allow_mpp"] = allow_mpp
        return await self._batched("new_invoice", params, new_invoice_result_from_rpc)

    async def parse_invoice(self, invoice: str) -> Invoice:
        def decode(obj: Any) -> Invoice:
            return invoice_from_rpc(_field(_obj(obj, "parse_invoice result"), "invoice"))

        return await self._typed("parse_invoice", [{"invoice": invoice}], decode)

    async def get_invoice(self, payment_hash: str) -> InvoiceInfo:
        params = {"payment_hash": payment_hash}
        return await self._batched("get_invoice", params, invoice_info_from_rpc)

    async def cancel_invoice(self, payment_hash: str) -> InvoiceInfo:
        params = [{"payment_hash": payment_hash}]
        return await self._typed("cancel_invoice", params, invoice_info_from_rpc)

    async def settle_invoice(self, payment_hash: str, payment_preimage: str) -> None:
        """Settle a hold invoice (status ``Received``) with its preimage."""
        params = [{"payment_hash": payment_hash, "payment_preimage": payment_preimage}]
        await self._typed("settle_invoice", params, _empty_object)

    async def send_payment(
        self,
        *,
        invoice: str,
        max_fee_amount: int | None = None,
        dry_run: bool = False,
    ) -> Payment:
        """Pay ``invoice``. ``max_fee_amount`` caps the fee (FNN also caps at 0.5 %).

        Errors: a transport error means the payment's fate is *unknown*: ask ``get_payment``.
        """
        params: dict[str, Any] = {"invoice": invoice}
        if max_fee_amount is not None:
            params["max_fee_amount"] = hexcodec.encode_uint(max_fee_amount)
        if dry_run:
            params["dry_run"] = True
        return await self._typed("send_payment", [params], payment_from_rpc)

    async def get_payment(self, payment_hash: str) -> Payment:
        params = [{"payment_hash": payment_hash}]
        return await self._typed("get_payment", params, payment_from_rpc)

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage:
        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = str(status)
        if limit is not None:
            params["limit"] = hexcodec.encode_uint(limit)
        if after is not None:
            params["after"] = after
        return await self._typed("list_payments", [params], payment_page_from_rpc)

    async def list_channels(self) -> tuple[Channel, ...]:
        return await self._typed("list_channels", [{}], channels_from_rpc)


def _unwrap(method: str, request_id: int | None, reply: Any) -> Any:
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
        raise FnnContractError(f"{method}: not a JSON-RPC 2.0 reply: {reply!r:.200}")
    if "error" in reply:
        error = reply["error"]
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), int)
            or isinstance(error.get("code"), bool)
            or not isinstance(error.get("message"), str)
        ):
            raise FnnContractError(f"{method}: malformed error object: {error!r:.200}")
        raise FnnNodeError(error["code"], error["message"], error.get("data"))
    if reply.get("id") != request_id:
        raise FnnContractError(f"{method}: reply id {reply.get('id')!r} != {request_id}")
    if "result" not in reply:
        raise FnnContractError(f"{method}: reply has neither result nor error")
    return reply["result"]
