"""The table/big-int bech32m primitives against the plain loops they replaced.

The reference functions below are the previous implementations, kept verbatim: the fast ones
must give the same results and raise the same exception types with the same messages, on
valid and invalid input alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import coincurve
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fiberlinkd.ckb import bech32m
from fiberlinkd.fnn import hexcodec
from fiberlinkd.fnn.sim import invoices

_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHARSET_REVERSE = {c: i for i, c in enumerate(bech32m.CHARSET)}


def ref_polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def ref_convertbits(data: Iterable[int], frombits: int, tobits: int, *, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise bech32m.Bech32Error(f"value {value} does not fit in {frombits} bits")
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise bech32m.Bech32Error("invalid padding in data part")
    return out


def ref_decode(s: str) -> tuple[str, list[int], bech32m.Encoding]:
    err = bech32m.Bech32Error
    if not isinstance(s, str):
        raise err("bech32 input must be a string")
    if s.lower() != s and s.upper() != s:
        raise err("mixed-case string")
    for c in s:
        if not 33 <= ord(c) <= 126:
            raise err(f"invalid character {c!r}")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1:
        raise err("missing separator '1' or empty human-readable part")
    if len(s) - pos - 1 < 6:
        raise err("too short: the checksum needs 6 characters after the separator")
    hrp = s[:pos]
    if not 1 <= len(hrp) <= 83:
        raise err("human-readable part must be 1..83 characters")
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise err(f"invalid character {c!r} in human-readable part")
    data5: list[int] = []
    for c in s[pos + 1 :]:
        value = _CHARSET_REVERSE.get(c)
        if value is None:
            raise err(f"invalid data character {c!r}")
        data5.append(value)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    const = ref_polymod(expanded + data5)
    for spec in bech32m.Encoding:
        if const == spec.value:
            return hrp, data5[:-6], spec
    raise err("checksum mismatch (mistyped or truncated string)")


def ref_encode(hrp: str, data5: list[int], spec: bech32m.Encoding) -> str:
    err = bech32m.Bech32Error
    if not 1 <= len(hrp) <= 83:
        raise err("human-readable part must be 1..83 characters")
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise err(f"invalid character {c!r} in human-readable part")
    if hrp.lower() != hrp and hrp.upper() != hrp:
        raise err("mixed-case human-readable part")
    hrp = hrp.lower()
    groups = list(data5)
    for g in groups:
        if not 0 <= g <= 31:
            raise err(f"data value {g} is not a 5-bit group")
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = ref_polymod([*expanded, *groups, 0, 0, 0, 0, 0, 0]) ^ spec.value
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(bech32m.CHARSET[g] for g in groups + checksum)


def ref_bech32_checks(s: str) -> None:
    err = invoices.InvoiceError
    if s.lower() != s and s.upper() != s:
        raise err("Bech32 error: mixed-case strings not allowed")
    pos = s.rfind("1")
    if pos < 0:
        raise err('Bech32 error: missing human-readable separator, "1"')
    if pos == 0 or len(s) - pos - 1 < 6:
        raise err("Bech32 error: invalid length")
    for c in s:
        if not 33 <= ord(c) <= 126:
            raise err(f"Bech32 error: invalid character (code={ord(c)})")
    for c in s[pos + 1 :].lower():
        if c not in bech32m.CHARSET:
            raise err(f"Bech32 error: invalid character (code={ord(c)})")


def ref_groups_to_bytes(body5: list[int]) -> bytes:
    acc = 0
    for g in body5:
        acc = (acc << 5) | g
    nbits = len(body5) * 5
    return (acc >> (nbits % 8)).to_bytes(nbits // 8, "big")


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """A result or an exception as a comparable value: ("ok", result) or (type, message)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:  # compared, not swallowed
        return type(exc).__name__, str(exc)


# Mostly-valid values with some out of range, negative, or not ints at all.
_ITEM = st.one_of(
    st.integers(0, 31),
    st.integers(0, 255),
    st.integers(-3, 300),
    st.integers(),
    st.sampled_from([True, False, 1.0, 0.5, None, "a", b"x"]),
)
_VALUES = st.one_of(
    st.lists(st.integers(0, 31), max_size=120),
    st.lists(st.integers(0, 255), max_size=120),
    st.lists(st.one_of(st.integers(0, 31), _ITEM), max_size=40),
    st.binary(max_size=120),
)
_CONTAINER: st.SearchStrategy[Callable[[Any], Any]] = st.sampled_from(
    [list, tuple, bytes, bytearray, iter]
)


