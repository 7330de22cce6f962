"""Amounts: exact conversion between wire decimal strings and integer base units.

Rules under test:
- parsing never uses floats: every integer of base units survives format → parse exactly;
- formatting is canonical (no leading zeros, no trailing fractional zeros, no exponent), so
  format(parse(x)) is the canonical spelling of x and is a fixed point;
- anything but ``DIGITS[.DIGITS]`` is refused with :class:`AmountError`: signs, exponents,
  spaces, empty parts, non-ASCII digits, more decimals than the asset has, absurd lengths.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fiberlinkd.amounts import (
    CKB,
    MAX_AMOUNT_CHARS,
    AmountError,
    Asset,
    format_amount,
    parse_amount,
)

CANONICAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")

base_units = st.integers(min_value=0, max_value=10**30)
decimals = st.integers(min_value=0, max_value=18)


@st.composite
def decimal_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A valid (possibly non-canonical) decimal string and the asset's decimals."""
    places = draw(decimals)
    whole = draw(st.text("0123456789", min_size=1, max_size=20))
    frac = draw(st.text("0123456789", min_size=0, max_size=places))
    return (f"{whole}.{frac}" if frac else whole), places


def test_one_shannon_is_the_smallest_ckb_amount() -> None:
    assert CKB.to_base_units("0.00000001") == 1
    assert CKB.to_wire(1) == "0.00000001"


def test_nine_ckb_decimals_are_refused() -> None:
    with pytest.raises(AmountError, match="more than 8 decimal places"):
        CKB.to_base_units("1.000000001")


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("0", 0),
        ("1", 100_000_000),
        ("61", 6_100_000_000),
        ("12.5", 1_250_000_000),
        ("0.5", 50_000_000),
        ("1.00000000", 100_000_000),
        ("007", 700_000_000),
        ("21000000000", 2_100_000_000_000_000_000),
    ],
)
def test_ckb_examples_parse_exactly(text: str, units: int) -> None:
    assert CKB.to_base_units(text) == units


@pytest.mark.parametrize(
    ("units", "text"),
    [(0, "0"), (100_000_000, "1"), (1_250_000_000, "12.5"), (10, "0.0000001"), (123, "0.00000123")],
)
def test_ckb_examples_format_canonically(units: int, text: str) -> None:
    assert CKB.to_wire(units) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "1.",
        ".5",
        "-1",
        "+1",
        "1e8",
        "1E8",
        "1.5e-3",
        " 1",
        "1 ",
        "1 000",
        "1,5",
        "1.2.3",
        "0x10",
        "NaN",
        "inf",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: int() would accept it, the wire must not
        "1_000",
        "1\n",
    ],
)
def test_malformed_amounts_are_refused(text: str) -> None:
    with pytest.raises(AmountError):
        CKB.to_base_units(text)


@pytest.mark.parametrize("value", [1, 1.5, None, b"1"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(AmountError, match="decimal string"):
        parse_amount(value, 8)  # type: ignore[arg-type]


def test_absurdly_long_amounts_are_an_amount_error_not_a_crash() -> None:
    # int() raises a plain ValueError past 4300 digits; callers only catch AmountError.
    with pytest.raises(AmountError, match="longer than"):
        CKB.to_base_units("1" * 5000)
    with pytest.raises(AmountError):
        CKB.to_base_units("1" * (MAX_AMOUNT_CHARS + 1))
    assert CKB.to_base_units("1" * 40) == int("1" * 40) * 10**8


def test_an_asset_without_decimals_accepts_only_whole_units() -> None:
    whole = Asset("PTS", 0)
    assert whole.to_base_units("42") == 42
    assert whole.to_wire(42) == "42"
    with pytest.raises(AmountError):
        whole.to_base_units("4.2")


def test_usdi_style_six_decimals() -> None:
    usdi = Asset("USDI", 6)
    assert usdi.to_base_units("0.000001") == 1
    assert usdi.to_base_units("2.5") == 2_500_000
    with pytest.raises(AmountError):
        usdi.to_base_units("0.0000001")


@given(base_units, decimals)
def test_parse_of_format_is_identity(units: int, places: int) -> None:
    assert parse_amount(format_amount(units, places), places) == units


@given(base_units, decimals)
def test_format_is_canonical(units: int, places: int) -> None:
    text = format_amount(units, places)
    assert CANONICAL.fullmatch(text), text
    assert "." not in text or len(text.split(".")[1]) <= places


@given(decimal_texts())
def test_format_of_parse_is_the_canonical_spelling(case: tuple[str, int]) -> None:
    text, places = case
    canonical = format_amount(parse_amount(text, places), places)
    assert CANONICAL.fullmatch(canonical)
    # same value, fixed point
    assert parse_amount(canonical, places) == parse_amount(text, places)
    assert format_amount(parse_amount(canonical, places), places) == canonical
    if CANONICAL.fullmatch(text):
        assert canonical == text


@given(decimal_texts())
def test_parse_is_exact_against_integer_arithmetic(case: tuple[str, int]) -> None:
    text, places = case
    whole, _, frac = text.partition(".")
    expected = int(whole) * 10**places + (int(frac) * 10 ** (places - len(frac)) if frac else 0)
    assert parse_amount(text, places) == expected


@given(decimals, st.integers(min_value=1, max_value=5))
def test_one_decimal_too_many_is_always_refused(places: int, extra: int) -> None:
    with pytest.raises(AmountError, match="decimal places"):
        parse_amount("1." + "0" * (places + extra - 1) + "1", places)


@given(st.text(max_size=30))
def test_parse_accepts_exactly_plain_decimals(text: str) -> None:
    plain = re.fullmatch(r"[0-9]+(\.[0-9]{1,8})?", text, flags=re.ASCII) is not None
    try:
        parse_amount(text, 8)
    except AmountError:
        assert not plain
    else:
        assert plain


def test_negative_base_units_format_with_a_sign_for_reports() -> None:
    # Ledger entries carry signed amounts; the wire never accepts the sign back.
    assert format_amount(-150_000_000, 8) == "-1.5"
    with pytest.raises(AmountError):
        parse_amount("-1.5", 8)
