"""The /rpc envelope, end to end: the real daemon and the FNN simulator on 127.0.0.1 port 0.

Rules:
- requests are raw bytes signed exactly as the Discourse plugin signs them;
- every JSON-RPC outcome (success or error) is HTTP 200 with a JSON envelope, and an error
  is an object ``{code, message[, data]}`` (the plugin's JS only reads 200 answers);
- a refused request changes nothing in the database: each error case compares a dump of
  every domain table (and the nonce store, when the request is refused before the
  signature verifies) before and after.

The helpers here (``signed``, ``send``, ``expect_error``, ``snapshot``) are shared by the
other ``test_api_*`` modules.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from fiberlinkd.config import Config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.runtime import Runtime
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.plugin_client import PluginClient, encode_body, sign_headers

# Every table a request could touch. ``settings`` (the readiness probe writes it) and the
# reconciler's own tables are background bookkeeping, not request side effects.
DOMAIN_TABLES = (
    "apps",
    "admin_grants",
    "audit_log",
    "tip_intents",
    "tip_events",
    "ledger_entries",
    "balances",
    "withdrawals",
    "withdrawal_events",
    "withdrawal_policies",
)
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MAX_BODY = 65_536


# --- shared helpers -----------------------------------------------------------------------


def signed(
    d: RunningDaemon,
    method: str,
    params: Any,
    *,
    request_id: Any = "req-1",
    rails_escape: bool = False,
    ts: int | None = None,
    nonce: str | None = None,
    secret: str | None = None,
    app_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers the plugin would send for this call."""
    body = encode_body(request_id, method, params, rails_escape=rails_escape)
    headers = sign_headers(
        app_id or d.plugin.app_id, secret or d.plugin.secret, body, ts=ts, nonce=nonce
    )
    return body, headers


async def send(
    d: RunningDaemon, body: bytes, headers: dict[str, str], path: str = "/rpc"
) -> httpx.Response:
    return await d.http.post(d.url.rstrip("/") + path, content=body, headers=headers)


