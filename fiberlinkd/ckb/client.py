"""A small CKB node (+ built-in indexer) JSON-RPC client.

The ``httpx.AsyncClient`` is injected (the daemon owns its lifetime and sets its timeouts);
callers bound each call further with ``trio.move_on_after``. Every reply is parsed strictly
into frozen attrs results, so a misbehaving node surfaces as an error, not as a wrong value.

Errors form a small tree under ``CkbClientError``:

- ``CkbTransportError`` — connect/read timeouts, connection drops, non-200 HTTP, a body that
  is not JSON-RPC. The call's effect is **unknown** (``send_transaction`` may have been
  accepted): resolve by asking the node (``get_transaction``), never by assuming failure.
- ``CkbNodeError`` — the node answered with a JSON-RPC error object (``code``, ``message``).
  ``is_duplicate`` / ``is_dead_or_unknown_input`` classify the send errors the executor acts
  on.
- ``CkbContractError`` — the node answered, but the result does not have the documented
  shape (wrong types, bad hex, missing fields).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

import attrs
import httpx

from fiberlinkd.ckb.address import (
    Network,
    Script,
    hex_bytes,
    hex_uint,
    network_for_genesis_hash,
    parse_hex_bytes,
    parse_hex_u64,
)
from fiberlinkd.ckb.tx import CellOutput, LiveCell, OutPoint, Transaction

DEFAULT_GET_CELLS_PAGE_SIZE: Final = 100
MAX_GET_CELLS_PAGES: Final = 10_000

# CKB RPC error codes (ckb rpc/src/error.rs).
ERROR_TRANSACTION_FAILED_TO_RESOLVE: Final = -301
ERROR_TRANSACTION_FAILED_TO_VERIFY: Final = -302
ERROR_POOL_REJECTED_BY_MIN_FEE_RATE: Final = -1104
ERROR_POOL_IS_FULL: Final = -1106
ERROR_POOL_REJECTED_DUPLICATED_TRANSACTION: Final = -1107

TxStatusName = Literal["pending", "proposed", "committed", "rejected", "unknown"]
_TX_STATUSES: Final = ("pending", "proposed", "committed", "rejected", "unknown")


class CkbClientError(Exception):
    """Base of every error this client raises."""


class CkbTransportError(CkbClientError):
    """No usable reply: the call's effect on the node is unknown."""


class CkbNodeError(CkbClientError):
    """The node returned a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str, data: object = None) -> None:
        self.method = method
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"CKB node error on {method}: {code} {message}")

    @property
    def is_duplicate(self) -> bool:
        """The transaction is already in the pool (a re-broadcast of the same bytes)."""
        return self.code == ERROR_POOL_REJECTED_DUPLICATED_TRANSACTION

    @property
    def is_dead_or_unknown_input(self) -> bool:
        """An input is spent (``Dead``) or unknown: the transaction can never commit as is.

        Note ``Unknown`` can also mean the creating transaction is not yet known to this node;
        the executor should confirm with ``get_transaction`` before rebuilding.
        """
        return self.code == ERROR_TRANSACTION_FAILED_TO_RESOLVE


class CkbContractError(CkbClientError):
    """The node's reply does not match the documented result shape."""


