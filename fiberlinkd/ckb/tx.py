"""CKB transactions: model, hash, secp256k1-blake160 sighash-all signing, fees, payouts.

- The model is frozen attrs classes mirroring CKB's JSON (``from_rpc`` / ``to_rpc``) and
  molecule (``to_molecule`` / ``from_molecule``) forms. Amounts are int shannons.
- ``tx_hash`` = ckbhash(molecule RawTransaction); witnesses are not hashed.
- Signing (``secp256k1_blake160_sighash_all``): for a lock group (inputs with the same lock),
  message = ckbhash(tx_hash | u64le(len W0') | W0' | u64le(len)|W for the group's other
  witnesses | u64le(len)|W for every witness past the inputs), where W0' is the group's first
  witness (a WitnessArgs) with its lock replaced by 65 zero bytes. The 65-byte recoverable
  signature (r | s | recovery id, RFC 6979) goes into that WitnessArgs' lock.
- Fee: ``ceil(size * fee_rate_shannons_per_kb / 1000)`` where size is the serialised
  Transaction plus 4 bytes (its offset inside a block's transaction vector), which is what a
  node counts as the transaction's size. Rounding up keeps us at or above the node's minimum.
- ``build_payout_tx`` is pure: it selects plain wallet cells, pays each payout in its own
  output, adds change only if the change meets its own minimum capacity, and raises
  ``InsufficientFunds`` with the amounts otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import coincurve

from fiberlinkd.ckb import molecule
from fiberlinkd.ckb.address import (
    CkbJsonError,
    Script,
    hex_bytes,
    hex_uint,
    min_capacity_shannons,
    parse_hex_bytes,
    parse_hex_u32,
    parse_hex_u64,
)
from fiberlinkd.ckb.hashing import blake160, ckb_hash, new_ckb_hasher

SIGNATURE_SIZE_BYTES: Final = 65
TX_SIZE_IN_BLOCK_OVERHEAD_BYTES: Final = 4
DEFAULT_FEE_RATE_SHANNONS_PER_KB: Final = 1_000
BYTES_PER_KB: Final = 1_000
EMPTY_WITNESS_ARGS: Final = molecule.serialize_witness_args(None)
PLACEHOLDER_WITNESS: Final = molecule.serialize_witness_args(bytes(SIGNATURE_SIZE_BYTES))


def _check_hash32(_inst: object, attr: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{attr.name} must be 32 bytes")


def _check_u64(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise ValueError(f"{attr.name} must be an int in 0..2^64-1, got {value!r}")


def _check_u32(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ValueError(f"{attr.name} must be an int in 0..2^32-1, got {value!r}")


def _rpc_dict(obj: object, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise CkbJsonError(f"{what}: expected an object, got {obj!r}")
    return obj


def _rpc_list(obj: object, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise CkbJsonError(f"{what}: expected a list, got {obj!r}")
    return obj


@attrs.frozen
class OutPoint:
    """A reference to a cell: the transaction that created it and the output index."""

    tx_hash: bytes = attrs.field(validator=_check_hash32)
    index: int = attrs.field(validator=_check_u32)

    @classmethod
    def from_rpc(cls, obj: object) -> OutPoint:
        d = _rpc_dict(obj, "out_point")
        return cls(
            parse_hex_bytes(d.get("tx_hash"), size=32, what="out_point.tx_hash"),
            parse_hex_u32(d.get("index"), "out_point.index"),
        )

    def to_rpc(self) -> dict[str, Any]:
        return {"tx_hash": hex_bytes(self.tx_hash), "index": hex_uint(self.index)}

    def __str__(self) -> str:
        return f"{hex_bytes(self.tx_hash)}:{self.index}"


def _check_dep_type(_inst: object, _attr: object, value: str) -> None:
    if value not in molecule.DEP_TYPE_TO_BYTE:
        raise ValueError(f"dep_type must be 'code' or 'dep_group', got {value!r}")


@attrs.frozen
class CellDep:
    """A cell the scripts read (code, or a dep group expanding to several cells)."""

    out_point: OutPoint
    dep_type: str = attrs.field(validator=_check_dep_type)

    @classmethod
    def from_rpc(cls, obj: object) -> CellDep:
        d = _rpc_dict(obj, "cell_dep")
        dep_type = d.get("dep_type")
        if not isinstance(dep_type, str) or dep_type not in molecule.DEP_TYPE_TO_BYTE:
            raise CkbJsonError(f"cell_dep.dep_type: invalid {dep_type!r}")
        return cls(OutPoint.from_rpc(d.get("out_point")), dep_type)

    def to_rpc(self) -> dict[str, Any]:
        return {"out_point": self.out_point.to_rpc(), "dep_type": self.dep_type}


@attrs.frozen
class CellInput:
    """A spent cell; ``since`` 0 means no time lock."""

    previous_output: OutPoint
    since: int = attrs.field(default=0, validator=_check_u64)

    @classmethod
    def from_rpc(cls, obj: object) -> CellInput:
        d = _rpc_dict(obj, "input")
        return cls(
            OutPoint.from_rpc(d.get("previous_output")),
            parse_hex_u64(d.get("since"), "input.since"),
        )

    def to_rpc(self) -> dict[str, Any]:
        return {"since": hex_uint(self.since), "previous_output": self.previous_output.to_rpc()}


@attrs.frozen
class CellOutput:
    """A new cell: capacity (shannons), lock and optional type script."""

    capacity: int = attrs.field(validator=_check_u64)
    lock: Script
    type_script: Script | None = None

    @classmethod
    def from_rpc(cls, obj: object) -> CellOutput:
        d = _rpc_dict(obj, "output")
        type_obj = d.get("type")
        return cls(
            parse_hex_u64(d.get("capacity"), "output.capacity"),
            Script.from_rpc(d.get("lock")),
            None if type_obj is None else Script.from_rpc(type_obj),
        )

    def to_rpc(self) -> dict[str, Any]:
        return {
            "capacity": hex_uint(self.capacity),
            "lock": self.lock.to_rpc(),
            "type": None if self.type_script is None else self.type_script.to_rpc(),
        }

    def min_capacity_shannons(self, data_len: int) -> int:
        return min_capacity_shannons(self.lock, self.type_script, data_len)


def _tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(items)


@attrs.frozen
class Transaction:
    """A CKB transaction (RawTransaction fields + witnesses)."""

    version: int = attrs.field(validator=_check_u32)
    cell_deps: tuple[CellDep, ...] = attrs.field(converter=_tuple)
    header_deps: tuple[bytes, ...] = attrs.field(converter=_tuple)
    inputs: tuple[CellInput, ...] = attrs.field(converter=_tuple)
    outputs: tuple[CellOutput, ...] = attrs.field(converter=_tuple)
    outputs_data: tuple[bytes, ...] = attrs.field(converter=_tuple)
    witnesses: tuple[bytes, ...] = attrs.field(converter=_tuple)

    def __attrs_post_init__(self) -> None:
        if len(self.outputs) != len(self.outputs_data):
            raise ValueError("outputs and outputs_data must have the same length")
        for h in self.header_deps:
            if len(h) != 32:
                raise ValueError("header_deps must be 32-byte hashes")

    # -- encodings --

    def raw_molecule(self) -> bytes:
        return molecule.serialize_raw_transaction(self)

    def to_molecule(self) -> bytes:
        return molecule.serialize_transaction(self)

    def hash(self) -> bytes:
        """The transaction hash: ckbhash of the molecule RawTransaction."""
        return ckb_hash(self.raw_molecule())

    def size_in_block_bytes(self) -> int:
        """Serialised size as a node counts it (Transaction + 4-byte offset in the block)."""
        return len(self.to_molecule()) + TX_SIZE_IN_BLOCK_OVERHEAD_BYTES

    def with_witnesses(self, witnesses: Iterable[bytes]) -> Transaction:
        return attrs.evolve(self, witnesses=tuple(witnesses))

    @classmethod
    def from_molecule(cls, data: bytes) -> Transaction:
        """Decode a molecule ``Transaction`` (strict)."""
        raw, witnesses = molecule.split_table(data, 2, "Transaction")
        version, deps, header_deps, inputs, outputs, outputs_data = molecule.split_table(
            raw, 6, "RawTransaction"
        )
        if len(version) != molecule.U32_SIZE_BYTES:
            raise molecule.MoleculeError("RawTransaction.version must be 4 bytes")
        cell_deps: list[CellDep] = []
        for item in molecule.split_fixvec(deps, molecule.CELL_DEP_SIZE_BYTES):
            dep_type = molecule.DEP_TYPE_FROM_BYTE.get(item[36])
            if dep_type is None:
                raise molecule.MoleculeError(f"invalid dep_type byte {item[36]}")
            cell_deps.append(CellDep(_out_point_from_molecule(item[:36]), dep_type))
        cell_inputs = [
            CellInput(_out_point_from_molecule(item[8:]), molecule.read_u64(item))
            for item in molecule.split_fixvec(inputs, molecule.CELL_INPUT_SIZE_BYTES)
        ]
        cell_outputs: list[CellOutput] = []
        for item in molecule.split_dynvec(outputs):
            capacity, lock, type_opt = molecule.split_table(item, 3, "CellOutput")
            if len(capacity) != molecule.U64_SIZE_BYTES:
                raise molecule.MoleculeError("CellOutput.capacity must be 8 bytes")
            cell_outputs.append(
                CellOutput(
                    molecule.read_u64(capacity),
                    molecule.deserialize_script(lock),
                    molecule.deserialize_script(type_opt) if type_opt else None,
                )
            )
        return cls(
            version=molecule.read_u32(version),
            cell_deps=cell_deps,
            header_deps=molecule.split_fixvec(header_deps, molecule.BYTE32_SIZE_BYTES),
            inputs=cell_inputs,
            outputs=cell_outputs,
            outputs_data=[molecule.read_bytes(d) for d in molecule.split_dynvec(outputs_data)],
            witnesses=[molecule.read_bytes(w) for w in molecule.split_dynvec(witnesses)],
        )

    @classmethod
    def from_rpc(cls, obj: object) -> Transaction:
        """Build from CKB RPC JSON (``send_transaction`` params / ``get_transaction``)."""
        d = _rpc_dict(obj, "transaction")
        return cls(
            version=parse_hex_u32(d.get("version"), "transaction.version"),
            cell_deps=[CellDep.from_rpc(x) for x in _rpc_list(d.get("cell_deps"), "cell_deps")],
            header_deps=[
                parse_hex_bytes(x, size=32, what="header_dep")
                for x in _rpc_list(d.get("header_deps"), "header_deps")
            ],
            inputs=[CellInput.from_rpc(x) for x in _rpc_list(d.get("inputs"), "inputs")],
            outputs=[CellOutput.from_rpc(x) for x in _rpc_list(d.get("outputs"), "outputs")],
            outputs_data=[
                parse_hex_bytes(x, what="outputs_data")
                for x in _rpc_list(d.get("outputs_data"), "outputs_data")
            ],
            witnesses=[
                parse_hex_bytes(x, what="witness")
                for x in _rpc_list(d.get("witnesses"), "witnesses")
            ],
        )

    def to_rpc(self) -> dict[str, Any]:
        """CKB RPC JSON (hex u32/u64, 0x-hex bytes), as ``send_transaction`` expects."""
        return {
            "version": hex_uint(self.version),
            "cell_deps": [d.to_rpc() for d in self.cell_deps],
            "header_deps": [hex_bytes(h) for h in self.header_deps],
            "inputs": [i.to_rpc() for i in self.inputs],
            "outputs": [o.to_rpc() for o in self.outputs],
            "outputs_data": [hex_bytes(d) for d in self.outputs_data],
            "witnesses": [hex_bytes(w) for w in self.witnesses],
        }


def _out_point_from_molecule(data: bytes) -> OutPoint:
    return OutPoint(data[:32], molecule.read_u32(data, 32))


def tx_hash(tx: Transaction) -> bytes:
    """ckbhash(molecule RawTransaction)."""
    return tx.hash()


def tx_to_rpc_json(tx: Transaction) -> dict[str, Any]:
    """The JSON object a CKB node's ``send_transaction`` takes as its first parameter."""
    return tx.to_rpc()


