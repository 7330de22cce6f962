"""FnnClient at the wire, with ``httpx.MockTransport``: every method's request shape, every
error mapping, the time bound, and JSON-RPC batches.

Batch rules: concurrent ``new_invoice`` (or ``get_invoice``) calls share one POST whose body
is an array, and a lone call is still a plain object; replies are matched by id in any
order; an entry's error object or missing reply fails only its caller; a transport, HTTP or
framing failure (including one error object instead of an array) fails every caller.

Rules: no sockets; replies are FNN 0.8 shapes (from the real node's golden answers where
one exists); time-dependent tests run on trio's fake clock and assert exact virtual times.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import outcome
import pytest
import trio

from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.errors import (
    FnnConnectError,
    FnnContractError,
    FnnHttpError,
    FnnNodeError,
    FnnTimeout,
    is_invoice_already_exists,
    is_invoice_not_found,
    is_payment_session_exists,
    is_payment_session_not_found,
    is_unknown_method,
)
from fiberlinkd.fnn.types import (
    Currency,
    InvoiceStatus,
    NewInvoiceResult,
    PaymentStatus,
    Script,
)

URL = "http://fnn.test:8227/"
PUBKEY = "02a8c676d9a4398c93a46bf60c0b8a13704242f10b151fc61f1b54892ae4d9919d"
PEER = "0291a6576bd5a94bd74b27080a48340875338fff9f6d6361fe6b8db8d0d1912fcc"
HASH = "0x0e980cbe0b76eed0d53aa6e1f4febe500500147098fb251e18ee565f7cc12d81"
CHAIN = "0x4f66ad15d29f286065e56fa2073169bb75a3092afc0a9c86bbd5ffc726c7cf2f"

INVOICE_JSON: dict[str, Any] = {
    "currency": "Fibd",
    "amount": "0x5f5e100",
    "signature": "1c03" * 52,
    "data": {
        "timestamp": "0x1a241c3debe",
        "payment_hash": HASH,
        "attrs": [
            {"description": "golden test"},
            {"expiry_time": "0xe10"},
            {"final_htlc_minimum_expiry_delta": "0x927c00"},
            {"payee_public_key": PUBKEY},
        ],
    },
}
PAYMENT_JSON: dict[str, Any] = {
    "payment_hash": HASH,
    "status": "Created",
    "created_at": "0x19cf0c8e6a0",
    "last_updated_at": "0x19cf0c8e6a0",
    "failed_error": None,
    "fee": "0x186a0",
    "custom_records": None,
}
CHANNEL_JSON: dict[str, Any] = {
    "channel_id": "0x" + "c1" * 32,
    "is_public": True,
    "is_acceptor": False,
    "is_one_way": False,
    "channel_outpoint": "0x" + "a0" * 32 + "00000000",
    "pubkey": PEER,
    "funding_udt_type_script": None,
    "state": {"state_name": "ChannelReady"},
    "local_balance": "0x37785d3ecb70",
    "offered_tlc_balance": "0x0",
    "remote_balance": "0x190",
    "received_tlc_balance": "0x0",
    "pending_tlcs": [],
    "latest_commitment_transaction_hash": None,
    "created_at": "0x19cf0c8e6a0",
    "enabled": True,
    "tlc_expiry_delta": "0xdbba00",
    "tlc_fee_proportional_millionths": "0x3e8",
    "shutdown_transaction_hash": None,
    "failure_detail": None,
}
NODE_INFO_JSON: dict[str, Any] = {
    "version": "0.8.1",
    "commit_hash": "b560023 2026-04-16",
    "pubkey": PUBKEY,
    "features": ["GOSSIP_QUERIES_REQUIRED"],
    "addresses": [],
    "chain_hash": CHAIN,
    "udt_cfg_infos": [
        {
            "name": "RUSD",
            "script": {"code_hash": "0x" + "11" * 32, "hash_type": "type", "args": "0x87"},
            "auto_accept_amount": "0x3b9aca00",
            "cell_deps": [],
        }
    ],
}

Responder = Callable[[dict[str, Any]], Any]
T = TypeVar("T")


class Recorder:
    """A MockTransport handler: records requests, answers with ``respond(request_json)``.

    ``respond`` returns a result (wrapped into a JSON-RPC reply) or an ``httpx.Response``.
    """

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        answer = self.respond(body)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": answer})


def error_reply(code: int, message: str, data: Any = None) -> Responder:
    def respond(body: dict[str, Any]) -> httpx.Response:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "error": error})

    return respond


def make_client(respond: Responder, **kwargs: Any) -> tuple[FnnClient, Recorder]:
    recorder = Recorder(respond)
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    return FnnClient(http, URL, **kwargs), recorder


# --- request shapes and decoding --------------------------------------------------------


async def test_node_info_sends_empty_array_and_decodes() -> None:
    client, rec = make_client(lambda _: NODE_INFO_JSON)
    info = await client.node_info()
    assert rec.bodies == [{"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": []}]
    request = rec.requests[0]
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert info.version == "0.8.1"
    assert info.pubkey == PUBKEY
    assert info.currency is Currency.FIBD
    assert info.udt_scripts == (("RUSD", Script("0x" + "11" * 32, "type", "0x87")),)


async def test_ids_increase_and_bearer_token_is_sent() -> None:
    client, rec = make_client(lambda _: NODE_INFO_JSON, token="EnQKCg")
    await client.node_info()
    await client.node_info()
    assert [b["id"] for b in rec.bodies] == [1, 2]
    assert all(r.headers["authorization"] == "Bearer EnQKCg" for r in rec.requests)


async def test_node_info_accepts_v06_node_id() -> None:
    legacy = {k: v for k, v in NODE_INFO_JSON.items() if k != "pubkey"} | {"node_id": PUBKEY}
    client, _ = make_client(lambda _: legacy)
    assert (await client.node_info()).pubkey == PUBKEY


async def test_new_invoice_request_shape_and_result() -> None:
    result = {"invoice_address": "fibd1000000001p...", "invoice": INVOICE_JSON}
    client, rec = make_client(lambda _: result)
    script = Script("0x" + "11" * 32, "type", "0x87")
    out = await client.new_invoice(
        amount=100_000_000,
        currency=Currency.FIBD,
        description="tip",
        expiry_s=3600,
        payment_preimage="0x" + "11" * 32,
        udt_type_script=script,
    )
    assert rec.bodies[0]["method"] == "new_invoice"
    assert rec.bodies[0]["params"] == [
        {
            "amount": "0x5f5e100",
            "currency": "Fibd",
            "description": "tip",
            "expiry": "0xe10",
            "payment_preimage": "0x" + "11" * 32,
            "udt_type_script": {"code_hash": "0x" + "11" * 32, "hash_type": "type", "args": "0x87"},
        }
    ]
    assert out.invoice_address == "fibd1000000001p..."
    inv = out.invoice
    assert (inv.amount, inv.expiry_s, inv.description) == (100_000_000, 3600, "golden test")
    assert inv.payee_pubkey == PUBKEY
    assert inv.payment_hash == HASH
    assert inv.timestamp_ms == 0x1A241C3DEBE
    assert inv.expires_at_ms == 0x1A241C3DEBE + 3_600_000


async def test_new_invoice_minimal_and_hold() -> None:
    result = {"invoice_address": "fibd1...", "invoice": INVOICE_JSON}
    client, rec = make_client(lambda _: result)
    await client.new_invoice(amount=0, currency=Currency.FIBT)
    await client.new_invoice(amount=1, currency=Currency.FIBD, payment_hash=HASH)
    assert rec.bodies[0]["params"] == [{"amount": "0x0", "currency": "Fibt"}]
    assert rec.bodies[1]["params"] == [{"amount": "0x1", "currency": "Fibd", "payment_hash": HASH}]


async def test_parse_get_cancel_settle_invoice_shapes() -> None:
    info = {"invoice_address": "fibd1...", "invoice": INVOICE_JSON, "status": "Open"}

    def respond(body: dict[str, Any]) -> Any:
        return {
            "parse_invoice": {"invoice": INVOICE_JSON},
            "get_invoice": info,
            "cancel_invoice": info | {"status": "Cancelled"},
            "settle_invoice": {},
        }[body["method"]]

    client, rec = make_client(respond)
    parsed = await client.parse_invoice("fibd1...")
    got = await client.get_invoice(HASH)
    cancelled = await client.cancel_invoice(HASH)
    assert await client.settle_invoice(HASH, "0x" + "22" * 32) is None
    assert [b["params"] for b in rec.bodies] == [
        [{"invoice": "fibd1..."}],
        [{"payment_hash": HASH}],
        [{"payment_hash": HASH}],
        [{"payment_hash": HASH, "payment_preimage": "0x" + "22" * 32}],
    ]
    assert parsed.payment_hash == HASH
    assert got.status is InvoiceStatus.OPEN
    assert cancelled.status is InvoiceStatus.CANCELLED


async def test_send_payment_shapes() -> None:
    client, rec = make_client(lambda _: PAYMENT_JSON)
    p = await client.send_payment(invoice="fibd1...")
    await client.send_payment(invoice="fibd1...", max_fee_amount=500, dry_run=True)
    assert rec.bodies[0]["params"] == [{"invoice": "fibd1..."}]
    assert rec.bodies[1]["params"] == [
        {"invoice": "fibd1...", "max_fee_amount": "0x1f4", "dry_run": True}
    ]
    assert p.status is PaymentStatus.CREATED
    assert p.fee == 100_000
    assert p.failed_error is None
    assert p.created_at_ms == 0x19CF0C8E6A0


async def test_get_and_list_payments_shapes() -> None:
    failed = PAYMENT_JSON | {"status": "Failed", "failed_error": "InvoiceExpired", "fee": "0x0"}

    def respond(body: dict[str, Any]) -> Any:
        if body["method"] == "get_payment":
            return failed
        return {"payments": [PAYMENT_JSON], "last_cursor": HASH}

    client, rec = make_client(respond)
    p = await client.get_payment(HASH)
    page = await client.list_payments()
    await client.list_payments(status=PaymentStatus.SUCCESS, limit=2, after=HASH)
    assert [b["params"] for b in rec.bodies] == [
        [{"payment_hash": HASH}],
        [{}],
        [{"status": "Success", "limit": "0x2", "after": HASH}],
    ]
    assert (p.status, p.failed_error, p.fee) == (PaymentStatus.FAILED, "InvoiceExpired", 0)
    assert page.last_cursor == HASH
    assert [x.payment_hash for x in page.payments] == [HASH]


async def test_list_payments_empty_page_has_null_cursor() -> None:
    client, _ = make_client(lambda _: {"payments": [], "last_cursor": None})
    page = await client.list_payments()
    assert page.payments == ()
    assert page.last_cursor is None


async def test_list_channels_sends_empty_object_and_decodes() -> None:
    client, rec = make_client(lambda _: {"channels": [CHANNEL_JSON]})
    (channel,) = await client.list_channels()
    assert rec.bodies[0]["params"] == [{}]
    assert channel.pubkey == PEER
    assert channel.state_name == "ChannelReady"
    assert channel.local_balance == 0x37785D3ECB70
    assert channel.spendable == 0x37785D3ECB70
    assert channel.funding_udt_type_script is None


async def test_list_channels_tolerates_v06_shapes() -> None:
    legacy = {k: v for k, v in CHANNEL_JSON.items() if k not in ("pubkey", "is_acceptor")}
    legacy |= {
        "peer_id": "QmSRcPqUn4aQrKHXyCDjGn2qBVf43tWBDS2Wj9QDUZXtZp",
        "state": {"state_name": "SHUTTING_DOWN", "state_flags": "OUR_SHUTDOWN_SENT"},
    }
    client, _ = make_client(lambda _: {"channels": [legacy]})
    (channel,) = await client.list_channels()
    assert channel.pubkey == "QmSRcPqUn4aQrKHXyCDjGn2qBVf43tWBDS2Wj9QDUZXtZp"
    assert channel.state_name == "ShuttingDown"


# --- error mapping ----------------------------------------------------------------------


async def test_node_error_carries_code_message_and_data() -> None:
    data = {"payment_hash": HASH}
    client, _ = make_client(error_reply(-32000, "invoice not found", data))
    with pytest.raises(FnnNodeError) as info:
        await client.get_invoice(HASH)
    assert (info.value.code, info.value.message, info.value.data) == (
        -32000,
        "invoice not found",
        data,
    )
    assert is_invoice_not_found(info.value)


@pytest.mark.parametrize(
    ("code", "message", "predicate"),
    [
        (-32000, "invoice already exists", is_invoice_already_exists),
        (
            -32000,
            f"InvalidParameter: Payment session not found: Hash256({HASH})",
            is_payment_session_not_found,
        ),
        (
            -32000,
            f"InvalidParameter: Payment session already exists: Hash256({HASH}) "
            "with payment session status: Success",
            is_payment_session_exists,
        ),
        (-32999, "Unauthorized", is_unknown_method),
    ],
)
async def test_node_error_helpers(
    code: int, message: str, predicate: Callable[[BaseException], bool]
) -> None:
    client, _ = make_client(error_reply(code, message))
    with pytest.raises(FnnNodeError) as info:
        await client.get_payment(HASH)
    assert predicate(info.value)


async def test_invalid_params_is_a_node_error() -> None:
    client, _ = make_client(
        error_reply(-32602, "Invalid params", "uint hex string does not start with 0x: 100")
    )
    with pytest.raises(FnnNodeError) as info:
        await client.list_payments()
    assert info.value.code == -32602
    assert info.value.data == "uint hex string does not start with 0x: 100"


@pytest.mark.parametrize("status", [500, 502, 404, 429])
async def test_http_status_is_an_http_error(status: int) -> None:
    client, _ = make_client(lambda _: httpx.Response(status, text="boom"))
    with pytest.raises(FnnHttpError) as info:
        await client.node_info()
    assert info.value.status == status
    assert info.value.body == "boom"


@pytest.mark.parametrize(
    "reply",
    [
        b"<html>not json</html>",
        b'{"jsonrpc":"2.0","id":',
        b"[1, 2]",
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","id":99,"result":{}}',
        b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}',
        b'{"id":1,"result":{}}',
    ],
)
async def test_unparseable_replies_are_contract_errors(reply: bytes) -> None:
    client, _ = make_client(lambda _: httpx.Response(200, content=reply))
    with pytest.raises(FnnContractError):
        await client.node_info()


@pytest.mark.parametrize(
    ("method", "result"),
    [
        ("get_payment", PAYMENT_JSON | {"status": "Pending"}),
        ("get_payment", PAYMENT_JSON | {"fee": "0x0186a0"}),
        ("get_payment", PAYMENT_JSON | {"fee": 100000}),
        ("get_payment", {k: v for k, v in PAYMENT_JSON.items() if k != "created_at"}),
        ("get_payment", PAYMENT_JSON | {"payment_hash": "0x1234"}),
        ("get_invoice", {"invoice_address": "x", "invoice": INVOICE_JSON, "status": "open"}),
        ("get_invoice", {"invoice_address": "x", "invoice": INVOICE_JSON | {"currency": "Fibx"}}),
        ("list_channels", {"channels": [CHANNEL_JSON | {"local_balance": "0X10"}]}),
        ("list_channels", {"channels": {}}),
    ],
)
async def test_bad_result_shapes_are_contract_errors(method: str, result: Any) -> None:
    client, _ = make_client(lambda _: result)
    calls = {
        "get_payment": lambda: client.get_payment(HASH),
        "get_invoice": lambda: client.get_invoice(HASH),
        "list_channels": client.list_channels,
    }
    call = calls[method]
    with pytest.raises(FnnContractError):
        await call()


async def test_connect_failure_is_a_connect_error() -> None:
    def respond(_: dict[str, Any]) -> Any:
        raise httpx.ConnectError("connection refused")

    client, _ = make_client(respond)
    with pytest.raises(FnnConnectError):
        await client.node_info()


async def test_lost_reply_is_a_transport_error() -> None:
    def respond(_: dict[str, Any]) -> Any:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    client, _ = make_client(respond)
    with pytest.raises(FnnConnectError):
        await client.send_payment(invoice="fibd1...")


async def test_httpx_timeout_is_a_timeout() -> None:
    def respond(_: dict[str, Any]) -> Any:
        raise httpx.ReadTimeout("read timed out")

    client, _ = make_client(respond)
    with pytest.raises(FnnTimeout):
        await client.node_info()


async def test_call_bound_raises_timeout_at_exact_virtual_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def hang(_: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    http = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    client = FnnClient(http, URL, call_timeout_s=7.5)
    start = trio.current_time()
    with pytest.raises(FnnTimeout, match=r"7\.5 s"):
        await client.get_payment(HASH)
    assert trio.current_time() - start == pytest.approx(7.5)


async def test_reply_within_bound_is_returned(autojump_clock: trio.abc.Clock) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(4.0)
        body = json.loads(request.content)
        return httpx.Response(
            200, json={"jsonrpc": "2.0", "id": body["id"], "result": PAYMENT_JSON}
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    client = FnnClient(http, URL, call_timeout_s=5.0)
    start = trio.current_time()
    payment = await client.get_payment(HASH)
    assert payment.payment_hash == HASH
    assert trio.current_time() - start == pytest.approx(4.0)


# --- batches: concurrent new_invoice / get_invoice calls share one POST ---------------------


def invoice_reply(entry: dict[str, Any]) -> dict[str, Any]:
    """The reply member for one new_invoice entry; its address names the requested amount."""
    amount = int(entry["params"][0]["amount"], 16)
    result = {"invoice_address": f"fibd1000000001p{amount}", "invoice": INVOICE_JSON}
    return {"jsonrpc": "2.0", "id": entry["id"], "result": result}


def per_entry(
    answer: Callable[[dict[str, Any]], dict[str, Any] | None], *, reverse: bool = False
) -> Callable[[Any], httpx.Response]:
    """Answer a JSON-RPC array entry by entry (``None`` leaves an entry unanswered)."""

    def respond(body: Any) -> httpx.Response:
        if not isinstance(body, list):
            return httpx.Response(200, json=answer(body))
        replies = [r for r in (answer(entry) for entry in body) if r is not None]
        return httpx.Response(200, json=replies[::-1] if reverse else replies)

    return respond


async def concurrently(*calls: Callable[[], Awaitable[T]]) -> list[outcome.Outcome[T]]:
    """Start every call at once in one nursery; each call's own outcome, in order."""
    results: dict[int, outcome.Outcome[T]] = {}

    async def run(i: int, call: Callable[[], Awaitable[T]]) -> None:
        try:  # not outcome.acapture: that would capture Cancelled too
            results[i] = outcome.Value(await call())
        except Exception as exc:
            results[i] = outcome.Error(exc)

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run, i, call)
    return [results[i] for i in range(len(calls))]