@attrs.frozen
class TxStatus:
    """``get_transaction``'s view of a transaction."""

    status: TxStatusName
    block_number: int | None = None
    block_hash: bytes | None = None
    reason: str | None = None
    transaction: Transaction | None = None

    @classmethod
    def from_rpc(cls, result: object) -> TxStatus:
        """Parse a ``get_transaction`` result (``null`` means the node never heard of it)."""
        if result is None:
            return cls("unknown")
        if not isinstance(result, dict):
            raise CkbContractError(f"get_transaction: expected an object, got {result!r}")
        status_obj = result.get("tx_status")
        if not isinstance(status_obj, dict):
            raise CkbContractError("get_transaction: missing tx_status")
        status = status_obj.get("status")
        if status not in _TX_STATUSES:
            raise CkbContractError(f"get_transaction: unknown status {status!r}")
        try:
            block_number_raw = status_obj.get("block_number")
            block_hash_raw = status_obj.get("block_hash")
            tx_obj = result.get("transaction")
            reason = status_obj.get("reason")
            return cls(
                status=status,
                block_number=None
                if block_number_raw is None
                else parse_hex_u64(block_number_raw, "block_number"),
                block_hash=None
                if block_hash_raw is None
                else parse_hex_bytes(block_hash_raw, size=32, what="block_hash"),
                reason=reason if isinstance(reason, str) else None,
                transaction=None if tx_obj is None else Transaction.from_rpc(tx_obj),
            )
        except ValueError as exc:
            raise CkbContractError(f"get_transaction: {exc}") from exc


@attrs.frozen
class CellsPage:
    """One page of indexer ``get_cells``."""

    cells: tuple[LiveCell, ...]
    last_cursor: str

    @classmethod
    def from_rpc(cls, result: object) -> CellsPage:
        if not isinstance(result, dict):
            raise CkbContractError(f"get_cells: expected an object, got {result!r}")
        objects = result.get("objects")
        cursor = result.get("last_cursor")
        if not isinstance(objects, list) or not isinstance(cursor, str):
            raise CkbContractError("get_cells: missing objects or last_cursor")
        cells: list[LiveCell] = []
        try:
            for obj in objects:
                if not isinstance(obj, dict):
                    raise CkbContractError("get_cells: object is not a dict")
                output = CellOutput.from_rpc(obj.get("output"))
                data_raw = obj.get("output_data")
                cells.append(
                    LiveCell(
                        out_point=OutPoint.from_rpc(obj.get("out_point")),
                        capacity=output.capacity,
                        lock=output.lock,
                        type_script=output.type_script,
                        data=b"" if data_raw is None else parse_hex_bytes(data_raw),
                        block_number=parse_hex_u64(obj.get("block_number"), "block_number"),
                    )
                )
        except ValueError as exc:
            raise CkbContractError(f"get_cells: {exc}") from exc
        return cls(tuple(cells), cursor)


@attrs.frozen
class BlockchainInfo:
    """Subset of ``get_blockchain_info``: the chain name (``ckb``, ``ckb_testnet``, ``ckb_dev``)."""

    chain: str
    is_initial_block_download: bool

    @classmethod
    def from_rpc(cls, result: object) -> BlockchainInfo:
        if not isinstance(result, dict) or not isinstance(result.get("chain"), str):
            raise CkbContractError(f"get_blockchain_info: unexpected result {result!r}")
        ibd = result.get("is_initial_block_download", False)
        return cls(str(result["chain"]), bool(ibd))


