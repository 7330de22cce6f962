"""Helpers for the on-chain withdrawal tests (no tests here): the CKB dev chain on loopback, a
hot wallet, a runtime on a real SQLite file whose Fiber node is identified on a chosen
network, and a chain wrapper that "crashes" around ``send_transaction``.

Rules: real SQLite files in tmp_path, the dev chain on 127.0.0.1 port 0, fakes not mocks. A
crash is simulated by cancelling the executor while a call hangs, then starting a fresh
executor on the same database (all it knows is what was committed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from fiberlinkd.ckb.address import Script, encode_address, hex_bytes
from fiberlinkd.ckb.client import CkbClient, TxStatus
from fiberlinkd.ckb.devchain import DEVNET_SECP256K1_DEP_GROUP, DevChain, open_devchain
from fiberlinkd.ckb.tx import LiveCell, Transaction
from fiberlinkd.clock import WallClock
from fiberlinkd.config import Config, OnchainConfig
from fiberlinkd.fnn.types import (
    MAINNET_CHAIN_HASH,
    TESTNET_CHAIN_HASH,
    Channel,
    NodeInfo,
    PaymentPage,
    PaymentStatus,
)
from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.onchain.executor import OnchainExecutor
from fiberlinkd.onchain.service import OnchainService
from fiberlinkd.onchain.wallet import HotWallet
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.supervisor import Supervisor
from tests.test_withdrawals_support import APP, FAST_WITHDRAWALS

CKB = 100_000_000
KEY_HEX = "0x" + "4f" * 31 + "01"
WALLET = HotWallet.from_private_key(bytes.fromhex(KEY_HEX[2:]))
RECIPIENT = Script.secp256k1_blake160(bytes.fromhex("11" * 20))
RECIPIENT_ADDRESS = encode_address(RECIPIENT, "testnet")
OTHER = Script.secp256k1_blake160(bytes.fromhex("22" * 20))
DEV_DEP_GROUP = (
    f"{hex_bytes(DEVNET_SECP256K1_DEP_GROUP.out_point.tx_hash)}:"
    f"{DEVNET_SECP256K1_DEP_GROUP.out_point.index}"
)
CHAIN_HASH = {
    "mainnet": MAINNET_CHAIN_HASH,
    "testnet": TESTNET_CHAIN_HASH,
    "devnet": "0x" + "d" * 64,
}


@attrs.define
class IdentifiedNode:
    """A Fiber node that says who it is and has no channels and no payments (on-chain tests
    need its network; the reconciler lists its channels and payments)."""

    chain_hash: str

    async def node_info(self) -> NodeInfo:
        return NodeInfo(version="0.8.1", pubkey="02" + "ab" * 32, chain_hash=self.chain_hash)

    async def list_channels(self) -> tuple[Channel, ...]:
        return ()

    async def list_payments(
        self,
        *,
        status: PaymentStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> PaymentPage:
        del status, limit, after
        return PaymentPage(payments=(), last_cursor=None)


@attrs.define
class StallingChain:
    """Delegates to ``inner``; can hang ``send_transaction`` before or after it reaches the node.

    ``stall_before``: the call never reaches the node (a crash after the PROCESSING commit).
    ``stall_after``: the node accepts it, then the reply never comes (a crash before the
    outcome is recorded). Each flag applies once; ``stalled`` is set when a call hangs.
    """

    inner: CkbClient
    stall_before: bool = False
    stall_after: bool = False
    stalled: trio.Event = attrs.field(factory=trio.Event)
    sent: list[bytes] = attrs.field(factory=list)

    async def send_transaction(self, tx: Transaction) -> bytes:
        self.sent.append(tx.hash())
        if self.stall_before:
            self.stall_before = False
            self.stalled.set()
            await trio.sleep_forever()
        result = await self.inner.send_transaction(tx)
        if self.stall_after:
            self.stall_after = False
            self.stalled.set()
            await trio.sleep_forever()
        return result

    async def get_live_cells(self, lock: Script) -> list[LiveCell]:
        return await self.inner.get_live_cells(lock)

    async def get_transaction(self, tx_hash: bytes) -> TxStatus:
        return await self.inner.get_transaction(tx_hash)

    async def get_tip_block_number(self) -> int:
        return await self.inner.get_tip_block_number()

    async def get_genesis_hash(self) -> bytes:
        return await self.inner.get_genesis_hash()


@attrs.define
class Harness:
    rt: Runtime
    chain: DevChain
    client: CkbClient
    url: str
    http: httpx.AsyncClient

    @property
    def onchain(self) -> OnchainService:
        assert self.rt.onchain is not None
        return self.rt.onchain

    def fund_wallet(self, ckb: int) -> None:
        self.chain.fund(WALLET.lock, ckb * CKB)

    async def sim(self, method: str, params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}
        reply = (await self.http.post(self.url, json=body)).json()
        assert "error" not in reply, reply
        return reply["result"]

    def payouts_to(self, lock: Script) -> list[bytes]:
        """Every transaction the chain ever accepted (pending or committed) paying ``lock``."""
        return [
            h
            for h, record in self.chain.txs.items()
            if any(o.lock == lock for o in record.tx.outputs) and record.tx.witnesses
        ]

    async def run_executor(self, nursery: trio.Nursery) -> trio.CancelScope:
        """Start a fresh executor under its own cancel scope (cancel it = crash it)."""
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await OnchainExecutor(self.rt).run(task_status=task_status)

        await nursery.start(run)
        return scope


def onchain_config(url: str, *, network: str = "testnet", confirmations: int = 2) -> OnchainConfig:
    return OnchainConfig(
        enabled=True,
        ckb_rpc_url=url,
        confirmations=confirmations,
        poll_s=0.05,
        secp256k1_dep_group=DEV_DEP_GROUP if network == "devnet" else "",
        call_timeout_s=1.0,
    )


@contextlib.asynccontextmanager
async def open_harness(
    tmp_path: Path,
    *,
    network: str = "testnet",
    fiber_network: str | None = None,
    confirmations: int = 2,
    chain_wrapper: Any = None,
) -> AsyncIterator[Harness]:
    """Dev chain + client + runtime (app ``forum``, Fiber node identified on
    ``fiber_network``, default the chain's own) with ``rt.onchain`` set."""
    clock = WallClock()
    async with (
        open_devchain(network, "127.0.0.1", 0) as running,
        httpx.AsyncClient(timeout=1.0) as http,
    ):
        client = CkbClient(http, running.url)
        chain: Any = client if chain_wrapper is None else chain_wrapper(client)
        oc = onchain_config(running.url, network=network, confirmations=confirmations)
        config = Config(state_dir=str(tmp_path / "state"), withdrawals=FAST_WITHDRAWALS, onchain=oc)
        async with open_ledger(config.state_path) as ledger:
            await ledger.transact(insert_app, APP, "s" * 32, clock.now_ms())
            node = IdentifiedNode(CHAIN_HASH[fiber_network or network])
            state = NodeState(info=await node.node_info())
            rt = Runtime(
                config=config,
                ledger=ledger,
                node=node,  # type: ignore[arg-type]  # only node_info is ever called
                node_state=state,
                clock=clock,
                supervisor=Supervisor(),
                started_at_ms=clock.now_ms(),
                watch_list=WatchList(),
                onchain=OnchainService(oc, WALLET, chain, url=running.url),
            )
            yield Harness(rt, running.chain, client, running.url, http)


def onchain_params(user: str, amount: str, address: str = RECIPIENT_ADDRESS) -> dict[str, Any]:
    return {
        "userId": user,
        "amount": amount,
        "asset": "CKB",
        "destination": {"kind": "CKB_ADDRESS", "address": address},
    }
