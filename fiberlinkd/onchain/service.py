"""``rt.onchain``: what the API, the admin commands, the reconciler and the executor ask about
on-chain payouts.

- :meth:`OnchainService.check_address` — the destination check for ``withdrawal.quote`` /
  ``withdrawal.request``: CKB only, an RFC 0021 address of the *Fiber node's* network
  (``Fibb`` ↔ mainnet ``ckb1…``, ``Fibt`` ↔ testnet ``ckt1…``, ``Fibd`` ↔ a dev chain ``ckt1…``),
  the recipient cell's minimum capacity (61 CKB for the standard lock), and the fee reserved:
  the size of a payout with :data:`FEE_ESTIMATE_INPUTS` inputs times the fee rate, an upper
  bound; the actual fee is recorded on completion and the rest released.
- :meth:`OnchainService.wallet_view` — the hot wallet as the chain shows it, minus cells that
  unconfirmed payouts spend, plus their change that is still on its way.
- :meth:`OnchainService.verify_network` — the CKB node must be on the Fiber node's chain; a
  mismatch stops on-chain payouts (``network_error``) with one clear log line.

Errors: :class:`fiberlinkd.withdrawals.destinations.DestinationInvalid` for an address the
user must change; :class:`OnchainUnavailable` (its message is safe to show) while payouts
cannot run; the ``fiberlinkd.ckb.client`` errors and ``trio.TooSlowError`` from chain calls.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import attrs
import trio

from fiberlinkd.ckb.address import (
    AddressError,
    Network,
    Script,
    hex_bytes,
    min_capacity_shannons,
    network_for_genesis_hash,
    parse_address,
)
from fiberlinkd.ckb.client import TxStatus
from fiberlinkd.ckb.tx import (
    CellDep,
    LiveCell,
    OutPoint,
    Transaction,
    estimate_max_fee_shannons,
    secp256k1_cell_dep,
)
from fiberlinkd.config import OnchainConfig
from fiberlinkd.fnn.types import Currency, NodeInfo
from fiberlinkd.ledger import Ledger
from fiberlinkd.ledger.onchain import InflightTx, inflight_onchain
from fiberlinkd.logsetup import kv
from fiberlinkd.onchain.wallet import HotWallet
from fiberlinkd.runtime import Wakeup
from fiberlinkd.withdrawals.destinations import DestinationInvalid, OnchainCheck

log = logging.getLogger(__name__)

CHAIN_CALL_BOUND_S: Final = 15.0  # one CKB node call (get_cells walks every page)
FEE_ESTIMATE_INPUTS: Final = 100  # the fee reserved covers a payout with this many inputs
NETWORK_FOR_CURRENCY: Final[dict[Currency, Network]] = {
    Currency.FIBB: "mainnet",
    Currency.FIBT: "testnet",
    Currency.FIBD: "devnet",
}


class OnchainUnavailable(Exception):
    """On-chain payouts cannot run right now; ``message`` is safe to show to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CkbChain(Protocol):
    """What the on-chain code needs of a CKB node (``fiberlinkd.ckb.client.CkbClient``)."""

    async def get_live_cells(self, lock: Script) -> list[LiveCell]: ...

    async def send_transaction(self, tx: Transaction) -> bytes: ...

    async def get_transaction(self, tx_hash: bytes) -> TxStatus: ...

    async def get_tip_block_number(self) -> int: ...

    async def get_genesis_hash(self) -> bytes: ...


def parse_out_point(text: str) -> OutPoint:
    """``0x<tx hash>:<index>`` (validated by the config) → OutPoint."""
    tx_hash, _, index = text.rpartition(":")
    return OutPoint(bytes.fromhex(tx_hash.removeprefix("0x")), int(index))


@attrs.frozen
class WalletView:
    """The hot wallet at one moment (shannons).

    ``cells`` are the plain live cells no unconfirmed payout spends: what a new payout may
    use. ``incoming`` is change of unconfirmed payouts not yet live. ``available`` =
    spendable + incoming is what liquidity decisions count.
    """

    cells: tuple[LiveCell, ...]
    balance: int  # every live cell of the wallet lock
    in_flight_inputs: int  # live cells spent by unconfirmed payouts
    incoming: int
    inflight: tuple[InflightTx, ...]

    @property
    def spendable(self) -> int:
        return sum(c.capacity for c in self.cells)

    @property
    def available(self) -> int:
        return self.spendable + self.incoming