def tx_from_rpc_json(obj: object) -> Transaction:
    return Transaction.from_rpc(obj)


# --- well-known cell deps ----------------------------------------------------------------------

SECP256K1_DEP_GROUP_TX_HASH_MAINNET: Final = bytes.fromhex(
    "71a7ba8fc96349fea0ed3a5c47992e3b4084b031a42264a018e0072e8172e46c"
)
SECP256K1_DEP_GROUP_TX_HASH_TESTNET: Final = bytes.fromhex(
    "f8de3bb47d055cdf460d93a2a6e1b05f7432f9777c8c474abf4eec1d4aee5d37"
)


def secp256k1_cell_dep(network: str) -> CellDep:
    """The secp256k1-blake160 dep-group cell dep (RFC 0024) for ``mainnet`` or ``testnet``.

    A dev chain has its own genesis; its dep group must be supplied by the caller (the
    simulator in ``devchain`` uses the testnet value unless started otherwise).
    """
    if network == "mainnet":
        return CellDep(OutPoint(SECP256K1_DEP_GROUP_TX_HASH_MAINNET, 0), "dep_group")
    if network == "testnet":
        return CellDep(OutPoint(SECP256K1_DEP_GROUP_TX_HASH_TESTNET, 0), "dep_group")
    raise ValueError(f"no well-known secp256k1 dep group for network {network!r}")


