"""CKB addresses (RFC 0021) and the lock ``Script`` they stand for.

An address is bech32/bech32m over a payload whose first byte is the format type:

- ``0x00`` full (current): ``0x00 | code_hash(32) | hash_type(1) | args``, **bech32m**;
- ``0x01`` short (deprecated): ``0x01 | code_hash_index(1) | args(20)``, bech32; the index
  names a genesis script (0x00 secp256k1-blake160 sighash, 0x01 multisig, 0x02 anyone-can-pay,
  whose code hash differs between mainnet and testnet);
- ``0x02`` / ``0x04`` full (deprecated): ``code_hash(32) | args`` with hash_type ``data`` /
  ``type``, bech32.

The human-readable part names the network: ``ckb`` mainnet, ``ckt`` testnet (dev chains also
use ``ckt``). We decode all formats and always encode the full 0x00 format.

This module also holds the JSON hex helpers shared by the package (CKB RPC encodes bytes as
``0x``-prefixed hex and integers as ``0x``-prefixed hex without leading zeros) and the genesis
hashes that identify the network a node is on (architecture §4b).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import attrs

from fiberlinkd.ckb import bech32m

Network = Literal["mainnet", "testnet", "devnet"]
AddressNetwork = Literal["mainnet", "testnet"]

SHANNONS_PER_CKB: Final = 100_000_000
CODE_HASH_SIZE_BYTES: Final = 32
BLAKE160_ARGS_SIZE_BYTES: Final = 20
CELL_CAPACITY_FIELD_BYTES: Final = 8
SCRIPT_HASH_TYPE_FIELD_BYTES: Final = 1

HRP_MAINNET: Final = "ckb"
HRP_TESTNET: Final = "ckt"

MAINNET_GENESIS_HASH: Final = bytes.fromhex(
    "92b197aa1fba0f63633922c61c92375c9c074a93e85963554f5499fe1450d0e5"
)
TESTNET_GENESIS_HASH: Final = bytes.fromhex(
    "10639e0895502b5688a6be8cf69460d76541bfa4821629d86d62ba0aae3f9606"
)

SECP256K1_BLAKE160_SIGHASH_ALL_CODE_HASH: Final = bytes.fromhex(
    "9bd7e06f3ecf4be0f2fcd2188b23f1b9fcc88e5d4b65a8637b17723bbda3cce8"
)
SECP256K1_BLAKE160_MULTISIG_ALL_CODE_HASH: Final = bytes.fromhex(
    "5c5069eb0857efc65e1bca0c07df34c31663b3622fd3876c876320fc9634e2a8"
)
ANYONE_CAN_PAY_CODE_HASH_MAINNET: Final = bytes.fromhex(
    "d369597ff47f29fbc0d47d2e3775370d1250b85140c670e4718af712983a2354"
)
ANYONE_CAN_PAY_CODE_HASH_TESTNET: Final = bytes.fromhex(
    "3419a1c09eb2567f6552ee7a8ecffd64155cffe0f1796e6e61ec088d740c1356"
)

FORMAT_FULL: Final = 0x00
FORMAT_SHORT: Final = 0x01
FORMAT_FULL_DATA_DEPRECATED: Final = 0x02
FORMAT_FULL_TYPE_DEPRECATED: Final = 0x04

U64_MAX: Final = (1 << 64) - 1
U32_MAX: Final = (1 << 32) - 1


# --- JSON hex helpers ------------------------------------------------------------------------


class CkbJsonError(ValueError):
    """CKB RPC JSON that does not have the expected shape or encoding."""


_HEX_UINT_RE = re.compile(r"0x(0|[1-9a-fA-F][0-9a-fA-F]*)")
_HEX_BYTES_RE = re.compile(r"0x([0-9a-fA-F]{2})*")


def parse_hex_uint(value: object, *, bits: int = 64, what: str = "value") -> int:
    """Parse a CKB RPC hex integer strictly: ``0x`` prefix, no leading zeros, within ``bits``."""
    if not isinstance(value, str) or not _HEX_UINT_RE.fullmatch(value):
        raise CkbJsonError(f"{what}: expected a 0x-prefixed hex integer, got {value!r}")
    n = int(value[2:], 16)
    if n >> bits:
        raise CkbJsonError(f"{what}: {value} does not fit in {bits} bits")
    return n


def parse_hex_u64(value: object, what: str = "value") -> int:
    """Parse a CKB ``Uint64`` (``"0x1a"``)."""
    return parse_hex_uint(value, bits=64, what=what)


def parse_hex_u32(value: object, what: str = "value") -> int:
    """Parse a CKB ``Uint32`` (``"0x0"``)."""
    return parse_hex_uint(value, bits=32, what=what)


def hex_uint(n: int) -> str:
    """Encode a non-negative int as CKB RPC hex (``0x0``, ``0x2540be400``)."""
    if n < 0:
        raise ValueError("negative integer cannot be hex-encoded")
    return hex(n)


def parse_hex_bytes(value: object, *, size: int | None = None, what: str = "value") -> bytes:
    """Parse ``0x``-prefixed hex bytes; with ``size``, require exactly that many bytes."""
    if not isinstance(value, str) or not _HEX_BYTES_RE.fullmatch(value):
        raise CkbJsonError(f"{what}: expected 0x-prefixed hex bytes, got {value!r}")
    data = bytes.fromhex(value[2:])
    if size is not None and len(data) != size:
        raise CkbJsonError(f"{what}: expected {size} bytes, got {len(data)}")
    return data


def hex_bytes(data: bytes) -> str:
    """Encode bytes as ``0x``-prefixed lower-case hex (``0x`` for empty)."""
    return "0x" + data.hex()


# --- Script ----------------------------------------------------------------------------------


def hash_type_to_byte(hash_type: str) -> int:
    """``data``→0, ``type``→1, ``data1``→2, ``data2``→4 (``dataN``→2N, as ckb accepts)."""
    if hash_type == "type":
        return 1
    if hash_type == "data":
        return 0
    if hash_type.startswith("data") and hash_type[4:].isdigit() and hash_type[4] != "0":
        n = int(hash_type[4:])
        if 1 <= n <= 127:
            return 2 * n
    raise ValueError(f"invalid script hash_type {hash_type!r}")


def hash_type_from_byte(b: int) -> str:
    """Inverse of ``hash_type_to_byte``; odd bytes other than 1 are invalid."""
    if b == 1:
        return "type"
    if b == 0:
        return "data"
    if 0 < b <= 0xFF and b % 2 == 0:
        return f"data{b // 2}"
    raise ValueError(f"invalid script hash_type byte {b}")


def _check_code_hash(_inst: object, _attr: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != CODE_HASH_SIZE_BYTES:
        raise ValueError("script code_hash must be 32 bytes")


def _check_hash_type(_inst: object, _attr: object, value: str) -> None:
    hash_type_to_byte(value)


def _check_bytes(_inst: object, _attr: object, value: bytes) -> None:
    if not isinstance(value, bytes):
        raise TypeError("script args must be bytes")


@attrs.frozen
class Script:
    """A CKB script (lock or type): which code runs (``code_hash`` + ``hash_type``) on ``args``."""

    code_hash: bytes = attrs.field(validator=_check_code_hash)
    hash_type: str = attrs.field(validator=_check_hash_type)
    args: bytes = attrs.field(validator=_check_bytes)

    @classmethod
    def secp256k1_blake160(cls, args: bytes) -> Script:
        """The standard single-key lock for ``args = blake160(compressed pubkey)``."""
        if len(args) != BLAKE160_ARGS_SIZE_BYTES:
            raise ValueError("secp256k1-blake160 lock args must be 20 bytes")
        return cls(SECP256K1_BLAKE160_SIGHASH_ALL_CODE_HASH, "type", args)

    @classmethod
    def from_rpc(cls, obj: object) -> Script:
        """Build from CKB RPC JSON ``{"code_hash", "hash_type", "args"}``."""
        if not isinstance(obj, dict):
            raise CkbJsonError(f"script: expected an object, got {obj!r}")
        hash_type = obj.get("hash_type")
        if not isinstance(hash_type, str):
            raise CkbJsonError("script: hash_type must be a string")
        return cls(
            code_hash=parse_hex_bytes(obj.get("code_hash"), size=32, what="script.code_hash"),
            hash_type=hash_type,
            args=parse_hex_bytes(obj.get("args"), what="script.args"),
        )

    def to_rpc(self) -> dict[str, Any]:
        """CKB RPC JSON form."""
        return {
            "code_hash": hex_bytes(self.code_hash),
            "hash_type": self.hash_type,
            "args": hex_bytes(self.args),
        }

    @property
    def hash_type_byte(self) -> int:
        return hash_type_to_byte(self.hash_type)

    def occupied_bytes(self) -> int:
        """Bytes a cell needs for this script: code_hash(32) + hash_type(1) + args."""
        return CODE_HASH_SIZE_BYTES + SCRIPT_HASH_TYPE_FIELD_BYTES + len(self.args)

    def is_secp256k1_blake160(self) -> bool:
        return (
            self.code_hash == SECP256K1_BLAKE160_SIGHASH_ALL_CODE_HASH
            and self.hash_type == "type"
            and len(self.args) == BLAKE160_ARGS_SIZE_BYTES
        )


def min_capacity_shannons(
    lock: Script, type_script: Script | None = None, data_len: int = 0
) -> int:
    """Smallest capacity (shannons) of a cell with this lock/type/data.

    occupied bytes = 8 (capacity) + lock (32 + 1 + args) + [type (32 + 1 + args)] + data;
    one byte costs 1 CKB = 10^8 shannons. A plain secp256k1-blake160 cell needs 61 CKB.
    """
    if data_len < 0:
        raise ValueError("data_len must be >= 0")
    occupied = CELL_CAPACITY_FIELD_BYTES + lock.occupied_bytes() + data_len
    if type_script is not None:
        occupied += type_script.occupied_bytes()
    return occupied * SHANNONS_PER_CKB


# --- Addresses -------------------------------------------------------------------------------


class AddressError(ValueError):
    """The string is not a usable CKB address (message is safe to show to a forum user)."""


class AddressNetworkError(AddressError):
    """A valid address for the other network."""

    def __init__(self, address_network: str, server_network: str) -> None:
        self.address_network = address_network
        self.server_network = server_network
        super().__init__(f"address is for {address_network}, this server pays on {server_network}")


@attrs.frozen
class DecodedAddress:
    """What an address says: its network, the lock script and the format it was written in."""

    network: AddressNetwork
    script: Script
    format_type: int
    encoding: bech32m.Encoding

    @property
    def is_deprecated_format(self) -> bool:
        return self.format_type != FORMAT_FULL


def hrp_for_network(network: str) -> str:
    """``mainnet`` → ``ckb``; ``testnet`` and dev chains → ``ckt``."""
    if network == "mainnet":
        return HRP_MAINNET
    if network in ("testnet", "devnet"):
        return HRP_TESTNET
    raise ValueError(f"unknown CKB network {network!r}")


def network_for_genesis_hash(genesis_hash: bytes) -> Network:
    """Map a chain's genesis hash to ``mainnet`` / ``testnet``; anything else is ``devnet``."""
    if genesis_hash == MAINNET_GENESIS_HASH:
        return "mainnet"
    if genesis_hash == TESTNET_GENESIS_HASH:
        return "testnet"
    return "devnet"


