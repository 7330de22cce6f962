"""A CKB dev-chain simulator: a loopback CKB node + indexer that really validates.

It serves JSON-RPC over HTTP (a hand-written ASGI app under hypercorn's trio worker) and
implements what ``fiberlinkd.ckb.client`` uses: ``get_tip_block_number``,
``get_blockchain_info``, ``get_block_hash``, ``get_header``, ``get_cells`` (indexer, paginated,
``exact``/``prefix`` search on a lock or type script), ``send_transaction`` and
``get_transaction``.

``send_transaction`` checks what a node would: every input exists, is unspent and not already
spent by a pending transaction; ``since`` is 0; every input is locked by secp256k1-blake160 and
the network's secp256k1 dep group is among the cell deps; outputs and outputs_data match;
every output holds at least its minimum capacity; outputs do not exceed inputs and the fee
meets the minimum fee rate (1000 shannons/KB of serialised size); the tx hash is computed by
the same rules; each lock group's sighash-all signature recovers to the lock's args. Errors use
CKB's codes: -301 resolve (``Dead``/``Unknown`` out point), -302 verify, -1104 fee rate, -1107
duplicate in pool, -1111 conflict with a pending transaction. Re-sending a committed
transaction fails with -301 ``Dead``, as on a real node.

Accepted transactions wait in a mempool (status ``pending``) until ``sim_mine``.

Control methods (JSON-RPC params are one object):

- ``sim_fund {address, amount}`` — create a committed plain cell for ``address`` in a new
  block. ``amount`` is in **shannons**: a JSON integer, a decimal string (``"10000000000"``)
  or a ``0x`` hex string. Returns ``{tx_hash, out_point, block_number}``.
- ``sim_mine {blocks}`` — mine ``blocks`` (default 1) blocks; the first commits the whole
  mempool. Returns ``{tip_block_number, committed}``.
- ``sim_fault {method, kind, count}`` — make the next ``count`` (default 1) calls of
  ``method`` (or ``"*"``) misbehave: ``timeout`` (no reply until the client gives up; not
  executed), ``http_500`` (not executed), ``bad_json`` (HTTP 200, unparsable body; not
  executed), ``node_error`` (JSON-RPC error -1; not executed), ``drop_reply`` (executed, then
  the connection is dropped mid-reply).

``open_devchain`` runs it in-process for tests; ``add_cli`` registers
``fiberlinkd devchain --listen 127.0.0.1:PORT --network testnet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from fiberlinkd.ckb.address import (
    MAINNET_GENESIS_HASH,
    TESTNET_GENESIS_HASH,
    AddressError,
    Script,
    hex_bytes,
    hex_uint,
    min_capacity_shannons,
    parse_address,
    parse_hex_bytes,
    parse_hex_u64,
)
from fiberlinkd.ckb.hashing import ckb_hash
from fiberlinkd.ckb.tx import (
    CellDep,
    CellInput,
    CellOutput,
    OutPoint,
    SigningError,
    Transaction,
    fee_for_tx_shannons,
    lock_groups,
    secp256k1_cell_dep,
    verify_group,
)

log = logging.getLogger(__name__)

MIN_FEE_RATE_SHANNONS_PER_KB: Final = 1_000
TIMEOUT_FAULT_MAX_SECONDS: Final = 120.0
MAX_REQUEST_BODY_BYTES: Final = 4 * 1024 * 1024
MAX_GET_CELLS_LIMIT: Final = 10_000
DEVNET_GENESIS_HASH: Final = ckb_hash(b"fiberlinkd devchain genesis")
DEVNET_SECP256K1_DEP_GROUP: Final = CellDep(
    OutPoint(ckb_hash(b"fiberlinkd devchain secp256k1 dep group"), 0), "dep_group"
)
FAULT_KINDS: Final = ("timeout", "http_500", "bad_json", "node_error", "drop_reply")

ERROR_INVALID_PARAMS: Final = -32602
ERROR_METHOD_NOT_FOUND: Final = -32601
ERROR_PARSE: Final = -32700
ERROR_INVALID_REQUEST: Final = -32600
ERROR_INTERNAL: Final = -1
ERROR_RESOLVE: Final = -301
ERROR_VERIFY: Final = -302
ERROR_MIN_FEE_RATE: Final = -1104
ERROR_DUPLICATED: Final = -1107
ERROR_RBF_REJECTED: Final = -1111

_CHAIN_NAMES: Final = {"mainnet": "ckb", "testnet": "ckb_testnet", "devnet": "ckb_dev"}


class RpcError(Exception):
    """A JSON-RPC error the simulator returns to the caller."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code} {message}")


