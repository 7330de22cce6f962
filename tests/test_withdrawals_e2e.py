"""End-to-end: the whole daemon with the FNN simulator; a settled tip funds a creator, who
quotes and requests a withdrawal to a remote invoice through /rpc as the plugin does.

Rules: raw signed bytes as the plugin sends them; HTTP 200 envelopes; the node shows one
successful payment and the dashboard shows the balance minus amount and actual fee.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from fiberlinkd.fnn.simulator import Simulator
from tests.conftest import make_config, start_daemon


async def test_tip_funds_a_withdrawal_that_completes_and_shows_on_the_dashboard(
    tmp_path: Path, sim: Simulator
) -> None:
    config = make_config(tmp_path, sim.url, withdrawals={"min_amount": "1", "payment_poll_s": 0.05})
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
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
        remote = sim.node.remote_invoice(100 * 10**8, expiry_s=3600)
        ask = {
            "userId": "67",
            "amount": "100",
            "asset": "CKB",
            "destination": {"kind": "PAYMENT_REQUEST", "paymentRequest": remote["invoice"]},
        }
        quoted = await d.plugin.result("withdrawal.quote", ask)
        assert quoted["destinationValid"] is True
        assert quoted["availableBalance"] == "200"
        requested = await d.plugin.result("withdrawal.request", ask)
        assert requested["state"] == "PENDING"
        summary_params = {
            "userId": "67",
            "limit": 20,
            "includeAdmin": False,
            "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
        }
        with trio.fail_after(5):
            while True:
                summary = await d.plugin.result("dashboard.summary", summary_params)
                if summary["balances"]["available"] == "99.9":
                    break
                await trio.sleep(0.05)
        assert summary["balances"]["locked"] == "0"
        paid = [
            s for s in sim.node.successful_payments() if s.payment_hash == remote["payment_hash"]
        ]
        assert len(paid) == 1
        d.stop.set()
