"""FNN's hex codecs: exact serde error texts (from the real node's golden answers) and
hypothesis round-trips. Rules: no network, no clock; every rejected input names FNN's text.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fiberlinkd.fnn import hexcodec
from fiberlinkd.fnn.hexcodec import HexDecodeError

U128_MAX = 2**128 - 1
U64_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0x0"),
        (1, "0x1"),
        (100, "0x64"),
        (100_000_000, "0x5f5e100"),
        (U128_MAX, "0x" + "f" * 32),
    ],
)
def test_encode_uint_is_lowercase_without_leading_zeros(n: int, text: str) -> None:
    assert hexcodec.encode_uint(n) == text


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1"])
def test_encode_uint_rejects_non_unsigned(bad: object) -> None:
    with pytest.raises(ValueError, match="not an unsigned integer"):
        hexcodec.encode_uint(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("0x064", "uint hex string starts with redundant leading zeros: 0x064"),
        ("0x0e10", "uint hex string starts with redundant leading zeros: 0x0e10"),
        ("100", "uint hex string does not start with 0x: 100"),
        ("0X10", "uint hex string does not start with 0x: 0X10"),
        (
            "0x100000000000000000000000000000000",
            "failed to parse uint hex 0x100000000000000000000000000000000: "
            "ParseIntError { kind: PosOverflow }",
        ),
        ("0x", "uint hex string does not start with 0x: 0x"),
        ("0xzz", "failed to parse uint hex 0xzz: ParseIntError { kind: InvalidDigit }"),
        (100, "invalid type: integer `100`, expected a string"),
        (None, "invalid type: null, expected a string"),
        (True, "invalid type: boolean `true`, expected a string"),
        (1.5, "invalid type: floating point `1.5`, expected a string"),
        ([], "invalid type: sequence, expected a string"),
        ({}, "invalid type: map, expected a string"),
    ],
)
def test_decode_uint_rejects_with_fnn_text(raw: object, message: str) -> None:
    with pytest.raises(HexDecodeError) as info:
        hexcodec.decode_uint(raw)
    assert str(info.value) == message


def test_decode_uint_accepts_upper_case_digits_and_zero() -> None:
    assert hexcodec.decode_uint("0x5F5E100") == 100_000_000
    assert hexcodec.decode_uint("0x0") == 0
    assert hexcodec.decode_uint("0x" + "f" * 32) == U128_MAX


def test_decode_uint_bounds_u64() -> None:
    assert hexcodec.decode_uint("0xffffffffffffffff", 64) == U64_MAX
    with pytest.raises(HexDecodeError, match="PosOverflow"):
        hexcodec.decode_uint("0x10000000000000000", 64)


def test_hash256_input_with_or_without_prefix_any_case() -> None:
    expected = "0x" + "ab" * 32
    assert hexcodec.decode_hash256("0x" + "AB" * 32) == expected
    assert hexcodec.decode_hash256("ab" * 32) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("0x1234", "failed to convert vector into type: [18, 52]"),
        ("0x" + "11" * 33, "failed to convert vector into type: [" + ", ".join(["17"] * 33) + "]"),
        ("0x123", "failed to decode hex string 0x123: OddLength"),
        ("0xg0", "failed to decode hex string 0xg0: InvalidHexCharacter { c: 'g', index: 0 }"),
        ("zz", "failed to decode hex string zz: InvalidHexCharacter { c: 'z', index: 0 }"),
        (5, "invalid type: integer `5`, expected a string"),
    ],
)
def test_hash256_rejects_with_fnn_text(raw: object, message: str) -> None:
    with pytest.raises(HexDecodeError) as info:
        hexcodec.decode_hash256(raw)
    assert str(info.value) == message


def test_pubkey_output_has_no_prefix() -> None:
    key = "02" + "a8" * 32
    assert hexcodec.decode_pubkey("0x" + key.upper()) == key
    assert hexcodec.encode_pubkey(bytes.fromhex(key)) == key
    with pytest.raises(HexDecodeError):
        hexcodec.decode_pubkey("04" + "a8" * 32)
    with pytest.raises(HexDecodeError):
        hexcodec.decode_pubkey("02" + "a8" * 31)


@given(st.integers(min_value=0, max_value=U128_MAX))
def test_uint_round_trip(n: int) -> None:
    text = hexcodec.encode_uint(n)
    assert text == text.lower()
    assert hexcodec.decode_uint(text) == n
    assert hexcodec.decode_uint("0x" + text[2:].upper()) == n


@given(st.integers(min_value=1, max_value=U128_MAX), st.integers(min_value=1, max_value=4))
def test_uint_with_leading_zeros_is_always_rejected(n: int, zeros: int) -> None:
    text = "0x" + "0" * zeros + hex(n)[2:]
    with pytest.raises(HexDecodeError, match="redundant leading zeros"):
        hexcodec.decode_uint(text)


@given(st.integers(min_value=U128_MAX + 1, max_value=2**140))
def test_uint_over_u128_is_rejected(n: int) -> None:
    with pytest.raises(HexDecodeError, match="PosOverflow"):
        hexcodec.decode_uint(hex(n))


@given(st.binary(min_size=32, max_size=32))
def test_hash256_round_trip(raw: bytes) -> None:
    text = hexcodec.encode_hash256(raw)
    assert hexcodec.decode_hash256(text) == text
    assert hexcodec.decode_hash256(text[2:].upper()) == text
    assert hexcodec.hash256_bytes(text) == raw


@given(st.binary(min_size=0, max_size=64).filter(lambda b: len(b) != 32))
def test_hash256_wrong_length_lists_the_bytes(raw: bytes) -> None:
    with pytest.raises(HexDecodeError) as info:
        hexcodec.decode_hash256("0x" + raw.hex())
    assert str(info.value) == f"failed to convert vector into type: {list(raw)}"


@given(st.sampled_from([2, 3]), st.binary(min_size=32, max_size=32))
def test_pubkey_round_trip(prefix: int, body: bytes) -> None:
    raw = bytes([prefix]) + body
    text = hexcodec.encode_pubkey(raw)
    assert len(text) == 66
    assert not text.startswith("0x")
    assert hexcodec.decode_pubkey(text) == text
    assert hexcodec.decode_pubkey("0x" + text) == text
