"""The simulator's invoice strings: ``fib{b,t,d}<amount>1p…`` bech32m, signed.

The human-readable part and the checksum are FNN's (``fnn-rpc.md`` §7.1): currency in
lower case, then the amount in decimal base units, then the separator ``1``; bech32m with
no length limit; the first data group is ``1`` (``p``) for a signed invoice; the last 104
five-bit groups are a 65-byte recoverable secp256k1 signature (r ‖ s ‖ recovery id) over
``sha256(hrp ‖ body bytes)``, the body being the groups between flag and signature.

The body the simulator *writes* is its own compact encoding (a simulator need not be
byte-exact): the invoice's JSON ``data`` object, zlib-compressed. :func:`decode_invoice`
reads that and also FNN's own body (arcode-compressed molecule ``RawInvoiceData``, see
:func:`_arcode_decompress` and :func:`_fnn_raw_data`), so real FNN invoices parse too.
Defects are reported with FNN's ``InvoiceError`` texts (``Bech32 error: invalid checksum``).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from typing import Any

import attrs
import coincurve

from fiberlinkd.ckb import bech32m

from .. import hexcodec

SIGNATURE_GROUPS = 104  # 65 bytes = 520 bits = 104 five-bit groups
_HRP = re.compile(r"fib([btd])(\d*)")
_CURRENCY_BY_LETTER = {"b": "Fibb", "t": "Fibt", "d": "Fibd"}
_NOT_PRINTABLE = re.compile(r"[^!-~]")  # anything outside ASCII 33..126
_NOT_BECH32 = re.compile(f"[^{bech32m.CHARSET}]")


class InvoiceError(Exception):
    """An invoice string does not decode; ``str(exc)`` is FNN's text."""


@attrs.frozen
class DecodedInvoice:
    currency: str
    amount: int | None
    payment_hash: str
    timestamp_ms: int
    attrs: tuple[dict[str, Any], ...]
    signature: str | None  # 208 hex chars (one byte per five-bit group), as FNN prints it
    payee: str | None

    def attr(self, key: str) -> Any:
        for item in self.attrs:
            if key in item:
                return item[key]
        return None

    @property
    def expiry_s(self) -> int | None:
        value = self.attr("expiry_time")
        return None if value is None else hexcodec.decode_uint(value, hexcodec.U64_BITS)

    def is_expired(self, now_ms: int) -> bool:
        expiry = self.expiry_s
        return expiry is not None and now_ms > self.timestamp_ms + expiry * 1000

    @property
    def allows_mpp(self) -> bool:
        return "BASIC_MPP_OPTIONAL" in (self.attr("feature") or ())

    def to_json(self) -> dict[str, Any]:
        """FNN's ``CkbInvoice`` JSON (§7.2)."""
        return {
            "currency": self.currency,
            "amount": None if self.amount is None else hexcodec.encode_uint(self.amount),
            "signature": self.signature,
            "data": {
                "timestamp": hexcodec.encode_uint(self.timestamp_ms),
                "payment_hash": self.payment_hash,
                "attrs": [dict(a) for a in self.attrs],
            },
        }


def _hrp(currency: str, amount: int | None) -> str:
    return currency.lower() + ("" if amount is None else str(amount))


def _signing_hash(hrp: str, body5: list[int]) -> bytes:
    body_bytes = bytes(bech32m.convertbits(body5, 5, 8, pad=True))
    return hashlib.sha256(hrp.encode() + body_bytes).digest()


def encode_invoice(
    *,
    currency: str,
    amount: int | None,
    payment_hash: str,
    timestamp_ms: int,
    attrs_list: list[dict[str, Any]],
    key: coincurve.PrivateKey,
) -> tuple[str, DecodedInvoice]:
    """Sign and encode an invoice; returns ``(invoice_address, decoded form)``."""
    hrp = _hrp(currency, amount)
    data = {
        "timestamp": hexcodec.encode_uint(timestamp_ms),
        "payment_hash": payment_hash,
        "attrs": attrs_list,
    }
    payload = zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 9)
    body5 = bech32m.to_data5(payload)
    data5 = [1, *body5]
    signature = key.sign_recoverable(_signing_hash(hrp, body5), hasher=None)
    sig5 = bech32m.convertbits(signature, 8, 5, pad=True)
    groups = data5 + sig5
    address = bech32m.encode(hrp, groups, bech32m.Encoding.BECH32M)
    # decode_invoice(address) would find exactly this: encode() succeeded, so the string passes
    # every bech32 check and decodes to (hrp lower-cased, groups, BECH32M). Skip re-checking.
    return address, _decode_groups(hrp.lower(), groups)


