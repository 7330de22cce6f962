"""Authentication and rate limiting of /rpc, end to end against the real daemon.

Rules (plugin-wire-contract.md §2.1, issue 6):
- the signature is HMAC-SHA256 over ``ts.nonce.<raw body bytes>``, verified over the bytes
  as received: Rails-escaped (``\\u003c``) and raw (``<&é`` U+2028) bodies both verify;
- every authentication failure is HTTP 200 with ``-32001`` and changes nothing, not even
  the nonce store: a forged request cannot burn a legitimate nonce;
- a nonce is single-use per app while its window lasts, across a daemon restart too;
- the secret comes from the ``apps`` table only: unknown and disabled apps are refused;
- rate limits answer ``-32005`` with ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

import httpx
import trio

from fiberlinkd.config import Config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.sim.node import Fault
from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.runtime import Runtime
from tests.conftest import make_config
from tests.plugin_client import encode_body, sign_headers
from tests.test_api_envelope import (
    expect_error,
    expect_result,
    running,
    send,
    signed,
    snapshot,
)

HOUR_S = 3600
TIP = {"postId": "123", "fromUserId": "45", "toUserId": "67", "asset": "CKB", "amount": "31"}


async def test_wrong_secret_is_unauthorized_and_consumes_no_nonce(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body, headers = signed(d, "tip.create", TIP, secret="not-the-secret", nonce="a" * 16)
        expect_error(await send(d, body, headers), -32001, "req-1")
        assert await snapshot(d.rt) == before
        # The same nonce with the right secret still works: the forgery did not burn it.
        body, headers = signed(d, "health.ping", {}, nonce="a" * 16)
        assert expect_result(await send(d, body, headers)) == {"status": "ok"}


async def test_body_changed_after_signing_is_unauthorized(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body, headers = signed(d, "tip.create", TIP)
        # Re-serialised with spaces: same JSON value, different bytes.
        reencoded = json.dumps(json.loads(body)).encode()
        assert reencoded != body
        expect_error(await send(d, reencoded, headers), -32001)
        tampered = body.replace(b'"31"', b'"32"')
        expect_error(await send(d, tampered, headers), -32001)
        assert await snapshot(d.rt) == before


async def test_stale_and_future_timestamps_outside_300_s_are_unauthorized(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        now = int(time.time())
        for ts in (now - HOUR_S, now + HOUR_S, now - 400, now * 1000):  # last: milliseconds
            body, headers = signed(d, "tip.create", TIP, ts=ts)
            expect_error(await send(d, body, headers), -32001, "req-1")
        assert await snapshot(d.rt) == before
        # Clock skew inside the window is accepted.
        for ts in (now - 250, now + 250):
            body, headers = signed(d, "health.ping", {}, ts=ts)
            assert expect_result(await send(d, body, headers)) == {"status": "ok"}


async def test_missing_or_malformed_headers_are_unauthorized(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body, good = signed(d, "tip.create", TIP)
        for name in ("x-app-id", "x-ts", "x-nonce", "x-signature"):
            headers = {k: v for k, v in good.items() if k != name}
            expect_error(await send(d, body, headers), -32001, "req-1")
            headers = {**good, name: ""}
            expect_error(await send(d, body, headers), -32001, "req-1")
        for name, value in (
            ("x-ts", "12.5"),
            ("x-ts", "-1"),
            ("x-ts", "1e9"),
            ("x-nonce", "short"),
            ("x-nonce", "has space 123456"),
            ("x-nonce", "n" * 200),
            ("x-signature", "00" * 32),
            ("x-signature", "zz"),
            ("x-app-id", "f" * 65),
        ):
            expect_error(await send(d, body, {**good, name: value}), -32001, "req-1")
        expect_error(await send(d, body, {"Content-Type": "application/json"}), -32001)
        assert await snapshot(d.rt) == before


async def test_replayed_nonce_is_unauthorized_and_runs_nothing(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        body, headers = signed(d, "tip.create", TIP)
        first = expect_result(await send(d, body, headers))
        assert first["invoice"]
        after_first = await snapshot(d.rt)
        expect_error(await send(d, body, headers), -32001, "req-1")
        # Same nonce, new body and signature: still a replay.
        body2, headers2 = signed(d, "health.ping", {}, nonce=headers["x-nonce"])
        expect_error(await send(d, body2, headers2), -32001)
        assert await snapshot(d.rt) == after_first


async def test_concurrent_requests_with_one_nonce_are_accepted_once(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        body, headers = signed(d, "health.ping", {})
        answers: list[dict[str, Any]] = []

        async def one() -> None:
            answers.append((await send(d, body, headers)).json())

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
        assert sum("result" in a for a in answers) == 1
        refused = [a["error"] for a in answers if "error" in a]
        assert [e["code"] for e in refused] == [-32001] * 7


async def test_concurrent_tip_creates_with_one_nonce_create_one_tip_and_one_invoice(
    tmp_path, sim: Simulator
) -> None:
    """tip.create records its nonce with its tip; a copy in flight is refused before it
    asks the node for an invoice, so a replay costs the node nothing."""
    async with running(tmp_path, sim) as d:
        invoices_before = len(sim.node.invoices)
        body, headers = signed(d, "tip.create", TIP)
        answers: list[dict[str, Any]] = []

        async def one() -> None:
            answers.append((await send(d, body, headers)).json())

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
        created = [a["result"] for a in answers if "result" in a]
        assert len(created) == 1
        assert [a["error"]["code"] for a in answers if "error" in a] == [-32001] * 7
        assert len(sim.node.invoices) == invoices_before + 1
        rows = await snapshot(d.rt)
        assert len(rows["tip_intents"]) == 1
        assert len(rows["nonces"]) == 1
        # Replayed after it was recorded: refused, again without a node call.
        expect_error(await send(d, body, headers), -32001, "req-1")
        assert len(sim.node.invoices) == invoices_before + 1


async def test_tip_create_answered_with_an_error_spends_its_nonce_and_nothing_else(
    tmp_path, sim: Simulator
) -> None:
    """tip.create records its nonce with its tip; when it answers an error instead (bad
    params, the node refusing), the nonce is recorded alone: a signed request is answered
    once, whatever the answer, and no tip or ledger row is written."""
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt, nonces=False)
        bad, headers = signed(d, "tip.create", {**TIP, "amount": "-1"})
        expect_error(await send(d, bad, headers), -32602, "req-1")
        expect_error(await send(d, bad, headers), -32001, "req-1")
        sim.node.faults.append(Fault(method="new_invoice", kind="node_error", message="boom"))
        body, headers2 = signed(d, "tip.create", TIP)
        expect_error(await send(d, body, headers2), -32603, "req-1")
        # The node is back, but this signed request was answered: replaying it is refused.
        expect_error(await send(d, body, headers2), -32001, "req-1")
        assert await snapshot(d.rt, nonces=False) == before
        assert len((await snapshot(d.rt))["nonces"]) == 2


async def test_nonces_are_scoped_per_app(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        other_secret = secrets.token_hex(32)
        await d.rt.ledger.transact(insert_app, "other", other_secret, d.rt.clock.now_ms())
        nonce = secrets.token_hex(8)
        body, headers = signed(d, "health.ping", {}, nonce=nonce)
        expect_result(await send(d, body, headers))
        body, headers = signed(
            d, "health.ping", {}, nonce=nonce, app_id="other", secret=other_secret
        )
        expect_result(await send(d, body, headers))


async def _start(
    nursery: trio.Nursery, config: Config, sim: Simulator, http: httpx.AsyncClient
) -> tuple[Runtime, trio.Event]:
    stop = trio.Event()
    node = FnnClient(http, sim.url, call_timeout_s=config.fnn.call_timeout_s)
    rt: Runtime = await nursery.start(
        lambda task_status: run_daemon(config, node=node, stop=stop, task_status=task_status)
    )
    return rt, stop


async def test_nonce_accepted_before_a_restart_is_refused_after_it(
    tmp_path, sim: Simulator
) -> None:
    config = make_config(tmp_path, sim.url)
    secret = secrets.token_hex(32)
    body = encode_body("r-1", "tip.create", TIP)
    headers = sign_headers("forum", secret, body)
    async with httpx.AsyncClient() as node_http:
        async with trio.open_nursery() as nursery:
            rt, stop = await _start(nursery, config, sim, node_http)
            await rt.ledger.transact(insert_app, "forum", secret, rt.clock.now_ms())
            async with httpx.AsyncClient() as api:
                first = await api.post(rt.api_urls[0] + "/rpc", content=body, headers=headers)
                assert first.json()["result"]["invoice"]
            stop.set()
        async with trio.open_nursery() as nursery:
            rt, stop = await _start(nursery, config, sim, node_http)
            before = await snapshot(rt)
            async with httpx.AsyncClient() as api:
                replay = await api.post(rt.api_urls[0] + "/rpc", content=body, headers=headers)
                expect_error(replay, -32001, "r-1")
                # The app itself still works after the restart.
                fresh = encode_body("r-2", "health.ping", {})
                ok = await api.post(
                    rt.api_urls[0] + "/rpc",
                    content=fresh,
                    headers=sign_headers("forum", secret, fresh),
                )
                assert ok.json()["result"] == {"status": "ok"}
            after = await snapshot(rt)
            assert {t: v for t, v in after.items() if t != "nonces"} == {
                t: v for t, v in before.items() if t != "nonces"
            }
            stop.set()


async def test_unknown_app_is_unauthorized(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body, headers = signed(d, "tip.create", TIP, app_id="nobody")
        expect_error(await send(d, body, headers), -32001, "req-1")
        assert await snapshot(d.rt) == before


async def test_disabled_app_is_unauthorized(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        other_secret = secrets.token_hex(32)
        await d.rt.ledger.transact(insert_app, "other", other_secret, d.rt.clock.now_ms())
        body, headers = signed(d, "health.ping", {}, app_id="other", secret=other_secret)
        expect_result(await send(d, body, headers))

        def disable(conn: sqlite3.Connection, app_id: str) -> None:
            conn.execute("UPDATE apps SET disabled_at = 1 WHERE app_id = ?", (app_id,))

        await d.rt.ledger.transact(disable, "other")
        await trio.sleep(2.1)  # the secret cache's bound (Authenticator.SECRET_CACHE_S)
        before = await snapshot(d.rt)
        body, headers = signed(d, "tip.create", TIP, app_id="other", secret=other_secret)
        expect_error(await send(d, body, headers), -32001, "req-1")
        assert await snapshot(d.rt) == before
        # The enabled app is unaffected.
        body, headers = signed(d, "health.ping", {})
        expect_result(await send(d, body, headers))


async def test_rails_escaped_and_raw_utf8_bodies_both_verify(tmp_path, sim: Simulator) -> None:
    message = "Great <b>post</b> & café \u2028 line"
    async with running(tmp_path, sim) as d:
        invoices = []
        for rails in (True, False):
            params = {**TIP, "message": message}
            body, headers = signed(d, "tip.create", params, rails_escape=rails)
            if rails:
                assert b"\\u003c" in body
                assert b"\\u0026" in body
                assert b"\\u2028" in body
            else:
                assert b"<b>" in body
                assert "é".encode() in body
                assert "\u2028".encode() in body
            invoices.append(expect_result(await send(d, body, headers))["invoice"])
        summary = await d.plugin.result("dashboard.summary", {"userId": "67"})
        assert [t["message"] for t in summary["tips"]] == [message, message]
        assert {t["invoice"] for t in summary["tips"]} == set(invoices)


async def test_per_app_method_rate_limit_answers_32005_with_headers(
    tmp_path, sim: Simulator
) -> None:
    limits: dict[str, Any] = {"api.rate_limits": {"per_app_method_per_minute": 3}}
    async with running(tmp_path, sim, **limits) as d:
        remaining = []
        for _ in range(3):
            body, headers = signed(d, "health.ping", {})
            response = await send(d, body, headers)
            expect_result(response)
            assert response.headers["x-ratelimit-limit"] == "3"
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        before = await snapshot(d.rt, nonces=False)
        body, headers = signed(d, "health.ping", {}, request_id="over")
        response = await send(d, body, headers)
        expect_error(response, -32005, "over")
        # The plugin's modal keeps polling only on messages it treats as transient.
        assert "service unavailable" in response.json()["error"]["message"].lower()
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert int(response.headers["x-ratelimit-reset"]) > 0
        # Limited per method: another method has its own bucket ...
        body, headers = signed(d, "tip.create", TIP)
        expect_result(await send(d, body, headers))
        # ... and a limited tip.create writes nothing.
        for _ in range(2):
            body, headers = signed(d, "tip.create", TIP)
            expect_result(await send(d, body, headers))
        before = await snapshot(d.rt, nonces=False)
        body, headers = signed(d, "tip.create", TIP)
        expect_error(await send(d, body, headers), -32005)
        assert await snapshot(d.rt, nonces=False) == before


async def test_per_user_tip_create_limit_leaves_other_users_alone(tmp_path, sim: Simulator) -> None:
    limits: dict[str, Any] = {"api.rate_limits": {"tip_create_per_user_per_minute": 2}}
    async with running(tmp_path, sim, **limits) as d:
        for _ in range(2):
            body, headers = signed(d, "tip.create", TIP)
            expect_result(await send(d, body, headers))
        before = await snapshot(d.rt, nonces=False)
        body, headers = signed(d, "tip.create", TIP)
        response = await send(d, body, headers)
        expect_error(response, -32005)
        assert response.headers["x-ratelimit-limit"] == "2"
        assert await snapshot(d.rt, nonces=False) == before
        body, headers = signed(d, "tip.create", {**TIP, "fromUserId": "46"})
        expect_result(await send(d, body, headers))


async def test_default_limits_carry_a_busy_forums_polling(tmp_path, sim: Simulator) -> None:
    """200 tip modals at 1 Hz and 500 dashboards at 0.1 Hz for a minute stay under limits."""
    async with running(tmp_path, sim) as d:
        limits = d.rt.config.api.rate_limits
        assert limits.per_app_method_per_minute >= 200 * 60
        assert limits.per_app_method_per_minute >= 500 * 6
        body, headers = signed(d, "health.ping", {})
        response = await send(d, body, headers)
        assert int(response.headers["x-ratelimit-limit"]) == limits.per_app_method_per_minute
