"""CKB transaction tests: molecule, tx hash, sighash-all signing, fees, payout building."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fiberlinkd.ckb import molecule
from fiberlinkd.ckb.address import Script, hex_bytes, min_capacity_shannons
from fiberlinkd.ckb.hashing import ckb_hash
from fiberlinkd.ckb.tx import (
    EMPTY_WITNESS_ARGS,
    PLACEHOLDER_WITNESS,
    CellDep,
    CellInput,
    CellOutput,
    InsufficientFunds,
    LiveCell,
    OutPoint,
    PayoutBelowMinimumCapacity,
    SignedTx,
    SigningError,
    Transaction,
    build_payout_tx,
    estimate_max_fee_shannons,
    fee_for_size_shannons,
    fee_for_tx_shannons,
    lock_for_key,
    pubkey_compressed,
    recover_lock_args,
    secp256k1_cell_dep,
    sighash_all_message,
    sign_group,
    sign_payout,
    tx_from_rpc_json,
    tx_to_rpc_json,
    verify_group,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "ckb-transaction.json"
CKB = 100_000_000


def _vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip(f"shared vectors not found at {VECTORS} (shared/ must sit beside the repo)")
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _ids(key: str) -> list[str]:
    if not VECTORS.exists():
        return []
    return [v["id"] for v in json.loads(VECTORS.read_text())[key]]


def _vector(key: str, vid: str) -> dict[str, Any]:
    for v in _vectors()[key]:
        if v["id"] == vid:
            return dict(v)
    raise AssertionError(vid)


def _h(s: str) -> bytes:
    assert s.startswith("0x")
    return bytes.fromhex(s[2:])


@pytest.mark.parametrize("vid", _ids("tx_hash_vectors"))
def test_tx_hash_vector(vid: str) -> None:
    v = _vector("tx_hash_vectors", vid)
    tx = Transaction.from_rpc(v["tx"])
    assert tx.raw_molecule() == _h(v["raw_transaction_molecule"])
    assert hex_bytes(tx.hash()) == v["expected_tx_hash"]
    # JSON and molecule round trips are exact.
    assert tx_to_rpc_json(tx) == v["tx"]
    assert tx_from_rpc_json(tx_to_rpc_json(tx)) == tx
    assert Transaction.from_molecule(tx.to_molecule()) == tx


@pytest.mark.parametrize("vid", _ids("signing_vectors"))
def test_signing_vector(vid: str) -> None:
    v = _vector("signing_vectors", vid)
    tx = Transaction.from_rpc(v["tx"])
    assert hex_bytes(tx.hash()) == v["tx_hash"]
    for group in v["groups"]:
        key = _h(group["private_key"])
        indices = group["input_indices"]
        assert hex_bytes(pubkey_compressed(key)) == group["pubkey_compressed"]
        assert lock_for_key(key) == Script.from_rpc(group["lock_script"])
        assert hex_bytes(lock_for_key(key).args) == group["lock_args_blake160"]
        assert tx.witnesses[indices[0]] == _h(group["first_witness_with_zeroed_lock"])
        message = sighash_all_message(tx, indices)
        assert hex_bytes(message) == group["signing_message"]
        signature = _h(group["expected_signature"])
        assert recover_lock_args(signature, message) == lock_for_key(key).args
        tx = sign_group(tx, indices, key)
        verify_group(tx, indices, lock_for_key(key).args)
    assert [hex_bytes(w) for w in tx.witnesses] == v["expected_witnesses"]
    # Signing does not change the hash (witnesses are not hashed).
    assert hex_bytes(tx.hash()) == v["tx_hash"]


def test_tampering_breaks_signature() -> None:
    v = _vector("signing_vectors", "sign-one-input")
    group = v["groups"][0]
    key = _h(group["private_key"])
    tx = sign_group(Transaction.from_rpc(v["tx"]), [0], key)
    args = lock_for_key(key).args
    verify_group(tx, [0], args)
    # Another output amount → other tx hash → recovered key differs.
    outputs = list(tx.outputs)
    outputs[0] = CellOutput(outputs[0].capacity + 1, outputs[0].lock)
    tampered = Transaction(
        tx.version, tx.cell_deps, tx.header_deps, tx.inputs, outputs, tx.outputs_data, tx.witnesses
    )
    with pytest.raises(SigningError, match="does not match"):
        verify_group(tampered, [0], args)
    # Extra witnesses past the inputs are covered too.
    with pytest.raises(SigningError, match="does not match"):
        verify_group(tx.with_witnesses([*tx.witnesses, b"x"]), [0], args)
    # A wrong key's signature is rejected.
    other = _vectors()["keys"][1]
    with pytest.raises(SigningError, match="does not match"):
        verify_group(sign_group(tx, [0], _h(other["private_key"])), [0], args)
    with pytest.raises(SigningError, match="65-byte"):
        verify_group(tx.with_witnesses([EMPTY_WITNESS_ARGS]), [0], args)


def test_keys() -> None:
    for k in _vectors()["keys"]:
        key = _h(k["private_key"])
        assert hex_bytes(pubkey_compressed(key)) == k["pubkey_compressed"]
        assert hex_bytes(lock_for_key(key).args) == k["lock_args_blake160"]


def test_conventions_constants() -> None:
    conv = _vectors()["conventions"]
    assert hex_bytes(EMPTY_WITNESS_ARGS) == conv["empty_witness_args"]
    assert hex_bytes(PLACEHOLDER_WITNESS) == conv["placeholder_witness_args_with_zero_lock"]
    assert molecule.deserialize_witness_args(PLACEHOLDER_WITNESS) == (bytes(65), None, None)


def test_well_known_cell_deps() -> None:
    wk = _vectors()["well_known"]["secp256k1_blake160_sighash_all"]
    for network in ("mainnet", "testnet"):
        assert secp256k1_cell_dep(network) == CellDep.from_rpc(wk["cell_dep"][network])
    with pytest.raises(ValueError, match="devnet"):
        secp256k1_cell_dep("devnet")
    # The testnet dep group cell's data is the OutPointVec the notes describe.
    genesis = Transaction.from_rpc(_vector("tx_hash_vectors", "testnet-genesis-dep-group-tx")["tx"])
    items = molecule.split_fixvec(genesis.outputs_data[0], molecule.OUT_POINT_SIZE_BYTES)
    expanded = [
        {"tx_hash": hex_bytes(i[:32]), "index": hex(molecule.read_u32(i, 32))} for i in items
    ]
    want = [
        {"tx_hash": e["tx_hash"], "index": e["index"]}
        for e in wk["dep_group_expands_to"]["testnet"]
    ]
    assert expanded == want
    # code_hash is the hash of the type-id script of the sighash binary.
    evidence = wk["type_id_evidence"]
    type_script = Script.from_rpc(evidence["type_script"])
    assert hex_bytes(ckb_hash(molecule.serialize_script(type_script))) == wk["code_hash"]


def test_fee_rule() -> None:
    assert fee_for_size_shannons(0, 1000) == 0
    assert fee_for_size_shannons(1000, 1000) == 1000
    assert fee_for_size_shannons(1001, 1000) == 1001
    assert fee_for_size_shannons(333, 1) == 1  # rounds up
    assert fee_for_size_shannons(1000, 1) == 1
    assert fee_for_size_shannons(1001, 1) == 2
    v = _vector("signing_vectors", "sign-one-input")
    tx = Transaction.from_rpc(v["tx"])
    size = len(tx.to_molecule()) + 4
    assert tx.size_in_block_bytes() == size
    assert fee_for_tx_shannons(tx, 1000) == size


# --- payouts -----------------------------------------------------------------------------------

WALLET_KEY = bytes.fromhex("d00c06bfd800d27397002dca6fb0993d5ba6399b4238b2f29ee9deb97593d2bc")
WALLET_LOCK = lock_for_key(WALLET_KEY)
RECIPIENT = Script.secp256k1_blake160(bytes(range(20)))
DEPS = [secp256k1_cell_dep("testnet")]


def _cell(capacity: int, n: int = 0, lock: Script = WALLET_LOCK) -> LiveCell:
    return LiveCell(OutPoint(ckb_hash(n.to_bytes(4, "little")), n % 3), capacity, lock)


def _check_balanced(unsigned: Any, rate: int) -> None:
    tx = unsigned.tx
    total_in = sum(c.capacity for c in unsigned.input_cells)
    total_out = sum(o.capacity for o in tx.outputs)
    assert total_in - total_out == unsigned.fee_shannons
    assert unsigned.fee_shannons >= fee_for_tx_shannons(tx, rate)
    for out, data in zip(tx.outputs, tx.outputs_data, strict=True):
        assert out.capacity >= out.min_capacity_shannons(len(data))


def test_payout_with_change_and_signing() -> None:
    unsigned = build_payout_tx(
        [_cell(1000 * CKB)], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS
    )
    tx = unsigned.tx
    assert len(tx.outputs) == 2
    assert tx.outputs[0] == CellOutput(100 * CKB, RECIPIENT)
    assert tx.outputs[1].lock == WALLET_LOCK
    assert unsigned.change_shannons == tx.outputs[1].capacity
    assert unsigned.fee_shannons == fee_for_tx_shannons(tx, 1000)
    assert unsigned.payout_output_indices == (0,)
    _check_balanced(unsigned, 1000)
    signed = sign_payout(unsigned, WALLET_KEY)
    assert signed.tx_hash == unsigned.tx_hash == signed.tx.hash()
    assert signed.tx.size_in_block_bytes() == tx.size_in_block_bytes()
    verify_group(signed.tx, [0], WALLET_LOCK.args)
    again = SignedTx.from_molecule(signed.to_molecule(), signed.fee_shannons)
    assert again == signed


def test_payout_change_below_minimum_is_folded_into_fee() -> None:
    # 161 CKB in, 100 out: the 61 left minus fee is below a change cell's 61 CKB minimum.
    unsigned = build_payout_tx(
        [_cell(161 * CKB)], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS
    )
    assert len(unsigned.tx.outputs) == 1
    assert unsigned.change_shannons == 0
    assert unsigned.fee_shannons == 61 * CKB
    _check_balanced(unsigned, 1000)


def test_payout_prefers_another_input_over_folding() -> None:
    cells = [_cell(161 * CKB, 1), _cell(70 * CKB, 2)]
    unsigned = build_payout_tx(cells, [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS)
    assert len(unsigned.input_cells) == 2
    assert unsigned.change_shannons > 61 * CKB
    _check_balanced(unsigned, 1000)
    signed = sign_payout(unsigned, WALLET_KEY)
    verify_group(signed.tx, [0, 1], WALLET_LOCK.args)
    assert signed.tx.witnesses[1] == b""


def test_payout_several_outputs_and_insufficient() -> None:
    payouts = [(RECIPIENT, 61 * CKB), (Script.secp256k1_blake160(b"\x01" * 20), 70 * CKB)]
    cells = [_cell(100 * CKB, i) for i in range(5)]
    unsigned = build_payout_tx(cells, payouts, WALLET_LOCK, 1000, DEPS)
    assert unsigned.payout_output_indices == (0, 1)
    assert len(unsigned.input_cells) == 2
    _check_balanced(unsigned, 1000)
    with pytest.raises(InsufficientFunds) as info:
        build_payout_tx(cells, [(RECIPIENT, 600 * CKB)], WALLET_LOCK, 1000, DEPS)
    assert info.value.available_shannons == 500 * CKB
    assert info.value.required_shannons > 600 * CKB
    with pytest.raises(InsufficientFunds) as info:
        build_payout_tx([], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS)
    assert info.value.available_shannons == 0
    # Exactly enough with no room for the fee is insufficient.
    with pytest.raises(InsufficientFunds):
        build_payout_tx([_cell(100 * CKB)], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS)


def test_payout_below_minimum_capacity_and_typed_cells_skipped() -> None:
    with pytest.raises(PayoutBelowMinimumCapacity, match="61 CKB"):
        build_payout_tx([_cell(1000 * CKB)], [(RECIPIENT, 61 * CKB - 1)], WALLET_LOCK, 1000, DEPS)
    udt = LiveCell(OutPoint(bytes(32), 0), 10_000 * CKB, WALLET_LOCK, RECIPIENT, b"\x00" * 16)
    with pytest.raises(InsufficientFunds):
        build_payout_tx([udt], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS)


def test_sign_payout_refuses_foreign_inputs() -> None:
    unsigned = build_payout_tx(
        [_cell(1000 * CKB, lock=RECIPIENT)], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS
    )
    with pytest.raises(SigningError, match="hot-wallet"):
        sign_payout(unsigned, WALLET_KEY)


def test_estimate_max_fee_matches_built_tx() -> None:
    unsigned = build_payout_tx(
        [_cell(1000 * CKB)], [(RECIPIENT, 100 * CKB)], WALLET_LOCK, 1000, DEPS
    )
    assert (
        estimate_max_fee_shannons(1, [RECIPIENT], WALLET_LOCK, 1000, DEPS) == unsigned.fee_shannons
    )


@settings(max_examples=60, deadline=None)
@given(
    capacities=st.lists(st.integers(min_value=61 * CKB, max_value=5000 * CKB), max_size=6),
    amounts=st.lists(st.integers(min_value=61 * CKB, max_value=2000 * CKB), min_size=1, max_size=3),
    rate=st.integers(min_value=0, max_value=100_000),
)
def test_payout_invariants(capacities: list[int], amounts: list[int], rate: int) -> None:
    cells = [_cell(c, i) for i, c in enumerate(capacities)]
    payouts = [(RECIPIENT, a) for a in amounts]
    error: InsufficientFunds | None = None
    try:
        unsigned = build_payout_tx(cells, payouts, WALLET_LOCK, rate, DEPS)
    except InsufficientFunds as exc:
        error = exc
    if error is not None:
        assert error.available_shannons == sum(capacities)
        assert error.required_shannons >= sum(amounts)
        return
    _check_balanced(unsigned, rate)
    assert unsigned.change_shannons == 0 or unsigned.change_shannons >= 61 * CKB
    assert (
        unsigned.change_shannons > 0
        or unsigned.fee_shannons
        < fee_for_tx_shannons(unsigned.tx, rate) + min_capacity_shannons(WALLET_LOCK) + 100 * rate
    )
    signed = sign_payout(unsigned, WALLET_KEY)
    verify_group(signed.tx, list(range(len(signed.tx.inputs))), WALLET_LOCK.args)


# --- property round trips -----------------------------------------------------------------------

hashes = st.binary(min_size=32, max_size=32)
u32s = st.integers(min_value=0, max_value=2**32 - 1)
u64s = st.integers(min_value=0, max_value=2**64 - 1)
scripts = st.builds(
    Script, hashes, st.sampled_from(["data", "type", "data1", "data2"]), st.binary(max_size=40)
)
out_points = st.builds(OutPoint, hashes, u32s)


@st.composite
def transactions(draw: st.DrawFn) -> Transaction:
    outputs = draw(st.lists(st.builds(CellOutput, u64s, scripts, st.none() | scripts), max_size=4))
    return Transaction(
        version=draw(u32s),
        cell_deps=draw(
            st.lists(
                st.builds(CellDep, out_points, st.sampled_from(["code", "dep_group"])), max_size=3
            )
        ),
        header_deps=draw(st.lists(hashes, max_size=2)),
        inputs=draw(st.lists(st.builds(CellInput, out_points, u64s), max_size=4)),
        outputs=outputs,
        outputs_data=draw(
            st.lists(st.binary(max_size=40), min_size=len(outputs), max_size=len(outputs))
        ),
        witnesses=draw(st.lists(st.binary(max_size=80), max_size=4)),
    )


@given(tx=transactions())
def test_transaction_roundtrips(tx: Transaction) -> None:
    assert Transaction.from_molecule(tx.to_molecule()) == tx
    rpc = json.loads(json.dumps(tx_to_rpc_json(tx)))
    assert tx_from_rpc_json(rpc) == tx
    assert tx.hash() == ckb_hash(tx.raw_molecule())
    # The raw transaction is the first field of the full transaction.
    full = molecule.split_table(tx.to_molecule(), 2, "Transaction")
    assert full[0] == tx.raw_molecule()


@given(data=st.binary(max_size=200))
def test_molecule_decoder_never_crashes_unexpectedly(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Transaction.from_molecule(data)


def test_molecule_rejects_truncation() -> None:
    v = _vector("tx_hash_vectors", "sdk-fixture-one-group")
    blob = Transaction.from_rpc(v["tx"]).to_molecule()
    for cut in (1, 4, 37, len(blob) // 2):
        with pytest.raises(ValueError, match=r"."):
            Transaction.from_molecule(blob[:-cut])
