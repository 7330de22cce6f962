"""Admin commands for withdrawals and policy, called through the registry's handlers.

Rules under test:
- cancel only before anything can have been paid (PENDING never sent, or the node shows
  the session Failed), and it releases the reservation; a PROCESSING row is refused;
- retry only a FAILED withdrawal the node confirms is not successful; it reserves again
  under a new round key and the executor pays it with the same hash;
- policy set validates, nests the limits and is visible in policy show;
- a community admin cannot see another app's withdrawals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.admin.protocol import AdminError
from fiberlinkd.admin.registry import CommandContext
from fiberlinkd.admin.roles import Caller, Role
from fiberlinkd.withdrawals import admin_commands as cmds
from fiberlinkd.withdrawals.executor import WithdrawalExecutor
from fiberlinkd.withdrawals.policy import Policy, PolicyError
from fiberlinkd.withdrawals.service import request
from tests.test_withdrawals_support import (
    CKB,
    balance,
    fund,
    ledger_keys,
    open_runtime,
    params,
    remote_invoice,
    sim_node,
    successes_for,
    wait_for,
)

ROOT = Caller(uid=0, name="root", role=Role.SUPER_ADMIN, app_ids=frozenset(), source="root")
OTHER = Caller(
    uid=1001, name="carol", role=Role.COMMUNITY_ADMIN, app_ids=frozenset({"other"}), source="grant"
)


def ctx(rt: Any, caller: Caller = ROOT) -> CommandContext:
    return CommandContext(rt, caller)


async def test_cancel_a_pending_withdrawal_releases_the_reservation(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
        result = await cmds.withdrawals_cancel(ctx(rt), {"id": wid})
        assert (result["state"], result["cancelled"]) == ("FAILED", True)
        assert await balance(rt, "alice") == (1000 * CKB, 0)
        with pytest.raises(AdminError) as info:
            await cmds.withdrawals_cancel(ctx(rt), {"id": wid})
        assert info.value.code == "conflict"
        with pytest.raises(AdminError):
            await cmds.withdrawals_retry(ctx(rt), {"id": wid})  # cancelled: never retried


async def test_retry_a_failed_withdrawal_reserves_again_and_pays_once(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, payment_hash = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
        sim.node.add_fault("send_payment", "payment_fails", failed_error="InvoiceCancelled")
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt).run)
            await wait_for(rt, wid, lambda w: w.state == "FAILED")
            result = await cmds.withdrawals_retry(ctx(rt), {"id": wid})
            assert result["state"] == "PENDING"
            await wait_for(rt, wid, lambda w: w.state == "COMPLETED")
            nursery.cancel_scope.cancel()
        assert successes_for(sim, payment_hash) == 1
        keys = [k[1] for k in await rt.ledger.read(ledger_keys, wid)]
        assert keys == [
            f"withdrawal:reserve:{wid}",
            f"withdrawal:release:{wid}",
            f"withdrawal:reserve:{wid}:2",
            f"withdrawal:debit:{wid}",
            f"withdrawal:release:{wid}:2",
        ]
        shown = await cmds.withdrawals_show(ctx(rt), {"id": wid})
        assert shown["node"]["status"] == "Success"
        assert [e["to"] for e in shown["timeline"]][-1] == "COMPLETED"
        with pytest.raises(AdminError) as info:
            await cmds.withdrawals_cancel(ctx(rt), {"id": wid})
        assert info.value.code == "conflict"


async def test_list_is_scoped_to_the_callers_apps(tmp_path: Path) -> None:
    async with sim_node() as (sim, client), open_runtime(tmp_path, client) as rt:
        await fund(rt, "alice", 1000 * CKB)
        invoice, _ = remote_invoice(sim, 100 * CKB, expiry_s=3600)
        wid = (await request(rt, "forum", params("alice", "100", invoice)))["id"]
        rows = await cmds.withdrawals_list(ctx(rt), {"state": "PENDING"})
        assert [r["id"] for r in rows] == [wid]
        assert rows[0]["amount"] == "100"
        assert await cmds.withdrawals_list(ctx(rt, OTHER), {}) == []
        with pytest.raises(AdminError) as info:
            await cmds.withdrawals_show(ctx(rt, OTHER), {"id": wid})
        assert info.value.code == "not_found"


async def test_policy_set_and_show(tmp_path: Path) -> None:
    async with sim_node() as (_sim, client), open_runtime(tmp_path, client) as rt:
        shown = await cmds.policy_show(ctx(rt), {"app_id": "forum"})
        assert shown["source"] == "defaults"
        result = await cmds.policy_set(
            ctx(rt),
            {
                "app_id": "forum",
                "max_per_request": "500",
                "cooldown_s": 30,
                "allowed_assets": "ckb,usdi",
            },
        )
        assert result["source"] == "app"
        assert (result["max_per_request"], result["cooldown_s"]) == ("500", 30)
        assert result["allowed_assets"] == ["CKB", "USDI"]
        with pytest.raises(AdminError) as info:
            await cmds.policy_set(ctx(rt), {"app_id": "forum", "min_amount": "600"})
        assert "min_amount must not exceed max_per_request" in info.value.message
        with pytest.raises(AdminError):
            await cmds.policy_show(ctx(rt), {"app_id": "nope"})


def test_policy_limits_round_toward_the_safe_side() -> None:
    policy = Policy.build(
        {
            "allowed_assets": ["USDI"],
            "min_amount": "0.0000001",
            "max_per_request": "1.0000009",
            "user_daily_limit": "2",
            "app_daily_limit": "3",
            "cooldown_s": 0,
        }
    )
    limits = policy.limits_for("USDI", 6)
    assert (limits.min_amount, limits.max_per_request) == (1, 1_000_000)
    assert not policy.limits_for("CKB", 8).asset_allowed
    with pytest.raises(PolicyError):
        policy.updated({"allowed_assets": ["DOGE"]})
    with pytest.raises(PolicyError):
        Policy.from_json("[1]", policy)