@attrs.define
class OnchainService:
    config: OnchainConfig
    wallet: HotWallet
    chain: CkbChain
    url: str = ""
    wakeup: Wakeup = attrs.field(factory=Wakeup)
    network: Network | None = None  # the CKB node's network once verified
    network_error: str | None = None  # set when payouts must not run (mismatch, no dep group)

    @property
    def change_reserve(self) -> int:
        """The smallest change cell the wallet can keep (61 CKB for its standard lock)."""
        return min_capacity_shannons(self.wallet.lock)

    @property
    def ready(self) -> bool:
        return self.network is not None and self.network_error is None

    def cell_dep(self, network: Network) -> CellDep:
        """The secp256k1 dep group: configured, else the well-known one. Errors: Unavailable."""
        if self.config.secp256k1_dep_group:
            return CellDep(parse_out_point(self.config.secp256k1_dep_group), "dep_group")
        if network == "devnet":
            raise OnchainUnavailable(
                "on-chain payouts on a dev chain need [onchain] secp256k1_dep_group"
            )
        return secp256k1_cell_dep(network)

    def fee_cap(self, recipient: Script, network: Network) -> int:
        """The fee reserved for one payout: an upper bound, in shannons."""
        return estimate_max_fee_shannons(
            FEE_ESTIMATE_INPUTS,
            [recipient],
            self.wallet.lock,
            self.config.fee_rate_shannons_per_kb,
            [self.cell_dep(network)],
        )

    def check_usable(self) -> None:
        """Errors: :class:`OnchainUnavailable` after a failed network check."""
        if self.network_error is not None:
            raise OnchainUnavailable(
                "On-chain withdrawals are unavailable on this server right now; "
                "paste a Fiber invoice instead"
            )

    def check_address(self, *, address: str, asset: str, currency: Currency) -> OnchainCheck:
        """The address as this server would pay it.

        Errors: :class:`DestinationInvalid`; :class:`OnchainUnavailable`.
        """
        self.check_usable()
        if asset != "CKB":
            raise DestinationInvalid(
                f"On-chain withdrawals pay CKB only; withdraw {asset} to a Fiber invoice"
            )
        network = NETWORK_FOR_CURRENCY[currency]
        try:
            lock = parse_address(address, network)
        except AddressError as exc:
            raise DestinationInvalid(
                f"This is not a CKB address this server can pay: {exc}"
            ) from None
        if lock == self.wallet.lock:
            raise DestinationInvalid("This is the server's own hot wallet address")
        return OnchainCheck(
            minimum_amount=min_capacity_shannons(lock), network_fee=self.fee_cap(lock, network)
        )

    async def wallet_view(self, ledger: Ledger) -> WalletView:
        """Read the wallet's live cells (bounded) against the unconfirmed payouts.

        Errors: ``fiberlinkd.ckb.client`` errors; ``trio.TooSlowError``.
        """
        inflight = await ledger.read(inflight_onchain)
        with trio.fail_after(CHAIN_CALL_BOUND_S):
            cells = await self.chain.get_live_cells(self.wallet.lock)
        live = {c.out_point for c in cells}
        spent: set[OutPoint] = set()
        incoming = 0
        for item in inflight:
            tx = item.transaction
            spent.update(i.previous_output for i in tx.inputs)
            tx_hash = tx.hash()
            for index, output in enumerate(tx.outputs):
                if output.lock == self.wallet.lock and OutPoint(tx_hash, index) not in live:
                    incoming += output.capacity
        usable = tuple(c for c in cells if c.is_plain and c.out_point not in spent)
        return WalletView(
            cells=usable,
            balance=sum(c.capacity for c in cells),
            in_flight_inputs=sum(c.capacity for c in cells if c.out_point in spent),
            incoming=incoming,
            inflight=tuple(inflight),
        )

    async def verify_network(self, info: NodeInfo) -> bool:
        """Compare the CKB node's genesis with the Fiber node's chain (one bounded call).

        Returns whether payouts may run; on a mismatch sets ``network_error`` and logs one
        CRITICAL line. Errors: chain errors and ``trio.TooSlowError`` (the caller retries).
        """
        with trio.fail_after(CHAIN_CALL_BOUND_S):
            genesis = await self.chain.get_genesis_hash()
        got = network_for_genesis_hash(genesis)
        want = NETWORK_FOR_CURRENCY[info.currency]
        if got != want:
            self.network_error = (
                f"the CKB node {self.url} is on {got} (genesis {hex_bytes(genesis)}) but the "
                f"Fiber node is on {want} ({info.currency}); on-chain payouts are stopped: "
                "point [onchain] ckb_rpc_url at a node of the same chain"
            )
            log.critical(
                "CKB node network mismatch; on-chain payouts stopped",
                extra=kv(ckb_network=got, fiber_network=want, ckb_url=self.url),
            )
            return False
        try:
            self.cell_dep(got)
        except OnchainUnavailable as exc:
            self.network_error = exc.message
            log.critical("on-chain payouts stopped", extra=kv(reason=exc.message))
            return False
        self.network = got
        self.network_error = None
        log.info(
            "CKB node network verified",
            extra=kv(network=got, hot_wallet=self.wallet.address(got), ckb_url=self.url),
        )
        return True
