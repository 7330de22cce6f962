"""Client <-> dev-chain tests over 127.0.0.1 (port 0): validation, faults, pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from fiberlinkd.ckb import devchain as devchain_module
from fiberlinkd.ckb.address import Script, encode_address
from fiberlinkd.ckb.client import (
    CkbClient,
    CkbContractError,
    CkbNodeError,
    CkbTransportError,
)
from fiberlinkd.ckb.tx import (
    CellOutput,
    LiveCell,
    SignedTx,
    Transaction,
    build_payout_tx,
    lock_for_key,
    sign_payout,
)

CKB = 100_000_000
WALLET_KEY = bytes.fromhex("d00c06bfd800d27397002dca6fb0993d5ba6399b4238b2f29ee9deb97593d2bc")
OTHER_KEY = bytes.fromhex("6fc935dad260867c749cf1ba6602d5f5ed7fb1131f1beb65be2d342e912eaafe")
WALLET_LOCK = lock_for_key(WALLET_KEY)
RECIPIENT = Script.secp256k1_blake160(bytes(range(20)))


@pytest.fixture
async def running() -> AsyncIterator[devchain_module.RunningDevChain]:
    async with devchain_module.open_devchain("testnet", "127.0.0.1", 0) as rd:
        yield rd


@pytest.fixture
async def client(running: devchain_module.RunningDevChain) -> AsyncIterator[CkbClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
        yield CkbClient(http, running.url)


async def _fund(client: CkbClient, lock: Script, amount: int | str) -> None:
    await client.call("sim_fund", [{"address": encode_address(lock, "testnet"), "amount": amount}])


async def _payout(
    client: CkbClient, running: devchain_module.RunningDevChain, amount: int
) -> SignedTx:
    cells = await client.get_live_cells(WALLET_LOCK)
    unsigned = build_payout_tx(
        cells, [(RECIPIENT, amount)], WALLET_LOCK, 1000, [running.chain.secp256k1_cell_dep]
    )
    return sign_payout(unsigned, WALLET_KEY)


async def test_network_and_tip(client: CkbClient, running: devchain_module.RunningDevChain) -> None:
    assert await client.get_network() == "testnet"
    info = await client.get_blockchain_info()
    assert info.chain == "ckb_testnet"
    assert await client.get_tip_block_number() == 0
    await _fund(client, WALLET_LOCK, "10000000000")
    await client.call("sim_mine", [{"blocks": 3}])
    assert await client.get_tip_block_number() == 4


async def test_payout_end_to_end(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await _fund(client, WALLET_LOCK, 500 * CKB)
    await _fund(client, WALLET_LOCK, hex(300 * CKB))
    cells = await client.get_live_cells(WALLET_LOCK)
    assert sorted(c.capacity for c in cells) == [300 * CKB, 500 * CKB]
    signed = await _payout(client, running, 100 * CKB)
    assert await client.send_transaction(signed.tx) == signed.tx_hash
    status = await client.get_transaction(signed.tx_hash)
    assert status.status == "pending"
    assert status.transaction == signed.tx
    # A re-broadcast of the same bytes is a duplicate, never a second payment.
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(signed.tx)
    assert info.value.is_duplicate
    await client.call("sim_mine", [{"blocks": 2}])
    status = await client.get_transaction(signed.tx_hash)
    assert status.status == "committed"
    tip = await client.get_tip_block_number()
    assert status.block_number == tip - 1
    assert len(running.chain.committed_outputs_to(RECIPIENT)) == 1
    assert running.chain.balance_shannons(RECIPIENT) == 100 * CKB
    # Re-sending a committed transaction fails on its spent inputs, as on a real node.
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(signed.tx)
    assert info.value.is_dead_or_unknown_input
    assert "Dead" in info.value.message
    wallet_after = running.chain.balance_shannons(WALLET_LOCK)
    assert wallet_after == 800 * CKB - 100 * CKB - signed.fee_shannons


async def test_unknown_transaction(client: CkbClient) -> None:
    status = await client.get_transaction(bytes(32))
    assert status.status == "unknown"
    assert status.block_number is None


async def test_rejects_double_spend_in_pool_and_chain(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await _fund(client, WALLET_LOCK, 500 * CKB)
    first = await _payout(client, running, 100 * CKB)
    second = await _payout(client, running, 120 * CKB)
    assert first.tx_hash != second.tx_hash
    await client.send_transaction(first.tx)
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(second.tx)
    assert info.value.code == -1111
    await client.call("sim_mine", [{}])
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(second.tx)
    assert info.value.code == -301
    assert "Dead" in info.value.message
    assert len(running.chain.committed_outputs_to(RECIPIENT)) == 1


async def test_rejects_bad_signature(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await _fund(client, WALLET_LOCK, 500 * CKB)
    signed = await _payout(client, running, 100 * CKB)
    # Re-sign with a key that does not own the input.
    from fiberlinkd.ckb.tx import sign_group

    forged = sign_group(signed.tx, [0], OTHER_KEY)
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(forged)
    assert info.value.code == -302
    assert "ValidationFailure" in info.value.message
    # Changing an output after signing also breaks it.
    outputs = list(signed.tx.outputs)
    outputs[0] = CellOutput(outputs[0].capacity + CKB, outputs[0].lock)
    outputs[1] = CellOutput(outputs[1].capacity - CKB, outputs[1].lock)
    tampered = Transaction(
        0,
        signed.tx.cell_deps,
        (),
        signed.tx.inputs,
        outputs,
        signed.tx.outputs_data,
        signed.tx.witnesses,
    )
    with pytest.raises(CkbNodeError, match="ValidationFailure"):
        await client.send_transaction(tampered)
    assert running.chain.mempool == []


async def test_rejects_under_capacity_output_and_overspend(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    from fiberlinkd.ckb.tx import CellInput, sign_group

    op = running.chain.fund(WALLET_LOCK, 500 * CKB)

    def make(outputs: list[CellOutput]) -> Transaction:
        from fiberlinkd.ckb.tx import PLACEHOLDER_WITNESS

        tx = Transaction(
            0,
            [running.chain.secp256k1_cell_dep],
            (),
            [CellInput(op)],
            outputs,
            [b""] * len(outputs),
            [PLACEHOLDER_WITNESS],
        )
        return sign_group(tx, [0], WALLET_KEY)

    small = make([CellOutput(60 * CKB, RECIPIENT), CellOutput(439 * CKB, WALLET_LOCK)])
    with pytest.raises(CkbNodeError, match="InsufficientCellCapacity"):
        await client.send_transaction(small)
    overspend = make([CellOutput(501 * CKB, RECIPIENT)])
    with pytest.raises(CkbNodeError, match="OutputsSumOverflow"):
        await client.send_transaction(overspend)
    no_fee = make([CellOutput(500 * CKB, RECIPIENT)])
    with pytest.raises(CkbNodeError) as info:
        await client.send_transaction(no_fee)
    assert info.value.code == -1104
    ok = make([CellOutput(499 * CKB, RECIPIENT)])
    await client.send_transaction(ok)


async def test_rejects_unknown_input_and_missing_dep(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    fake = LiveCell(running.chain.fund(WALLET_LOCK, 100 * CKB), 100 * CKB, WALLET_LOCK)
    unsigned = build_payout_tx([fake], [(RECIPIENT, 61 * CKB)], WALLET_LOCK, 1000, [])
    with pytest.raises(CkbNodeError, match="dep group"):
        await client.send_transaction(sign_payout(unsigned, WALLET_KEY).tx)
    from fiberlinkd.ckb.tx import OutPoint

    ghost = LiveCell(OutPoint(b"\x11" * 32, 0), 100 * CKB, WALLET_LOCK)
    unsigned = build_payout_tx(
        [ghost], [(RECIPIENT, 61 * CKB)], WALLET_LOCK, 1000, [running.chain.secp256k1_cell_dep]
    )
    with pytest.raises(CkbNodeError, match="Unknown"):
        await client.send_transaction(sign_payout(unsigned, WALLET_KEY).tx)


async def test_get_cells_pagination(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    for i in range(7):
        running.chain.fund(WALLET_LOCK, (100 + i) * CKB)
    running.chain.fund(RECIPIENT, 100 * CKB)
    cells = await client.get_live_cells(WALLET_LOCK, page_size=3)
    assert [c.capacity for c in cells] == [(100 + i) * CKB for i in range(7)]
    assert all(c.lock == WALLET_LOCK for c in cells)
    page = await client.get_cells_page(WALLET_LOCK, 5)
    assert len(page.cells) == 5
    rest = await client.get_cells_page(WALLET_LOCK, 5, page.last_cursor)
    assert len(rest.cells) == 2


@pytest.mark.parametrize("kind", ["http_500", "bad_json", "timeout"])
async def test_faults_before_execution(kind: str, running: devchain_module.RunningDevChain) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
        client = CkbClient(http, running.url)
        await _fund(client, WALLET_LOCK, 500 * CKB)
        signed = await _payout(client, running, 100 * CKB)
        await client.call("sim_fault", [{"method": "send_transaction", "kind": kind}])
        with pytest.raises(CkbTransportError):
            await client.send_transaction(signed.tx)
        assert (await client.get_transaction(signed.tx_hash)).status == "unknown"
        # The fault was used up: the same bytes now go through.
        assert await client.send_transaction(signed.tx) == signed.tx_hash


async def test_fault_node_error_and_count(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await client.call(
        "sim_fault", [{"method": "get_tip_block_number", "kind": "node_error", "count": 2}]
    )
    for _ in range(2):
        with pytest.raises(CkbNodeError) as info:
            await client.get_tip_block_number()
        assert info.value.code == -1
    assert await client.get_tip_block_number() == 0
    with pytest.raises(CkbNodeError, match="unknown fault kind"):
        await client.call("sim_fault", [{"method": "x", "kind": "explode"}])


async def test_fault_drop_reply_executes(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await _fund(client, WALLET_LOCK, 500 * CKB)
    signed = await _payout(client, running, 100 * CKB)
    await client.call("sim_fault", [{"method": "send_transaction", "kind": "drop_reply"}])
    with pytest.raises(CkbTransportError):
        await client.send_transaction(signed.tx)
    # The node did accept it: asking, not guessing, shows it pending.
    assert (await client.get_transaction(signed.tx_hash)).status == "pending"


async def test_callers_bound_time_with_move_on_after(
    client: CkbClient, running: devchain_module.RunningDevChain
) -> None:
    await client.call("sim_fault", [{"method": "get_tip_block_number", "kind": "timeout"}])
    with trio.move_on_after(0.2) as scope:
        await client.get_tip_block_number()
    assert scope.cancelled_caught


async def test_sim_fund_validation(client: CkbClient) -> None:
    mainnet_address = encode_address(WALLET_LOCK, "mainnet")
    with pytest.raises(CkbNodeError, match="address is for mainnet"):
        await client.call("sim_fund", [{"address": mainnet_address, "amount": 100 * CKB}])
    with pytest.raises(CkbNodeError, match="minimum capacity"):
        await _fund(client, WALLET_LOCK, 60 * CKB)
    with pytest.raises(CkbNodeError, match="shannons"):
        await _fund(client, WALLET_LOCK, "1.5")


async def test_http_contract_errors(running: devchain_module.RunningDevChain) -> None:
    async with httpx.AsyncClient(timeout=2.0) as http:
        response = await http.post(running.url, content=b"not json")
        assert response.json()["error"]["code"] == -32700
        client = CkbClient(http, running.url)
        with pytest.raises(CkbNodeError) as info:
            await client.call("no_such_method", [])
        assert info.value.code == -32601


async def test_client_contract_error_on_bad_result() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        import json

        rid = json.loads(body)["id"]
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": rid, "result": "0x01"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = CkbClient(http, "http://ckb.invalid/")
        with pytest.raises(CkbContractError, match="hex integer"):
            await client.get_tip_block_number()


def test_cli_registers_devchain() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="fiberlinkd")
    sub = parser.add_subparsers(dest="command")
    devchain_module.add_cli(sub)
    args = parser.parse_args(["devchain", "--listen", "127.0.0.1:0", "--network", "devnet"])
    assert args.listen == ("127.0.0.1", 0)
    assert args.network == "devnet"
    assert args.func is devchain_module.run_devchain_cli
    with pytest.raises(SystemExit):
        parser.parse_args(["devchain", "--listen", "nonsense"])
