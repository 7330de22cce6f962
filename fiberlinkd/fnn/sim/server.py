"""HTTP/1.1 front of the simulator: trio sockets + h11, JSON-RPC as FNN's jsonrpsee serves it.

Transport rules copied from FNN (``fnn-rpc.md`` §1): POST only (405), JSON content type
(415), body ≤ 10 MiB (413), HTTP 200 for every JSON-RPC reply, batches, ``-32700`` /
``-32600`` for unparseable or malformed requests, ``-32999 Unauthorized`` for a
notification, a bad bearer token or an unknown method.

Faults (``sim_fault``) are applied here, per request, before the node sees the call:
``timeout`` hangs until cancelled, ``http_500`` and ``bad_json`` answer without executing,
``node_error`` answers ``-32000`` with the given message, ``drop_reply`` executes the call
and then closes the connection without a response.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
import trio

from .node import BUSINESS, Fault, RpcError, SimNode, unauthorized

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
RECEIVE_CHUNK_BYTES = 65536
HANG_S = 3600.0
_JSON_TYPES = ("application/json", "application/json-rpc")


class _DropConnection(Exception):
    """Close the connection without answering."""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _error_reply(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


class RpcServer:
    """Serves one :class:`SimNode` on trio stream connections."""

    def __init__(self, node: SimNode, *, auth_token: str | None = None) -> None:
        self.node = node
        self.auth_token = auth_token

    # -- JSON-RPC

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if self.auth_token is None:
            return True
        return headers.get(b"authorization", b"") == f"Bearer {self.auth_token}".encode()

    def _execute(self, request: Any, authorised: bool) -> dict[str, Any]:
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("method"), str)
        ):
            return _error_reply(None, RpcError(-32600, "Invalid request", has_data=False))
        request_id = request.get("id")
        if "id" not in request or not authorised:
            return _error_reply(request_id, unauthorized())
        try:
            result = self.node.call(request["method"], request.get("params"))
        except RpcError as exc:
            return _error_reply(request_id, exc)
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _answer(self, body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
        """(status, body) for one POST; may hang or raise :class:`_DropConnection`."""
        try:
            request = json.loads(body)
        except ValueError:
            error = RpcError(-32700, "Parse error", has_data=False)
            return 200, _dumps(_error_reply(None, error))
        authorised = self._authorised(headers)
        if isinstance(request, list) and not request:
            error = RpcError(-32600, "Invalid request", has_data=False)
            return 200, _dumps(_error_reply(None, error))
        entries = request if isinstance(request, list) else [request]
        # A fault drawn by any entry of a batch: node_error answers that entry; the
        # transport kinds hit the whole exchange, as they would on a real connection.
        faults = [self._take_fault(entry) for entry in entries]
        transport = next((f for f in faults if f is not None and f.kind != "node_error"), None)
        if transport is not None:
            log.info("devnode: fault %s on %s", transport.kind, transport.method)
            if transport.kind == "timeout":
                await trio.sleep(HANG_S)
                raise _DropConnection
            if transport.kind == "http_500":
                return 500, b"Internal Server Error"
            if transport.kind == "bad_json":
                return 200, b'{"jsonrpc":"2.0","id":' + b"<<not json"
        replies = []
        for entry, fault in zip(entries, faults, strict=True):
            if fault is not None and fault.kind == "node_error":
                log.info("devnode: fault node_error on %s", fault.method)
                params = entry.get("params")
                data = params[0] if isinstance(params, list) and params else None
                error = RpcError(BUSINESS, fault.message or "simulated node error", data)
                replies.append(_error_reply(entry.get("id"), error))
            else:
                replies.append(self._execute(entry, authorised))
        if transport is not None:  # drop_reply: the node executed the calls; the reply is lost
            raise _DropConnection
        return 200, _dumps(replies if isinstance(request, list) else replies[0])

    def _take_fault(self, entry: Any) -> Fault | None:
        method = entry.get("method") if isinstance(entry, dict) else None
        return self.node.take_fault(method) if isinstance(method, str) else None

    # -- HTTP

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve HTTP/1.1 requests on ``stream`` until the peer closes it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY_BYTES)
        try:
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                status, reply, content_type = await self._respond_to(request, body)
                await self._send(conn, stream, status, reply, content_type)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (_DropConnection, h11.RemoteProtocolError, trio.BrokenResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    await self._send(conn, stream, 413, b"Payload Too Large", b"text/plain")
                    raise _DropConnection
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""
            else:  # pragma: no cover - h11 yields nothing else on the server side
                raise _DropConnection

    async def _respond_to(self, request: h11.Request, body: bytes) -> tuple[int, bytes, bytes]:
        headers = {name.lower(): value for name, value in request.headers}
        if request.method != b"POST":
            text = b"Used HTTP Method is not allowed. POST or OPTIONS is required"
            return 405, text, b"text/plain"
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type.decode("latin-1") not in _JSON_TYPES:
            text = (
                b"Supplied content type is not allowed. Content-Type: application/json is required"
            )
            return 415, text, b"text/plain"
        status, reply = await self._answer(body, headers)
        if status == 500:
            return status, reply, b"text/plain"
        return status, reply, b"application/json; charset=utf-8"

    @staticmethod
    async def _send(
        conn: h11.Connection,
        stream: trio.abc.Stream,
        status: int,
        body: bytes,
        content_type: bytes,
    ) -> None:
        response = h11.Response(
            status_code=status,
            headers=[
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
