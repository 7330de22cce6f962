"""Parameter structs of the simulated methods, parsed the way FNN's serde does.

Each method takes one positional JSON object. Fields are visited in the order the caller
wrote them (the first bad value wins); missing required fields are reported afterwards, in
declaration order; unknown fields are ignored. Failures raise :class:`ParamsError`, whose
text is serde's message (FNN answers ``-32602 Invalid params`` with it as ``data``).

:func:`echo` re-serialises a parsed struct the way FNN puts it in a ``-32000`` error's
``data``: every declared field in declaration order, absent optionals as ``null``,
integers as lowercase hex.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .. import hexcodec
from ..hexcodec import HexDecodeError, invalid_type


class ParamsError(Exception):
    """A request's params do not deserialize; ``str(exc)`` is serde's message."""


def _one_of(variants: Sequence[str]) -> str:
    quoted = [f"`{v}`" for v in variants]
    if len(quoted) == 1:
        return f"expected {quoted[0]}"
    if len(quoted) == 2:
        return f"expected {quoted[0]} or {quoted[1]}"
    return f"expected one of {', '.join(quoted)}"


def _unit_enum(variants: Sequence[str]) -> Callable[[Any], Any]:
    def parse(value: Any) -> str:
        if isinstance(value, dict):
            raise invalid_type(value, "unit variant")
        if not isinstance(value, str):
            # serde_json's deserialize_enum wants `"` or `{`; anything else: "expected value".
            raise HexDecodeError("expected value")
        if value not in variants:
            raise HexDecodeError(f"unknown variant `{value}`, {_one_of(variants)}")
        return value

    return parse


def _u64(value: Any) -> int:
    return hexcodec.decode_uint(value, hexcodec.U64_BITS)


def _u128(value: Any) -> int:
    return hexcodec.decode_uint(value, hexcodec.U128_BITS)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_type(value, "a string")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_type(value, "a boolean")
    return value


# ckb-jsonrpc-types ScriptHashType: data, type, then data1 … data127 (VM versions).
HASH_TYPES = ("data", "type", *(f"data{n}" for n in range(1, 128)))


def _h256(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_type(value, "a 0x-prefixed hex string")
    if not value.startswith("0x"):
        raise HexDecodeError("Invalid Length: a H256 shall start with 0x")
    if len(value) != 66:
        raise HexDecodeError(f"Invalid Length: a H256 has 64 hex digits, got {len(value) - 2}")
    return "0x" + hexcodec.decode_json_bytes(value).hex()


def script(value: Any) -> dict[str, str]:
    """ckb-jsonrpc-types ``Script``; returned normalised (lowercase hex)."""
    if not isinstance(value, dict):
        raise invalid_type(value, "struct Script")
    out: dict[str, str] = {}
    parsers: dict[str, Callable[[Any], str]] = {
        "code_hash": _h256,
        "hash_type": _unit_enum(HASH_TYPES),
        "args": lambda v: "0x" + hexcodec.decode_json_bytes(v).hex(),
    }
    for key, raw in value.items():
        if key in parsers:
            out[key] = parsers[key](raw)
    for key in parsers:
        if key not in out:
            raise HexDecodeError(f"missing field `{key}`")
    return {key: out[key] for key in parsers}


def _pubkeys(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise invalid_type(value, "a sequence")
    return [hexcodec.decode_pubkey(v) for v in value]


def _json_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise invalid_type(value, "a map")
    return value


def _json_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise invalid_type(value, "a sequence")
    return value


def _flex_uint(value: Any) -> int:
    """Control methods (``sim_*``) take an integer as a JSON number or as FNN hex."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return hexcodec.decode_uint(value, hexcodec.U128_BITS)


def _flex_number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise invalid_type(value, "a number")


def _ident(value: Any) -> Any:
    return value


@attrs.frozen
class Field:
    name: str
    parse: Callable[[Any], Any]
    required: bool = False
    echo: Callable[[Any], Any] = _ident


def _req(name: str, parse: Callable[[Any], Any], echo: Callable[[Any], Any] = _ident) -> Field:
    return Field(name, parse, True, echo)


def _opt(name: str, parse: Callable[[Any], Any], echo: Callable[[Any], Any] = _ident) -> Field:
    return Field(name, parse, False, echo)


_hex = hexcodec.encode_uint
CURRENCIES = ("Fibb", "Fibt", "Fibd")
PAYMENT_STATUSES = ("Created", "Inflight", "Success", "Failed")


@attrs.frozen
class Struct:
    """A Rust params struct: its serde name and fields in declaration order."""

    name: str
    fields: tuple[Field, ...]


