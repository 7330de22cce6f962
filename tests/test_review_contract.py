"""Contract review findings (plugin-wire-contract.md §2, §3.4, §4.6, §9), end to end.

Rules:
- nothing a client sends before authentication may turn into a non-200 answer: the
  plugin's proxy relays the HTTP status, and the browser only reads 200 envelopes (§3.4);
- the settled feed never loses a tip behind a cursor it already handed out (§4.6: gaps
  are not tolerated; the sync job resends the last item's ``settledAt`` and ``id``).
"""

from __future__ import annotations

import json
from typing import Any

from fiberlinkd.fnn.simulator import Simulator
from tests.plugin_client import sign_headers
from tests.test_api_envelope import expect_error, running, send, signed, snapshot
from tests.test_api_methods import create_tip, settle_at


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"the answer is not strict JSON: it contains {name}")


def _with_header(headers: dict[str, str], name: str, raw: bytes) -> dict[str, Any]:
    """The headers with one value replaced by raw (latin-1) bytes, as h11 lets them through."""
    out: dict[str, Any] = {k: v.encode() for k, v in headers.items()}
    out[name] = raw
    return out


async def test_hostile_bytes_before_authentication_still_get_http_200_envelopes(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        # Nested deeper than the JSON decoder's recursion limit, well under the size cap.
        deep = b"[" * 5000 + b"]" * 5000
        expect_error(await send(d, deep, {"Content-Type": "application/json"}), -32700, None)
        body, headers = signed(d, "health.ping", {}, request_id="ts")
        # Superscript digits: str.isdigit() says yes, int() says no.
        response = await send(
            d, body, _with_header(headers, "x-ts", "\u00b2".encode("latin-1") * 10)
        )
        expect_error(response, -32001, "ts")
        body, headers = signed(d, "health.ping", {}, request_id="sig")
        # A non-ASCII signature of the right length: hmac.compare_digest refuses to compare.
        response = await send(d, body, _with_header(headers, "x-signature", b"\xe9" * 64))
        expect_error(response, -32001, "sig")
        # Python's decoder takes NaN; echoing it would make the answer invalid JSON.
        nan_body = b'{"jsonrpc":"2.0","id":NaN,"method":"health.ping","params":{}}'
        nan_headers = sign_headers(d.plugin.app_id, d.plugin.secret, nan_body)
        response = await send(d, nan_body, nan_headers)
        json.loads(response.text, parse_constant=_refuse_constant)
        expect_error(response, -32600, None)
        # Neither refused request burnt its nonce: the honest retry goes through.
        response = await send(d, body, headers)
        assert response.status_code == 200
        assert response.json()["result"] == {"status": "ok"}
        after = await snapshot(d.rt, nonces=False)
        assert {k: v for k, v in before.items() if k != "nonces"} == after


async def test_a_failing_nonce_store_is_a_200_internal_error_with_the_id_echoed(
    tmp_path, sim: Simulator
) -> None:
    """Reference §2.2 step 11: anything unexpected before dispatch is -32603, never a 500."""
    async with running(tmp_path, sim) as d:
        await d.rt.ledger.transact(lambda conn: conn.execute("DROP TABLE nonces"))
        body, headers = signed(d, "health.ping", {}, request_id="broken-store")
        error = expect_error(await send(d, body, headers), -32603, "broken-store")
        assert "Traceback" not in error["message"]


async def _feed_ids_after(d: Any, cursor: dict[str, str] | None) -> list[str]:
    params: dict[str, Any] = {"limit": 50}
    if cursor is not None:
        params["after"] = cursor
    page = await d.plugin.result("tip.settled_feed", params)
    return [item["tipIntentId"] for item in page["items"]]


async def _cursor(d: Any) -> dict[str, str]:
    page = await d.plugin.result("tip.settled_feed", {"limit": 50})
    last = page["items"][-1]
    return {"settledAt": last["settledAt"], "id": last["tipIntentId"]}


async def test_a_settlement_stamped_before_the_feed_cursor_is_still_delivered(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        t0 = d.rt.clock.now_ms()
        slow, fast = [await create_tip(d, postId=str(p)) for p in (1, 2)]
        await settle_at(d.rt, fast, t0 + 1_000)
        cursor = await _cursor(d)  # the sync job stores this
        # The slow check read the clock first, then waited on the node / the write queue.
        slow_id = await settle_at(d.rt, slow, t0)
        assert await _feed_ids_after(d, cursor) == [slow_id]


async def test_a_settlement_in_the_same_millisecond_as_the_cursor_is_still_delivered(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        t0 = d.rt.clock.now_ms()
        first, second = [await create_tip(d, postId=str(p)) for p in (1, 2)]
        ids = {}
        for invoice in (first, second):
            ids[invoice] = await d.rt.ledger.read(_tip_id, invoice)
        high, low = sorted((first, second), key=lambda inv: ids[inv], reverse=True)
        await settle_at(d.rt, high, t0)
        cursor = await _cursor(d)
        low_id = await settle_at(d.rt, low, t0)
        assert await _feed_ids_after(d, cursor) == [low_id]


def _tip_id(conn: Any, invoice: str) -> str:
    row = conn.execute("SELECT id FROM tip_intents WHERE invoice = ?", (invoice,)).fetchone()
    return str(row["id"])