@given(st.lists(st.integers(0, 31), max_size=300))
def test_polymod_matches_reference_on_5_bit_values(values: list[int]) -> None:
    assert bech32m._polymod(values) == ref_polymod(values)


@given(st.lists(st.integers(), max_size=60))
def test_polymod_matches_reference_on_any_ints(values: list[int]) -> None:
    assert bech32m._polymod(values) == ref_polymod(values)


@given(
    values=_VALUES,
    container=_CONTAINER,
    bits=st.sampled_from([(8, 5), (5, 8), (8, 5), (5, 8), (1, 8), (8, 1), (3, 5), (8, 8)]),
    pad=st.booleans(),
)
def test_convertbits_matches_reference(
    values: list[Any], container: Callable[[Any], Any], bits: tuple[int, int], pad: bool
) -> None:
    try:
        data = container(values)
    except (TypeError, ValueError):  # e.g. bytes([300]): the container cannot hold them
        data = list(values)
    frombits, tobits = bits
    again = list(values)  # ``iter`` containers are consumed; the reference gets a fresh copy
    ref_data = iter(again) if container is iter else data
    assert outcome(bech32m.convertbits, data, frombits, tobits, pad=pad) == outcome(
        ref_convertbits, ref_data, frombits, tobits, pad=pad
    )


@pytest.mark.parametrize("n", range(41))
def test_convertbits_every_block_offset(n: int) -> None:
    """Every length mod 5 and mod 8, all-ones and a pattern, both directions."""
    for data in (bytes([0xFF] * n), bytes((i * 37 + 11) & 0xFF for i in range(n))):
        groups = ref_convertbits(data, 8, 5, pad=True)
        assert bech32m.convertbits(data, 8, 5, pad=True) == groups
        for pad in (True, False):
            assert outcome(bech32m.convertbits, data, 8, 5, pad=pad) == outcome(
                ref_convertbits, data, 8, 5, pad=pad
            )
            assert outcome(bech32m.convertbits, groups, 5, 8, pad=pad) == outcome(
                ref_convertbits, groups, 5, 8, pad=pad
            )
        assert invoices._groups_to_bytes(groups) == ref_groups_to_bytes(groups)


_TEXT = st.text(
    alphabet=st.sampled_from(bech32m.CHARSET + "1QPZRYbio ~!\x7f\x00é" + "\udc80"), max_size=80
)


@st.composite
def _bech32_strings(draw: st.DrawFn) -> str:
    """Valid strings, corrupted ones, and noise."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(_TEXT)
    hrp = draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
    hrp = hrp[:83].lower()
    data = draw(st.lists(st.integers(0, 31), max_size=60))
    s = bech32m.encode(hrp, data, draw(st.sampled_from(list(bech32m.Encoding))))
    if kind == 2 and s:
        at = draw(st.integers(0, len(s) - 1))
        s = s[:at] + draw(_TEXT) + s[at + 1 :]
    return s.upper() if draw(st.booleans()) else s


@given(_bech32_strings())
def test_decode_matches_reference(s: str) -> None:
    assert outcome(bech32m.decode, s) == outcome(ref_decode, s)
    assert outcome(invoices._bech32_checks, s) == outcome(ref_bech32_checks, s)


@given(
    hrp=st.text(alphabet=st.characters(min_codepoint=20, max_codepoint=130), max_size=90),
    values=st.one_of(st.lists(st.integers(0, 31), max_size=60), st.lists(_ITEM, max_size=30)),
    spec=st.sampled_from(list(bech32m.Encoding)),
)
def test_encode_matches_reference(hrp: str, values: list[Any], spec: bech32m.Encoding) -> None:
    assert outcome(bech32m.encode, hrp, values, spec) == outcome(ref_encode, hrp, values, spec)


@given(
    amount=st.one_of(st.none(), st.integers(0, 10**20)),
    description=st.text(max_size=200),
    currency=st.sampled_from(["Fibb", "Fibt", "Fibd"]),
)
def test_encode_invoice_decoded_form_is_decode_invoice(
    amount: int | None, description: str, currency: str
) -> None:
    key = coincurve.PrivateKey(b"\x07" * 32)
    attrs_list = [
        {"description": description},
        {"final_htlc_minimum_expiry_delta": hexcodec.encode_uint(57_600_000)},
        {"payee_public_key": key.public_key.format(compressed=True).hex()},
    ]
    address, decoded = invoices.encode_invoice(
        currency=currency,
        amount=amount,
        payment_hash="0x" + "ab" * 32,
        timestamp_ms=1_700_000_000_000,
        attrs_list=attrs_list,
        key=key,
    )
    assert decoded == invoices.decode_invoice(address)
    assert decoded.to_json() == invoices.decode_invoice(address).to_json()
