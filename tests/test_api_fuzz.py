"""Property test: random JSON and random bytes thrown at /rpc, signed and unsigned.

Rules, for every request:
- the answer is HTTP 200 with a JSON-RPC 2.0 envelope: exactly one of ``result`` or
  ``error``, and an error is ``{code: int, message: str[, data]}`` — never a 5xx;
- no unhandled exception: no ERROR log record, no record with a traceback;
- nothing changes in the database except what a request that *succeeded* is allowed to
  write (a ``tip.create`` that happened to be valid adds its tip and timeline event).

One daemon serves every example: hypothesis runs in a worker thread with a blocking
client while the daemon runs on the test's trio loop (pytest-trio fixtures are
function-scoped, so a per-example daemon would be far too slow).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import string
import time
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fiberlinkd.api.methods import KNOWN_METHODS
from fiberlinkd.fnn.simulator import Simulator
from tests.test_api_envelope import running, snapshot

EXAMPLES = 200
FIELDS = (
    "postId",
    "fromUserId",
    "toUserId",
    "asset",
    "amount",
    "message",
    "invoice",
    "userId",
    "limit",
    "includeAdmin",
    "filters",
    "after",
    "destination",
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
plausible = st.sampled_from(
    ["CKB", "USDI", "BTC", "1", "0", "-1", "1e5", "0.5", "1.123456789", "45", "67", "ALL", ""]
)
params = (
    st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, plausible | json_values)) | json_values
)
envelopes = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0") | st.text(max_size=4),
        "id": st.text(max_size=12) | st.integers() | st.none(),
        "method": st.sampled_from(sorted(KNOWN_METHODS)) | st.text(max_size=16),
        "params": params,
    }
)
header_text = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/+=", max_size=24)


def encode(value: Any, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()


def assert_envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    envelope = response.json()
    assert isinstance(envelope, dict)
    assert envelope["jsonrpc"] == "2.0"
    assert "id" in envelope
    assert ("result" in envelope) != ("error" in envelope), envelope
    if "error" in envelope:
        error = envelope["error"]
        assert type(error["code"]) is int
        assert isinstance(error["message"], str)
        assert set(error) <= {"code", "message", "data"}
    return dict(envelope)


async def test_random_json_and_bytes_never_break_the_envelope_nor_the_database(
    tmp_path, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path, sim) as d:
        url = d.url + "/rpc"
        app_id, secret = d.plugin.app_id, d.plugin.secret
        before = await snapshot(d.rt)
        created: list[str] = []
        seen = {"error": 0, "result": 0}

        def headers_for(body: bytes, mode: str, data: st.DataObject) -> dict[str, str]:
            if mode == "unsigned":
                return {"Content-Type": "application/json"}
            if mode == "garbage":
                return {
                    "x-app-id": data.draw(header_text),
                    "x-ts": data.draw(header_text),
                    "x-nonce": data.draw(header_text),
                    "x-signature": data.draw(header_text),
                }
            ts = str(int(time.time()))
            nonce = secrets.token_hex(8)
            key = (secret if mode == "signed" else "wrong-secret").encode()
            sig = hmac.new(key, f"{ts}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
            return {
                "Content-Type": "application/json",
                "x-app-id": app_id,
                "x-ts": ts,
                "x-nonce": nonce,
                "x-signature": sig,
            }

        def run_examples() -> None:
            with httpx.Client(timeout=10) as client:

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                )
                @given(data=st.data())
                def one_request(data: st.DataObject) -> None:
                    kind = data.draw(st.sampled_from(["bytes", "json", "envelope"]))
                    if kind == "bytes":
                        body = data.draw(st.binary(max_size=400))
                    elif kind == "json":
                        body = encode(data.draw(json_values), data.draw(st.booleans()))
                    else:
                        body = encode(data.draw(envelopes), data.draw(st.booleans()))
                    mode = data.draw(
                        st.sampled_from(["signed", "signed", "wrong", "unsigned", "garbage"])
                    )
                    response = client.post(url, content=body, headers=headers_for(body, mode, data))
                    envelope = assert_envelope(response)
                    if "result" in envelope:
                        seen["result"] += 1
                        parsed = json.loads(body)
                        if parsed.get("method") == "tip.create":
                            created.append(envelope["result"]["invoice"])
                    else:
                        seen["error"] += 1

                one_request()

        await trio.to_thread.run_sync(run_examples)

        after = await snapshot(d.rt)
        grown = {"tip_intents", "tip_events", "nonces"}
        for table in before:
            if table not in grown:
                assert after[table] == before[table], table
        assert len(after["tip_intents"]) == len(before["tip_intents"]) + len(created)
        assert len(after["tip_events"]) == len(before["tip_events"]) + len(created)
        assert seen["error"] > EXAMPLES // 2  # the fuzz mostly exercises refusals

    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text