@attrs.define
class CellRecord:
    """A cell the chain created; ``spent_by`` is set when a committed tx consumes it."""

    out_point: OutPoint
    output: CellOutput
    data: bytes
    block_number: int
    tx_index: int
    sequence: int
    spent_by: bytes | None = None


@attrs.define
class TxRecord:
    tx: Transaction
    status: str  # "pending" | "committed"
    block_number: int | None = None


@attrs.define
class Fault:
    kind: str
    remaining: int


def _params_object(params: object) -> dict[str, Any]:
    if isinstance(params, list) and len(params) == 1 and isinstance(params[0], dict):
        return params[0]
    if isinstance(params, dict):
        return params
    raise RpcError(ERROR_INVALID_PARAMS, "params must be one object")


def _parse_amount_shannons(value: object) -> int:
    if isinstance(value, bool):
        raise RpcError(ERROR_INVALID_PARAMS, "amount must be shannons (int or string)")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.startswith("0x"):
        try:
            amount = parse_hex_u64(value, "amount")
        except ValueError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, str(exc)) from exc
    elif isinstance(value, str) and value.isdigit():
        amount = int(value)
    else:
        raise RpcError(ERROR_INVALID_PARAMS, "amount must be shannons: integer, decimal or 0x hex")
    if not 0 < amount < 1 << 64:
        raise RpcError(ERROR_INVALID_PARAMS, "amount out of range")
    return amount