def _bech32_checks(s: str) -> None:
    """The ``bech32`` crate's errors, in its order, with its texts."""
    if s.lower() != s and s.upper() != s:
        raise InvoiceError("Bech32 error: mixed-case strings not allowed")
    pos = s.rfind("1")
    if pos < 0:
        raise InvoiceError('Bech32 error: missing human-readable separator, "1"')
    if pos == 0 or len(s) - pos - 1 < 6:
        raise InvoiceError("Bech32 error: invalid length")
    bad = _NOT_PRINTABLE.search(s) or _NOT_BECH32.search(s[pos + 1 :].lower())
    if bad:
        raise InvoiceError(f"Bech32 error: invalid character (code={ord(bad.group())})")


def decode_invoice(s: str) -> DecodedInvoice:
    """Decode and verify an invoice string (upper case accepted).

    Errors: :class:`InvoiceError` with FNN's text.
    """
    _bech32_checks(s)
    try:
        hrp, data5, spec = bech32m.decode(s)
    except bech32m.Bech32Error:
        raise InvoiceError("Bech32 error: invalid checksum") from None
    if spec is not bech32m.Encoding.BECH32M:
        raise InvoiceError("Bech32 error: invalid checksum")
    return _decode_groups(hrp, data5)


def _decode_groups(hrp: str, data5: list[int]) -> DecodedInvoice:
    """``decode_invoice`` after the bech32m layer: ``hrp`` lower-case, checksum removed."""
    if len(data5) < SIGNATURE_GROUPS:  # FNN checks the length before the HRP
        raise InvoiceError("Too short data part")
    match = _HRP.fullmatch(hrp)
    if match is None:
        raise InvoiceError(f"Parsing failed with malformed HRP: {hrp}")
    currency = _CURRENCY_BY_LETTER[match.group(1)]
    amount = int(match.group(2)) if match.group(2) else None
    if amount is not None and amount >> 128:
        raise InvoiceError(f"Parsing failed with malformed HRP: {hrp}")
    signed = data5[0] == 1
    if signed and len(data5) < 1 + SIGNATURE_GROUPS:
        raise InvoiceError("Too short data part")
    body5 = data5[1 : len(data5) - SIGNATURE_GROUPS] if signed else data5[1:]
    body = _groups_to_bytes(body5)
    try:
        data = json.loads(zlib.decompress(body))
        timestamp_ms = hexcodec.decode_uint(data["timestamp"])
        payment_hash = hexcodec.decode_hash256(data["payment_hash"])
        attrs_list = data["attrs"]
    except (zlib.error, ValueError, KeyError, TypeError):
        timestamp_ms, payment_hash, attrs_list = _fnn_raw_data(body)  # a real FNN invoice
    if not isinstance(attrs_list, list) or not all(
        isinstance(a, dict) and len(a) == 1 for a in attrs_list
    ):
        raise InvoiceError("Molecule error: invalid invoice data")
    payee = next((a["payee_public_key"] for a in attrs_list if "payee_public_key" in a), None)
    signature_hex: str | None = None
    if signed:
        sig5 = data5[len(data5) - SIGNATURE_GROUPS :]
        signature_hex = bytes(sig5).hex()  # groups are 0..31
        try:
            sig = bytes(bech32m.convertbits(sig5, 5, 8, pad=False))
            recovered = coincurve.PublicKey.from_signature_and_message(
                sig, _signing_hash(hrp, body5), hasher=None
            ).format(compressed=True)
        except (bech32m.Bech32Error, ValueError) as exc:
            raise InvoiceError("Invalid signature") from exc
        if payee is not None and recovered.hex() != payee:
            raise InvoiceError("Invalid signature")
        payee = payee or recovered.hex()
    return DecodedInvoice(
        currency=currency,
        amount=amount,
        payment_hash=payment_hash,
        timestamp_ms=timestamp_ms,
        attrs=tuple(attrs_list),
        signature=signature_hex,
        payee=payee,
    )


