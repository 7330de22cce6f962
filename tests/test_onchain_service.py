"""``withdrawal.quote`` / ``withdrawal.request`` for CKB addresses, the admin wallet report,
cancel, and the reconciler's on-chain checks (with the CKB dev chain on loopback).

Rules under test:
- the address must be of the Fiber node's network; a bad address or one of the other
  network is ``destinationValid: false`` with a readable message; only CKB is paid;
- the minimum is the larger of the policy minimum and the recipient cell's capacity (61 CKB);
  the fee is the reserved upper bound, never zero;
- without ``[onchain] enabled`` both keep answering "not enabled";
- the wallet report shows the address, balance, reservations and liquidity;
- a PROCESSING on-chain withdrawal cannot be cancelled; a LIQUIDITY_PENDING one can;
- the reconciler counts the hot wallet toward CKB solvency, checks COMPLETED on-chain
  withdrawals against the chain, and warns when the wallet is underfunded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fiberlinkd.admin.protocol import AdminError
from fiberlinkd.api.errors import RpcError
from fiberlinkd.ckb.address import Script, encode_address
from fiberlinkd.reconciler.actor import Reconciler
from fiberlinkd.withdrawals import admin_commands as cmds
from fiberlinkd.withdrawals.destinations import ONCHAIN_DISABLED_MESSAGE
from fiberlinkd.withdrawals.service import quote, request
from tests.test_onchain_support import (
    CKB,
    RECIPIENT,
    WALLET,
    Harness,
    onchain_params,
    open_harness,
)
from tests.test_withdrawals_admin import ctx
from tests.test_withdrawals_support import fund, wait_for, withdrawal

MAINNET_ADDRESS = encode_address(RECIPIENT, "mainnet")


async def _quote(h: Harness, amount: str, address: str, asset: str = "CKB") -> dict[str, object]:
    params = onchain_params("u1", amount, address)
    params["asset"] = asset
    return await quote(h.rt, "forum", params)


async def test_the_quote_names_the_minimum_and_the_reserved_fee(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        await fund(h.rt, "u1", 500 * CKB)
        q = await _quote(h, "100", encode_address(RECIPIENT, "testnet"))
        assert q["destinationValid"] is True
        assert q["validationMessage"] is None
        assert q["minimumAmount"] == "61"
        fee = float(str(q["networkFee"]))
        assert 0 < fee < 0.001
        long_lock = Script(RECIPIENT.code_hash, "type", bytes(40))  # 20 more args bytes
        q = await _quote(h, "70", encode_address(long_lock, "testnet"))
        assert q["minimumAmount"] == "81"
        assert q["validationMessage"] == "Minimum withdrawal to this address is 81 CKB"


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        (MAINNET_ADDRESS, "address is for mainnet, this server pays on testnet"),
        ("ckt1qqqqqqq", "not a valid CKB address"),
        ("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "not a CKB address"),
    ],
)
async def test_an_address_the_user_must_fix_is_destination_invalid(
    tmp_path: Path, address: str, fragment: str
) -> None:
    async with open_harness(tmp_path) as h:
        await fund(h.rt, "u1", 500 * CKB)
        q = await _quote(h, "100", address)
        assert q["destinationValid"] is False
        assert fragment in str(q["validationMessage"])
        with pytest.raises(RpcError) as refused:
            await request(h.rt, "forum", onchain_params("u1", "100", address))
        assert refused.value.code == -32602
        assert fragment in refused.value.message


async def test_onchain_withdrawals_pay_ckb_only_and_not_the_wallet_itself(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        q = await _quote(h, "100", WALLET.address("testnet"))
        assert q["destinationValid"] is False
        assert "own hot wallet" in str(q["validationMessage"])
        h.rt.config = h.rt.config.__class__(
            state_dir=h.rt.config.state_dir,
            withdrawals=h.rt.config.withdrawals,
            onchain=h.rt.config.onchain,
            assets=h.rt.config.assets.__class__(enabled=("CKB", "USDI")),
        )
        q = await _quote(h, "100", encode_address(RECIPIENT, "testnet"), asset="USDI")
        assert q["destinationValid"] is False
        assert "CKB only" in str(q["validationMessage"])


async def test_without_onchain_the_address_is_still_not_enabled(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        h.rt.onchain = None
        await fund(h.rt, "u1", 500 * CKB)
        q = await _quote(h, "100", encode_address(RECIPIENT, "testnet"))
        assert q["destinationValid"] is False
        assert q["validationMessage"] == ONCHAIN_DISABLED_MESSAGE
        with pytest.raises(RpcError, match="not enabled"):
            await request(h.rt, "forum", onchain_params("u1", "100"))


async def test_the_wallet_report_shows_balance_reservations_and_liquidity(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path) as h:
        h.fund_wallet(120)
        await fund(h.rt, "u1", 500 * CKB)
        waiting = await request(h.rt, "forum", onchain_params("u1", "100"))
        assert waiting["state"] == "LIQUIDITY_PENDING"
        report = await cmds.wallet_show(ctx(h.rt), {})
        assert report["address"] == WALLET.address("testnet")
        assert report["balance"] == "120"
        assert report["reserved"]["liquidity_pending_count"] == 1
        assert report["reserved"]["change_reserve"] == "61"
        assert float(report["shortfall"]) > 41
        cancelled = await cmds.withdrawals_cancel(ctx(h.rt), {"id": waiting["id"]})
        assert cancelled["state"] == "FAILED"


async def test_a_processing_onchain_withdrawal_cannot_be_cancelled(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 500 * CKB)
        wid = (await request(h.rt, "forum", onchain_params("u1", "100")))["id"]
        scope = await h.run_executor(nursery)
        await wait_for(h.rt, wid, lambda w: w.tx_hash is not None)
        scope.cancel()
        with pytest.raises(AdminError, match="only PENDING"):
            await cmds.withdrawals_cancel(ctx(h.rt), {"id": wid})
        shown = await cmds.withdrawals_show(ctx(h.rt), {"id": wid})
        assert shown["node"]["status"] in ("pending", "unknown")


async def test_the_reconciler_proves_onchain_payouts_and_counts_the_hot_wallet(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path, confirmations=0) as h, trio.open_nursery() as nursery:
        h.fund_wallet(1000)
        await fund(h.rt, "u1", 500 * CKB)
        wid = (await request(h.rt, "forum", onchain_params("u1", "100")))["id"]
        scope = await h.run_executor(nursery)
        await wait_for(h.rt, wid, lambda w: w.tx_hash is not None)
        with trio.fail_after(10):
            while (await withdrawal(h.rt, wid)).state != "COMPLETED":
                h.chain.mine(1)
                await trio.sleep(0.03)
        scope.cancel()
        report = await Reconciler(h.rt).run_once("test")
        codes = {f.code for f in report.findings}
        assert "ONCHAIN_PAYOUT_NOT_COMMITTED" not in codes
        assert "ONCHAIN_PAYOUT_MISMATCH" not in codes
        assert "SOLVENCY_SHORTFALL" not in codes  # the node has no channels: the wallet covers
        assert report.summary["completed_onchain_checked"] == 1
        assert report.summary["solvency"]["CKB"]["hot_wallet"] > 0
        # A completed payout the chain does not back is critical.
        h.chain.txs.clear()
        report = await Reconciler(h.rt).run_once("test")
        assert "ONCHAIN_PAYOUT_NOT_COMMITTED" in {f.code for f in report.findings}


async def test_the_reconciler_warns_when_the_wallet_cannot_pay_what_waits(
    tmp_path: Path,
) -> None:
    async with open_harness(tmp_path) as h:
        h.fund_wallet(100)
        await fund(h.rt, "u1", 500 * CKB)
        await request(h.rt, "forum", onchain_params("u1", "100"))
        report = await Reconciler(h.rt).run_once("test")
        warnings = [f for f in report.findings if f.code == "HOT_WALLET_UNDERFUNDED"]
        assert len(warnings) == 1
        assert warnings[0].severity == "WARNING"