class DevChain:
    """The in-process chain state. All methods are synchronous and atomic under trio."""

    def __init__(self, network: str = "testnet") -> None:
        if network not in _CHAIN_NAMES:
            raise ValueError(f"network must be mainnet, testnet or devnet, got {network!r}")
        self.network = network
        self.genesis_hash = {
            "mainnet": MAINNET_GENESIS_HASH,
            "testnet": TESTNET_GENESIS_HASH,
        }.get(network, DEVNET_GENESIS_HASH)
        self.secp256k1_cell_dep = (
            DEVNET_SECP256K1_DEP_GROUP if network == "devnet" else secp256k1_cell_dep(network)
        )
        self.tip_block_number = 0
        self.cells: dict[OutPoint, CellRecord] = {}
        self.txs: dict[bytes, TxRecord] = {}
        self.mempool: list[bytes] = []
        self.pool_spent: dict[OutPoint, bytes] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.calls: list[str] = []
        self._sequence = 0

    # -- blocks --

    def block_hash(self, number: int) -> bytes:
        if number == 0:
            return self.genesis_hash
        return ckb_hash(self.genesis_hash + number.to_bytes(8, "little"))

    def _commit(self, tx: Transaction, block_number: int, tx_index: int) -> bytes:
        h = tx.hash()
        for cell_input in tx.inputs:
            record = self.cells.get(cell_input.previous_output)
            if record is not None:
                record.spent_by = h
        for i, (output, data) in enumerate(zip(tx.outputs, tx.outputs_data, strict=True)):
            self._sequence += 1
            op = OutPoint(h, i)
            self.cells[op] = CellRecord(op, output, data, block_number, tx_index, self._sequence)
        self.txs[h] = TxRecord(tx, "committed", block_number)
        return h

    def mine(self, blocks: int = 1) -> list[bytes]:
        """Mine ``blocks`` blocks; the first commits every pending transaction in order."""
        if blocks < 1:
            raise ValueError("blocks must be >= 1")
        committed: list[bytes] = []
        for b in range(blocks):
            self.tip_block_number += 1
            if b == 0:
                for index, h in enumerate(self.mempool, start=1):
                    self._commit(self.txs[h].tx, self.tip_block_number, index)
                    committed.append(h)
                self.mempool.clear()
                self.pool_spent.clear()
        return committed

    def fund(self, lock: Script, amount_shannons: int) -> OutPoint:
        """Create a committed plain cell for ``lock`` in a new block (a cellbase-like tx)."""
        if amount_shannons < min_capacity_shannons(lock):
            raise ValueError("amount is below the cell's minimum capacity for this lock")
        self.tip_block_number += 1
        cellbase = Transaction(
            version=0,
            cell_deps=(),
            header_deps=(),
            inputs=[CellInput(OutPoint(bytes(32), 0xFFFFFFFF), self._sequence + 1)],
            outputs=[CellOutput(amount_shannons, lock)],
            outputs_data=[b""],
            witnesses=[],
        )
        h = self._commit(cellbase, self.tip_block_number, 0)
        return OutPoint(h, 0)

    # -- queries (also handy for tests) --

    def live_cells(self, lock: Script) -> list[CellRecord]:
        """Committed, unspent cells with exactly this lock (what the indexer reports)."""
        return sorted(
            (c for c in self.cells.values() if c.spent_by is None and c.output.lock == lock),
            key=lambda c: c.sequence,
        )

    def balance_shannons(self, lock: Script) -> int:
        return sum(c.output.capacity for c in self.live_cells(lock))

    def committed_outputs_to(self, lock: Script) -> list[CellRecord]:
        """Every committed output ever created for ``lock`` (spent or not), oldest first."""
        return sorted(
            (c for c in self.cells.values() if c.output.lock == lock), key=lambda c: c.sequence
        )

    def add_fault(self, method: str, kind: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self.faults.setdefault(method, []).append(Fault(kind, count))

    def take_fault(self, method: str) -> str | None:
        for key in (method, "*"):
            queue = self.faults.get(key)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.pop(0)
                return fault.kind
        return None

    # -- transaction validation --

    def submit(self, tx: Transaction) -> bytes:
        """Validate and accept ``tx`` into the mempool; raise ``RpcError`` like a node."""
        h = tx.hash()
        existing = self.txs.get(h)
        if existing is not None and existing.status == "pending":
            raise RpcError(
                ERROR_DUPLICATED,
                f"PoolRejectedDuplicatedTransaction: Transaction({hex_bytes(h)}) already exists "
                "in transaction_pool",
            )
        if not tx.inputs:
            raise RpcError(ERROR_VERIFY, "Verification failed Transaction(Empty(Inputs))")
        seen: set[OutPoint] = set()
        input_cells: list[CellRecord] = []
        for cell_input in tx.inputs:
            op = cell_input.previous_output
            if op in seen:
                raise RpcError(ERROR_VERIFY, "Verification failed Transaction(DuplicateInputs)")
            seen.add(op)
            record = self.cells.get(op)
            if record is None:
                raise RpcError(
                    ERROR_RESOLVE,
                    f"TransactionFailedToResolve: Resolve failed Unknown(OutPoint({op}))",
                )
            if record.spent_by is not None:
                raise RpcError(
                    ERROR_RESOLVE,
                    f"TransactionFailedToResolve: Resolve failed Dead(OutPoint({op}))",
                )
            conflict = self.pool_spent.get(op)
            if conflict is not None:
                raise RpcError(
                    ERROR_RBF_REJECTED,
                    f"RBF rejected: input {op} is already spent by pending transaction "
                    f"{hex_bytes(conflict)}",
                )
            if cell_input.since != 0:
                raise RpcError(
                    ERROR_VERIFY, "Verification failed: the simulator supports since=0 only"
                )
            input_cells.append(record)
        if tx.header_deps:
            raise RpcError(
                ERROR_VERIFY, "Verification failed: the simulator supports no header_deps"
            )
        if len(tx.outputs) != len(tx.outputs_data):
            raise RpcError(
                ERROR_VERIFY, "Verification failed Transaction(OutputsDataLengthMismatch)"
            )
        for i, (output, data) in enumerate(zip(tx.outputs, tx.outputs_data, strict=True)):
            minimum = min_capacity_shannons(output.lock, output.type_script, len(data))
            if output.capacity < minimum:
                raise RpcError(
                    ERROR_VERIFY,
                    f"Verification failed Transaction(InsufficientCellCapacity(Outputs[{i}]: "
                    f"occupied {minimum} > capacity {output.capacity}))",
                )
        total_in = sum(c.output.capacity for c in input_cells)
        total_out = sum(o.capacity for o in tx.outputs)
        if total_out > total_in:
            raise RpcError(
                ERROR_VERIFY,
                f"Verification failed Transaction(OutputsSumOverflow: outputs {total_out} > "
                f"inputs {total_in})",
            )
        if self.secp256k1_cell_dep not in tx.cell_deps:
            raise RpcError(
                ERROR_RESOLVE,
                "TransactionFailedToResolve: the secp256k1 dep group cell dep is missing",
            )
        for lock, indices in lock_groups([c.output.lock for c in input_cells]).items():
            if not lock.is_secp256k1_blake160():
                raise RpcError(
                    ERROR_VERIFY,
                    "Verification failed: the simulator only unlocks secp256k1-blake160 locks",
                )
            try:
                verify_group(tx, indices, lock.args)
            except SigningError as exc:
                raise RpcError(
                    ERROR_VERIFY,
                    f"Verification failed Script(TransactionScriptError {{ source: "
                    f"Inputs[{indices[0]}].Lock, cause: ValidationFailure: {exc} }})",
                ) from exc
        fee = total_in - total_out
        min_fee = fee_for_tx_shannons(tx, MIN_FEE_RATE_SHANNONS_PER_KB)
        if fee < min_fee:
            raise RpcError(
                ERROR_MIN_FEE_RATE,
                f"PoolRejectedTransactionByMinFeeRate: The min fee rate is "
                f"{MIN_FEE_RATE_SHANNONS_PER_KB} shannons/KW, requires at least {min_fee} "
                f"shannons, but the fee is {fee}",
            )
        self.txs[h] = TxRecord(tx, "pending")
        self.mempool.append(h)
        for op in seen:
            self.pool_spent[op] = h
        return h

    # -- JSON-RPC dispatch --

    def dispatch(self, method: str, params: Any) -> Any:
        self.calls.append(method)
        handler = _METHODS.get(method)
        if handler is None:
            raise RpcError(ERROR_METHOD_NOT_FOUND, f"Method not found: {method}")
        if not isinstance(params, list | dict):
            raise RpcError(ERROR_INVALID_PARAMS, "params must be an array or object")
        return handler(self, params)

    def _rpc_get_tip_block_number(self, params: Any) -> Any:
        return hex_uint(self.tip_block_number)

    def _rpc_get_blockchain_info(self, params: Any) -> Any:
        return {
            "chain": _CHAIN_NAMES[self.network],
            "is_initial_block_download": False,
            "median_time": "0x0",
            "epoch": "0x0",
            "difficulty": "0x1",
            "alerts": [],
        }

    def _rpc_get_block_hash(self, params: Any) -> Any:
        number = _u64_param(params, 0, "block_number")
        if number > self.tip_block_number:
            return None
        return hex_bytes(self.block_hash(number))

    def _rpc_get_header(self, params: Any) -> Any:
        block_hash = _bytes_param(params, 0, "block_hash")
        for n in range(self.tip_block_number + 1):
            if self.block_hash(n) == block_hash:
                return {"number": hex_uint(n), "hash": hex_bytes(block_hash)}
        return None

    def _rpc_send_transaction(self, params: Any) -> Any:
        if not isinstance(params, list) or not 1 <= len(params) <= 2:
            raise RpcError(ERROR_INVALID_PARAMS, "send_transaction(tx, outputs_validator?)")
        if len(params) == 2 and params[1] not in (None, "passthrough", "well_known_scripts_only"):
            raise RpcError(ERROR_INVALID_PARAMS, "invalid outputs_validator")
        try:
            tx = Transaction.from_rpc(params[0])
        except ValueError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, f"Invalid params: {exc}") from exc
        return hex_bytes(self.submit(tx))

    def _rpc_get_transaction(self, params: Any) -> Any:
        h = _bytes_param(params, 0, "tx_hash")
        record = self.txs.get(h)
        if record is None:
            return {
                "transaction": None,
                "cycles": None,
                "time_added_to_pool": None,
                "tx_status": {
                    "status": "unknown",
                    "block_hash": None,
                    "block_number": None,
                    "reason": None,
                },
            }
        tx_json = {**record.tx.to_rpc(), "hash": hex_bytes(h)}
        committed = record.status == "committed" and record.block_number is not None
        return {
            "transaction": tx_json,
            "cycles": None,
            "tx_status": {
                "status": record.status,
                "block_hash": hex_bytes(self.block_hash(record.block_number))
                if committed and record.block_number is not None
                else None,
                "block_number": hex_uint(record.block_number)
                if committed and record.block_number is not None
                else None,
                "reason": None,
            },
        }

    def _rpc_get_cells(self, params: Any) -> Any:
        if not isinstance(params, list) or not 3 <= len(params) <= 4:
            raise RpcError(ERROR_INVALID_PARAMS, "get_cells(search_key, order, limit, after?)")
        search_key, order = params[0], params[1]
        if not isinstance(search_key, dict) or order not in ("asc", "desc"):
            raise RpcError(ERROR_INVALID_PARAMS, "invalid search_key or order")
        limit = _u64_param(params, 2, "limit")
        if not 0 < limit <= MAX_GET_CELLS_LIMIT:
            raise RpcError(ERROR_INVALID_PARAMS, "limit must be 1..10000")
        try:
            script = Script.from_rpc(search_key.get("script"))
        except ValueError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, f"search_key.script: {exc}") from exc
        script_type = search_key.get("script_type")
        mode = search_key.get("script_search_mode", "prefix")
        if script_type not in ("lock", "type") or mode not in ("prefix", "exact"):
            raise RpcError(ERROR_INVALID_PARAMS, "unsupported script_type or script_search_mode")
        with_data = search_key.get("with_data", True) is not False
        after = None
        if len(params) == 4 and params[3] is not None:
            after = _u64_param(params, 3, "after_cursor")

        def matches(record: CellRecord) -> bool:
            target = record.output.lock if script_type == "lock" else record.output.type_script
            if target is None or record.spent_by is not None:
                return False
            if target.code_hash != script.code_hash or target.hash_type != script.hash_type:
                return False
            if mode == "exact":
                return target.args == script.args
            return target.args.startswith(script.args)

        records = sorted(
            (c for c in self.cells.values() if matches(c)),
            key=lambda c: c.sequence,
            reverse=order == "desc",
        )
        if after is not None:
            records = [
                c for c in records if (c.sequence > after if order == "asc" else c.sequence < after)
            ]
        page = records[:limit]
        objects = [
            {
                "output": c.output.to_rpc(),
                "output_data": hex_bytes(c.data) if with_data else None,
                "out_point": c.out_point.to_rpc(),
                "block_number": hex_uint(c.block_number),
                "tx_index": hex_uint(c.tx_index),
            }
            for c in page
        ]
        cursor = hex_uint(page[-1].sequence) if page else "0x"
        return {"objects": objects, "last_cursor": cursor}

    def _rpc_sim_fund(self, params: Any) -> Any:
        p = _params_object(params)
        address = p.get("address")
        if not isinstance(address, str):
            raise RpcError(ERROR_INVALID_PARAMS, "address must be a string")
        try:
            lock = parse_address(address, self.network)
        except AddressError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, str(exc)) from exc
        amount = _parse_amount_shannons(p.get("amount"))
        try:
            op = self.fund(lock, amount)
        except ValueError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, str(exc)) from exc
        return {
            "tx_hash": hex_bytes(op.tx_hash),
            "out_point": op.to_rpc(),
            "block_number": hex_uint(self.tip_block_number),
        }

    def _rpc_sim_mine(self, params: Any) -> Any:
        p = _params_object(params) if params else {}
        blocks = p.get("blocks", 1)
        if isinstance(blocks, str) and blocks.startswith("0x"):
            blocks = _u64_param([blocks], 0, "blocks")
        if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= 10_000:
            raise RpcError(ERROR_INVALID_PARAMS, "blocks must be 1..10000")
        committed = self.mine(blocks)
        return {
            "tip_block_number": hex_uint(self.tip_block_number),
            "committed": [hex_bytes(h) for h in committed],
        }

    def _rpc_sim_fault(self, params: Any) -> Any:
        p = _params_object(params)
        method, kind, count = p.get("method"), p.get("kind"), p.get("count", 1)
        if not isinstance(method, str) or not isinstance(kind, str) or not isinstance(count, int):
            raise RpcError(ERROR_INVALID_PARAMS, "sim_fault {method, kind, count}")
        try:
            self.add_fault(method, kind, count)
        except ValueError as exc:
            raise RpcError(ERROR_INVALID_PARAMS, str(exc)) from exc
        return True


