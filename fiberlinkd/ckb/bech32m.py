"""Bech32 and bech32m (BIP 173 / BIP 350) without a length limit.

CKB full-format addresses are longer than BIP 173's 90-character cap, and Fiber invoices are
much longer still, so this module deliberately imposes no maximum length: no maintained
library decodes CKB's long addresses, which is why this small module is hand-written.

Everything else follows the BIPs: the human-readable part (HRP) is 1..83 printable ASCII
characters (33..126), the separator is the *last* ``1``, the data part uses the 32-character
alphabet ``qpzry9x8gf2tvdw0s3jn54khce6mua7l``, mixed case is rejected, and the 6-character
checksum uses constant 1 (bech32) or ``0x2bc830a3`` (bech32m). ``decode`` tells which one
matched; callers decide which is acceptable (CKB's full format must be bech32m, its
deprecated formats bech32).

Data is handled as 5-bit groups ("data5"); ``convertbits`` converts to and from bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REVERSE: dict[str, int] = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
CHECKSUM_LENGTH_CHARS = 6
HRP_MAX_LENGTH_CHARS = 83


class Bech32Error(ValueError):
    """A string is not valid bech32/bech32m, or data cannot be encoded/converted."""


class Encoding(enum.Enum):
    """Which checksum constant a string uses."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _check_hrp(hrp: str) -> None:
    if not 1 <= len(hrp) <= HRP_MAX_LENGTH_CHARS:
        raise Bech32Error(f"human-readable part must be 1..{HRP_MAX_LENGTH_CHARS} characters")
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise Bech32Error(f"invalid character {c!r} in human-readable part")


def _create_checksum(hrp: str, data5: Sequence[int], spec: Encoding) -> list[int]:
    values = _hrp_expand(hrp) + list(data5)
    polymod = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ spec.value
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH_CHARS)]


def encode(hrp: str, data5: Sequence[int] | bytes, spec: Encoding) -> str:
    """Encode 5-bit groups ``data5`` under ``hrp`` with the ``spec`` checksum.

    ``data5`` items must be 0..31 (use ``to_data5`` to turn bytes into groups). The HRP is
    lower-cased in the output; a mixed-case HRP is rejected. There is no length limit.
    """
    _check_hrp(hrp)
    if hrp.lower() != hrp and hrp.upper() != hrp:
        raise Bech32Error("mixed-case human-readable part")
    hrp = hrp.lower()
    groups = list(data5)
    for g in groups:
        if not 0 <= g <= 31:
            raise Bech32Error(f"data value {g} is not a 5-bit group")
    checksum = _create_checksum(hrp, groups, spec)
    return hrp + "1" + "".join(CHARSET[g] for g in groups + checksum)


def decode(s: str) -> tuple[str, list[int], Encoding]:
    """Decode a bech32/bech32m string into ``(hrp, data5, spec)``.

    ``hrp`` is returned lower-case; ``data5`` excludes the checksum; ``spec`` says which
    checksum matched. Raises ``Bech32Error`` with a readable reason on any defect. There is
    no length limit.
    """
    if not isinstance(s, str):
        raise Bech32Error("bech32 input must be a string")
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed-case string")
    for c in s:
        if not 33 <= ord(c) <= 126:
            raise Bech32Error(f"invalid character {c!r}")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1:
        raise Bech32Error("missing separator '1' or empty human-readable part")
    if len(s) - pos - 1 < CHECKSUM_LENGTH_CHARS:
        raise Bech32Error("too short: the checksum needs 6 characters after the separator")
    hrp = s[:pos]
    _check_hrp(hrp)
    data5: list[int] = []
    for c in s[pos + 1 :]:
        value = _CHARSET_REVERSE.get(c)
        if value is None:
            raise Bech32Error(f"invalid data character {c!r}")
        data5.append(value)
    const = _polymod(_hrp_expand(hrp) + data5)
    for spec in Encoding:
        if const == spec.value:
            return hrp, data5[:-CHECKSUM_LENGTH_CHARS], spec
    raise Bech32Error("checksum mismatch (mistyped or truncated string)")


def convertbits(data: Iterable[int], frombits: int, tobits: int, *, pad: bool) -> list[int]:
    """Regroup ``data`` from ``frombits``-bit values into ``tobits``-bit values.

    With ``pad=True`` (8→5 when encoding) the last group is zero-padded. With ``pad=False``
    (5→8 when decoding) leftover bits must be fewer than ``frombits`` and all zero, else
    ``Bech32Error`` is raised (non-canonical padding).
    """
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise Bech32Error(f"value {value} does not fit in {frombits} bits")
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise Bech32Error("invalid padding in data part")
    return out


def to_data5(data: bytes) -> list[int]:
    """Bytes → 5-bit groups (zero-padded)."""
    return convertbits(data, 8, 5, pad=True)


def from_data5(data5: Sequence[int]) -> bytes:
    """5-bit groups → bytes (rejects non-zero or over-long padding)."""
    return bytes(convertbits(data5, 5, 8, pad=False))


def encode_bytes(hrp: str, payload: bytes, spec: Encoding) -> str:
    """Encode a byte payload (converted to 5-bit groups) under ``hrp``."""
    return encode(hrp, to_data5(payload), spec)


def decode_bytes(s: str) -> tuple[str, bytes, Encoding]:
    """Decode a string whose data part is a byte payload: ``(hrp, payload, spec)``."""
    hrp, data5, spec = decode(s)
    return hrp, from_data5(data5), spec
