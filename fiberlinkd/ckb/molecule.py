"""Molecule serialisation for the CKB transaction structures.

Molecule (CKB RFC 0008) has a handful of layouts, all little-endian:

- ``struct`` / fixed arrays: the fields concatenated (``OutPoint`` = tx_hash(32) | index u32,
  ``CellInput`` = since u64 | OutPoint, ``CellDep`` = OutPoint | dep_type byte);
- ``fixvec`` (vector of fixed-size items, incl. ``Bytes``): item count u32 | items;
- ``dynvec`` (vector of variable-size items): total size u32 | one u32 offset per item | items;
- ``table``: same header as a dynvec (total size, one offset per field) then the fields;
- ``option``: empty for None, else the inner value.

The structures (CKB ``blockchain.mol``)::

    Script         table  { code_hash: Byte32, hash_type: byte, args: Bytes }
    CellOutput     table  { capacity: Uint64, lock: Script, type_: ScriptOpt }
    RawTransaction table  { version: Uint32, cell_deps: CellDepVec, header_deps: Byte32Vec,
                            inputs: CellInputVec, outputs: CellOutputVec,
                            outputs_data: BytesVec }
    Transaction    table  { raw: RawTransaction, witnesses: BytesVec }
    WitnessArgs    table  { lock: BytesOpt, input_type: BytesOpt, output_type: BytesOpt }

This module holds the generic encoders/decoders and the typed encoders; the typed models
live in ``fiberlinkd.ckb.tx`` (their ``from_molecule`` constructors use the decoders here).
Decoders are strict: sizes and offsets must be exactly consistent, else ``MoleculeError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from fiberlinkd.ckb.address import Script, hash_type_from_byte

if TYPE_CHECKING:
    from fiberlinkd.ckb.tx import CellDep, CellInput, CellOutput, OutPoint, Transaction

U32_SIZE_BYTES: Final = 4
U64_SIZE_BYTES: Final = 8
BYTE32_SIZE_BYTES: Final = 32
OUT_POINT_SIZE_BYTES: Final = 36
CELL_INPUT_SIZE_BYTES: Final = 44
CELL_DEP_SIZE_BYTES: Final = 37

DEP_TYPE_TO_BYTE: Final = {"code": 0, "dep_group": 1}
DEP_TYPE_FROM_BYTE: Final = {0: "code", 1: "dep_group"}


class MoleculeError(ValueError):
    """Bytes that are not a well-formed molecule value of the expected type."""


# --- generic encoders ------------------------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def byte32(b: bytes) -> bytes:
    if len(b) != BYTE32_SIZE_BYTES:
        raise MoleculeError(f"Byte32 needs 32 bytes, got {len(b)}")
    return b


def fixvec(items: Sequence[bytes]) -> bytes:
    """A vector of fixed-size items: count u32 then the items."""
    return u32(len(items)) + b"".join(items)


def bytes_(data: bytes) -> bytes:
    """``Bytes`` = fixvec<byte>: length u32 then the bytes."""
    return u32(len(data)) + data


def dynvec(items: Sequence[bytes]) -> bytes:
    """A vector of variable-size items: total size, one offset per item, items."""
    header_size = U32_SIZE_BYTES * (1 + len(items))
    offsets: list[bytes] = []
    pos = header_size
    for item in items:
        offsets.append(u32(pos))
        pos += len(item)
    return u32(pos) + b"".join(offsets) + b"".join(items)


def table(fields: Sequence[bytes]) -> bytes:
    """A table has the same layout as a dynvec of its fields."""
    return dynvec(fields)


def option(inner: bytes | None) -> bytes:
    return b"" if inner is None else inner


# --- generic decoders ------------------------------------------------------------------------


def read_u32(data: bytes, offset: int = 0) -> int:
    if len(data) < offset + U32_SIZE_BYTES:
        raise MoleculeError("truncated Uint32")
    return int(struct.unpack_from("<I", data, offset)[0])


def read_u64(data: bytes, offset: int = 0) -> int:
    if len(data) < offset + U64_SIZE_BYTES:
        raise MoleculeError("truncated Uint64")
    return int(struct.unpack_from("<Q", data, offset)[0])


def split_fixvec(data: bytes, item_size: int) -> list[bytes]:
    """Split a fixvec of ``item_size``-byte items (exact length required)."""
    count = read_u32(data)
    if len(data) != U32_SIZE_BYTES + count * item_size:
        raise MoleculeError(f"fixvec of {count} x {item_size} bytes has wrong size {len(data)}")
    start = U32_SIZE_BYTES
    return [data[start + i * item_size : start + (i + 1) * item_size] for i in range(count)]


def read_bytes(data: bytes) -> bytes:
    """Decode a ``Bytes`` value (exact length required)."""
    return b"".join(split_fixvec(data, 1))


def split_dynvec(data: bytes) -> list[bytes]:
    """Split a dynvec (or a table) into its items, checking every offset."""
    total = read_u32(data)
    if total != len(data):
        raise MoleculeError(f"declared size {total} but have {len(data)} bytes")
    if total == U32_SIZE_BYTES:
        return []
    first = read_u32(data, U32_SIZE_BYTES)
    if first % U32_SIZE_BYTES or first < 2 * U32_SIZE_BYTES or first > total:
        raise MoleculeError(f"bad first offset {first}")
    count = first // U32_SIZE_BYTES - 1
    offsets = [read_u32(data, U32_SIZE_BYTES * (1 + i)) for i in range(count)]
    offsets.append(total)
    items: list[bytes] = []
    for i in range(count):
        if offsets[i] > offsets[i + 1]:
            raise MoleculeError("offsets are not ascending")
        items.append(data[offsets[i] : offsets[i + 1]])
    return items


def split_table(data: bytes, field_count: int, what: str) -> list[bytes]:
    """Split a table that must have exactly ``field_count`` fields."""
    fields = split_dynvec(data)
    if len(fields) != field_count:
        raise MoleculeError(f"{what}: expected {field_count} fields, got {len(fields)}")
    return fields


# --- typed encoders --------------------------------------------------------------------------


def serialize_script(script: Script) -> bytes:
    return table([byte32(script.code_hash), bytes([script.hash_type_byte]), bytes_(script.args)])


def deserialize_script(data: bytes) -> Script:
    code_hash, hash_type, args = split_table(data, 3, "Script")
    if len(code_hash) != BYTE32_SIZE_BYTES or len(hash_type) != 1:
        raise MoleculeError("Script: bad code_hash or hash_type size")
    try:
        return Script(code_hash, hash_type_from_byte(hash_type[0]), read_bytes(args))
    except MoleculeError:
        raise
    except ValueError as exc:
        raise MoleculeError(f"Script: {exc}") from exc


def serialize_out_point(out_point: OutPoint) -> bytes:
    return byte32(out_point.tx_hash) + u32(out_point.index)


def serialize_cell_input(cell_input: CellInput) -> bytes:
    return u64(cell_input.since) + serialize_out_point(cell_input.previous_output)


def serialize_cell_dep(cell_dep: CellDep) -> bytes:
    return serialize_out_point(cell_dep.out_point) + bytes([DEP_TYPE_TO_BYTE[cell_dep.dep_type]])


def serialize_cell_output(output: CellOutput) -> bytes:
    type_script = output.type_script
    return table(
        [
            u64(output.capacity),
            serialize_script(output.lock),
            option(None if type_script is None else serialize_script(type_script)),
        ]
    )


def serialize_raw_transaction(tx: Transaction) -> bytes:
    """The RawTransaction of ``tx`` (everything but the witnesses): the tx-hash preimage."""
    return table(
        [
            u32(tx.version),
            fixvec([serialize_cell_dep(d) for d in tx.cell_deps]),
            fixvec([byte32(h) for h in tx.header_deps]),
            fixvec([serialize_cell_input(i) for i in tx.inputs]),
            dynvec([serialize_cell_output(o) for o in tx.outputs]),
            dynvec([bytes_(d) for d in tx.outputs_data]),
        ]
    )


def serialize_transaction(tx: Transaction) -> bytes:
    """The full Transaction (raw + witnesses), as it is stored in a block."""
    return table([serialize_raw_transaction(tx), dynvec([bytes_(w) for w in tx.witnesses])])


def serialize_witness_args(
    lock: bytes | None, input_type: bytes | None = None, output_type: bytes | None = None
) -> bytes:
    return table(
        [
            option(None if lock is None else bytes_(lock)),
            option(None if input_type is None else bytes_(input_type)),
            option(None if output_type is None else bytes_(output_type)),
        ]
    )


def deserialize_witness_args(data: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    """Decode WitnessArgs into ``(lock, input_type, output_type)`` (None = absent)."""
    fields = split_table(data, 3, "WitnessArgs")
    lock, input_type, output_type = (read_bytes(f) if f else None for f in fields)
    return lock, input_type, output_type