def _u64_param(params: Any, index: int, what: str) -> int:
    if not isinstance(params, list) or len(params) <= index:
        raise RpcError(ERROR_INVALID_PARAMS, f"missing {what}")
    try:
        return parse_hex_u64(params[index], what)
    except ValueError as exc:
        raise RpcError(ERROR_INVALID_PARAMS, f"Invalid params: {exc}") from exc


def _bytes_param(params: Any, index: int, what: str) -> bytes:
    if not isinstance(params, list) or len(params) <= index:
        raise RpcError(ERROR_INVALID_PARAMS, f"missing {what}")
    try:
        return parse_hex_bytes(params[index], size=32, what=what)
    except ValueError as exc:
        raise RpcError(ERROR_INVALID_PARAMS, f"Invalid params: {exc}") from exc


_METHODS: Final[dict[str, Callable[[DevChain, Any], Any]]] = {
    "get_tip_block_number": DevChain._rpc_get_tip_block_number,
    "get_blockchain_info": DevChain._rpc_get_blockchain_info,
    "get_block_hash": DevChain._rpc_get_block_hash,
    "get_header": DevChain._rpc_get_header,
    "send_transaction": DevChain._rpc_send_transaction,
    "get_transaction": DevChain._rpc_get_transaction,
    "get_cells": DevChain._rpc_get_cells,
    "sim_fund": DevChain._rpc_sim_fund,
    "sim_mine": DevChain._rpc_sim_mine,
    "sim_fault": DevChain._rpc_sim_fault,
}