def invoices(client: FnnClient, amounts: range) -> list[Callable[[], Awaitable[NewInvoiceResult]]]:
    return [
        functools.partial(client.new_invoice, amount=amount, currency=Currency.FIBD)
        for amount in amounts
    ]


async def test_concurrent_new_invoices_share_one_post_as_an_array() -> None:
    client, rec = make_client(per_entry(invoice_reply))
    got = await concurrently(*invoices(client, range(1, 6)))
    assert len(rec.requests) == 1
    (body,) = [json.loads(r.content) for r in rec.requests]
    assert isinstance(body, list)
    assert [entry["method"] for entry in body] == ["new_invoice"] * 5
    amounts = sorted(entry["params"][0]["amount"] for entry in body)
    assert amounts == [f"0x{n}" for n in range(1, 6)]
    assert len({entry["id"] for entry in body}) == 5
    assert [o.unwrap().invoice_address for o in got] == [
        f"fibd1000000001p{amount}" for amount in range(1, 6)
    ]


async def test_batch_replies_in_any_order_reach_their_own_callers() -> None:
    client, rec = make_client(per_entry(invoice_reply, reverse=True))
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    assert [o.unwrap().invoice_address for o in got] == [
        "fibd1000000001p1",
        "fibd1000000001p2",
        "fibd1000000001p3",
    ]