def _short_code_hash(index: int, network: AddressNetwork) -> bytes:
    if index == 0x00:
        return SECP256K1_BLAKE160_SIGHASH_ALL_CODE_HASH
    if index == 0x01:
        return SECP256K1_BLAKE160_MULTISIG_ALL_CODE_HASH
    if index == 0x02:
        return (
            ANYONE_CAN_PAY_CODE_HASH_MAINNET
            if network == "mainnet"
            else ANYONE_CAN_PAY_CODE_HASH_TESTNET
        )
    raise AddressError(f"not a valid CKB address: unknown short-format code hash index {index}")


def decode_address(address: str) -> DecodedAddress:
    """Decode any RFC 0021 address format into its network and lock script.

    Raises ``AddressError`` (a ``ValueError``) with a user-readable reason.
    """
    if not isinstance(address, str) or not address.strip():
        raise AddressError("not a valid CKB address: empty")
    try:
        hrp, payload, encoding = bech32m.decode_bytes(address.strip())
    except bech32m.Bech32Error as exc:
        raise AddressError(f"not a valid CKB address: {exc}") from exc
    network: AddressNetwork
    if hrp == HRP_MAINNET:
        network = "mainnet"
    elif hrp == HRP_TESTNET:
        network = "testnet"
    else:
        raise AddressError(f"not a CKB address: prefix {hrp!r} is neither 'ckb' nor 'ckt'")
    if not payload:
        raise AddressError("not a valid CKB address: empty payload")
    fmt = payload[0]
    body = payload[1:]
    if fmt == FORMAT_FULL:
        if encoding is not bech32m.Encoding.BECH32M:
            raise AddressError("not a valid CKB address: full format must use bech32m")
        if len(body) < CODE_HASH_SIZE_BYTES + 1:
            raise AddressError(
                f"not a valid CKB address: full payload too short ({len(payload)} bytes)"
            )
        try:
            hash_type = hash_type_from_byte(body[CODE_HASH_SIZE_BYTES])
        except ValueError as exc:
            raise AddressError(f"not a valid CKB address: {exc}") from exc
        script = Script(body[:CODE_HASH_SIZE_BYTES], hash_type, body[CODE_HASH_SIZE_BYTES + 1 :])
    elif fmt == FORMAT_SHORT:
        if encoding is not bech32m.Encoding.BECH32:
            raise AddressError("not a valid CKB address: short format must use bech32")
        if len(body) != 1 + BLAKE160_ARGS_SIZE_BYTES:
            raise AddressError(
                f"not a valid CKB address: short payload must be 22 bytes, got {len(payload)}"
            )
        script = Script(_short_code_hash(body[0], network), "type", body[1:])
    elif fmt in (FORMAT_FULL_DATA_DEPRECATED, FORMAT_FULL_TYPE_DEPRECATED):
        if encoding is not bech32m.Encoding.BECH32:
            raise AddressError("not a valid CKB address: deprecated full format must use bech32")
        if len(body) < CODE_HASH_SIZE_BYTES:
            raise AddressError(
                f"not a valid CKB address: full payload too short ({len(payload)} bytes)"
            )
        hash_type = "data" if fmt == FORMAT_FULL_DATA_DEPRECATED else "type"
        script = Script(body[:CODE_HASH_SIZE_BYTES], hash_type, body[CODE_HASH_SIZE_BYTES:])
    else:
        raise AddressError(f"not a valid CKB address: unknown format type 0x{fmt:02x}")
    return DecodedAddress(network=network, script=script, format_type=fmt, encoding=encoding)


def parse_address(address: str, server_network: str) -> Script:
    """Decode ``address`` and require it to belong to ``server_network``.

    ``server_network`` is ``mainnet``, ``testnet`` or ``devnet`` (dev chains use ``ckt``
    addresses). Raises ``AddressNetworkError`` for the wrong network — its message reads
    "address is for mainnet, this server pays on testnet".
    """
    decoded = decode_address(address)
    if hrp_for_network(server_network) != hrp_for_network(decoded.network):
        raise AddressNetworkError(decoded.network, server_network)
    return decoded.script


def encode_address(script: Script, network: str) -> str:
    """Encode ``script`` as a full-format (0x00, bech32m) address for ``network``."""
    payload = bytes([FORMAT_FULL]) + script.code_hash + bytes([script.hash_type_byte]) + script.args
    return bech32m.encode_bytes(hrp_for_network(network), payload, bech32m.Encoding.BECH32M)