# --- HTTP (ASGI) -----------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class DevChainApp:
    """A minimal ASGI app: ``POST /`` JSON-RPC 2.0 (single requests, no batches)."""

    def __init__(self, chain: DevChain) -> None:
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_REQUEST_BODY_BYTES:
                await _respond(send, 413, b"request too large")
                return
            if not message.get("more_body", False):
                break
        if scope["method"] != "POST":
            await _respond(send, 405, b"POST JSON-RPC to /")
            return
        await self._handle(body, receive, send)

    async def _handle(self, body: bytes, receive: Receive, send: Send) -> None:
        request_id: Any = None
        try:
            request = json.loads(body)
        except ValueError:
            await _respond_json(send, _error_body(None, ERROR_PARSE, "Parse error"))
            return
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            await _respond_json(send, _error_body(None, ERROR_INVALID_REQUEST, "Invalid request"))
            return
        request_id = request.get("id")
        method: str = request["method"]
        fault = self.chain.take_fault(method)
        if fault == "timeout":
            with trio.move_on_after(TIMEOUT_FAULT_MAX_SECONDS):
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        if fault == "http_500":
            await _respond(send, 500, b"simulated internal server error")
            return
        if fault == "bad_json":
            await _respond(send, 200, b'{"jsonrpc": "2.0", "id": ', b"application/json")
            return
        if fault == "node_error":
            await _respond_json(
                send, _error_body(request_id, ERROR_INTERNAL, "CKBInternalError: simulated fault")
            )
            return
        try:
            result = self.chain.dispatch(method, request.get("params", []))
            reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except RpcError as exc:
            reply = _error_body(request_id, exc.code, exc.message)
        if fault == "drop_reply":
            payload = json.dumps(reply).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload[:5], "more_body": True})
            return  # hypercorn closes the stream with the body incomplete
        await _respond_json(send, reply)


