"""``fiberlinkd demo``: the whole flow on loopback, with the built-in FNN simulator.

It starts the simulator and the full daemon with a temporary state directory, creates an
app, and walks the story the way the Discourse plugin and a reader would: a tip invoice
over signed ``/rpc``, a simulated payment, settlement, the creator's dashboard, a
withdrawal to a simulated remote invoice paid exactly once, an on-chain withdrawal to a
``ckt1…`` address paid from a hot wallet on the built-in CKB dev chain (exactly one output
to that address), and a clean reconciliation.
``--once`` exits 0 only if every step succeeded; otherwise it keeps serving and prints the
plugin settings to use.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from fiberlinkd.api.auth import signature
from fiberlinkd.ckb.address import Script, encode_address, hex_bytes
from fiberlinkd.ckb.devchain import DEVNET_SECP256K1_DEP_GROUP, RunningDevChain, open_devchain
from fiberlinkd.ckb.tx import lock_for_key
from fiberlinkd.config import Config, load_config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.simulator import Simulator, open_simulator
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.logsetup import setup_logging
from fiberlinkd.runtime import Runtime

APP_ID = "demo-forum"
STEP_BOUND_S = 20.0
TIP_CKB = 200
HOT_WALLET_FUNDING_CKB = 10_000
ONCHAIN_WITHDRAWAL_CKB = 70
ONCHAIN_CONFIRMATIONS = 3
SHANNONS_PER_CKB = 100_000_000


class DemoFailed(Exception):
    pass


@attrs.define
class Story:
    rt: Runtime
    sim: Simulator
    devchain: RunningDevChain
    hot_wallet: Script
    http: httpx.AsyncClient
    api_url: str
    secret: str
    out: Callable[[str], None]
    ok_steps: int = 0

    async def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": secrets.token_hex(4), "method": method, "params": params},
            separators=(",", ":"),
        ).encode()
        ts, nonce = str(int(time.time())), secrets.token_hex(8)
        headers = {
            "Content-Type": "application/json",
            "x-app-id": APP_ID,
            "x-ts": ts,
            "x-nonce": nonce,
            "x-signature": signature(self.secret, ts, nonce, body),
        }
        response = await self.http.post(self.api_url + "/rpc", content=body, headers=headers)
        envelope: dict[str, Any] = response.json()
        if "error" in envelope:
            raise DemoFailed(f"{method} answered {envelope['error']}")
        result: dict[str, Any] = envelope["result"]
        return result

    async def step(self, title: str, fn: Callable[[], Awaitable[str]]) -> None:
        self.out(f"  … {title}")
        with trio.fail_after(STEP_BOUND_S):
            detail = await fn()
        self.ok_steps += 1
        self.out(f"  ok {title}: {detail}")

    async def run(self) -> None:
        state: dict[str, Any] = {}

        async def create_tip() -> str:
            result = await self.rpc(
                "tip.create",
                {
                    "amount": str(TIP_CKB),
                    "asset": "CKB",
                    "postId": "1",
                    "fromUserId": "2",
                    "toUserId": "3",
                    "message": "Great post!",
                },
            )
            state["invoice"] = result["invoice"]
            return f"invoice {result['invoice'][:32]}… ({len(result['invoice'])} chars)"

        async def pay_tip() -> str:
            await self.sim_call("sim_pay_invoice", {"invoice": state["invoice"]})
            state["paid_at"] = trio.current_time()
            return f"a reader's wallet paid {TIP_CKB} CKB through the simulated network"

        async def settle() -> str:
            while True:
                status = await self.rpc("tip.status", {"invoice": state["invoice"]})
                if status["state"] == "SETTLED":
                    break
                if status["state"] != "UNPAID":
                    raise DemoFailed(f"tip ended {status['state']}")
                await trio.sleep(0.05)
            took = trio.current_time() - state["paid_at"]
            return f"tip.status says SETTLED {took * 1000:.0f} ms after the payment"

        async def dashboard() -> str:
            summary = await self.rpc(
                "dashboard.summary",
                {
                    "userId": "3",
                    "limit": 20,
                    "includeAdmin": False,
                    "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
                },
            )
            balances = summary["balances"]
            if balances["available"] != str(TIP_CKB):
                raise DemoFailed(f"unexpected balance {balances}")
            return f"creator 3 sees available {balances['available']} {balances['asset']}"

        async def withdraw() -> str:
            remote = await self.sim_call("sim_remote_invoice", {"amount": hex(61 * 10**8)})
            destination = {"kind": "PAYMENT_REQUEST", "paymentRequest": remote["invoice"]}
            params = {"userId": "3", "amount": "61", "asset": "CKB", "destination": destination}
            quote = await self.rpc("withdrawal.quote", params)
            if quote["destinationValid"] is not True:
                raise DemoFailed(f"quote refused: {quote['validationMessage']}")
            request = await self.rpc("withdrawal.request", params)
            state["withdrawal"] = request["id"]
            while True:
                row = await self.rt.ledger.read(_withdrawal_state, request["id"])
                if row == "COMPLETED":
                    break
                if row == "FAILED":
                    raise DemoFailed("withdrawal failed")
                await trio.sleep(0.05)
            paid = [
                p
                for p in self.sim.node.successful_payments()
                if p.payment_hash == remote["payment_hash"]
            ]
            if len(paid) != 1:
                raise DemoFailed(f"the node shows {len(paid)} successful payments for it")
            summary = await self.rpc(
                "dashboard.summary",
                {
                    "userId": "3",
                    "limit": 20,
                    "includeAdmin": False,
                    "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
                },
            )
            return (
                f"withdrawal {request['id'][:8]} COMPLETED, paid exactly once "
                f"(fee {paid[0].fee / 10**8:g} CKB); "
                f"balance now {summary['balances']['available']} CKB"
            )

        async def withdraw_onchain() -> str:
            await self.rpc_to(
                self.devchain.url,
                "sim_fund",
                {
                    "address": encode_address(self.hot_wallet, "devnet"),
                    "amount": HOT_WALLET_FUNDING_CKB * SHANNONS_PER_CKB,
                },
            )
            recipient = lock_for_key(secrets.token_bytes(31) + b"\x01")
            address = encode_address(recipient, "devnet")
            destination = {"kind": "CKB_ADDRESS", "address": address}
            params = {
                "userId": "3",
                "amount": str(ONCHAIN_WITHDRAWAL_CKB),
                "asset": "CKB",
                "destination": destination,
            }
            quote = await self.rpc("withdrawal.quote", params)
            if quote["destinationValid"] is not True or quote["validationMessage"] is not None:
                raise DemoFailed(f"quote refused: {quote['validationMessage']}")
            request = await self.rpc("withdrawal.request", params)
            if request["state"] != "PENDING":
                raise DemoFailed(f"on-chain withdrawal is {request['state']}")
            # Poll what the executor commits and broadcasts (the ledger, then the mempool).
            while (  # noqa: ASYNC110 - the state lives in SQLite and the simulator
                await self.rt.ledger.read(_withdrawal_tx, request["id"]) is None
                or not self.devchain.chain.mempool
            ):
                await trio.sleep(0.05)
            await self.rpc_to(self.devchain.url, "sim_mine", {"blocks": ONCHAIN_CONFIRMATIONS + 1})
            while True:
                row = await self.rt.ledger.read(_withdrawal_state, request["id"])
                if row == "COMPLETED":
                    break
                if row == "FAILED":
                    raise DemoFailed("on-chain withdrawal failed")
                await trio.sleep(0.05)
            outputs = self.devchain.chain.committed_outputs_to(recipient)
            if len(outputs) != 1:
                raise DemoFailed(f"the chain shows {len(outputs)} outputs to {address}")
            tx_hash = hex_bytes(outputs[0].out_point.tx_hash)
            return (
                f"{outputs[0].output.capacity / SHANNONS_PER_CKB:g} CKB to {address[:14]}… "
                f"in tx {tx_hash[:12]}…, {ONCHAIN_CONFIRMATIONS} confirmations, exactly one "
                "output to that address"
            )

        async def reconcile() -> str:
            from fiberlinkd.reconciler.actor import Reconciler

            report = await Reconciler(self.rt).run_once("demo")
            findings = [f for f in report.findings if f.severity != "INFO"]
            if findings:
                raise DemoFailed(f"reconciler found: {[f.message for f in findings]}")
            return "ledger, balances, hash chain and node agree"

        await self.step("create a tip invoice through signed /rpc", create_tip)
        await self.step("a simulated reader pays it", pay_tip)
        await self.step("the settlement poller credits the creator", settle)
        await self.step("the creator's dashboard shows the balance", dashboard)
        await self.step("withdraw 61 CKB to a remote Fiber invoice", withdraw)
        await self.step(
            f"withdraw {ONCHAIN_WITHDRAWAL_CKB} CKB on chain to a ckt1 address from the hot wallet",
            withdraw_onchain,
        )
        await self.step("the reconciler proves the books", reconcile)

    async def sim_call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.rpc_to(self.sim.url, method, params)

    async def rpc_to(self, url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A simulator control call (FNN simulator or CKB dev chain)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}
        response = await self.http.post(url, json=body)
        envelope: dict[str, Any] = response.json()
        if "error" in envelope:
            raise DemoFailed(f"simulator {method}: {envelope['error']}")
        result: dict[str, Any] = envelope["result"]
        return result


def _withdrawal_tx(conn: Any, withdrawal_id: str) -> str | None:
    row = conn.execute("SELECT tx_hash FROM withdrawals WHERE id = ?", (withdrawal_id,)).fetchone()
    return row["tx_hash"] if row else None


def _withdrawal_state(conn: Any, withdrawal_id: str) -> str | None:
    row = conn.execute("SELECT state FROM withdrawals WHERE id = ?", (withdrawal_id,)).fetchone()
    return row["state"] if row else None


def _demo_config(state_dir: Path, listen: str, fnn_url: str, ckb_url: str) -> Config:
    key_file = state_dir / "hot-wallet.key"
    key_file.touch(mode=0o600)
    key_file.write_text(secrets.token_bytes(31).hex() + "01\n")
    dep = DEVNET_SECP256K1_DEP_GROUP.out_point
    path = state_dir / "fiberlinkd.toml"
    path.write_text(
        f'state_dir = "{state_dir}"\nlog_level = "warning"\n'
        f'[api]\nlisten = "{listen}"\ngraceful_timeout_s = 2.0\n'
        f'[fnn]\nurl = "{fnn_url}"\n'
        f'[admin]\nsocket = "{state_dir / "admin.sock"}"\n'
        "[settlement]\nfirst_check_after_s = 1.0\n"
        f'[onchain]\nenabled = true\nckb_rpc_url = "{ckb_url}"\n'
        f'hot_wallet_key_file = "{key_file}"\nconfirmations = {ONCHAIN_CONFIRMATIONS}\n'
        f'poll_s = 0.1\nsecp256k1_dep_group = "{hex_bytes(dep.tx_hash)}:{dep.index}"\n'
    )
    return load_config(path, environ={})


async def run_demo(*, once: bool, listen: str, out: Callable[[str], None] = print) -> int:
    with tempfile.TemporaryDirectory(prefix="fiberlinkd-demo-") as tmp:
        state_dir = Path(tmp)
        out(f"fiberlinkd demo — state in {state_dir} (deleted on exit)")
        async with (
            open_simulator(network="Fibd", settle_delay_s=0.2) as sim,
            open_devchain("devnet", "127.0.0.1", 0) as devchain,
            httpx.AsyncClient(timeout=10) as http,
            trio.open_nursery() as nursery,
        ):
            out(f"  FNN simulator listening on {sim.url}")
            out(f"  CKB dev chain listening on {devchain.url}")
            config = _demo_config(state_dir, listen, sim.url, devchain.url)
            node = FnnClient(http, sim.url, call_timeout_s=5.0)
            stop = trio.Event()
            rt: Runtime = await nursery.start(
                lambda task_status: run_daemon(
                    config, node=node, stop=stop, task_status=task_status
                )
            )
            with trio.fail_after(10):
                while rt.node_state.currency is None:  # noqa: ASYNC110 - the watcher sets it
                    await trio.sleep(0.02)
            api_url = rt.api_urls[0]
            secret = secrets.token_hex(32)
            await rt.ledger.transact(insert_app, APP_ID, secret, rt.clock.now_ms())
            out(f"  daemon serving the plugin API on {api_url}/rpc; app {APP_ID!r} created")
            assert rt.onchain is not None
            story = Story(rt, sim, devchain, rt.onchain.wallet.lock, http, api_url, secret, out)
            try:
                await story.run()
            except (DemoFailed, trio.TooSlowError, httpx.HTTPError, ImportError) as exc:
                out(f"  FAILED after {story.ok_steps} steps: {type(exc).__name__}: {exc}")
                stop.set()
                return 1
            out(f"all {story.ok_steps} steps ok")
            if once:
                stop.set()
                return 0
            out("")
            out("Discourse plugin settings (Admin → Settings → fiber link):")
            out(f"  fiber_link_service_url = {api_url}   (no trailing slash)")
            out(f"  fiber_link_app_id      = {APP_ID}")
            out(f"  fiber_link_app_secret  = {secret}")
            out(f"Admin: fiberlinkd admin --socket {config.admin.socket} status")
            out("Serving until Ctrl-C.")
            await stop.wait()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("warning")

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        return trio.run(lambda: run_demo(once=args.once, listen=args.listen, out=out))
    except KeyboardInterrupt:
        return 0


def add_cli(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the whole flow on loopback against the built-in FNN simulator"
    )
    demo.add_argument("--once", action="store_true", help="run the story and exit (0 = all ok)")
    demo.add_argument("--listen", default="127.0.0.1:0", help="API address (default: a free port)")
    demo.set_defaults(handler=cmd_demo)
