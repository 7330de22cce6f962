"""CKB address (RFC 0021) and bech32/bech32m tests against the shared vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fiberlinkd.ckb import bech32m
from fiberlinkd.ckb.address import (
    AddressError,
    AddressNetworkError,
    Script,
    decode_address,
    encode_address,
    hash_type_from_byte,
    hash_type_to_byte,
    min_capacity_shannons,
    network_for_genesis_hash,
    parse_address,
    parse_hex_u64,
)
from fiberlinkd.ckb.hashing import blake160, ckb_hash

VECTORS_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def _load(name: str) -> dict[str, Any]:
    path = VECTORS_DIR / name
    if not path.exists():
        pytest.skip(f"shared vectors not found at {path} (shared/ must sit beside the repo)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _address_vectors() -> dict[str, Any]:
    return _load("ckb-address.json")


def _ids(key: str) -> list[str]:
    path = VECTORS_DIR / "ckb-address.json"
    if not path.exists():
        return []
    return [v["id"] for v in json.loads(path.read_text())[key]]


def _vector(key: str, vid: str) -> dict[str, Any]:
    for v in _address_vectors()[key]:
        if v["id"] == vid:
            return dict(v)
    raise AssertionError(vid)


def test_vectors_present() -> None:
    data = _address_vectors()
    assert len(data["valid"]) >= 10
    assert len(data["invalid"]) >= 5


@pytest.mark.parametrize("vid", _ids("valid"))
def test_valid_address_vector(vid: str) -> None:
    v = _vector("valid", vid)
    decoded = decode_address(v["address"])
    assert decoded.network == v["network"]
    assert decoded.format_type == int(v["format_type"], 16)
    assert decoded.encoding.name.lower() == v["encoding"]
    assert decoded.script == Script.from_rpc(v["script"])
    assert decoded.script.to_rpc() == v["script"]
    # Re-encoding always produces the full bech32m format.
    assert encode_address(decoded.script, v["network"]) == v["full_address"]
    # The full address decodes to the same script.
    assert decode_address(v["full_address"]).script == decoded.script
    # Upper-case is accepted (bech32 allows all-upper), mixed case is not.
    assert decode_address(v["address"].upper()).script == decoded.script


@pytest.mark.parametrize("vid", _ids("invalid"))
def test_invalid_address_vector(vid: str) -> None:
    v = _vector("invalid", vid)
    with pytest.raises(AddressError):
        decode_address(v["address"])


def test_invalid_constructions_match_their_recipe() -> None:
    for v in _address_vectors()["invalid"]:
        c = v.get("construction")
        if not c or "payload" not in c:
            continue
        spec = bech32m.Encoding[c["checksum"].upper()]
        payload = bytes.fromhex(c["payload"][2:])
        assert bech32m.encode_bytes(c["hrp"], payload, spec) == v["address"]


def test_short_code_hash_table_matches_conventions() -> None:
    conv = _address_vectors()["conventions"]["short_code_hash_index"]
    secp = Script.from_rpc({**_vector("valid", "short-secp-mainnet")["script"]})
    assert "0x" + secp.code_hash.hex() == conv["0x00"]["code_hash"]


def test_network_check_message_is_readable() -> None:
    mainnet = _vector("valid", "full-secp-type-mainnet")["address"]
    with pytest.raises(AddressNetworkError) as info:
        parse_address(mainnet, "testnet")
    assert str(info.value) == "address is for mainnet, this server pays on testnet"
    testnet = _vector("valid", "full-secp-type-testnet")["address"]
    assert parse_address(testnet, "testnet").is_secp256k1_blake160()
    assert parse_address(testnet, "devnet").is_secp256k1_blake160()
    with pytest.raises(AddressNetworkError, match="address is for testnet"):
        parse_address(testnet, "mainnet")


def test_non_ckb_prefix_and_garbage() -> None:
    bc = bech32m.encode_bytes("bc", b"\x00" * 20, bech32m.Encoding.BECH32)
    with pytest.raises(AddressError, match="prefix"):
        decode_address(bc)
    for junk in ["", "   ", "ckb1", "hello", "ckb1qqqqqq!"]:
        with pytest.raises(AddressError):
            decode_address(junk)
    mixed = _vector("valid", "full-secp-type-mainnet")["address"]
    with pytest.raises(AddressError, match="mixed-case"):
        decode_address(mixed[:10] + mixed[10:].upper())


def test_min_capacity_vectors() -> None:
    tx_vectors = _load("ckb-transaction.json")
    for v in tx_vectors["min_capacity"]["vectors"]:
        lock = Script.from_rpc(v["output"]["lock"])
        type_obj = v["output"]["type"]
        type_script = None if type_obj is None else Script.from_rpc(type_obj)
        data_len = len(bytes.fromhex(v["output_data"][2:]))
        got = min_capacity_shannons(lock, type_script, data_len)
        assert got == int(v["expected_min_capacity_shannons"]), v["id"]
    assert min_capacity_shannons(Script.secp256k1_blake160(bytes(20))) == 61 * 10**8


MAINNET_GENESIS = "92b197aa1fba0f63633922c61c92375c9c074a93e85963554f5499fe1450d0e5"
TESTNET_GENESIS = "10639e0895502b5688a6be8cf69460d76541bfa4821629d86d62ba0aae3f9606"


def test_genesis_hash_network() -> None:
    assert network_for_genesis_hash(bytes.fromhex(MAINNET_GENESIS)) == "mainnet"
    assert network_for_genesis_hash(bytes.fromhex(TESTNET_GENESIS)) == "testnet"
    assert network_for_genesis_hash(bytes(32)) == "devnet"


def test_hashing() -> None:
    # ckbhash of the empty string is a widely published constant.
    empty = "44f4c69744d5f8c55d642062949dcae49bc4e7ef43d388c5a12f42b5633d163e"
    assert ckb_hash(b"").hex() == empty
    for k in _load("ckb-transaction.json")["keys"]:
        pubkey = bytes.fromhex(k["pubkey_compressed"][2:])
        assert "0x" + blake160(pubkey).hex() == k["lock_args_blake160"]


def test_hash_type_bytes() -> None:
    assert [hash_type_to_byte(h) for h in ("data", "type", "data1", "data2")] == [0, 1, 2, 4]
    assert hash_type_from_byte(4) == "data2"
    for bad in (3, 5, 255):
        with pytest.raises(ValueError, match="hash_type"):
            hash_type_from_byte(bad)
    for bad_name in ("Type", "data0", "data01", "code", "data128"):
        with pytest.raises(ValueError, match="hash_type"):
            hash_type_to_byte(bad_name)


def test_hex_u64_strict() -> None:
    assert parse_hex_u64("0x0") == 0
    assert parse_hex_u64("0x2540be400") == 10_000_000_000
    for bad in ["0x", "0x00", "0x01", "10", 10, "0xffffffffffffffffff", "0xg", None]:
        with pytest.raises(ValueError, match="value"):
            parse_hex_u64(bad)


# --- bech32 module ---------------------------------------------------------------------------


def test_bech32_bip_reference_strings() -> None:
    # BIP 173 / BIP 350 valid test strings (published in the BIPs).
    assert bech32m.decode("A12UEL5L")[2] is bech32m.Encoding.BECH32
    assert bech32m.decode("a12uel5l") == ("a", [], bech32m.Encoding.BECH32)
    assert bech32m.decode("A1LQFN3A")[2] is bech32m.Encoding.BECH32M
    assert bech32m.decode("abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx")[0] == "abcdef"


def test_bech32_no_length_limit_and_long_hrp() -> None:
    data = bytes(range(256)) * 4
    s = bech32m.encode_bytes("fibd100000001", data, bech32m.Encoding.BECH32M)
    assert len(s) > 1000
    assert bech32m.decode_bytes(s) == ("fibd100000001", data, bech32m.Encoding.BECH32M)


def test_bech32_errors() -> None:
    with pytest.raises(bech32m.Bech32Error, match="separator"):
        bech32m.decode("qqqqqqqq")
    with pytest.raises(bech32m.Bech32Error, match="checksum"):
        bech32m.decode("a12uel5m")
    with pytest.raises(bech32m.Bech32Error, match="5-bit"):
        bech32m.encode("a", [32], bech32m.Encoding.BECH32)
    with pytest.raises(bech32m.Bech32Error, match="padding"):
        bech32m.from_data5([31])
    with pytest.raises(bech32m.Bech32Error, match="invalid data character"):
        bech32m.decode("a1bqqqqqq")


@given(
    hrp=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126).filter(
            lambda c: not c.isupper()
        ),
        min_size=1,
        max_size=20,
    ),
    data=st.binary(max_size=300),
    spec=st.sampled_from(list(bech32m.Encoding)),
)
def test_bech32_roundtrip(hrp: str, data: bytes, spec: bech32m.Encoding) -> None:
    s = bech32m.encode_bytes(hrp, data, spec)
    assert bech32m.decode_bytes(s) == (hrp, data, spec)


hash_types = st.sampled_from(["data", "type", "data1", "data2"])


@given(
    code_hash=st.binary(min_size=32, max_size=32),
    hash_type=hash_types,
    args=st.binary(max_size=100),
    network=st.sampled_from(["mainnet", "testnet"]),
)
def test_address_roundtrip(code_hash: bytes, hash_type: str, args: bytes, network: str) -> None:
    script = Script(code_hash, hash_type, args)
    address = encode_address(script, network)
    decoded = decode_address(address)
    assert decoded.script == script
    assert decoded.network == network
    assert address.startswith("ckb1" if network == "mainnet" else "ckt1")
    assert min_capacity_shannons(script) == (8 + 32 + 1 + len(args)) * 10**8