async def test_a_lone_new_invoice_is_sent_as_a_plain_object() -> None:
    client, rec = make_client(per_entry(invoice_reply))
    out = await client.new_invoice(amount=7, currency=Currency.FIBD)
    assert [json.loads(r.content) for r in rec.requests] == [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "new_invoice",
            "params": [{"amount": "0x7", "currency": "Fibd"}],
        }
    ]
    assert out.invoice_address == "fibd1000000001p7"


async def test_different_methods_are_not_mixed_in_one_batch() -> None:
    info = {"invoice_address": "fibd1...", "invoice": INVOICE_JSON, "status": "Paid"}

    def answer(entry: dict[str, Any]) -> dict[str, Any]:
        if entry["method"] == "get_invoice":
            return {"jsonrpc": "2.0", "id": entry["id"], "result": info}
        return invoice_reply(entry)

    client, rec = make_client(per_entry(answer))
    calls: list[Callable[[], Awaitable[object]]] = [*invoices(client, range(1, 3))]
    calls += [functools.partial(client.get_invoice, HASH)] * 2
    got = await concurrently(*calls)
    bodies = [json.loads(r.content) for r in rec.requests]
    assert sorted([entry["method"] for entry in body] for body in bodies) == [
        ["get_invoice", "get_invoice"],
        ["new_invoice", "new_invoice"],
    ]
    assert all(o.unwrap() is not None for o in got)