class CkbClient:
    """JSON-RPC client for a CKB node with the indexer module enabled."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return self._url

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; returns ``result`` or raises a ``CkbClientError``."""
        request_id = next(self._ids)
        payload = {"id": request_id, "jsonrpc": "2.0", "method": method, "params": params}
        try:
            response = await self._http.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            raise CkbTransportError(f"CKB node {method}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != httpx.codes.OK:
            raise CkbTransportError(f"CKB node {method}: HTTP {response.status_code}")
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise CkbTransportError(f"CKB node {method}: reply is not JSON") from exc
        if not isinstance(body, dict) or body.get("id") != request_id:
            raise CkbTransportError(f"CKB node {method}: reply is not a JSON-RPC response")
        error = body.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise CkbContractError(f"CKB node {method}: malformed error object {error!r}")
            raise CkbNodeError(
                method, error["code"], str(error.get("message", "")), error.get("data")
            )
        if "result" not in body:
            raise CkbContractError(f"CKB node {method}: reply has neither result nor error")
        return body["result"]

    async def get_tip_block_number(self) -> int:
        result = await self.call("get_tip_block_number", [])
        return _u64(result, "get_tip_block_number")

    async def get_blockchain_info(self) -> BlockchainInfo:
        return BlockchainInfo.from_rpc(await self.call("get_blockchain_info", []))

    async def get_block_hash(self, block_number: int) -> bytes | None:
        result = await self.call("get_block_hash", [hex_uint(block_number)])
        if result is None:
            return None
        try:
            return parse_hex_bytes(result, size=32, what="block hash")
        except ValueError as exc:
            raise CkbContractError(f"get_block_hash: {exc}") from exc

    async def get_genesis_hash(self) -> bytes:
        genesis = await self.get_block_hash(0)
        if genesis is None:
            raise CkbContractError("get_block_hash(0) returned null")
        return genesis

    async def get_network(self) -> Network:
        """``mainnet`` / ``testnet`` / ``devnet`` from the genesis hash (architecture §4b)."""
        return network_for_genesis_hash(await self.get_genesis_hash())

    async def get_header_number(self, block_hash: bytes) -> int | None:
        result = await self.call("get_header", [hex_bytes(block_hash)])
        if result is None:
            return None
        if not isinstance(result, dict):
            raise CkbContractError("get_header: expected an object")
        return _u64(result.get("number"), "get_header.number")

    async def send_transaction(
        self, tx: Transaction, outputs_validator: str = "passthrough"
    ) -> bytes:
        """Broadcast ``tx``; returns the node's tx hash (checked against ours).

        ``passthrough`` lets us pay to any lock a user's address names (the node's default
        validator only accepts well-known scripts).
        """
        result = await self.call("send_transaction", [tx.to_rpc(), outputs_validator])
        try:
            got = parse_hex_bytes(result, size=32, what="tx hash")
        except ValueError as exc:
            raise CkbContractError(f"send_transaction: {exc}") from exc
        if got != tx.hash():
            raise CkbContractError("send_transaction: node returned a different tx hash")
        return got

    async def get_transaction(self, tx_hash: bytes) -> TxStatus:
        """Status of a transaction; fills ``block_number`` via ``get_header`` if omitted."""
        status = TxStatus.from_rpc(await self.call("get_transaction", [hex_bytes(tx_hash)]))
        if status.status == "committed" and status.block_number is None:
            if status.block_hash is None:
                raise CkbContractError("get_transaction: committed without a block")
            number = await self.get_header_number(status.block_hash)
            status = attrs.evolve(status, block_number=number)
        return status

    async def get_cells_page(
        self, lock: Script, limit: int, after_cursor: str | None = None
    ) -> CellsPage:
        search_key = {
            "script": lock.to_rpc(),
            "script_type": "lock",
            "script_search_mode": "exact",
            "with_data": True,
        }
        params: list[Any] = [search_key, "asc", hex_uint(limit)]
        if after_cursor is not None:
            params.append(after_cursor)
        return CellsPage.from_rpc(await self.call("get_cells", params))

    async def iter_live_cells(
        self, lock: Script, page_size: int = DEFAULT_GET_CELLS_PAGE_SIZE
    ) -> AsyncIterator[LiveCell]:
        cursor: str | None = None
        for _ in range(MAX_GET_CELLS_PAGES):
            page = await self.get_cells_page(lock, page_size, cursor)
            for cell in page.cells:
                yield cell
            if len(page.cells) < page_size:
                return
            cursor = page.last_cursor
        raise CkbContractError("get_cells: too many pages")

    async def get_live_cells(
        self, lock: Script, page_size: int = DEFAULT_GET_CELLS_PAGE_SIZE
    ) -> list[LiveCell]:
        """Every live cell with exactly this lock (all pages)."""
        return [cell async for cell in self.iter_live_cells(lock, page_size)]


def _u64(value: object, what: str) -> int:
    try:
        return parse_hex_u64(value, what)
    except ValueError as exc:
        raise CkbContractError(str(exc)) from exc
