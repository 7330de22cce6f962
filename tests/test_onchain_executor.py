"""The on-chain executor against the CKB dev chain on loopback: exactly one transaction pays
each withdrawal, whatever fails.

Rules under test:
- the signed bytes and the tx hash are committed (PROCESSING) before the first broadcast;
  COMPLETED only after the configured confirmations; debit = amount + the transaction's fee;
- a timeout, a dropped reply, an HTTP 500, a node error, and a crash before or after the
  broadcast never produce a second transaction: the same bytes are sent again;
- a transaction the node proves can never commit (its input spent elsewhere) is rebuilt,
  and still only one payment reaches the recipient;
- inputs of an unconfirmed payout are never spent by another payout;
- a wallet that cannot pay makes the request LIQUIDITY_PENDING; funding it promotes the
  request to PENDING and it completes;
- a CKB node on another network than the Fiber node stops on-chain payouts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.api.errors import RpcError
from fiberlinkd.ckb.tx import (
    Transaction,
    build_payout_tx,
    secp256k1_cell_dep,
    sign_payout,
)
from fiberlinkd.ledger.withdrawals import list_events
from fiberlinkd.onchain.executor import OnchainExecutor
from fiberlinkd.withdrawals.service import request
from tests.test_onchain_support import (
    CKB,
    KEY_HEX,
    OTHER,
    RECIPIENT,
    WALLET,
    Harness,
    StallingChain,
    onchain_params,
    open_harness,
)
from tests.test_withdrawals_support import balance, fund, ledger_keys, wait_for, withdrawal


async def _request(h: Harness, amount: str = "100", user: str = "u1") -> str:
    result = await request(h.rt, "forum", onchain_params(user, amount))
    return str(result["id"])


async def _mine_until_completed(h: Harness, wid: str) -> None:
    with trio.fail_after(10):
        while (await withdrawal(h.rt, wid)).state != "COMPLETED":
            h.chain.mine(1)
            await trio.sleep(0.03)


async def test_a_withdrawal_is_signed_and_stored_before_broadcast_and_completes_after_confirmations(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path, confirmations=2) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        assert (await withdrawal(h.rt, wid)).state == "PENDING"
        scope = await h.run_executor(nursery)
        w = await wait_for(h.rt, wid, lambda w: w.tx_hash is not None)
        assert w.state == "PROCESSING"
        assert w.fee_paid is not None
        assert 0 < w.fee_paid <= w.fee_reserved
        events = await h.rt.ledger.read(list_events, wid)
        assert "committed before broadcast" in (events[1].detail or "")
        with trio.fail_after(5):
            while not h.chain.mempool:
                await trio.sleep(0.02)
        h.chain.mine(1)  # committed, 0 blocks on top
        h.chain.mine(1)  # 1 block on top: still short of 2
        await trio.sleep(0.3)
        assert (await withdrawal(h.rt, wid)).state == "PROCESSING"
        h.chain.mine(1)
        done = await wait_for(h.rt, wid, lambda w: w.state == "COMPLETED")
        assert done.tx_hash == w.tx_hash
        outputs = h.chain.committed_outputs_to(RECIPIENT)
        assert [o.output.capacity for o in outputs] == [100 * CKB]
        assert await balance(h.rt, "u1") == (200 * CKB - 100 * CKB - w.fee_paid, 0)
        keys = await h.rt.ledger.read(ledger_keys, wid)
        assert [k[0] for k in keys] == [
            "WITHDRAWAL_RESERVE",
            "WITHDRAWAL_DEBIT",
            "WITHDRAWAL_RELEASE",
        ]
        scope.cancel()


@pytest.mark.parametrize("kind", ["timeout", "drop_reply", "http_500", "node_error", "bad_json"])
async def test_a_failed_broadcast_sends_the_same_bytes_again_and_pays_once(
    tmp_path: Path, kind: str
) -> None:
    async with open_harness(tmp_path, confirmations=0) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        h.chain.add_fault("send_transaction", kind)
        scope = await h.run_executor(nursery)
        w = await wait_for(h.rt, wid, lambda w: w.tx_hash is not None)
        with trio.fail_after(10):
            while not h.chain.mempool:
                await trio.sleep(0.02)
        await _mine_until_completed(h, wid)
        assert (await withdrawal(h.rt, wid)).tx_hash == w.tx_hash
        assert len(h.payouts_to(RECIPIENT)) == 1
        assert len(h.chain.committed_outputs_to(RECIPIENT)) == 1
        scope.cancel()


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_crash_around_the_broadcast_never_builds_a_second_transaction(
    tmp_path: Path, where: str
) -> None:
    stalling: list[StallingChain] = []

    def wrap(client: object) -> StallingChain:
        chain = StallingChain(client)  # type: ignore[arg-type]
        chain.stall_before = where == "before"
        chain.stall_after = where == "after"
        stalling.append(chain)
        return chain

    async with (
        open_harness(tmp_path, confirmations=0, chain_wrapper=wrap) as h,
        trio.open_nursery() as nursery,
    ):
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        first = await h.run_executor(nursery)
        with trio.fail_after(5):
            await stalling[0].stalled.wait()
        first.cancel()  # the crash
        w = await withdrawal(h.rt, wid)
        assert w.state == "PROCESSING"
        assert w.tx_hash is not None
        assert bool(h.chain.mempool) is (where == "after")
        second = await h.run_executor(nursery)  # a fresh executor on the same database
        with trio.fail_after(5):
            while not h.chain.mempool:
                await trio.sleep(0.02)
        await _mine_until_completed(h, wid)
        assert {tx.hex() for tx in stalling[0].sent} == {w.tx_hash.removeprefix("0x")}
        assert len(h.payouts_to(RECIPIENT)) == 1
        assert len(h.chain.committed_outputs_to(RECIPIENT)) == 1
        second.cancel()


async def test_a_transaction_whose_input_was_spent_elsewhere_is_rebuilt_and_pays_once(
    tmp_path: Path,
) -> None:
    stalling: list[StallingChain] = []

    def wrap(client: object) -> StallingChain:
        stalling.append(StallingChain(client, stall_before=True))  # type: ignore[arg-type]
        return stalling[0]

    async with (
        open_harness(tmp_path, confirmations=0, chain_wrapper=wrap) as h,
        trio.open_nursery() as nursery,
    ):
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        first = await h.run_executor(nursery)
        with trio.fail_after(5):
            await stalling[0].stalled.wait()
        first.cancel()
        old = await withdrawal(h.rt, wid)
        # Meanwhile the operator spends the wallet's only cell by hand.
        cells = await h.client.get_live_cells(WALLET.lock)
        unsigned = build_payout_tx(
            cells, [(OTHER, 500 * CKB)], WALLET.lock, 1000, [secp256k1_cell_dep("testnet")]
        )
        await h.client.send_transaction(sign_payout(unsigned, bytes.fromhex(KEY_HEX[2:])).tx)
        h.chain.mine(1)
        second = await h.run_executor(nursery)
        rebuilt = await wait_for(
            h.rt, wid, lambda w: w.tx_hash is not None and w.tx_hash != old.tx_hash
        )
        await _mine_until_completed(h, wid)
        assert (await withdrawal(h.rt, wid)).tx_hash == rebuilt.tx_hash
        assert len(h.payouts_to(RECIPIENT)) == 1
        assert len(h.chain.committed_outputs_to(RECIPIENT)) == 1
        events = await h.rt.ledger.read(list_events, wid)
        assert any(f"abandoned tx {old.tx_hash}" in (e.detail or "") for e in events)
        second.cancel()


async def test_a_refusal_that_proves_nothing_keeps_the_same_bytes_and_flags_the_row(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path, confirmations=0) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        real_submit = h.chain.submit
        refusals = 0

        def refuse(tx: Transaction) -> bytes:
            nonlocal refusals
            if refusals < 3:
                refusals += 1
                from fiberlinkd.ckb.devchain import RpcError as ChainError

                raise ChainError(-1104, "PoolRejectedTransactionByMinFeeRate: simulated")
            return real_submit(tx)

        h.chain.submit = refuse  # type: ignore[method-assign]
        scope = await h.run_executor(nursery)
        w = await wait_for(h.rt, wid, lambda w: w.last_error is not None)
        assert w.state == "PROCESSING"
        assert "-1104" in (w.last_error or "")
        with trio.fail_after(5):
            while not h.chain.mempool:
                await trio.sleep(0.02)
        await _mine_until_completed(h, wid)
        assert (await withdrawal(h.rt, wid)).tx_hash == w.tx_hash
        assert len(h.payouts_to(RECIPIENT)) == 1
        scope.cancel()


async def _broadcast(h: Any, tx_hash: str | None) -> Any:
    assert tx_hash is not None
    key = bytes.fromhex(tx_hash.removeprefix("0x"))
    with trio.fail_after(5):
        while key not in h.chain.txs:
            await trio.sleep(0.01)
    return h.chain.txs[key]


async def test_inputs_of_an_unconfirmed_payout_are_never_spent_by_another(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path, confirmations=0) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)  # one cell: the second payout must wait for the first's change
        await fund(h.rt, "u1", 400 * CKB)
        first_id = await _request(h, "100", "u1")
        second_id = await request(h.rt, "forum", onchain_params("u1", "150"))
        assert second_id["state"] == "PENDING"  # the change of the first is counted
        scope = await h.run_executor(nursery)
        first = await wait_for(h.rt, first_id, lambda w: w.tx_hash is not None)
        second = await wait_for(h.rt, second_id["id"], lambda w: w.last_error is not None)
        await trio.sleep(0.3)  # several more executor steps while the first is unconfirmed
        second = await withdrawal(h.rt, second_id["id"])
        assert second.state == "PENDING"
        assert second.tx_hash is None
        assert second.last_error == "waiting for the change of an unconfirmed payout"
        h.chain.mine(1)
        second = await wait_for(h.rt, second_id["id"], lambda w: w.tx_hash is not None)
        # The hash is committed before the broadcast (by design): wait until the chain has it.
        tx_a = (await _broadcast(h, first.tx_hash)).tx
        tx_b = (await _broadcast(h, second.tx_hash)).tx
        inputs_a = {i.previous_output for i in tx_a.inputs}
        assert not inputs_a & {i.previous_output for i in tx_b.inputs}
        await _mine_until_completed(h, second_id["id"])
        assert sorted(o.output.capacity for o in h.chain.committed_outputs_to(RECIPIENT)) == [
            100 * CKB,
            150 * CKB,
        ]
        scope.cancel()


async def test_an_underfunded_wallet_makes_the_request_liquidity_pending_until_funded(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path, confirmations=0) as h, trio.open_nursery() as nursery:
        h.fund_wallet(100)  # 100 CKB: not enough for 100 + fee + the 61 CKB change reserve
        await fund(h.rt, "u1", 200 * CKB)
        result = await request(h.rt, "forum", onchain_params("u1", "100"))
        assert result["state"] == "LIQUIDITY_PENDING"
        wid = result["id"]
        assert await balance(h.rt, "u1") == (
            200 * CKB,
            100 * CKB + (await withdrawal(h.rt, wid)).fee_reserved,
        )
        scope = await h.run_executor(nursery)
        await trio.sleep(0.3)
        assert (await withdrawal(h.rt, wid)).state == "LIQUIDITY_PENDING"
        await h.sim("sim_fund", {"address": WALLET.address("testnet"), "amount": 500 * CKB})
        promoted = await wait_for(h.rt, wid, lambda w: w.state != "LIQUIDITY_PENDING")
        assert promoted.state in ("PENDING", "PROCESSING")
        await _mine_until_completed(h, wid)
        states = [e.to_state for e in await h.rt.ledger.read(list_events, wid)]
        assert states[0] == "LIQUIDITY_PENDING"
        assert "PENDING" in states
        assert states[-1] == "COMPLETED"
        assert len(h.chain.committed_outputs_to(RECIPIENT)) == 1
        scope.cancel()


async def test_a_ckb_node_on_another_network_stops_onchain_payouts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        open_harness(tmp_path, network="testnet", fiber_network="mainnet") as h,
        trio.open_nursery() as nursery,
    ):
        h.fund_wallet(1000)
        with caplog.at_level(logging.CRITICAL, logger="fiberlinkd.onchain.service"):
            assert await OnchainExecutor(h.rt).verify_network() is False
        assert "network mismatch" in caplog.text
        assert h.onchain.network_error is not None
        assert "testnet" in h.onchain.network_error
        assert "mainnet" in h.onchain.network_error
        with pytest.raises(RpcError) as refused:
            await request(h.rt, "forum", onchain_params("u1", "100"))
        assert refused.value.code == -32000
        scope = await h.run_executor(nursery)
        await trio.sleep(0.2)
        assert not h.chain.mempool
        assert not h.chain.calls.count("send_transaction")
        scope.cancel()


async def test_a_dev_chain_pays_with_the_configured_dep_group(tmp_path: Path) -> None:
    async with open_harness(tmp_path, network="devnet") as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 200 * CKB)
        wid = await _request(h)
        scope = await h.run_executor(nursery)
        await wait_for(h.rt, wid, lambda w: w.tx_hash is not None)
        await _mine_until_completed(h, wid)
        assert len(h.chain.committed_outputs_to(RECIPIENT)) == 1
        scope.cancel()
