"""FNN's strict hex encodings (``fnn-rpc.md`` §2), shared by the client and the simulator.

- unsigned integers (u8…u128): ``"0x"`` + hex, no leading zeros, zero is ``"0x0"``; output
  lowercase; input may use upper-case digits but the prefix must be exactly ``0x``;
- ``Hash256``: 32 bytes, ``0x`` optional on input, always present on output;
- ``Pubkey``: 33-byte compressed secp256k1 key, 66 lowercase hex characters without ``0x``
  on output, ``0x`` tolerated on input.

Decoders raise :class:`HexDecodeError` whose ``str`` is the exact serde text FNN 0.8 puts
in a ``-32602`` error's ``data`` (``uint hex string starts with redundant leading zeros:
0x064``), so the simulator can answer with it and the client can report it.
"""

from __future__ import annotations

import json
from typing import Any

U64_BITS = 64
U128_BITS = 128
HASH256_BYTES = 32
PUBKEY_BYTES = 33


class HexDecodeError(ValueError):
    """A value is not in FNN's hex format; ``str(exc)`` is FNN's serde message."""


def describe_json_value(value: Any) -> str:
    """serde's description of an unexpected JSON value (``integer `100```, ``map``…)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def invalid_type(value: Any, expected: str) -> HexDecodeError:
    """serde's ``invalid type: <found>, expected <expected>`` error."""
    return HexDecodeError(f"invalid type: {describe_json_value(value)}, expected {expected}")


def encode_uint(n: int) -> str:
    """``n`` as FNN writes an unsigned integer: ``0x`` + lowercase hex, ``0`` → ``"0x0"``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"not an unsigned integer: {n!r}")
    return hex(n)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def decode_uint(s: Any, bits: int = U128_BITS) -> int:
    """Parse FNN's hex unsigned integer strictly, as FNN's own deserializer does.

    Errors: :class:`HexDecodeError` with FNN's text for a non-string, a missing ``0x``,
    redundant leading zeros, a bad digit, an empty number, or a value over ``bits`` bits.
    """
    if not isinstance(s, str):
        raise invalid_type(s, "a string")
    if len(s) < 3 or not s.startswith("0x"):
        raise HexDecodeError(f"uint hex string does not start with 0x: {s}")
    digits = s[2:]
    if len(digits) > 1 and digits[0] == "0":
        raise HexDecodeError(f"uint hex string starts with redundant leading zeros: {s}")
    if not set(digits) <= _HEX_DIGITS:
        raise HexDecodeError(
            f"failed to parse uint hex {s}: ParseIntError {{ kind: InvalidDigit }}"
        )
    value = int(digits, 16)
    if value >> bits:
        raise HexDecodeError(f"failed to parse uint hex {s}: ParseIntError {{ kind: PosOverflow }}")
    return value


def _decode_hex_bytes(s: str) -> bytes:
    """``hex::decode`` as FNN wraps it: ``failed to decode hex string <s>: <hex::FromHexError>``."""
    body = s[2:] if s.startswith("0x") else s
    if len(body) % 2:
        raise HexDecodeError(f"failed to decode hex string {s}: OddLength")
    for index, c in enumerate(body):
        if c not in _HEX_DIGITS:
            detail = f"InvalidHexCharacter {{ c: {c!r}, index: {index} }}"
            raise HexDecodeError(f"failed to decode hex string {s}: {detail}")
    return bytes.fromhex(body)


def _vector_error(raw: bytes) -> HexDecodeError:
    return HexDecodeError(f"failed to convert vector into type: [{', '.join(map(str, raw))}]")


def decode_hash256(s: Any) -> str:
    """Parse a ``Hash256`` (``0x`` optional, any case) to its output form ``0x`` + 64 hex.

    Errors: :class:`HexDecodeError` with FNN's text, e.g. ``failed to convert vector into
    type: [18, 52]`` for ``"0x1234"``.
    """
    if not isinstance(s, str):
        raise invalid_type(s, "a string")
    raw = _decode_hex_bytes(s)
    if len(raw) != HASH256_BYTES:
        raise _vector_error(raw)
    return "0x" + raw.hex()


def encode_hash256(raw: bytes) -> str:
    """32 bytes → ``0x`` + 64 lowercase hex."""
    if len(raw) != HASH256_BYTES:
        raise ValueError(f"a Hash256 has {HASH256_BYTES} bytes, got {len(raw)}")
    return "0x" + raw.hex()


def hash256_bytes(s: str) -> bytes:
    """The 32 bytes of a Hash256 string (validated)."""
    return bytes.fromhex(decode_hash256(s)[2:])


def decode_pubkey(s: Any) -> str:
    """Parse a compressed secp256k1 pubkey (``0x`` tolerated) to 66 lowercase hex, no ``0x``.

    Only the format is checked here (33 bytes, prefix 02/03); whether the point is on the
    curve is the node's business (it answers -32000 later).
    """
    if not isinstance(s, str):
        raise invalid_type(s, "a string")
    raw = _decode_hex_bytes(s)
    if len(raw) != PUBKEY_BYTES or raw[0] not in (2, 3):
        raise HexDecodeError("malformed public key")
    return raw.hex()


def encode_pubkey(raw: bytes) -> str:
    """33 compressed bytes → 66 lowercase hex without ``0x``."""
    if len(raw) != PUBKEY_BYTES:
        raise ValueError(f"a compressed pubkey has {PUBKEY_BYTES} bytes, got {len(raw)}")
    return raw.hex()


def decode_json_bytes(s: Any) -> bytes:
    """``JsonBytes``: ``"0x"`` + an even number of hex digits (``"0x"`` is empty)."""
    if not isinstance(s, str):
        raise invalid_type(s, "a 0x-prefixed hex string")
    if not s.startswith("0x"):
        raise HexDecodeError("Invalid Length: a JsonBytes shall start with 0x")
    return _decode_hex_bytes(s)