def molecule_script(script: dict[str, str]) -> str:
    """A ckb ``Script`` molecule-serialised, as FNN prints the ``udt_script`` attr."""
    code_hash = bytes.fromhex(script["code_hash"][2:])
    name = script["hash_type"]
    hash_type = 1 if name == "type" else 0 if name == "data" else int(name[4:]) << 1
    args = bytes.fromhex(script["args"][2:])
    fields = [code_hash, bytes([hash_type]), len(args).to_bytes(4, "little") + args]
    header = 4 * (1 + len(fields))
    offsets, total = [], header
    for f in fields:
        offsets.append(total)
        total += len(f)
    out = total.to_bytes(4, "little") + b"".join(o.to_bytes(4, "little") for o in offsets)
    return "0x" + (out + b"".join(fields)).hex()


# --- FNN's own body: arcode-compressed molecule RawInvoiceData ------------------------------

ARCODE_PRECISION_BITS = 48
_ARCODE_SYMBOLS = 257  # 8-bit symbols plus an end-of-data symbol (the last one)
_ARCODE_EOF = 256
# Invoice ``feature`` bits, as FNN names them (bit n of the little-endian bit set).
FEATURE_BITS = (
    "GOSSIP_QUERIES_REQUIRED",
    "GOSSIP_QUERIES_OPTIONAL",
    "BASIC_MPP_REQUIRED",
    "BASIC_MPP_OPTIONAL",
    "TRAMPOLINE_ROUTING_REQUIRED",
    "TRAMPOLINE_ROUTING_OPTIONAL",
)