# --- signing -----------------------------------------------------------------------------------


class SigningError(ValueError):
    """The transaction cannot be signed or verified as asked."""


def _u64le_len(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little")


def sighash_all_message(tx: Transaction, input_indices: Sequence[int]) -> bytes:
    """The 32-byte message the secp256k1-blake160 sighash-all lock checks for one group.

    ``input_indices`` are the inputs sharing the lock (the first one carries the signature).
    The first group witness must be a WitnessArgs; its lock is zeroed (65 bytes) for hashing.
    """
    if not input_indices:
        raise SigningError("empty lock group")
    first = input_indices[0]
    if first >= len(tx.witnesses):
        raise SigningError(f"missing witness for input {first}")
    try:
        _lock, input_type, output_type = molecule.deserialize_witness_args(tx.witnesses[first])
    except molecule.MoleculeError as exc:
        raise SigningError(f"witness {first} is not a WitnessArgs: {exc}") from exc
    zeroed = molecule.serialize_witness_args(bytes(SIGNATURE_SIZE_BYTES), input_type, output_type)
    hasher = new_ckb_hasher()
    hasher.update(tx.hash())
    hasher.update(_u64le_len(zeroed))
    hasher.update(zeroed)
    for i in input_indices[1:]:
        if i >= len(tx.witnesses):
            break
        hasher.update(_u64le_len(tx.witnesses[i]))
        hasher.update(tx.witnesses[i])
    for w in tx.witnesses[len(tx.inputs) :]:
        hasher.update(_u64le_len(w))
        hasher.update(w)
    return hasher.digest()


def pubkey_compressed(private_key: bytes) -> bytes:
    return coincurve.PrivateKey(private_key).public_key.format(compressed=True)


def lock_args_for_key(private_key: bytes) -> bytes:
    """blake160(compressed public key): the args of the key's secp256k1-blake160 lock."""
    return blake160(pubkey_compressed(private_key))


def lock_for_key(private_key: bytes) -> Script:
    return Script.secp256k1_blake160(lock_args_for_key(private_key))


def sign_recoverable(private_key: bytes, message: bytes) -> bytes:
    """65-byte r | s | recovery id over a 32-byte message (no extra hashing, RFC 6979)."""
    return bytes(coincurve.PrivateKey(private_key).sign_recoverable(message, hasher=None))


def recover_lock_args(signature: bytes, message: bytes) -> bytes:
    """blake160 of the compressed pubkey recovered from a 65-byte signature."""
    if len(signature) != SIGNATURE_SIZE_BYTES:
        raise SigningError(f"signature must be 65 bytes, got {len(signature)}")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(signature, message, hasher=None)
    except Exception as exc:
        raise SigningError(f"signature does not recover a public key: {exc}") from exc
    return blake160(pub.format(compressed=True))


def sign_group(tx: Transaction, input_indices: Sequence[int], private_key: bytes) -> Transaction:
    """Sign one secp256k1-blake160 lock group; returns the tx with the group's first witness set."""
    message = sighash_all_message(tx, input_indices)
    signature = sign_recoverable(private_key, message)
    first = input_indices[0]
    _lock, input_type, output_type = molecule.deserialize_witness_args(tx.witnesses[first])
    witnesses = list(tx.witnesses)
    witnesses[first] = molecule.serialize_witness_args(signature, input_type, output_type)
    return tx.with_witnesses(witnesses)


def verify_group(tx: Transaction, input_indices: Sequence[int], expected_args: bytes) -> None:
    """Check a group's signature recovers to ``expected_args``; raise ``SigningError`` if not."""
    first = input_indices[0]
    if first >= len(tx.witnesses):
        raise SigningError(f"missing witness for input {first}")
    try:
        lock, _it, _ot = molecule.deserialize_witness_args(tx.witnesses[first])
    except molecule.MoleculeError as exc:
        raise SigningError(f"witness {first} is not a WitnessArgs: {exc}") from exc
    if lock is None or len(lock) != SIGNATURE_SIZE_BYTES:
        raise SigningError(f"witness {first} lock must hold a 65-byte signature")
    message = sighash_all_message(tx, input_indices)
    if recover_lock_args(lock, message) != expected_args:
        raise SigningError("signature does not match the input lock")


def lock_groups(input_locks: Sequence[Script]) -> dict[Script, list[int]]:
    """Group input indices by lock script, in first-appearance order."""
    groups: dict[Script, list[int]] = {}
    for i, lock in enumerate(input_locks):
        groups.setdefault(lock, []).append(i)
    return groups


# --- fees and payouts ----------------------------------------------------------------------------


def fee_for_size_shannons(size_bytes: int, fee_rate_shannons_per_kb: int) -> int:
    """``ceil(size * rate / 1000)`` in shannons (integer arithmetic)."""
    if size_bytes < 0 or fee_rate_shannons_per_kb < 0:
        raise ValueError("size and fee rate must be >= 0")
    return -(-size_bytes * fee_rate_shannons_per_kb // BYTES_PER_KB)


def fee_for_tx_shannons(tx: Transaction, fee_rate_shannons_per_kb: int) -> int:
    return fee_for_size_shannons(tx.size_in_block_bytes(), fee_rate_shannons_per_kb)


@attrs.frozen
class LiveCell:
    """A live (unspent) cell as the indexer reports it."""

    out_point: OutPoint
    capacity: int = attrs.field(validator=_check_u64)
    lock: Script
    type_script: Script | None = None
    data: bytes = b""
    block_number: int = 0

    @property
    def is_plain(self) -> bool:
        """No type script and no data: pure CKB, safe to spend as a payment source."""
        return self.type_script is None and not self.data


@attrs.frozen
class Payout:
    """One output of a payout transaction."""

    lock: Script
    amount_shannons: int


@attrs.frozen
class UnsignedTx:
    """A built payout transaction with placeholder witnesses, ready for ``sign_payout``."""

    tx: Transaction
    input_cells: tuple[LiveCell, ...]
    fee_shannons: int
    change_shannons: int
    payout_output_indices: tuple[int, ...]

    @property
    def tx_hash(self) -> bytes:
        return self.tx.hash()


@attrs.frozen
class SignedTx:
    """A fully signed transaction plus its hash (commit both before broadcasting)."""

    tx: Transaction
    tx_hash: bytes
    fee_shannons: int

    def to_molecule(self) -> bytes:
        return self.tx.to_molecule()

    @classmethod
    def from_molecule(cls, data: bytes, fee_shannons: int) -> SignedTx:
        tx = Transaction.from_molecule(data)
        return cls(tx, tx.hash(), fee_shannons)


class PayoutError(ValueError):
    """A payout cannot be built as requested."""


class PayoutBelowMinimumCapacity(PayoutError):
    def __init__(self, amount_shannons: int, min_shannons: int) -> None:
        self.amount_shannons = amount_shannons
        self.min_shannons = min_shannons
        super().__init__(
            f"an on-chain payout must be at least {min_shannons} shannons "
            f"({min_shannons // 100_000_000} CKB) for this address, got {amount_shannons}"
        )


class InsufficientFunds(PayoutError):
    """The wallet's spendable cells do not cover payouts + fee."""

    def __init__(self, required_shannons: int, available_shannons: int) -> None:
        self.required_shannons = required_shannons
        self.available_shannons = available_shannons
        super().__init__(
            f"hot wallet has {available_shannons} shannons spendable, "
            f"needs at least {required_shannons} (payouts + fee)"
        )


def _assemble(
    cells: Sequence[LiveCell],
    payouts: Sequence[Payout],
    change: tuple[Script, int] | None,
    cell_deps: Sequence[CellDep],
) -> Transaction:
    outputs = [CellOutput(p.amount_shannons, p.lock) for p in payouts]
    if change is not None:
        outputs.append(CellOutput(change[1], change[0]))
    groups = lock_groups([c.lock for c in cells])
    witnesses = [b""] * len(cells)
    for indices in groups.values():
        witnesses[indices[0]] = PLACEHOLDER_WITNESS
    return Transaction(
        version=0,
        cell_deps=cell_deps,
        header_deps=(),
        inputs=[CellInput(c.out_point) for c in cells],
        outputs=outputs,
        outputs_data=[b""] * len(outputs),
        witnesses=witnesses,
    )


def build_payout_tx(
    input_cells: Sequence[LiveCell],
    payouts: Sequence[tuple[Script, int]] | Sequence[Payout],
    change_lock: Script,
    fee_rate_shannons_per_kb: int,
    cell_deps: Sequence[CellDep],
) -> UnsignedTx:
    """Build an unsigned payout transaction (pure; deterministic for the same arguments).

    - Only plain cells (no type script, no data) are spent; the caller passes the wallet's
      live cells minus any used by a payout that is not yet confirmed.
    - Cells are taken largest first. Change is added once it meets its own minimum capacity
      (61 CKB for a secp256k1 lock); if no prefix of the cells allows change, the smallest
      prefix that covers payouts + fee is used and the leftover (< change minimum) becomes fee.
    - Raises ``PayoutBelowMinimumCapacity`` for a payout smaller than its cell's minimum and
      ``InsufficientFunds`` (with required/available shannons) if the cells cannot cover it.
    """
    if not payouts:
        raise PayoutError("no payouts given")
    if fee_rate_shannons_per_kb < 0:
        raise PayoutError("fee rate must be >= 0")
    normalized = [p if isinstance(p, Payout) else Payout(p[0], p[1]) for p in payouts]
    for p in normalized:
        minimum = min_capacity_shannons(p.lock)
        if p.amount_shannons < minimum:
            raise PayoutBelowMinimumCapacity(p.amount_shannons, minimum)
    needed = sum(p.amount_shannons for p in normalized)
    change_min = min_capacity_shannons(change_lock)
    candidates = sorted(
        (c for c in input_cells if c.is_plain),
        key=lambda c: (-c.capacity, c.out_point.tx_hash, c.out_point.index),
    )
    selected: list[LiveCell] = []
    total = 0
    fallback: UnsignedTx | None = None
    last_fee = 0
    for cell in candidates:
        selected.append(cell)
        total += cell.capacity
        draft = _assemble(selected, normalized, (change_lock, 0), cell_deps)
        fee_with_change = fee_for_tx_shannons(draft, fee_rate_shannons_per_kb)
        last_fee = fee_with_change
        change = total - needed - fee_with_change
        if change >= change_min:
            tx = _assemble(selected, normalized, (change_lock, change), cell_deps)
            return UnsignedTx(
                tx, tuple(selected), fee_with_change, change, tuple(range(len(normalized)))
            )
        if fallback is None:
            no_change = _assemble(selected, normalized, None, cell_deps)
            fee_no_change = fee_for_tx_shannons(no_change, fee_rate_shannons_per_kb)
            if total - needed >= fee_no_change:
                fallback = UnsignedTx(
                    no_change, tuple(selected), total - needed, 0, tuple(range(len(normalized)))
                )
    if fallback is not None:
        return fallback
    if not selected:
        empty = _assemble([], normalized, None, cell_deps)
        last_fee = fee_for_tx_shannons(empty, fee_rate_shannons_per_kb)
    raise InsufficientFunds(needed + last_fee, total)


def sign_payout(unsigned: UnsignedTx, private_key: bytes) -> SignedTx:
    """Sign every input group of ``unsigned`` with ``private_key`` (all must be its lock)."""
    own_lock = lock_for_key(private_key)
    tx = unsigned.tx
    for lock, indices in lock_groups([c.lock for c in unsigned.input_cells]).items():
        if lock != own_lock:
            raise SigningError("an input is not locked by the hot-wallet key")
        tx = sign_group(tx, indices, private_key)
    return SignedTx(tx, tx.hash(), unsigned.fee_shannons)


def estimate_max_fee_shannons(
    num_inputs: int,
    payout_locks: Sequence[Script],
    change_lock: Script,
    fee_rate_shannons_per_kb: int,
    cell_deps: Sequence[CellDep],
) -> int:
    """Fee of a payout tx with ``num_inputs`` inputs, the payouts and a change output.

    Useful to reserve a fee before the inputs are known.
    """
    dummy = LiveCell(OutPoint(bytes(32), 0), 0, change_lock)
    draft = _assemble(
        [dummy] * num_inputs,
        [Payout(lock, 0) for lock in payout_locks],
        (change_lock, 0),
        cell_deps,
    )
    return fee_for_tx_shannons(draft, fee_rate_shannons_per_kb)
