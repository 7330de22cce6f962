"""End-to-end settlement: the whole daemon and the FNN simulator on loopback, driven as the
plugin and an operator drive them.

Rules: the plugin's signed requests over ``/rpc``; the payer acts only through the
simulator's JSON-RPC control methods (``sim_pay_invoice``), as a separate program would; a
paid tip reads SETTLED within 2 s of wall time while its modal polls, and the credit shows
on the recipient's dashboard; with no modal open, the rise of the simulator's channel
balance (``list_channels``) finds the paid tip within 2 s too; ``fiberlinkd admin backfill``
over the real admin socket credits a payment the ledger had given up on (FAILED → SETTLED,
LATE_SETTLEMENT) once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from fiberlinkd.admin import cli as admin_cli
from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.settlement_admin import backfill_command  # registers "backfill"
from tests.conftest import make_config, start_daemon

TIP = {
    "amount": "31",
    "asset": "CKB",
    "postId": "123",
    "fromUserId": "45",
    "toUserId": "67",
    "message": "thanks",
}
SUMMARY = {
    "userId": "67",
    "limit": 20,
    "includeAdmin": False,
    "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
}


async def sim_control(http: httpx.AsyncClient, sim: Simulator, method: str, **params: Any) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}
    reply = (await http.post(sim.url, json=body)).json()
    assert "error" not in reply, reply
    return reply["result"]


async def test_paid_tip_reads_settled_within_two_seconds_and_the_dashboard_shows_the_credit(
    tmp_path: Path, sim: Simulator
) -> None:
    config = make_config(tmp_path, sim.url)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        d = await start_daemon(nursery, config, sim, http)
        invoice = (await d.plugin.result("tip.create", TIP))["invoice"]
        assert await d.plugin.result("tip.status", {"invoice": invoice}) == {"state": "UNPAID"}
        paid = await sim_control(http, sim, "sim_pay_invoice", invoice=invoice)
        assert paid["invoice_status"] == "Paid"
        paid_at = trio.current_time()
        with trio.fail_after(2):
            while (await d.plugin.result("tip.status", {"invoice": invoice}))["state"] != (
                "SETTLED"
            ):
                await trio.sleep(0.1)
        detected_s = trio.current_time() - paid_at
        assert detected_s < 2
        summary = await d.plugin.result("dashboard.summary", SUMMARY)
        assert summary["balances"]["available"] == "31"
        assert summary["stats"]["completedCount"] == 1
        assert [t["state"] for t in summary["tips"]] == ["SETTLED"]
        d.stop.set()


async def test_an_unwatched_paid_tip_is_found_within_two_seconds_by_the_channel_balance(
    tmp_path: Path, sim: Simulator
) -> None:
    """No modal polls: only the simulator's channel balance (list_channels) can tell."""
    config = make_config(tmp_path, sim.url)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        d = await start_daemon(nursery, config, sim, http)
        invoices = [(await d.plugin.result("tip.create", TIP))["invoice"] for _ in range(3)]
        await trio.sleep(3.0)  # past the first scheduled checks: the schedule backs off
        await sim_control(http, sim, "sim_pay_invoice", invoice=invoices[1])
        paid_at = trio.current_time()
        with trio.fail_after(2):
            while True:
                found = await d.rt.ledger.read(tipsql.tip_state_by_invoice, "forum", invoices[1])
                if found is not None and found[1] == tipsql.SETTLED:
                    break
                await trio.sleep(0.05)
        assert trio.current_time() - paid_at < 2
        others = [
            await d.rt.ledger.read(tipsql.tip_state_by_invoice, "forum", invoices[i])
            for i in (0, 2)
        ]
        assert [o[1] if o else None for o in others] == [tipsql.UNPAID, tipsql.UNPAID]
        d.stop.set()


async def test_admin_backfill_credits_a_paid_tip_the_ledger_had_failed_once(
    tmp_path: Path, sim: Simulator
) -> None:
    assert backfill_command  # imported for its registration with the admin registry
    config = make_config(tmp_path, sim.url)
    socket_path = Path(config.admin.socket)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        d = await start_daemon(nursery, config, sim, http)
        invoice = (await d.plugin.result("tip.create", TIP))["invoice"]
        found = await d.rt.ledger.read(tipsql.tip_state_by_invoice, "forum", invoice)
        assert found is not None
        tip_id = found[0]
        # An earlier bug (or an operator) gave up on the tip; the payer paid anyway.
        await d.rt.ledger.transact(
            tipsql.fail_tip, tip_id, now_ms=d.rt.clock.now_ms(), reason="TEST", source="TEST"
        )
        await sim_control(http, sim, "sim_pay_invoice", invoice=invoice)
        with trio.fail_after(5):
            while not await trio.Path(socket_path).exists():
                await trio.sleep(0.02)
        args = {"app_id": "forum", "calls_per_s": 10}
        first = await trio.to_thread.run_sync(admin_cli.call, socket_path, "backfill", args)
        again = await trio.to_thread.run_sync(admin_cli.call, socket_path, "backfill", args)
        assert (first["late_settled"], first["ok"]) == (1, True)
        assert first["changes"] == [
            {"tip_id": tip_id, "app_id": "forum", "from": "FAILED", "to": "SETTLED"}
        ]
        assert (again["late_settled"], again["settled"], again["already_settled"]) == (0, 0, 1)
        assert await d.plugin.result("tip.status", {"invoice": invoice}) == {"state": "SETTLED"}
        summary = await d.plugin.result("dashboard.summary", SUMMARY)
        assert summary["balances"]["available"] == "31"
        d.stop.set()
