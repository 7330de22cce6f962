"""The quart-trio application: ``POST /rpc`` (and ``//rpc``), health probes, metrics.

Every JSON-RPC outcome is HTTP 200 with an envelope: the plugin's browser code only shows
``error.message`` for 200 answers, and stops tip polling on any other status
(plugin-wire-contract.md §3.4). Order of checks: size → JSON → envelope → authentication
(signature, then the nonce) → rate limit → method → params. ``tip.create`` records its nonce
in its own commit, with its tip (or alone, when it answers an error); every other method's
nonce is recorded before it runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import prometheus_client
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response
from quart_trio import QuartTrio

from fiberlinkd.api import errors
from fiberlinkd.api.auth import Authenticator, AuthError, NonceClaim
from fiberlinkd.api.errors import RpcError
from fiberlinkd.api.methods import CLAIMING_METHODS, KNOWN_METHODS, METHODS
from fiberlinkd.api.ratelimit import RateLimiter
from fiberlinkd.ledger.store import SCHEMA_VERSION, schema_version
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)

REQUESTS = prometheus_client.Counter(
    "fiberlinkd_rpc_requests_total",
    "JSON-RPC requests by method and outcome",
    ["method", "outcome"],
)
LATENCY = prometheus_client.Histogram(
    "fiberlinkd_rpc_latency_seconds",
    "JSON-RPC handling time by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

# The plugin's tip modal keeps polling only on messages it deems transient ("service
# unavailable", "timeout", ...); a throttled poll must not stop it for good.
RATE_LIMITED_MESSAGE = "Rate limit exceeded; service unavailable for a moment, retry shortly"

PER_USER_LIMITS = {
    "tip.create": ("fromUserId", "tip_create_per_user_per_minute"),
    "withdrawal.request": ("userId", "withdrawal_request_per_user_per_minute"),
}


def _envelope(
    request_id: Any, *, result: Any = None, error: RpcError | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is not None:
        body["error"] = error.as_error()
    else:
        body["result"] = result
    return body


def _json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@attrs.define
class RpcHandler:
    rt: Runtime
    auth: Authenticator
    limiter: RateLimiter = attrs.field(factory=RateLimiter)

    async def handle(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str], str]:
        """Return (envelope, extra headers, method label for metrics)."""
        extra: dict[str, str] = {}
        if len(body) > self.rt.config.api.max_body_bytes:
            return (
                _envelope(None, error=RpcError(errors.INVALID_REQUEST, "Request body too large")),
                extra,
                "-",
            )
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past the decoder's limit
            return _envelope(None, error=RpcError(-32700, "Parse error")), extra, "-"
        if (
            not isinstance(payload, dict)
            or payload.get("jsonrpc") != "2.0"
            or "id" not in payload
            or not isinstance(payload.get("id"), str | int | float | type(None))
            or isinstance(payload.get("id"), bool)
            or (isinstance(payload.get("id"), float) and not math.isfinite(payload["id"]))
            or not isinstance(payload.get("method"), str)
            or not payload.get("method")
        ):
            return (
                _envelope(None, error=RpcError(errors.INVALID_REQUEST, "Invalid Request")),
                extra,
                "-",
            )
        request_id = payload["id"]
        method: str = payload["method"]
        label = method if method in KNOWN_METHODS else "unknown"
        self_claiming = method in CLAIMING_METHODS
        try:
            claim = await self.auth.authenticate(
                app_id=headers.get("x-app-id"),
                ts=headers.get("x-ts"),
                nonce=headers.get("x-nonce"),
                sig=headers.get("x-signature"),
                body=body,
                now_s=self.rt.clock.now_ms() // 1000,
            )
            if not self_claiming:
                await self.auth.commit(claim)
                return await self._dispatch(request_id, method, label, payload, claim)
            with self.auth.reserved(claim):
                answer = await self._dispatch(request_id, method, label, payload, claim)
                if "error" in answer[0]:
                    # Answered, so spent: the same signed request replayed later is refused
                    # whatever this answer was (on success the method's commit recorded it).
                    await self.auth.commit(claim)
                return answer
        except AuthError as exc:  # ReplayedNonce too, also from a method's own commit
            log.info("unauthorized request", extra=kv(reason=str(exc), method=label))
            unauthorized = RpcError(errors.UNAUTHORIZED, "Unauthorized")
            return _envelope(request_id, error=unauthorized), extra, label

    async def _dispatch(
        self, request_id: Any, method: str, label: str, payload: dict[str, Any], claim: NonceClaim
    ) -> tuple[dict[str, Any], dict[str, str], str]:
        app_id = claim.app_id
        params = payload.get("params", {})
        if params is None:
            params = {}
        limits = self.rt.config.api.rate_limits
        now_s = trio.current_time()
        decision = self.limiter.check((app_id, label), limits.per_app_method_per_minute, now_s)
        if decision.allowed and method in PER_USER_LIMITS and isinstance(params, dict):
            field, setting = PER_USER_LIMITS[method]
            user = str(params.get(field, ""))
            decision = self.limiter.check((app_id, label, user), getattr(limits, setting), now_s)
        extra = {
            "x-ratelimit-limit": str(decision.limit),
            "x-ratelimit-remaining": str(decision.remaining),
            "x-ratelimit-reset": str(decision.reset_s),
        }
        if not decision.allowed:
            return (
                _envelope(request_id, error=RpcError(errors.RATE_LIMITED, RATE_LIMITED_MESSAGE)),
                extra,
                label,
            )
        if method not in KNOWN_METHODS:
            return (
                _envelope(request_id, error=RpcError(errors.METHOD_NOT_FOUND, "Method not found")),
                extra,
                label,
            )
        if not isinstance(params, dict):
            return (
                _envelope(request_id, error=errors.invalid_params("params must be an object")),
                extra,
                label,
            )
        try:
            if method in CLAIMING_METHODS:
                result = await CLAIMING_METHODS[method](self.rt, claim, params)
            else:
                result = await METHODS[method](self.rt, app_id, params)
        except RpcError as exc:
            return _envelope(request_id, error=exc), extra, label
        except AuthError:
            raise
        except Exception:
            correlation = uuid.uuid4().hex[:12]
            log.exception("internal error", extra=kv(method=label, correlation_id=correlation))
            error = RpcError(errors.INTERNAL_ERROR, f"Internal error (reference {correlation})")
            return _envelope(request_id, error=error), extra, label
        return _envelope(request_id, result=result), extra, label


async def readiness(rt: Runtime) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}

    def probe(conn: Any) -> int:
        conn.execute(
            "INSERT OR REPLACE INTO settings (key, value, updated_at) VALUES ('healthz', 'ok', 0)"
        )
        return schema_version(conn)

    try:
        with trio.fail_after(2):
            version = await rt.ledger.transact(probe)
        checks["ledger"] = {"status": "ok"}
        checks["migrations"] = (
            {"status": "ok", "version": version}
            if version == SCHEMA_VERSION
            else {"status": "error", "message": f"schema {version}, expected {SCHEMA_VERSION}"}
        )
    except (trio.TooSlowError, Exception) as exc:
        checks["ledger"] = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
    ok_ms = rt.node_state.last_ok_ms
    stale = ok_ms is None or rt.clock.now_ms() - ok_ms > 90_000 or rt.node_state.last_error
    checks["fnn"] = (
        {"status": "error", "message": rt.node_state.last_error or "node_info not answered yet"}
        if stale
        else {"status": "ok", "version": rt.node_state.info.version if rt.node_state.info else None}
    )
    not_running = [s.name for s in rt.supervisor.statuses.values() if s.state != "running"]
    checks["actors"] = (
        {"status": "ok"}
        if not not_running
        else {"status": "error", "message": f"not running: {', '.join(not_running)}"}
    )
    ready = all(c.get("status") == "ok" for c in checks.values())
    return ready, checks


def create_app(rt: Runtime) -> QuartTrio:
    """The quart-trio app: health probes and metrics as quart routes, ``/rpc`` in front.

    ``/rpc`` is served by :class:`RpcEndpoint`, an ASGI middleware installed the way quart
    documents (``app.asgi_app``), not by a quart view: quart's per-request machinery
    (request context, werkzeug routing and headers, response object) costs about 0.2 ms of
    CPU per call, measured, which is a fifth of the plugin API's budget (issue 6). The
    endpoint needs none of it: it reads bytes, answers one JSON envelope, and every answer
    is HTTP 200.
    """
    app = QuartTrio("fiberlinkd")
    handler = RpcHandler(rt, Authenticator(rt.ledger, rt.config.api.signature_window_s))

    @app.get("/healthz/live")
    async def live() -> Response:
        return _json_response({"status": "alive"})

    @app.get("/healthz/ready")
    async def ready() -> Response:
        ok, checks = await readiness(rt)
        return _json_response(
            {"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(), content_type=prometheus_client.CONTENT_TYPE_LATEST
        )

    app.asgi_app = RpcEndpoint(app.asgi_app, handler, rt.config.api.max_body_bytes)  # type: ignore[method-assign]  # quart's documented middleware hook
    return app


# The plugin's URL setting with a trailing slash produces "//rpc".
RPC_PATHS = frozenset({"/rpc", "//rpc"})
_WANTED_HEADERS = frozenset({b"x-app-id", b"x-ts", b"x-nonce", b"x-signature"})

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


@attrs.define
class RpcEndpoint:
    """ASGI middleware: ``POST /rpc`` (and ``//rpc``) here, everything else to quart."""

    app: ASGIApp
    handler: RpcHandler
    max_body: int

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or scope["path"] not in RPC_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _send(send, 405, b"Method Not Allowed", [(b"allow", b"POST")], b"text/plain")
            return
        started = time.perf_counter()
        headers: dict[str, str] = {}
        length: int | None = None
        for name, value in scope["headers"]:
            if name in _WANTED_HEADERS:
                headers[name.decode()] = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        body = None if length is not None and length > self.max_body else await self._body(receive)
        if body is None:
            REQUESTS.labels("-", "too_large").inc()
            too_large = RpcError(errors.INVALID_REQUEST, "Request body too large")
            await _send_envelope(send, _envelope(None, error=too_large), {})
            return
        try:
            envelope, extra, label = await self.handler.handle(body, headers)
        except Exception:
            # Still HTTP 200 with an envelope: the proxy relays our status to the browser.
            correlation = uuid.uuid4().hex[:12]
            log.exception("unhandled rpc error", extra=kv(correlation_id=correlation))
            error = RpcError(errors.INTERNAL_ERROR, f"Internal error (reference {correlation})")
            envelope, extra, label = _envelope(_request_id(body), error=error), {}, "-"
        REQUESTS.labels(label, "error" if "error" in envelope else "ok").inc()
        LATENCY.labels(label).observe(time.perf_counter() - started)
        await _send_envelope(send, envelope, extra)

    async def _body(self, receive: ASGIReceiveCallable) -> bytes | None:
        """The request body, or None once it grows past ``max_body`` (not read further)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(chunks)
            size += len(message["body"])
            if size > self.max_body:
                return None
            chunks.append(message["body"])
            if not message["more_body"]:
                return b"".join(chunks)


async def _send_envelope(
    send: ASGISendCallable, envelope: dict[str, Any], extra: dict[str, str]
) -> None:
    try:
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate echoed back (e.g. in the id): escape it
        body = json.dumps(envelope, separators=(",", ":")).encode()
    headers = [(k.encode(), v.encode()) for k, v in extra.items()]
    await _send(send, 200, body, headers, b"application/json")


async def _send(
    send: ASGISendCallable,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _request_id(body: bytes) -> Any:
    """The request's id when the body is an envelope with a valid one, else None."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    request_id = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | float):
        return None
    if isinstance(request_id, float) and not math.isfinite(request_id):
        return None
    return request_id
