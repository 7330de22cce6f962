"""Every plugin method's success shape and its refusals, end to end (contract §4 and §7.1).

Rules:
- results follow plugin-wire-contract.md §4 exactly: amounts are canonical decimal
  strings, ids are strings, counts are ints, timestamps are ISO-8601 UTC with
  milliseconds and ``Z``; enum spellings are uppercase;
- the settled feed is ordered by ``(settledAt, id)`` ascending and ``after`` is exclusive,
  ties on ``settledAt`` included, so the plugin's cursor never skips nor repeats a tip;
- bad params are ``-32602`` with ``data.field`` naming the field (self-tips ``-32002``),
  HTTP 200, and change nothing in the database.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import pytest
import trio

from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.runtime import Runtime
from tests.conftest import RunningDaemon
from tests.test_api_envelope import (
    ISO_MS,
    expect_error,
    expect_result,
    running,
    send,
    signed,
    snapshot,
)

TIP = {
    "amount": "31",
    "asset": "CKB",
    "postId": "123",
    "fromUserId": "45",
    "toUserId": "67",
    "message": "Great post",
}
DASHBOARD = {
    "userId": "67",
    "limit": 20,
    "includeAdmin": False,
    "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
}
WITHDRAWAL_STATES = (
    "ALL",
    "LIQUIDITY_PENDING",
    "PENDING",
    "PROCESSING",
    "RETRY_PENDING",
    "COMPLETED",
    "FAILED",
)
SETTLEMENT_STATES = ("ALL", "UNPAID", "SETTLED", "FAILED")
TESTNET_ADDRESS = "ckt1qyqg5xa84dfwfy76tptw2sy0k9q98xaeka9q5tvdlm"
SHANNONS = 10**8


async def create_tip(d: RunningDaemon, **overrides: Any) -> str:
    params = {**TIP, **overrides}
    params = {k: v for k, v in params.items() if v is not None}
    result = await d.plugin.result("tip.create", params)
    assert set(result) == {"invoice"}
    invoice: str = result["invoice"]
    return invoice


def _tip_by_invoice(conn: sqlite3.Connection, invoice: str) -> tipsql.Tip:
    row = conn.execute("SELECT * FROM tip_intents WHERE invoice = ?", (invoice,)).fetchone()
    return tipsql.Tip.from_row(row)


async def tip_of(rt: Runtime, invoice: str) -> tipsql.Tip:
    return await rt.ledger.read(_tip_by_invoice, invoice)


async def settle_at(rt: Runtime, invoice: str, at_ms: int) -> str:
    """Settle a tip as the poller would, at a chosen time (to build ties on settledAt)."""
    tip = await tip_of(rt, invoice)
    assert await rt.ledger.transact(tipsql.settle_tip, tip.id, now_ms=at_ms, source="TEST")
    return tip.id


async def wait_settled(d: RunningDaemon, invoice: str) -> None:
    with trio.fail_after(5):
        while (await d.plugin.result("tip.status", {"invoice": invoice}))["state"] != "SETTLED":
            await trio.sleep(0.05)


# --- tip.create / tip.status ----------------------------------------------------------------


async def test_tip_create_returns_a_qr_sized_invoice_and_commits_an_unpaid_tip(
    tmp_path, sim: Simulator
) -> None:
    """B1."""
    async with running(tmp_path, sim) as d:
        invoice = await create_tip(d)
        assert invoice.strip() == invoice
        assert 0 < len(invoice.encode()) < 1273  # fits a version-40-H QR code
        tip = await tip_of(d.rt, invoice)
        assert (tip.app_id, tip.post_id, tip.from_user_id, tip.to_user_id) == (
            "forum",
            "123",
            "45",
            "67",
        )
        assert (tip.asset, tip.amount, tip.state, tip.message) == (
            "CKB",
            31 * SHANNONS,
            "UNPAID",
            "Great post",
        )
        # The node stamps the invoice; created_at is read just after it answers.
        expiry_ms = d.rt.config.tips.invoice_expiry_s * 1000
        assert abs(tip.expires_at - tip.created_at - expiry_ms) < 2_000
        events = await d.rt.ledger.read(
            lambda conn: [
                tuple(r)
                for r in conn.execute(
                    "SELECT from_state, to_state, source FROM tip_events WHERE tip_id = ?",
                    (tip.id,),
                )
            ]
        )
        assert events == [(None, "UNPAID", "TIP_CREATE")]
        second = await create_tip(d)
        assert second != invoice  # unique per tip: it is the tip.status key


async def test_tip_create_takes_the_smallest_unit_and_trims_the_message(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        smallest = await create_tip(d, amount="0.00000001", message="  hi there \n")
        tip = await tip_of(d.rt, smallest)
        assert (tip.amount, tip.message) == (1, "hi there")
        blank = await create_tip(d, amount="12.50", message="   ")
        tip = await tip_of(d.rt, blank)
        assert (tip.amount, tip.message) == (1250 * SHANNONS // 100, None)
        no_message = await create_tip(d, message=None)
        assert (await tip_of(d.rt, no_message)).message is None
        longest = await create_tip(d, message="é" * 280)
        assert (await tip_of(d.rt, longest)).message == "é" * 280
        numeric_post = await create_tip(d, postId=123)
        assert (await tip_of(d.rt, numeric_post)).post_id == "123"


async def test_tip_status_follows_the_same_invoice_from_unpaid_to_settled(
    tmp_path, sim: Simulator
) -> None:
    """B2, B3 (and the ``tip.get`` alias)."""
    async with running(tmp_path, sim) as d:
        invoice = await create_tip(d)
        for method in ("tip.status", "tip.get"):
            assert await d.plugin.result(method, {"invoice": invoice}) == {"state": "UNPAID"}
        sim.node.pay_invoice(invoice)
        await wait_settled(d, invoice)
        for method in ("tip.status", "tip.get"):
            assert await d.plugin.result(method, {"invoice": invoice}) == {"state": "SETTLED"}


async def test_tip_status_of_another_apps_invoice_is_tip_not_found(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        other_secret = secrets.token_hex(32)
        await d.rt.ledger.transact(insert_app, "other", other_secret, d.rt.clock.now_ms())
        body, headers = signed(d, "tip.create", TIP, app_id="other", secret=other_secret)
        foreign = expect_result(await send(d, body, headers))["invoice"]
        before = await snapshot(d.rt, nonces=False)
        body, headers = signed(d, "tip.status", {"invoice": foreign})
        error = expect_error(await send(d, body, headers), -32004, "req-1")
        assert error["message"] == "Tip not found"
        body, headers = signed(d, "tip.status", {"invoice": "fibd1unknowninvoice"})
        expect_error(await send(d, body, headers), -32004)
        assert await snapshot(d.rt, nonces=False) == before
        # The owner sees it.
        body, headers = signed(
            d, "tip.status", {"invoice": foreign}, app_id="other", secret=other_secret
        )
        assert expect_result(await send(d, body, headers)) == {"state": "UNPAID"}


# --- dashboard.summary ----------------------------------------------------------------------


def assert_tip_row_types(row: dict[str, Any]) -> None:
    assert set(row) >= {
        "id",
        "invoice",
        "postId",
        "amount",
        "asset",
        "state",
        "direction",
        "counterpartyUserId",
        "message",
        "createdAt",
        "settledAt",
    }
    for key in ("id", "invoice", "postId", "amount", "counterpartyUserId"):
        assert isinstance(row[key], str), (key, row)
        assert row[key]
    assert row["asset"] in ("CKB", "USDI")
    assert row["state"] in ("UNPAID", "SETTLED", "FAILED")
    assert row["direction"] in ("IN", "OUT")
    assert row["message"] is None or isinstance(row["message"], str)
    assert ISO_MS.fullmatch(row["createdAt"])
    assert (row["settledAt"] is None) == (row["state"] != "SETTLED")
    if row["settledAt"] is not None:
        assert ISO_MS.fullmatch(row["settledAt"])


async def test_dashboard_summary_shape_balances_and_directions(tmp_path, sim: Simulator) -> None:
    """B4 and B6: a settled incoming tip with a message, an unpaid one, an outgoing one."""
    async with running(tmp_path, sim) as d:
        received = await create_tip(d, amount="12.5", message="Great post")
        sim.node.pay_invoice(received)
        await wait_settled(d, received)
        pending = await create_tip(d, amount="4", fromUserId="46", message=None)
        outgoing = await create_tip(d, amount="1", fromUserId="67", toUserId="45", message="ty")
        summary = await d.plugin.result("dashboard.summary", {**DASHBOARD, "limit": 50})
        assert summary["balance"] == "12.5"
        assert summary["balances"] == {
            "available": "12.5",
            "pending": "4",
            "locked": "0",
            "asset": "CKB",
        }
        assert summary["stats"] == {"pendingCount": 2, "completedCount": 1, "failedCount": 0}
        assert all(type(v) is int for v in summary["stats"].values())
        assert ISO_MS.fullmatch(summary["generatedAt"])
        assert "admin" not in summary
        rows = summary["tips"]
        for row in rows:
            assert_tip_row_types(row)
        assert [r["invoice"] for r in rows] == [outgoing, pending, received]  # newest first
        out_row, pending_row, in_row = rows
        assert (in_row["direction"], in_row["counterpartyUserId"]) == ("IN", "45")
        assert (in_row["amount"], in_row["state"], in_row["message"]) == (
            "12.5",
            "SETTLED",
            "Great post",
        )
        assert (pending_row["direction"], pending_row["counterpartyUserId"]) == ("IN", "46")
        assert (pending_row["amount"], pending_row["message"]) == ("4", None)
        assert (out_row["direction"], out_row["counterpartyUserId"]) == ("OUT", "45")
        assert out_row["postId"] == "123"


async def test_dashboard_summary_for_a_user_without_tips_is_empty(tmp_path, sim: Simulator) -> None:
    """B8."""
    async with running(tmp_path, sim) as d:
        summary = await d.plugin.result("dashboard.summary", {**DASHBOARD, "userId": "999"})
        assert summary["tips"] == []
        assert summary["balance"] == "0"
        assert summary["balances"] == {
            "available": "0",
            "pending": "0",
            "locked": "0",
            "asset": "CKB",
        }
        assert summary["stats"] == {"pendingCount": 0, "completedCount": 0, "failedCount": 0}


async def test_dashboard_keeps_tip_ids_stable_and_shows_a_settlement_between_polls(
    tmp_path, sim: Simulator
) -> None:
    """B7."""
    async with running(tmp_path, sim) as d:
        invoice = await create_tip(d, amount="2")
        first = await d.plugin.result("dashboard.summary", DASHBOARD)
        sim.node.pay_invoice(invoice)
        await wait_settled(d, invoice)
        second = await d.plugin.result("dashboard.summary", DASHBOARD)
        assert [t["id"] for t in first["tips"]] == [t["id"] for t in second["tips"]]
        assert first["tips"][0]["state"] == "UNPAID"
        assert first["balances"]["available"] == "0"
        assert first["balances"]["pending"] == "2"
        assert second["tips"][0]["state"] == "SETTLED"
        assert second["balances"]["available"] == "2"
        assert second["balances"]["pending"] == "0"


async def test_dashboard_limit_caps_the_rows_and_accepts_50(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        invoices = [await create_tip(d, postId=str(p)) for p in range(3)]
        two = await d.plugin.result("dashboard.summary", {**DASHBOARD, "limit": 2})
        assert [t["invoice"] for t in two["tips"]] == invoices[::-1][:2]
        fifty = await d.plugin.result("dashboard.summary", {**DASHBOARD, "limit": 50})
        assert len(fifty["tips"]) == 3
        plain = await d.plugin.result("dashboard.summary", {"userId": "67"})
        assert len(plain["tips"]) == 3


async def test_dashboard_include_admin_accepts_every_allowlisted_filter(
    tmp_path, sim: Simulator
) -> None:
    """B5: any allowlisted filter pair, with an admin block for the calling app only."""
    async with running(tmp_path, sim) as d:
        await create_tip(d)
        settled = await create_tip(d, amount="5")
        sim.node.pay_invoice(settled)
        await wait_settled(d, settled)
        for w_state in WITHDRAWAL_STATES:
            for s_state in SETTLEMENT_STATES:
                filters = {"withdrawalState": w_state, "settlementState": s_state}
                summary = await d.plugin.result(
                    "dashboard.summary",
                    {"userId": "67", "limit": 20, "includeAdmin": True, "filters": filters},
                )
                admin = summary["admin"]
                assert admin["filtersApplied"] == filters
                assert isinstance(admin["withdrawals"], list)
                states = {s["state"] for s in admin["settlements"]}
                expected = {"UNPAID", "SETTLED"} if s_state == "ALL" else {s_state} & states
                assert states == expected
                counts = {c["stage"]: c["count"] for c in admin["pipelineBoard"]["stageCounts"]}
                assert counts == {"UNPAID": 1, "SETTLED": 1, "FAILED": 0}
                for s in admin["settlements"]:
                    assert isinstance(s["id"], str)
                    assert ISO_MS.fullmatch(s["createdAt"])
                    assert type(s["retryCount"]) is int


# --- tip.settled_feed -------------------------------------------------------------------------


async def test_settled_feed_items_have_the_contract_shape(tmp_path, sim: Simulator) -> None:
    """B12."""
    async with running(tmp_path, sim) as d:
        invoice = await create_tip(d, amount="0.5")
        await create_tip(d)  # unpaid: never in the feed
        sim.node.pay_invoice(invoice)
        await wait_settled(d, invoice)
        feed = await d.plugin.result("tip.settled_feed", {"limit": 50})
        [item] = feed["items"]
        tip = await tip_of(d.rt, invoice)
        assert item == {
            "tipIntentId": tip.id,
            "postId": "123",
            "invoice": invoice,
            "amount": "0.5",
            "asset": "CKB",
            "fromUserId": "45",
            "toUserId": "67",
            "message": "Great post",
            "settledAt": item["settledAt"],
        }
        assert ISO_MS.fullmatch(item["settledAt"])
        assert feed["nextCursor"] == {"settledAt": item["settledAt"], "id": tip.id}
        empty = await d.plugin.result(
            "tip.settled_feed", {"limit": 50, "after": feed["nextCursor"]}
        )
        assert empty == {"items": [], "nextCursor": None}


async def test_settled_feed_pages_through_ties_on_settled_at_without_gaps_or_repeats(
    tmp_path, sim: Simulator
) -> None:
    """B13: ascending (settledAt, id); ``after`` exclusive even among equal settledAt."""
    async with running(tmp_path, sim) as d:
        t0 = d.rt.clock.now_ms()
        invoices = [await create_tip(d, postId=str(p)) for p in range(6)]
        times = [t0 + 5, t0 + 5, t0 + 5, t0 + 1, t0 + 9, t0 + 5]
        # settle_tip itself never produces ties (each settlement is stamped after the last);
        # stored ties, e.g. from an older version, must still page without gaps or repeats.
        expected = []
        for inv, at in zip(invoices, times, strict=True):
            tip_id = await settle_at(d.rt, inv, at)
            await d.rt.ledger.transact(_force_settled_at, tip_id, at)
            expected.append((at, tip_id))
        expected.sort()
        # Another app's settled tip at the same instant never shows.
        other_secret = secrets.token_hex(32)
        await d.rt.ledger.transact(insert_app, "other", other_secret, d.rt.clock.now_ms())
        body, headers = signed(d, "tip.create", TIP, app_id="other", secret=other_secret)
        await settle_at(d.rt, expect_result(await send(d, body, headers))["invoice"], t0 + 5)

        whole = await d.plugin.result("tip.settled_feed", {"limit": 100})
        assert [i["tipIntentId"] for i in whole["items"]] == [tip_id for _, tip_id in expected]
        for page_size in (1, 2, 4):
            seen: list[str] = []
            cursor = None
            for _ in range(10):
                params: dict[str, Any] = {"limit": page_size}
                if cursor is not None:
                    params["after"] = cursor
                page = await d.plugin.result("tip.settled_feed", params)
                items = page["items"]
                assert len(items) <= page_size
                if not items:
                    assert page["nextCursor"] is None
                    break
                seen += [i["tipIntentId"] for i in items]
                # The plugin rebuilds the cursor from the last item's strings, sent back as is.
                cursor = {"settledAt": items[-1]["settledAt"], "id": items[-1]["tipIntentId"]}
                assert page["nextCursor"] == cursor
            assert seen == [tip_id for _, tip_id in expected], page_size


def _force_settled_at(conn: Any, tip_id: str, at: int) -> None:
    conn.execute("UPDATE tip_intents SET settled_at = ? WHERE id = ?", (at, tip_id))


# --- withdrawals ---------------------------------------------------------------------------------


async def test_withdrawal_quote_and_request_answer_200_envelopes_of_the_contract_shape(
    tmp_path, sim: Simulator
) -> None:
    """B9/B10: a quote for a valid testnet address; a request with no balance is refused."""
    params = {
        "userId": "67",
        "amount": "61",
        "asset": "CKB",
        "destination": {"kind": "CKB_ADDRESS", "address": TESTNET_ADDRESS},
    }
    async with running(tmp_path, sim) as d:
        quote = await d.plugin.call("withdrawal.quote", params)
        if "result" in quote:
            result = quote["result"]
            for key in (
                "asset",
                "amount",
                "minimumAmount",
                "availableBalance",
                "lockedBalance",
                "networkFee",
                "receiveAmount",
            ):
                assert isinstance(result[key], str), key
            assert isinstance(result["destinationValid"], bool)
            assert result["validationMessage"] is None or isinstance(
                result["validationMessage"], str
            )
        else:
            assert isinstance(quote["error"]["message"], str)
        before = await snapshot(d.rt, nonces=False)
        request = await d.plugin.call("withdrawal.request", params)
        assert "error" in request, request  # nothing to withdraw
        assert isinstance(request["error"]["code"], int)
        assert request["error"]["message"]
        assert await snapshot(d.rt, nonces=False) == before


# --- bad params -----------------------------------------------------------------------------------

LONG = "x" * 281
BAD_PARAMS: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    # (case id, method, params, code, data.field)
    ("amount-exponent", "tip.create", {**TIP, "amount": "1e5"}, -32602, "amount"),
    ("amount-negative", "tip.create", {**TIP, "amount": "-1"}, -32602, "amount"),
    ("amount-zero", "tip.create", {**TIP, "amount": "0"}, -32602, "amount"),
    ("amount-zero-decimal", "tip.create", {**TIP, "amount": "0.000"}, -32602, "amount"),
    ("amount-9-decimals", "tip.create", {**TIP, "amount": "1.123456789"}, -32602, "amount"),
    ("amount-number", "tip.create", {**TIP, "amount": 31}, -32602, "amount"),
    ("amount-float", "tip.create", {**TIP, "amount": 0.5}, -32602, "amount"),
    ("amount-empty", "tip.create", {**TIP, "amount": ""}, -32602, "amount"),
    ("amount-spaces", "tip.create", {**TIP, "amount": " 1"}, -32602, "amount"),
    ("amount-comma", "tip.create", {**TIP, "amount": "1,5"}, -32602, "amount"),
    ("amount-hex", "tip.create", {**TIP, "amount": "0x10"}, -32602, "amount"),
    ("amount-above-max", "tip.create", {**TIP, "amount": "1000001"}, -32602, "amount"),
    (
        "amount-missing",
        "tip.create",
        {k: v for k, v in TIP.items() if k != "amount"},
        -32602,
        "amount",
    ),
    ("asset-btc", "tip.create", {**TIP, "asset": "BTC"}, -32602, "asset"),
    ("asset-lowercase", "tip.create", {**TIP, "asset": "ckb"}, -32602, "asset"),
    ("asset-usdi-not-enabled", "tip.create", {**TIP, "asset": "USDI"}, -32602, "asset"),
    (
        "asset-missing",
        "tip.create",
        {k: v for k, v in TIP.items() if k != "asset"},
        -32602,
        "asset",
    ),
    ("message-281-chars", "tip.create", {**TIP, "message": LONG}, -32602, "message"),
    ("message-number", "tip.create", {**TIP, "message": 5}, -32602, "message"),
    (
        "postId-missing",
        "tip.create",
        {k: v for k, v in TIP.items() if k != "postId"},
        -32602,
        "postId",
    ),
    ("postId-blank", "tip.create", {**TIP, "postId": "  "}, -32602, "postId"),
    ("postId-too-long", "tip.create", {**TIP, "postId": "9" * 65}, -32602, "postId"),
    ("postId-object", "tip.create", {**TIP, "postId": {"id": 1}}, -32602, "postId"),
    ("fromUserId-list", "tip.create", {**TIP, "fromUserId": ["45"]}, -32602, "fromUserId"),
    ("toUserId-null", "tip.create", {**TIP, "toUserId": None}, -32602, "toUserId"),
    ("self-tip", "tip.create", {**TIP, "toUserId": "45"}, -32002, None),
    ("status-invoice-null", "tip.status", {"invoice": None}, -32602, "invoice"),
    ("status-invoice-missing", "tip.status", {}, -32602, "invoice"),
    ("status-invoice-number", "tip.status", {"invoice": 5}, -32602, "invoice"),
    ("status-invoice-huge", "tip.status", {"invoice": "f" * 5000}, -32602, "invoice"),
    ("dashboard-limit-0", "dashboard.summary", {**DASHBOARD, "limit": 0}, -32602, "limit"),
    ("dashboard-limit-51", "dashboard.summary", {**DASHBOARD, "limit": 51}, -32602, "limit"),
    ("dashboard-limit-string", "dashboard.summary", {**DASHBOARD, "limit": "20"}, -32602, "limit"),
    ("dashboard-limit-float", "dashboard.summary", {**DASHBOARD, "limit": 2.5}, -32602, "limit"),
    ("dashboard-limit-bool", "dashboard.summary", {**DASHBOARD, "limit": True}, -32602, "limit"),
    ("dashboard-userId-missing", "dashboard.summary", {"limit": 20}, -32602, "userId"),
    (
        "dashboard-includeAdmin-string",
        "dashboard.summary",
        {**DASHBOARD, "includeAdmin": "true"},
        -32602,
        "includeAdmin",
    ),
    (
        "dashboard-filters-string",
        "dashboard.summary",
        {**DASHBOARD, "filters": "ALL"},
        -32602,
        "filters",
    ),
    (
        "dashboard-withdrawalState-unknown",
        "dashboard.summary",
        {**DASHBOARD, "filters": {"withdrawalState": "DONE", "settlementState": "ALL"}},
        -32602,
        "filters.withdrawalState",
    ),
    (
        "dashboard-settlementState-lowercase",
        "dashboard.summary",
        {**DASHBOARD, "filters": {"withdrawalState": "ALL", "settlementState": "settled"}},
        -32602,
        "filters.settlementState",
    ),
    ("feed-limit-0", "tip.settled_feed", {"limit": 0}, -32602, "limit"),
    ("feed-limit-101", "tip.settled_feed", {"limit": 101}, -32602, "limit"),
    ("feed-after-string", "tip.settled_feed", {"limit": 5, "after": "x"}, -32602, "after"),
    ("feed-after-empty", "tip.settled_feed", {"limit": 5, "after": {}}, -32602, "after"),
    (
        "feed-after-id-missing",
        "tip.settled_feed",
        {"limit": 5, "after": {"settledAt": "2026-01-01T00:00:00.000Z"}},
        -32602,
        "after",
    ),
    (
        "feed-after-settledAt-number",
        "tip.settled_feed",
        {"limit": 5, "after": {"settledAt": 1767225600000, "id": "x"}},
        -32602,
        "after",
    ),
    (
        "feed-after-settledAt-without-ms",
        "tip.settled_feed",
        {"limit": 5, "after": {"settledAt": "2026-01-01T00:00:00Z", "id": "x"}},
        -32602,
        "after.settledAt",
    ),
    (
        "feed-after-settledAt-words",
        "tip.settled_feed",
        {"limit": 5, "after": {"settledAt": "yesterday at noon, or so", "id": "x"}},
        -32602,
        "after.settledAt",
    ),
]


@pytest.mark.parametrize(
    ("method", "params", "code", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_PARAMS],
)
async def test_bad_params_are_refused_with_the_field_named_and_change_nothing(
    tmp_path, sim: Simulator, method: str, params: dict[str, Any], code: int, field: str | None
) -> None:
    async with running(tmp_path, sim) as d:
        await create_tip(d, postId="seed")  # a row that must stay as it is
        before = await snapshot(d.rt, nonces=False)
        body, headers = signed(d, method, params, request_id="bad-1")
        error = expect_error(await send(d, body, headers), code, "bad-1")
        if field is not None:
            assert error["data"] == {"field": field}
        assert await snapshot(d.rt, nonces=False) == before
