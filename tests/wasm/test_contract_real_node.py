"""Contract tests of ``fiberlinkd.fnn.client.FnnClient`` against the real FNN 0.8.1 node.

Rules: every test here talks to the real node (WebAssembly build in headless Chromium,
``real_node`` fixture) through the translating loopback endpoint, so each is marked
``wasm``. Only invoice-side calls and validation errors are reachable offline (no chain, no
channels). Every test uses its own preimages, so tests share the one node without
interfering. The project's own contract module (``tests/test_fnn_contract.py``) is also run
against the real node, in a subprocess, through its ``FIBERLINKD_TEST_FNN_URL`` switch.
``list_payments`` is not tested here: fiber-wasm 0.8.1 does not export it
(``scripts.LIST_PAYMENTS_ARTEFACT``), while FNN 0.8 over HTTP serves it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.errors import (
    FnnNodeError,
    is_invoice_already_exists,
    is_invoice_not_cancellable,
    is_invoice_not_found,
    is_payment_session_not_found,
    is_unknown_method,
)
from fiberlinkd.fnn.types import TESTNET_CHAIN_HASH, Currency, InvoiceStatus, Script

from .realnode import REPO_ROOT, RealNode
from .scripts import ckb_hash_hex, preimage

pytestmark = pytest.mark.wasm

RUSD = Script(
    code_hash="0x1142755a044bf2ee358cba9f2da187ce928c91cd4dc8692ded0337efa677d21a",
    hash_type="type",
    args="0x878fcc6f1f08d48e87bb1c3b3d5083f23f8a39c5d5c764f253b55b998526439b",
)


@pytest.fixture
async def client(real_node: RealNode) -> AsyncIterator[FnnClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        yield FnnClient(http=http, url=real_node.url)


async def test_node_info(client: FnnClient) -> None:
    info = await client.node_info()
    assert info.version == "0.8.1"
    assert re.fullmatch(r"0[23][0-9a-f]{64}", info.pubkey)
    assert info.chain_hash == TESTNET_CHAIN_HASH
    assert info.currency is Currency.FIBT


async def test_invoice_lifecycle(client: FnnClient) -> None:
    pre = preimage("contract", "lifecycle")
    created = await client.new_invoice(
        amount=100_000_000,
        currency=Currency.FIBT,
        description="contract",
        expiry_s=3600,
        payment_preimage=pre,
        final_expiry_delta_ms=9_600_000,
    )
    inv = created.invoice
    assert created.invoice_address.startswith("fibt1000000001")
    assert inv.payment_hash == ckb_hash_hex(pre)
    assert (inv.amount, inv.expiry_s, inv.description) == (100_000_000, 3600, "contract")
    assert inv.currency is Currency.FIBT
    parsed = await client.parse_invoice(created.invoice_address)
    assert parsed == inv
    got = await client.get_invoice(inv.payment_hash)
    assert (got.status, got.invoice) == (InvoiceStatus.OPEN, inv)
    cancelled = await client.cancel_invoice(inv.payment_hash)
    assert cancelled.status is InvoiceStatus.CANCELLED
    with pytest.raises(FnnNodeError) as exc:
        await client.cancel_invoice(inv.payment_hash)
    assert is_invoice_not_cancellable(exc.value)
    with pytest.raises(FnnNodeError) as exc:
        await client.new_invoice(amount=1, currency=Currency.FIBT, payment_preimage=pre)
    assert is_invoice_already_exists(exc.value)


async def test_udt_and_sha256_invoice(client: FnnClient) -> None:
    pre = preimage("contract", "udt")
    created = await client.new_invoice(
        amount=5,
        currency=Currency.FIBT,
        payment_preimage=pre,
        udt_type_script=RUSD,
        hash_algorithm="sha256",
        allow_mpp=True,
    )
    assert created.invoice.udt_script is not None
    assert RUSD.code_hash[2:] in created.invoice.udt_script
    assert (await client.parse_invoice(created.invoice_address)) == created.invoice


async def test_hold_invoice_settle_errors(client: FnnClient) -> None:
    pre = preimage("contract", "hold")
    created = await client.new_invoice(
        amount=100, currency=Currency.FIBT, payment_hash=ckb_hash_hex(pre), expiry_s=600
    )
    with pytest.raises(FnnNodeError) as exc:
        await client.settle_invoice(created.invoice.payment_hash, pre)
    assert (exc.value.code, exc.value.message) == (-32000, "Invoice is still open")
    with pytest.raises(FnnNodeError) as exc:
        await client.settle_invoice(created.invoice.payment_hash, preimage("contract", "x"))
    assert exc.value.message == "Hash mismatch"
    with pytest.raises(FnnNodeError) as exc:
        await client.settle_invoice("0x" + "35" * 32, pre)
    assert is_invoice_not_found(exc.value)


async def test_lookup_errors(client: FnnClient) -> None:
    with pytest.raises(FnnNodeError) as exc:
        await client.get_invoice("0x" + "36" * 32)
    assert is_invoice_not_found(exc.value)
    with pytest.raises(FnnNodeError) as exc:
        await client.get_payment("0x" + "36" * 32)
    assert is_payment_session_not_found(exc.value)


async def test_send_payment_errors(client: FnnClient) -> None:
    own = await client.new_invoice(
        amount=1000, currency=Currency.FIBT, payment_preimage=preimage("contract", "own")
    )
    with pytest.raises(FnnNodeError) as exc:
        await client.send_payment(invoice=own.invoice_address)
    assert exc.value.code == -32000
    assert "can not pay to self" in exc.value.message
    with pytest.raises(FnnNodeError) as exc:
        await client.send_payment(invoice="fibtgarbage", dry_run=True)
    assert exc.value.message.endswith('"invoice is invalid"')


async def test_lists_and_unknown_method(client: FnnClient) -> None:
    assert await client.list_channels() == ()
    assert await client.call("list_peers", []) == {"peers": []}
    with pytest.raises(FnnNodeError) as exc:
        await client.call("no_such_method", [{}])
    assert is_unknown_method(exc.value)


async def test_invalid_params_surface_as_node_errors(client: FnnClient) -> None:
    with pytest.raises(FnnNodeError) as exc:
        await client.call("new_invoice", [{"amount": "0x064", "currency": "Fibt"}])
    assert (exc.value.code, exc.value.message) == (-32602, "Invalid params")
    assert exc.value.data == "uint hex string starts with redundant leading zeros: 0x064"


async def test_project_contract_module_against_real_node(real_node: RealNode) -> None:
    """Run ``tests/test_fnn_contract.py`` itself against the real node.

    That module reads ``FIBERLINKD_TEST_FNN_URL`` at import and then skips the steps that
    need the simulator's ``sim_*`` controls; everything else must hold for the real node.
    """
    repo = REPO_ROOT
    env = {**os.environ, "FIBERLINKD_TEST_FNN_URL": real_node.url}
    env.pop("FIBERLINKD_TEST_FNN_TOKEN", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd.append("tests/test_fnn_contract.py")
    with trio.fail_after(120):
        done = await trio.run_process(cmd, cwd=repo, env=env, capture_stdout=True, check=False)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-4000:]
    assert " passed" in out, out[-4000:]
