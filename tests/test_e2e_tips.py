"""End-to-end: the whole daemon with the FNN simulator on loopback, driven as the plugin drives it.

Rules: raw signed bytes exactly as the plugin sends them; every JSON-RPC outcome is HTTP 200.
"""

from __future__ import annotations

import httpx
import trio

from fiberlinkd.fnn.simulator import Simulator
from tests.conftest import make_config, start_daemon


async def test_paid_tip_settles_within_two_seconds_and_shows_on_the_dashboard(
    tmp_path, sim: Simulator
) -> None:
    config = make_config(tmp_path, sim.url)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        d = await start_daemon(nursery, config, sim, http)
        created = await d.plugin.result(
            "tip.create",
            {
                "amount": "31",
                "asset": "CKB",
                "postId": "123",
                "fromUserId": "45",
                "toUserId": "67",
                "message": "Great post <3 & thanks",
            },
        )
        invoice = created["invoice"]
        assert invoice.startswith("fibd3100000000")
        assert (await d.plugin.result("tip.status", {"invoice": invoice})) == {"state": "UNPAID"}
        sim.node.pay_invoice(invoice)
        paid_at = trio.current_time()
        with trio.fail_after(2):
            while (await d.plugin.result("tip.status", {"invoice": invoice}))["state"] != "SETTLED":
                await trio.sleep(0.05)
        assert trio.current_time() - paid_at < 2
        summary = await d.plugin.result(
            "dashboard.summary",
            {
                "userId": "67",
                "limit": 20,
                "includeAdmin": False,
                "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
            },
        )
        assert summary["balances"] == {
            "available": "31",
            "pending": "0",
            "locked": "0",
            "asset": "CKB",
        }
        assert summary["balance"] == "31"
        assert summary["stats"] == {"pendingCount": 0, "completedCount": 1, "failedCount": 0}
        [tip] = summary["tips"]
        assert tip["direction"] == "IN"
        assert tip["counterpartyUserId"] == "45"
        assert tip["message"] == "Great post <3 & thanks"
        assert tip["state"] == "SETTLED"
        feed = await d.plugin.result("tip.settled_feed", {"limit": 50})
        assert [i["tipIntentId"] for i in feed["items"]] == [tip["id"]]
        again = await d.plugin.result(
            "tip.settled_feed", {"limit": 50, "after": feed["nextCursor"]}
        )
        assert again == {"items": [], "nextCursor": None}
        d.stop.set()
