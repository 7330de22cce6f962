"""Exact conversion between wire amounts (decimal strings in asset units) and base units.

Inside fiberlinkd every amount is an ``int`` of base units (shannons for CKB). The plugin
sends and reads canonical decimal strings: no sign, no exponent, no leading zeros, no
trailing fractional zeros (``"12.5"``, ``"61"``, ``"0.00000001"``). Conversion never uses
floats and rejects more fractional digits than the asset has.
"""

from __future__ import annotations

import re

import attrs

CKB_DECIMALS = 8
MAX_AMOUNT_CHARS = 80
"""Longer text is refused before parsing: no real amount needs it (u128 has 39 digits), and
``int()`` raises a plain ``ValueError`` past 4300 digits."""

_DECIMAL_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")


class AmountError(ValueError):
    """A wire amount that is not a valid decimal for its asset."""


@attrs.frozen
class Asset:
    """An asset the forum tips in: its wire name and how many decimals a unit has."""

    name: str
    decimals: int

    def to_base_units(self, text: str) -> int:
        """Parse a decimal string in asset units into base units.

        Errors: :class:`AmountError` for anything but digits with an optional fraction of
        at most ``decimals`` digits (no sign, exponent, spaces, or empty parts).
        """
        return parse_amount(text, self.decimals)

    def to_wire(self, base_units: int) -> str:
        return format_amount(base_units, self.decimals)


def parse_amount(text: str, decimals: int) -> int:
    """``"12.5"`` with 8 decimals → ``1_250_000_000``. See :meth:`Asset.to_base_units`."""
    if not isinstance(text, str):
        raise AmountError("amount must be a decimal string")
    if len(text) > MAX_AMOUNT_CHARS:
        raise AmountError(f"amount is longer than {MAX_AMOUNT_CHARS} characters: {text[:40]!r}")
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise AmountError(f"amount must be a plain decimal number, got {text[:40]!r}")
    frac = match.group("frac") or ""
    if len(frac) > decimals:
        raise AmountError(f"amount has more than {decimals} decimal places: {text[:40]!r}")
    scale: int = 10**decimals
    return int(match.group("int")) * scale + int(frac.ljust(decimals, "0") or "0")


def format_amount(base_units: int, decimals: int) -> str:
    """``1_250_000_000`` with 8 decimals → ``"12.5"`` (canonical, exact)."""
    if base_units < 0:
        return "-" + format_amount(-base_units, decimals)
    scale: int = 10**decimals
    whole, frac = divmod(base_units, scale)
    if frac == 0:
        return str(whole)
    return f"{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


CKB = Asset("CKB", CKB_DECIMALS)