NEW_INVOICE = Struct(
    "NewInvoiceParams",
    (
        _req("amount", _u128, _hex),
        _opt("description", _string),
        _req("currency", _unit_enum(CURRENCIES)),
        _opt("payment_preimage", hexcodec.decode_hash256),
        _opt("payment_hash", hexcodec.decode_hash256),
        _opt("expiry", _u64, _hex),
        _opt("fallback_address", _string),
        _opt("final_expiry_delta", _u64, _hex),
        _opt("udt_type_script", script),
        _opt("hash_algorithm", _unit_enum(("ckb_hash", "sha256"))),
        _opt("allow_mpp", _boolean),
        _opt("allow_trampoline_routing", _boolean),
    ),
)
PARSE_INVOICE = Struct("ParseInvoiceParams", (_req("invoice", _string),))
INVOICE = Struct("InvoiceParams", (_req("payment_hash", hexcodec.decode_hash256),))
SETTLE_INVOICE = Struct(
    "SettleInvoiceParams",
    (
        _req("payment_hash", hexcodec.decode_hash256),
        _req("payment_preimage", hexcodec.decode_hash256),
    ),
)
SEND_PAYMENT = Struct(
    "SendPaymentCommandParams",
    (
        _opt("target_pubkey", hexcodec.decode_pubkey),
        _opt("amount", _u128, _hex),
        _opt("payment_hash", hexcodec.decode_hash256),
        _opt("final_tlc_expiry_delta", _u64, _hex),
        _opt("tlc_expiry_limit", _u64, _hex),
        _opt("invoice", _string),
        _opt("timeout", _u64, _hex),
        _opt("max_fee_amount", _u128, _hex),
        _opt("max_fee_rate", _u64, _hex),
        _opt("max_parts", _u64, _hex),
        _opt("trampoline_hops", _pubkeys),
        _opt("keysend", _boolean),
        _opt("udt_type_script", script),
        _opt("allow_self_payment", _boolean),
        _opt("custom_records", _json_object),
        _opt("hop_hints", _json_list),
        _opt("dry_run", _boolean),
    ),
)
GET_PAYMENT = Struct("GetPaymentCommandParams", (_req("payment_hash", hexcodec.decode_hash256),))
LIST_PAYMENTS = Struct(
    "ListPaymentsParams",
    (
        _opt("status", _unit_enum(PAYMENT_STATUSES)),
        _opt("limit", _u64, _hex),
        _opt("after", hexcodec.decode_hash256),
    ),
)
LIST_CHANNELS = Struct(
    "ListChannelsParams",
    (
        _opt("pubkey", hexcodec.decode_pubkey),
        _opt("include_closed", _boolean),
        _opt("only_pending", _boolean),
    ),
)

# Control methods of the simulator (never FNN's).
SIM_PAY_INVOICE = Struct(
    "SimPayInvoiceParams", (_req("invoice", _string), _opt("amount", _flex_uint, _hex))
)
SIM_REMOTE_INVOICE = Struct(
    "SimRemoteInvoiceParams",
    (
        _req("amount", _flex_uint, _hex),
        _opt("currency", _unit_enum(CURRENCIES)),
        _opt("expiry", _flex_uint, _hex),
        _opt("udt_type_script", script),
        _opt("description", _string),
        _opt("payee", _unit_enum(("remote", "peer"))),
    ),
)
FAULT_KINDS = ("timeout", "http_500", "bad_json", "node_error", "drop_reply", "payment_fails")
SIM_FAULT = Struct(
    "SimFaultParams",
    (
        _req("method", _string),
        _req("kind", _unit_enum(FAULT_KINDS)),
        _opt("count", _flex_uint),
        _opt("message", _string),
        _opt("failed_error", _string),
    ),
)
SIM_SET_LIQUIDITY = Struct(
    "SimSetLiquidityParams",
    (_req("outbound", _flex_uint, _hex), _opt("inbound", _flex_uint, _hex)),
)
SIM_ADVANCE_TIME = Struct("SimAdvanceTimeParams", (_req("seconds", _flex_number),))
EMPTY = Struct("EmptyParams", ())


def parse(struct: Struct, params: Any) -> dict[str, Any]:
    """Deserialize JSON-RPC ``params`` (a one-object array) into ``{field: value|None}``.

    Errors: :class:`ParamsError` with jsonrpsee's / serde's text.
    """
    if params is None or params == []:
        raise ParamsError("No more params")
    if not isinstance(params, list):
        found = json.dumps(json.dumps(params, separators=(",", ":")))
        raise ParamsError(f"Invalid params. Expected one of '[', ']' or ',' but found {found}")
    first = params[0]
    if not isinstance(first, dict):
        raise ParamsError(str(invalid_type(first, f"struct {struct.name}")))
    by_name = {f.name: f for f in struct.fields}
    values: dict[str, Any] = {}
    for key, raw in first.items():
        field = by_name.get(key)
        if field is None:
            continue
        if raw is None and not field.required:
            values[key] = None
            continue
        try:
            values[key] = field.parse(raw)
        except HexDecodeError as exc:
            raise ParamsError(str(exc)) from None
    for field in struct.fields:
        if field.required and field.name not in values:
            raise ParamsError(f"missing field `{field.name}`")
    return {f.name: values.get(f.name) for f in struct.fields}


def echo(struct: Struct, values: Mapping[str, Any]) -> dict[str, Any]:
    """The struct as FNN re-serialises it into an error's ``data``."""
    out: dict[str, Any] = {}
    for field in struct.fields:
        value = values.get(field.name)
        out[field.name] = None if value is None else field.echo(value)
    return out