def _groups_to_bytes(body5: list[int]) -> bytes:
    """5-bit groups → bytes, dropping the trailing padding bits (``from_base32``)."""
    try:
        padded = bech32m.convertbits(body5, 5, 8, pad=True)  # fast for 0..31 groups
    except (bech32m.Bech32Error, TypeError):
        pass  # not 5-bit groups: the loop below, as before
    else:
        return bytes(padded[: len(body5) * 5 // 8])
    acc = 0
    for g in body5:
        acc = (acc << 5) | g
    nbits = len(body5) * 5
    return (acc >> (nbits % 8)).to_bytes(nbits // 8, "big")


def _arcode_decompress(data: bytes) -> bytes:
    """Inverse of FNN's ``ar_encode``: an adaptive order-0 arithmetic code.

    The model starts with count 1 for each of 256 byte values plus an end symbol and adds 1
    to a symbol's count after coding it; intervals are computed in IEEE doubles on a
    48-bit range with the classic half/quarter renormalisation; bits are read MSB first and
    reading past the end yields zeros (at most ``precision`` of them).

    Errors: :class:`InvoiceError` when the stream does not decode.
    """
    precision = ARCODE_PRECISION_BITS
    cum = list(range(_ARCODE_SYMBOLS + 1))  # cum[s] = sum of counts below s
    total = _ARCODE_SYMBOLS
    high, low = 1 << precision, 0
    half, quarter = high // 2, high // 4
    three_quarters = quarter * 3
    bit_count = len(data) * 8
    position = 0
    spare_zeros = precision

    def next_bit() -> int:
        nonlocal position, spare_zeros
        if position < bit_count:
            bit = (data[position >> 3] >> (7 - (position & 7))) & 1
            position += 1
            return bit
        if spare_zeros == 0:
            raise InvoiceError("Arcode error: unexpected end of data")
        spare_zeros -= 1
        return 0

    x = 0
    for _ in range(precision):
        x = (x << 1) | next_bit()
    out = bytearray()
    while True:
        width = high - low
        lo_sym, hi_sym = 0, _ARCODE_SYMBOLS
        while True:
            if lo_sym > hi_sym:
                raise InvoiceError("Arcode error: no symbol matches")
            mid = (lo_sym + hi_sym) // 2
            if mid >= _ARCODE_SYMBOLS:
                raise InvoiceError("Arcode error: no symbol matches")
            sym_low = low + int(width * (cum[mid] / total))
            sym_high = low + int(width * (cum[mid + 1] / total))
            if sym_low <= x < sym_high:
                break
            if x >= sym_high:
                lo_sym = mid + 1
            else:
                hi_sym = mid - 1
        if mid == _ARCODE_EOF:
            return bytes(out)
        low, high = sym_low, sym_high
        while high < half or low > half:
            if high < half:
                low, high = low << 1, high << 1
                x = (x << 1) | next_bit()
            else:
                low, high = (low - half) << 1, (high - half) << 1
                x = ((x - half) << 1) | next_bit()
        while low > quarter and high < three_quarters:
            low, high = (low - quarter) << 1, (high - quarter) << 1
            x = ((x - quarter) << 1) | next_bit()
        out.append(mid)
        total += 1
        for j in range(mid + 1, _ARCODE_SYMBOLS + 1):
            cum[j] += 1


def _u32(raw: bytes, offset: int) -> int:
    if offset + 4 > len(raw):
        raise InvoiceError("Molecule error: invalid invoice data")
    return int.from_bytes(raw[offset : offset + 4], "little")


def _molecule_items(raw: bytes) -> list[bytes]:
    """The fields of a molecule table, or the items of a dynvec (same layout)."""
    total = _u32(raw, 0)
    if total != len(raw):
        raise InvoiceError("Molecule error: invalid invoice data")
    if total == 4:
        return []
    count = _u32(raw, 4) // 4 - 1
    offsets = [_u32(raw, 4 + 4 * i) for i in range(count)] + [total]
    if offsets != sorted(offsets) or offsets[0] != 4 + 4 * count:
        raise InvoiceError("Molecule error: invalid invoice data")
    return [raw[offsets[i] : offsets[i + 1]] for i in range(count)]


def _molecule_bytes(raw: bytes) -> bytes:
    """A ``Bytes`` fixvec: u32 length then the bytes."""
    length = _u32(raw, 0)
    if len(raw) != 4 + length:
        raise InvoiceError("Molecule error: invalid invoice data")
    return raw[4:]


def _u64_le(raw: bytes) -> int:
    if len(raw) != 8:
        raise InvoiceError("Molecule error: invalid invoice data")
    return int.from_bytes(raw, "little")


def _table_bytes(raw: bytes) -> bytes:
    (value,) = _molecule_items(raw)
    return _molecule_bytes(value)


def _fnn_attr(item_id: int, raw: bytes) -> dict[str, Any]:
    hexu = hexcodec.encode_uint
    if item_id == 0:
        return {"expiry_time": hexu(_u64_le(raw))}
    if item_id == 1:
        return {"description": _table_bytes(raw).decode()}
    if item_id == 2:
        return {"final_htlc_timeout": hexu(_u64_le(raw))}
    if item_id == 3:
        return {"final_htlc_minimum_expiry_delta": hexu(_u64_le(raw))}
    if item_id == 4:
        return {"fallback_addr": _table_bytes(raw).decode()}
    if item_id == 5:
        bits = int.from_bytes(_table_bytes(raw), "little")
        names = [n for i, n in enumerate(FEATURE_BITS) if bits >> i & 1]
        names += [f"UNKNOWN_FEATURE_{i}" for i in range(len(FEATURE_BITS), bits.bit_length())
                  if bits >> i & 1]  # fmt: skip
        return {"feature": names}
    if item_id == 6:
        (script,) = _molecule_items(raw)
        return {"udt_script": "0x" + script.hex()}
    if item_id == 7:
        return {"payee_public_key": _table_bytes(raw).hex()}
    if item_id == 8:
        if raw not in (b"\x00", b"\x01"):
            raise InvoiceError("Molecule error: invalid invoice data")
        return {"hash_algorithm": "sha256" if raw == b"\x01" else "ckb_hash"}
    if item_id == 9:
        if len(raw) != 32:
            raise InvoiceError("Molecule error: invalid invoice data")
        return {"payment_secret": "0x" + raw.hex()}
    raise InvoiceError("Molecule error: invalid invoice data")


def _fnn_raw_data(body: bytes) -> tuple[int, str, list[dict[str, Any]]]:
    """Decode FNN's body: arcode → molecule ``RawInvoiceData {timestamp, payment_hash,
    attrs: vector<InvoiceAttr union>}``; union ids in schema order (expiry_time 0 …
    payment_secret 9)."""
    try:
        timestamp, payment_hash, attrs_vec = _molecule_items(_arcode_decompress(body))
        if len(timestamp) != 16 or len(payment_hash) != 32:
            raise InvoiceError("Molecule error: invalid invoice data")
        attrs_list = [_fnn_attr(_u32(item, 0), item[4:]) for item in _molecule_items(attrs_vec)]
    except (ValueError, UnicodeDecodeError):
        raise InvoiceError("Molecule error: invalid invoice data") from None
    return int.from_bytes(timestamp, "little"), "0x" + payment_hash.hex(), attrs_list