def _error_body(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def _respond_json(send: Send, obj: object) -> None:
    await _respond(send, 200, json.dumps(obj).encode(), b"application/json")


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@attrs.frozen
class RunningDevChain:
    """A served dev chain: ``url`` for clients, ``chain`` for in-process inspection/control."""

    url: str
    chain: DevChain

    @property
    def network(self) -> str:
        return self.chain.network


def _hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("fiberlinkd.devchain.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 5.0
    return config


@asynccontextmanager
async def open_devchain(
    network: str = "testnet", host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningDevChain]:
    """Serve a fresh dev chain on ``host:port`` (0 = any free port) for the block's duration."""
    chain = DevChain(network)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                DevChainApp(chain),  # type: ignore[arg-type]
                _hypercorn_config(host, port),
                task_status=task_status,
            )
        )
        try:
            yield RunningDevChain(url=str(binds[0]) + "/", chain=chain)
        finally:
            nursery.cancel_scope.cancel()


# --- CLI -------------------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:8114")
    return host.strip("[]"), int(port)


def add_cli(subparsers: Any) -> None:
    """Register ``fiberlinkd devchain`` (sets ``func`` to a ``(args) -> int`` entry point)."""
    parser = subparsers.add_parser(
        "devchain",
        help="run a loopback CKB dev-chain simulator (node + indexer) for tests and demos",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 8114),
        metavar="HOST:PORT",
        help="address to serve JSON-RPC on (default 127.0.0.1:8114; port 0 picks one)",
    )
    parser.add_argument(
        "--network",
        choices=sorted(_CHAIN_NAMES),
        default="testnet",
        help="which genesis hash and secp256k1 dep group to present (default testnet)",
    )
    parser.set_defaults(func=run_devchain_cli)


async def _serve_cli(host: str, port: int, network: str) -> None:
    async with open_devchain(network, host, port) as running:
        print(
            f"devchain listening on {running.url} "
            f"(network {network}, genesis {hex_bytes(running.chain.genesis_hash)})",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"devchain stopping on {signal.Signals(signum).name}", file=sys.stderr)
                return


def run_devchain_cli(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (SIGINT) or SIGTERM; returns the process exit code."""
    host, port = args.listen
    try:
        trio.run(_serve_cli, host, port, args.network)
    except KeyboardInterrupt:
        print("devchain stopped", file=sys.stderr)
    return 0
