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
import functools
import re
from collections.abc import Iterable, Sequence

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# One step of the checksum XORs in _GENERATOR[i] for each set bit i of the 5 bits shifted
# out; precomputing all 32 combinations makes that a single lookup per character.
_POLYMOD_TABLE = tuple(
    functools.reduce(int.__xor__, (g for i, g in enumerate(_GENERATOR) if top >> i & 1), 0)
    for top in range(32)
)
# bytes.translate tables: 5-bit value -> data character, and back (0xFF if not in CHARSET).
_TO_CHARSET = CHARSET.encode("ascii").ljust(256, b"?")
_FROM_CHARSET = bytes(CHARSET.index(chr(b)) if chr(b) in CHARSET else 0xFF for b in range(256))
_FITS = {bits: bytes(range(1 << bits)) for bits in (5, 8)}  # the byte values that fit ``bits``
_NOT_PRINTABLE = re.compile(r"[^!-~]")  # anything outside ASCII 33..126
CHECKSUM_LENGTH_CHARS = 6
HRP_MAX_LENGTH_CHARS = 83


class Bech32Error(ValueError):
    """A string is not valid bech32/bech32m, or data cannot be encoded/converted."""


class Encoding(enum.Enum):
    """Which checksum constant a string uses."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: Iterable[int]) -> int:
    table = _POLYMOD_TABLE
    chk = 1
    for value in values:
        # top = chk >> 25; "& 31" keeps only its 5 generator bits, even for out-of-range values
        chk = (chk & 0x1FFFFFF) << 5 ^ value ^ table[chk >> 25 & 31]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _check_hrp(hrp: str) -> None:
    if not 1 <= len(hrp) <= HRP_MAX_LENGTH_CHARS:
        raise Bech32Error(f"human-readable part must be 1..{HRP_MAX_LENGTH_CHARS} characters")
    bad = _NOT_PRINTABLE.search(hrp)
    if bad:
        raise Bech32Error(f"invalid character {bad.group()!r} in human-readable part")


def _as_bytes(values: Sequence[int], bits: int) -> bytes | None:
    """``values`` as bytes when every item is an int that fits ``bits`` (<= 8), else ``None``.

    Checked in C; ``None`` sends the caller to its item-by-item loop, which reports the
    first bad item exactly as before.
    """
    try:
        raw = bytes(values)
    except (TypeError, ValueError):
        return None
    return None if raw.translate(None, _FITS[bits]) else raw  # anything left does not fit


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
    raw = _as_bytes(groups, 5)
    if raw is None:
        for g in groups:
            if not 0 <= g <= 31:
                raise Bech32Error(f"data value {g} is not a 5-bit group")
    checksum = _create_checksum(hrp, groups, spec)
    if raw is not None:  # the same CHARSET[g] lookup, done in C
        return hrp + "1" + (raw + bytes(checksum)).translate(_TO_CHARSET).decode("ascii")
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
    bad = _NOT_PRINTABLE.search(s)
    if bad:
        raise Bech32Error(f"invalid character {bad.group()!r}")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1:
        raise Bech32Error("missing separator '1' or empty human-readable part")
    if len(s) - pos - 1 < CHECKSUM_LENGTH_CHARS:
        raise Bech32Error("too short: the checksum needs 6 characters after the separator")
    hrp = s[:pos]
    _check_hrp(hrp)
    values = s[pos + 1 :].encode("ascii").translate(_FROM_CHARSET)  # all ASCII by now
    if 0xFF in values:
        raise Bech32Error(f"invalid data character {s[pos + 1 + values.index(0xFF)]!r}")
    data5 = list(values)
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
    if {frombits, tobits} == {5, 8} and isinstance(data, bytes | bytearray | list | tuple):
        raw = _as_bytes(data, frombits)
        if raw is not None:
            return _regroup_fast(raw, frombits, pad=pad)
        # a bad value: the loop below raises the same error as it always has
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


def _regroup_fast(raw: bytes, frombits: int, *, pad: bool) -> list[int]:
    """``convertbits`` between 8 and 5 bits for values already known to fit ``frombits``.

    Eight 5-bit groups are five bytes, so the data is padded to whole 40-bit blocks and each
    block is regrouped inside its own 64-bit lane of one big int (``_spread_40``/``_pack_40``).
    """
    n = len(raw)
    nbits = n * frombits
    if frombits == 8:
        out = _spread_40(raw + bytes(-n % 5))
        tobits = 5
    else:
        out = _pack_40(raw + bytes(-n % 8))
        tobits = 8
    whole, leftover = divmod(nbits, tobits)
    if pad:
        return list(out[: whole + (leftover > 0)])
    # leftover bits sit, zero-filled, at the top of out[whole]; the loop's padding rule
    if leftover >= frombits or (leftover and out[whole]):
        raise Bech32Error("invalid padding in data part")
    return list(out[:whole])


@functools.lru_cache(maxsize=64)
def _lane_masks(nbytes: int) -> tuple[int, ...]:
    """Masks over ``nbytes`` (a multiple of 8): per 64-, 32- and 16-bit lane, high then low."""

    def repeat(lane_value: int, lane_bytes: int) -> int:
        lane = lane_value.to_bytes(lane_bytes, "big")
        return int.from_bytes(lane * (nbytes // lane_bytes), "big")

    return (
        *(repeat(0xFFFFF << 20, 8), repeat(0xFFFFF, 8)),  # 40 bits -> 2 x 20
        *(repeat(0x3FF << 10, 4), repeat(0x3FF, 4)),  # 20 bits -> 2 x 10
        *(repeat(0x1F << 5, 2), repeat(0x1F, 2)),  # 10 bits -> 2 x 5
    )


def _spread_40(raw: bytes) -> bytes:
    """Bytes (a multiple of 5) -> 5-bit groups, one per output byte."""
    nbytes = len(raw) // 5 * 8
    lanes = bytearray(nbytes)  # each 40-bit block in the low 5 bytes of a 64-bit lane
    for j in range(5):
        lanes[3 + j :: 8] = raw[j::5]
    x = int.from_bytes(lanes, "big")
    hi40, lo40, hi20, lo20, hi10, lo10 = _lane_masks(nbytes)
    x = (x & hi40) << 12 | x & lo40  # halve each lane, moving the high half up
    x = (x & hi20) << 6 | x & lo20
    x = (x & hi10) << 3 | x & lo10
    return x.to_bytes(nbytes, "big")


def _pack_40(groups: bytes) -> bytes:
    """5-bit groups, one per byte (a multiple of 8) -> bytes; the inverse of ``_spread_40``."""
    nbytes = len(groups)
    x = int.from_bytes(groups, "big")
    hi40, lo40, hi20, lo20, hi10, lo10 = _lane_masks(nbytes)
    x = x >> 3 & hi10 | x & lo10  # join lane halves, moving the high half down
    x = x >> 6 & hi20 | x & lo20
    x = x >> 12 & hi40 | x & lo40
    lanes = x.to_bytes(nbytes, "big")
    out = bytearray(nbytes // 8 * 5)
    for j in range(5):
        out[j::5] = lanes[3 + j :: 8]
    return bytes(out)


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
