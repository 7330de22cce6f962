"""Signs and sends requests exactly as the Discourse plugin's ServiceClient does.

Body: one compact JSON object with keys in the order jsonrpc, id, method, params; headers
x-app-id, x-ts (unix seconds), x-nonce (16 lowercase hex), x-signature (lowercase hex
HMAC-SHA256 of ``ts.nonce.body``). ``rails_escape`` mimics Rails' escaping of ``<>&``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx


def encode_body(request_id: Any, method: str, params: Any, *, rails_escape: bool = False) -> bytes:
    text = json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    if rails_escape:
        text = (
            text.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return text.encode("utf-8")


def sign_headers(
    app_id: str, secret: str, body: bytes, *, ts: int | None = None, nonce: str | None = None
) -> dict[str, str]:
    ts_text = str(int(time.time()) if ts is None else ts)
    nonce = nonce or secrets.token_hex(8)
    sig = hmac.new(
        secret.encode(), f"{ts_text}.{nonce}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return {
        "Content-Type": "application/json",
        "x-app-id": app_id,
        "x-ts": ts_text,
        "x-nonce": nonce,
        "x-signature": sig,
    }


class PluginClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, app_id: str, secret: str) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/rpc"
        self.app_id = app_id
        self.secret = secret

    async def post_raw(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(self.url, content=body, headers=headers)

    async def call(self, method: str, params: Any, *, rails_escape: bool = False) -> dict[str, Any]:
        body = encode_body(secrets.token_hex(8), method, params, rails_escape=rails_escape)
        response = await self.post_raw(body, sign_headers(self.app_id, self.secret, body))
        assert response.status_code == 200, response.text
        envelope: dict[str, Any] = response.json()
        return envelope

    async def result(self, method: str, params: Any) -> dict[str, Any]:
        envelope = await self.call(method, params)
        assert "error" not in envelope, envelope
        result: dict[str, Any] = envelope["result"]
        return result