def expect_error(response: httpx.Response, code: int, request_id: Any = ...) -> dict[str, Any]:
    """Assert HTTP 200 and a JSON-RPC error envelope with ``code``; return the error object."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    envelope = response.json()
    assert envelope["jsonrpc"] == "2.0"
    assert "result" not in envelope, envelope
    error = envelope["error"]
    assert isinstance(error, dict), envelope
    assert error["code"] == code, envelope
    assert isinstance(error["message"], str)
    assert error["message"]
    if request_id is not ...:
        assert envelope["id"] == request_id
    return dict(error)


def expect_result(response: httpx.Response, request_id: Any = ...) -> Any:
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["jsonrpc"] == "2.0"
    assert "error" not in envelope, envelope
    if request_id is not ...:
        assert envelope["id"] == request_id
    return envelope["result"]


async def snapshot(rt: Runtime, *, nonces: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every domain table (plus ``nonces`` if asked), order-independent."""
    tables = DOMAIN_TABLES + (("nonces",) if nonces else ())

    def dump(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {
            t: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {t}")), key=repr)
            for t in tables
        }

    return await rt.ledger.read(dump)


def closed_port_url() -> str:
    """A loopback URL nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@asynccontextmanager
async def running(
    tmp_path: Path, sim: Simulator, *, config: Config | None = None, **sections: dict[str, Any]
) -> AsyncIterator[RunningDaemon]:
    """The daemon on loopback for the block, with the app ``forum`` and its secret.

    API calls go through their own client, closed before the stop: an idle keep-alive
    connection would otherwise hold hypercorn's drain for the whole graceful timeout.
    """
    config = config or make_config(tmp_path, sim.url, **sections)
    async with httpx.AsyncClient() as node_http, trio.open_nursery() as nursery:
        d = await start_daemon(nursery, config, sim, node_http)
        async with httpx.AsyncClient() as api_http:
            d.http = api_http
            d.plugin = PluginClient(api_http, d.url, d.plugin.app_id, d.plugin.secret)
            yield d
        d.stop.set()


async def chunked(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# --- tests --------------------------------------------------------------------------------


async def test_health_ping_echoes_string_and_number_ids(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        for request_id in ("0b0e6a5c-2f7a-4b7e-9a43-5d7d1c1a3e11", "1714000000000-ab12", 7):
            body, headers = signed(d, "health.ping", {}, request_id=request_id)
            response = await send(d, body, headers)
            assert expect_result(response, request_id) == {"status": "ok"}


async def test_null_id_is_answered_with_a_full_envelope(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        body, headers = signed(d, "health.ping", {}, request_id=None)
        response = await send(d, body, headers)
        assert response.json() == {"jsonrpc": "2.0", "id": None, "result": {"status": "ok"}}


async def test_a_lone_surrogate_id_gets_a_200_envelope(tmp_path, sim: Simulator) -> None:
    """An id JSON can carry but UTF-8 cannot (``"\\ud800"``) is echoed escaped, not a 500."""
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body = b'{"jsonrpc":"2.0","id":"\\ud800","method":"health.ping","params":{}}'
        response = await send(d, body, {"Content-Type": "application/json"})
        error = expect_error(response, -32001)
        assert error["message"] == "Unauthorized"
        assert response.json()["id"] == "\ud800"
        assert await snapshot(d.rt) == before


async def test_rpc_path_answers_only_post(tmp_path, sim: Simulator) -> None:
    """Any other method on /rpc is an HTTP 405 naming POST, and runs nothing."""
    async with running(tmp_path, sim) as d:
        for path in ("/rpc", "//rpc"):
            response = await d.http.get(d.url.rstrip("/") + path)
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"
        assert (await d.http.get(d.url + "/nothing-here")).status_code == 404


async def test_double_slash_rpc_path_from_a_trailing_slash_url_is_served(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        body, headers = signed(d, "health.ping", {})
        response = await send(d, body, headers, path="//rpc")
        assert expect_result(response) == {"status": "ok"}


async def test_missing_params_and_null_params_mean_an_empty_object(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        for raw in (
            b'{"jsonrpc":"2.0","id":"a","method":"health.ping"}',
            b'{"jsonrpc":"2.0","id":"a","method":"health.ping","params":null}',
        ):
            response = await send(d, raw, sign_headers("forum", d.plugin.secret, raw))
            assert expect_result(response, "a") == {"status": "ok"}


async def test_oversize_body_is_refused_with_http_200_before_parsing(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        body, headers = signed(
            d,
            "tip.create",
            {
                "postId": "1",
                "fromUserId": "1",
                "toUserId": "2",
                "asset": "CKB",
                "amount": "1",
                "message": "x" * (MAX_BODY + 1),
            },
        )
        assert len(body) > MAX_BODY
        # With Content-Length (as the plugin sends it) ...
        expect_error(await send(d, body, headers), -32600, None)
        # ... and streamed without one: the limit holds while reading.
        response = await d.http.post(d.url + "/rpc", content=chunked(body), headers=headers)
        assert "content-length" not in response.request.headers
        expect_error(response, -32600, None)
        assert await snapshot(d.rt) == before


async def test_body_of_exactly_the_limit_is_parsed(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        body, _ = signed(d, "health.ping", {"pad": ""})
        pad = MAX_BODY - len(body)
        body, headers = signed(d, "health.ping", {"pad": "x" * pad})
        assert len(body) == MAX_BODY
        assert expect_result(await send(d, body, headers)) == {"status": "ok"}


async def test_non_json_bodies_are_parse_errors_and_change_nothing(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        for raw in (b"", b"not json", b'{"jsonrpc":"2.0",', b"\xff\xfe\x00{}", b"\xc3\x28"):
            response = await send(d, raw, sign_headers("forum", d.plugin.secret, raw))
            expect_error(response, -32700, None)
        assert await snapshot(d.rt) == before


async def test_batch_and_malformed_envelopes_are_invalid_requests(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt)
        one = encode_body("1", "health.ping", {})
        cases = [
            b"[" + one + b"]",  # a batch
            b"[]",
            b'"health.ping"',
            b"42",
            b"null",
            b'{"id":"1","method":"health.ping","params":{}}',  # no jsonrpc
            b'{"jsonrpc":"1.0","id":"1","method":"health.ping","params":{}}',
            b'{"jsonrpc":"2.0","method":"health.ping","params":{}}',  # a notification
            b'{"jsonrpc":"2.0","id":"1","params":{}}',  # no method
            b'{"jsonrpc":"2.0","id":"1","method":"","params":{}}',
            b'{"jsonrpc":"2.0","id":"1","method":7,"params":{}}',
            b'{"jsonrpc":"2.0","id":{"a":1},"method":"health.ping","params":{}}',
            b'{"jsonrpc":"2.0","id":true,"method":"health.ping","params":{}}',
        ]
        for raw in cases:
            response = await send(d, raw, sign_headers("forum", d.plugin.secret, raw))
            expect_error(response, -32600, None)
        assert await snapshot(d.rt) == before


async def test_unknown_method_is_method_not_found_with_the_id_echoed(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt, nonces=False)
        for method in ("tip.delete", "admin.pipelineBoard", "rpc.discover", "__init__"):
            body, headers = signed(d, method, {}, request_id="m-1")
            expect_error(await send(d, body, headers), -32601, "m-1")
        assert await snapshot(d.rt, nonces=False) == before


async def test_params_that_are_not_an_object_are_invalid_params(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        before = await snapshot(d.rt, nonces=False)
        for params in ([], ["invoice"], "x", 3):
            body, headers = signed(d, "tip.status", params)
            expect_error(await send(d, body, headers), -32602, "req-1")
        assert await snapshot(d.rt, nonces=False) == before


async def test_errors_never_carry_a_stack_trace(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        for raw in (b"{", b"[1]", encode_body("1", "nope", {})):
            response = await send(d, raw, sign_headers("forum", d.plugin.secret, raw))
            assert "Traceback" not in response.text
            assert set(response.json()["error"]) <= {"code", "message", "data"}


async def test_liveness_and_readiness_answer_200_when_everything_runs(
    tmp_path, sim: Simulator
) -> None:
    async with running(tmp_path, sim) as d:
        live = await d.http.get(d.url + "/healthz/live")
        assert live.status_code == 200
        assert live.json() == {"status": "alive"}
        ready = await d.http.get(d.url + "/healthz/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert {name: c["status"] for name, c in body["checks"].items()} == {
            "ledger": "ok",
            "migrations": "ok",
            "fnn": "ok",
            "actors": "ok",
        }


async def test_readiness_is_503_naming_fnn_while_the_node_is_unreachable(tmp_path) -> None:
    url = closed_port_url()
    config = make_config(tmp_path, url)
    stop = trio.Event()
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        node = FnnClient(http, url, call_timeout_s=config.fnn.call_timeout_s)
        rt: Runtime = await nursery.start(
            lambda task_status: run_daemon(config, node=node, stop=stop, task_status=task_status)
        )
        base = rt.api_urls[0]
        async with httpx.AsyncClient() as api:
            live = await api.get(base + "/healthz/live")
            assert live.status_code == 200
            ready = await api.get(base + "/healthz/ready")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "not_ready"
            assert body["checks"]["fnn"]["status"] == "error"
            assert body["checks"]["ledger"]["status"] == "ok"
            # The API still answers JSON-RPC meanwhile (health.ping needs no node) ...
            secret = secrets.token_hex(16)
            await rt.ledger.transact(insert_app, "forum", secret, rt.clock.now_ms())
            raw = encode_body("1", "health.ping", {})
            response = await api.post(
                base + "/rpc", content=raw, headers=sign_headers("forum", secret, raw)
            )
            assert response.json()["result"] == {"status": "ok"}
            # ... and a tip answers "service unavailable", which the plugin retries.
            raw = encode_body(
                "2",
                "tip.create",
                {"postId": "1", "fromUserId": "1", "toUserId": "2", "asset": "CKB", "amount": "1"},
            )
            response = await api.post(
                base + "/rpc", content=raw, headers=sign_headers("forum", secret, raw)
            )
            error = response.json()["error"]
            assert error["code"] == -32000
            assert "service unavailable" in error["message"].lower()
        stop.set()


async def test_metrics_expose_rpc_request_counts(tmp_path, sim: Simulator) -> None:
    async with running(tmp_path, sim) as d:
        body, headers = signed(d, "health.ping", {})
        expect_result(await send(d, body, headers))
        metrics = await d.http.get(d.url + "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert "fiberlinkd_rpc_requests_total" in text
        assert re.search(
            r'fiberlinkd_rpc_requests_total\{method="health.ping",outcome="ok"\} [1-9]', text
        )
        assert "fiberlinkd_rpc_latency_seconds_bucket" in text
        # The ping's nonce went through a grouped commit, and the tip through an FNN batch.
        assert re.search(r'fiberlinkd_group_batch_size_count\{group="ledger"\} [1-9]', text)


async def test_metrics_count_grouped_writes_and_node_batches(tmp_path, sim: Simulator) -> None:
    """Concurrent tip.creates go through the FNN batcher; its batch sizes are exported."""

    def counts(text: str, group: str) -> tuple[float, float]:
        def value(kind: str) -> float:
            m = re.search(rf'fiberlinkd_group_batch_size_{kind}\{{group="{group}"\}} (\S+)', text)
            return float(m.group(1)) if m else 0.0

        return value("count"), value("sum")

    async with running(tmp_path, sim) as d:
        before = counts((await d.http.get(d.url + "/metrics")).text, "new_invoice")

        async def create(n: int) -> None:
            params = {"postId": str(n), "fromUserId": "45", "toUserId": "67"}
            body, headers = signed(d, "tip.create", {**params, "asset": "CKB", "amount": "2"})
            expect_result(await send(d, body, headers))

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(create, n)
        batches, items = counts((await d.http.get(d.url + "/metrics")).text, "new_invoice")
        assert items - before[1] == 12  # every invoice went through a batch, counted once
        assert batches > before[0]
