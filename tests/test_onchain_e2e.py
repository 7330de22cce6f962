"""End-to-end: the whole daemon with the FNN simulator (Fibd) and the CKB dev chain (devnet);
a settled tip funds a creator, who withdraws to a ``ckt1…`` address through /rpc as the
plugin does.

Rules: raw signed bytes as the plugin sends them; the dev chain shows exactly one output to
the address; the dashboard shows the balance minus amount and the transaction's fee; the
admin wallet report shows the hot wallet and what it holds; an exposed key file stops the
daemon before it serves anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fiberlinkd.ckb.devchain import open_devchain
from fiberlinkd.config import ConfigError, OnchainConfig
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.ledger.withdrawals import get_withdrawal
from fiberlinkd.withdrawals.admin_commands import wallet_report
from tests.conftest import make_config, start_daemon
from tests.test_onchain_support import (
    CKB,
    DEV_DEP_GROUP,
    KEY_HEX,
    RECIPIENT,
    RECIPIENT_ADDRESS,
    WALLET,
    onchain_params,
)


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "hot-wallet.key"
    path.write_text(KEY_HEX + "\n")
    os.chmod(path, mode)
    return path


async def test_a_withdrawal_to_a_ckt_address_through_rpc_completes_with_one_output(
    tmp_path: Path, sim: Simulator
) -> None:
    async with (
        open_devchain("devnet", "127.0.0.1", 0) as chain,
        httpx.AsyncClient() as http,
        trio.open_nursery() as nursery,
    ):
        config = make_config(tmp_path, sim.url, withdrawals={"min_amount": "1"})
        config = attrs.evolve(
            config,
            onchain=OnchainConfig(
                enabled=True,
                ckb_rpc_url=chain.url,
                hot_wallet_key_file=str(_key_file(tmp_path)),
                confirmations=1,
                poll_s=0.05,
                secp256k1_dep_group=DEV_DEP_GROUP,
            ),
        )
        fund = {"address": WALLET.address("devnet"), "amount": 1000 * CKB}
        reply = await http.post(
            chain.url, json={"jsonrpc": "2.0", "id": 1, "method": "sim_fund", "params": [fund]}
        )
        assert "result" in reply.json()
        d = await start_daemon(nursery, config, sim, http)
        tip = await d.plugin.result(
            "tip.create",
            {"amount": "200", "asset": "CKB", "postId": "1", "fromUserId": "45", "toUserId": "67"},
        )
        sim.node.pay_invoice(tip["invoice"])
        with trio.fail_after(5):
            while (await d.plugin.result("tip.status", {"invoice": tip["invoice"]}))[
                "state"
            ] != "SETTLED":
                await trio.sleep(0.05)
        ask = onchain_params("67", "100")
        quoted = await d.plugin.result("withdrawal.quote", ask)
        assert quoted["destinationValid"] is True
        assert quoted["validationMessage"] is None
        assert quoted["minimumAmount"] == "61"
        assert quoted["networkFee"] != "0"
        requested = await d.plugin.result("withdrawal.request", ask)
        assert requested["state"] == "PENDING"
        with trio.fail_after(10):
            while True:
                w = await d.rt.ledger.read(get_withdrawal, requested["id"])
                assert w is not None
                if w.tx_hash is not None and chain.chain.mempool:
                    break
                await trio.sleep(0.05)
        report = await wallet_report(d.rt)
        assert report["address"] == WALLET.address("devnet")
        assert report["network_ok"] is True
        assert report["reserved"]["processing_count"] == 1
        await http.post(
            chain.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "sim_mine", "params": [{"blocks": 2}]},
        )
        summary_params = {
            "userId": "67",
            "limit": 20,
            "includeAdmin": False,
            "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
        }
        with trio.fail_after(10):
            while (
                w := await d.rt.ledger.read(get_withdrawal, requested["id"])
            ).state != "COMPLETED":  # type: ignore[union-attr]
                await trio.sleep(0.05)
        assert w is not None
        assert w.fee_paid is not None
        summary = await d.plugin.result("dashboard.summary", summary_params)
        expected = (200 * CKB - 100 * CKB - w.fee_paid) / CKB
        assert float(summary["balances"]["available"]) == pytest.approx(expected, abs=1e-9)
        outputs = chain.chain.committed_outputs_to(RECIPIENT)
        assert [o.output.capacity for o in outputs] == [100 * CKB]
        assert RECIPIENT_ADDRESS.startswith("ckt1")
        d.stop.set()


async def test_the_daemon_refuses_to_start_with_a_group_readable_wallet_key(
    tmp_path: Path,
) -> None:
    config = attrs.evolve(
        make_config(tmp_path),
        onchain=OnchainConfig(enabled=True, hot_wallet_key_file=str(_key_file(tmp_path, 0o640))),
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        await run_daemon(config, environ={})