async def test_one_entrys_error_object_fails_only_its_caller() -> None:
    def answer(entry: dict[str, Any]) -> dict[str, Any]:
        if entry["params"][0]["amount"] == "0x2":
            error = {"code": -32000, "message": "invoice already exists", "data": None}
            return {"jsonrpc": "2.0", "id": entry["id"], "error": error}
        return invoice_reply(entry)

    client, rec = make_client(per_entry(answer))
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    assert got[0].unwrap().invoice_address == "fibd1000000001p1"
    assert got[2].unwrap().invoice_address == "fibd1000000001p3"
    with pytest.raises(FnnNodeError) as info:
        got[1].unwrap()
    assert (info.value.code, info.value.message) == (-32000, "invoice already exists")
    assert is_invoice_already_exists(info.value)


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda reply: None, id="no-reply-for-it"),
        # A list id is unhashable: once a TypeError that escaped the poller's FnnError net.
        pytest.param(lambda reply: {**reply, "id": [reply["id"]]}, id="unhashable-id"),
    ],
)
async def test_a_reply_lacking_one_id_fails_only_that_caller_as_a_contract_error(
    spoil: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> None:
    def answer(entry: dict[str, Any]) -> dict[str, Any] | None:
        reply = invoice_reply(entry)
        return spoil(reply) if entry["params"][0]["amount"] == "0x3" else reply

    client, rec = make_client(per_entry(answer))
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    assert [o.unwrap().invoice_address for o in got[:2]] == [
        "fibd1000000001p1",
        "fibd1000000001p2",
    ]
    with pytest.raises(FnnContractError, match="batch reply lacks id"):
        got[2].unwrap()


async def test_http_500_on_a_batch_fails_every_caller_with_an_http_error() -> None:
    client, rec = make_client(lambda _: httpx.Response(500, text="Internal Server Error"))
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    for o in got:
        with pytest.raises(FnnHttpError) as info:
            o.unwrap()
        assert (info.value.status, info.value.body) == (500, "Internal Server Error")


async def test_one_error_object_instead_of_an_array_fails_every_caller_with_it() -> None:
    error = {"code": -32600, "message": "Invalid request"}
    client, rec = make_client(
        lambda _: httpx.Response(200, json={"jsonrpc": "2.0", "id": None, "error": error})
    )
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    for o in got:
        with pytest.raises(FnnNodeError) as info:
            o.unwrap()
        assert (info.value.code, info.value.message) == (-32600, "Invalid request")


@pytest.mark.parametrize(
    "reply",
    [
        b"<html>not json</html>",
        b'{"jsonrpc":"2.0","id":null,"result":{}}',
        b'{"jsonrpc":"2.0","id":1,"result":{}}',
    ],
    ids=["not-json", "null-id-result", "plain-result"],
)
async def test_a_batch_reply_that_is_not_an_array_fails_every_caller(reply: bytes) -> None:
    client, rec = make_client(lambda _: httpx.Response(200, content=reply))
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    for o in got:
        with pytest.raises(FnnContractError):
            o.unwrap()


async def test_a_connect_error_on_a_batch_fails_every_caller() -> None:
    def refuse(_: Any) -> Any:
        raise httpx.ConnectError("connection refused")

    client, rec = make_client(refuse)
    got = await concurrently(*invoices(client, range(1, 4)))
    assert len(rec.requests) == 1
    for o in got:
        with pytest.raises(FnnConnectError):
            o.unwrap()


async def test_a_batch_times_out_as_one_call_at_exact_virtual_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    posts = 0

    async def hang(_: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    http = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    client = FnnClient(http, URL, call_timeout_s=7.5)
    start = trio.current_time()
    got = await concurrently(*[functools.partial(client.get_invoice, HASH)] * 3)
    assert trio.current_time() - start == pytest.approx(7.5)
    assert posts == 1
    for o in got:
        with pytest.raises(FnnTimeout, match=r"get_invoice \(batch of 3\)"):
            o.unwrap()


async def test_a_cancelled_call_batch_raises_cancelled_for_any_size(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def hang(_: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    client = FnnClient(httpx.AsyncClient(transport=httpx.MockTransport(hang)), URL)
    for size in (2, 1):
        returned: list[outcome.Outcome[Any]] | None = None
        with trio.move_on_after(1) as scope:
            returned = await client.call_batch("get_invoice", [[{"payment_hash": HASH}]] * size)
        assert (size, scope.cancelled_caught, returned) == (size, True, None)
