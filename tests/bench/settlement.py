"""Settlement benchmark: how fast paid tips are detected, and how hard the node is polled.

Run from the repository root (takes ~10 minutes: two phases of ~5 minutes)::

    python -m tests.bench.settlement            # defaults, then max_checks_per_s = 200
    python -m tests.bench.settlement --rates 50 --pay-s 60 --wait-s 60   # a quicker look

Three separate processes per phase, all on 127.0.0.1:

- the FNN simulator (this file with ``--role sim``), which also counts every ``get_invoice``
  it answers and every ``list_channels`` (the poller's arrival signal) (wall-clock timestamps,
  read back with the ``bench_get_invoice_times`` control method), so the call rates are
  measured where the node sees them; its one channel gets enough inbound capacity for every
  payment (``sim_set_liquidity``);
- the daemon, ``python -m fiberlinkd run`` with a config that sets only
  ``[settlement] max_checks_per_s`` (everything else default; the reconciler's interval is
  pushed out so that its own get_invoice calls do not blur the poller's rate);
- this driver: it opens 10,000 unpaid tips (invoices made on the simulator in JSON-RPC
  batches, rows written with ``insert_tip`` before the daemon starts, schedules spread as in
  a steady state: created over the last 50 min, next check within the next 60 s, backoff
  already at its cap), keeps 100 tips watched (a signed ``tip.status`` per second each, as
  the plugin's modal does; a settled one is replaced by another), pays 500 random tips over
  ``--pay-s`` seconds through ``sim_pay_invoice`` (about 30 % of them watched at the time),
  then waits up to ``--wait-s`` for the credits.

Detection latency = the tip's ``settled_at`` (daemon's clock) minus the moment just before
``sim_pay_invoice`` was sent (same machine clock). Payments not credited by the end are
counted as undetected and sort above every measured latency (percentiles then read ">").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

TIPS = 10_000
WATCHED = 100
PAYMENTS = 500
WATCHED_PAYMENT_SHARE = 0.3
INVOICE_EXPIRY_S = 7_200
BATCH = 200
APP_ID = "forum"
REPO = Path(__file__).resolve().parents[2]


# --- the simulator process --------------------------------------------------------------


async def serve_sim() -> None:
    from fiberlinkd.fnn.simulator import open_simulator

    async with open_simulator(network="Fibd", host="127.0.0.1", port=0) as sim:
        stamps: list[tuple[float, str]] = []
        channel_polls: list[float] = []
        answer = sim.node.call

        def counting_call(method: str, params: Any) -> Any:
            if method == "bench_get_invoice_times":
                return {"times": stamps, "list_channels": channel_polls}
            if method == "get_invoice":
                stamps.append((time.time(), params[0]["payment_hash"]))
            elif method == "list_channels":
                channel_polls.append(time.time())
            return answer(method, params)

        sim.node.call = counting_call  # type: ignore[method-assign]
        print(f"SIM {sim.url}", flush=True)
        await trio.sleep_forever()


# --- the driver ---------------------------------------------------------------------------


@attrs.define
class BenchTip:
    id: str
    invoice: str
    payment_hash: str
    amount: int
    watched: bool = False
    paid_ms: int | None = None
    paid_watched: bool = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def rpc(http: httpx.AsyncClient, url: str, method: str, params: Any) -> Any:
    reply = (
        await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    ).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def make_invoices(http: httpx.AsyncClient, url: str, rng: random.Random) -> list[BenchTip]:
    tips: list[BenchTip] = []
    for start in range(0, TIPS, BATCH):
        batch = []
        for i in range(start, min(TIPS, start + BATCH)):
            amount = rng.randint(1, 500) * 1_000_000
            batch.append(
                {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "new_invoice",
                    "params": [
                        {
                            "amount": hex(amount),
                            "currency": "Fibd",
                            "expiry": hex(INVOICE_EXPIRY_S),
                            "description": f"Tip for post {i}",
                        }
                    ],
                }
            )
        replies = (await http.post(url, json=batch, timeout=60)).json()
        for request, reply in zip(batch, replies, strict=True):
            result = reply["result"]
            tips.append(
                BenchTip(
                    id=uuid.uuid4().hex,
                    invoice=result["invoice_address"],
                    payment_hash=result["invoice"]["data"]["payment_hash"],
                    amount=int(request["params"][0]["amount"], 16),
                )
            )
    return tips


async def write_tips(
    state_dir: Path, secret: str, tips: list[BenchTip], rng: random.Random
) -> None:
    from fiberlinkd.ledger import tips as tipsql
    from fiberlinkd.ledger.auth import insert_app
    from fiberlinkd.ledger.store import open_ledger

    now = time.time_ns() // 1_000_000

    def insert_all(conn: sqlite3.Connection) -> None:
        insert_app(conn, APP_ID, secret, now)
        for t in tips:
            tipsql.insert_tip(
                conn,
                tipsql.Tip(
                    id=t.id,
                    app_id=APP_ID,
                    post_id="1",
                    from_user_id="45",
                    to_user_id=str(rng.randint(1, 500)),
                    asset="CKB",
                    amount=t.amount,
                    invoice=t.invoice,
                    payment_hash=t.payment_hash,
                    state=tipsql.UNPAID,
                    message=None,
                    created_at=now - rng.randint(0, 3_000_000),
                    expires_at=now + INVOICE_EXPIRY_S * 1000,
                    settled_at=None,
                    next_check_at=now + rng.randint(0, 60_000),
                    check_count=0,
                    last_error=None,
                    failure_reason=None,
                ),
            )
        # Steady state: these tips have been checked for a while, backoff at its cap. (A
        # bench-only shortcut; the daemon never writes check_count outside a check.)
        conn.execute("UPDATE tip_intents SET check_count = 6")

    async with open_ledger(state_dir) as ledger:
        await ledger.transact(insert_all)


def write_config(root: Path, sim_url: str, api_port: int, rate: float) -> Path:
    path = root / "fiberlinkd.toml"
    path.write_text(
        f'state_dir = "{root / "state"}"\nlog_level = "warning"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
        f'[fnn]\nurl = "{sim_url}"\n'
        f'[admin]\nsocket = "{root / "admin.sock"}"\n'
        f"[settlement]\nmax_checks_per_s = {rate}\n"
        "[reconciler]\ninterval_s = 100000.0\n"
    )
    return path


def settled_at(db: Path, ids: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id, settled_at FROM tip_intents WHERE state = 'SETTLED' "
                f"AND id IN ({marks})",
                chunk,
            )
            found.update(dict(rows.fetchall()))
        return found
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    """Nearest rank; ``inf`` stands for an undetected payment."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def fmt(value: float) -> str:
    return "undetected" if math.isinf(value) else f"{value:6.2f} s"


def max_in_window(times: list[float]) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] + 1.0 <= at:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run_phase(
    rate: float, pay_s: float, wait_s: float, seed: int, *, keep: bool = False
) -> dict[str, Any]:
    from tests.plugin_client import PluginClient

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="fiberlinkd-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sim = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.bench.settlement", "--role", "sim"],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    daemon = None
    try:
        assert sim.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await sim.stdout.receive_some(1)
        sim_url = line.decode().split()[1]
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            # Enough inbound capacity in the simulator's one channel for every payment.
            await rpc(
                http,
                sim_url,
                "sim_set_liquidity",
                [{"outbound": hex(10**12), "inbound": hex(10**15)}],
            )
            tips = await make_invoices(http, sim_url, rng)
            secret = secrets.token_hex(32)
            await write_tips(root / "state", secret, tips, rng)
            print(
                f"  {len(tips)} unpaid tips ready in {time.monotonic() - started:.0f} s", flush=True
            )
            api_port = free_port()
            config = write_config(root, sim_url, api_port, rate)
            log = (root / "daemon.log").open("wb")
            daemon = await trio.lowlevel.open_process(
                [sys.executable, "-m", "fiberlinkd", "run", "--config", str(config)],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env=env,
            )
            plugin = PluginClient(http, f"http://127.0.0.1:{api_port}", APP_ID, secret)
            with trio.fail_after(30):
                while True:
                    try:
                        await plugin.call("tip.status", {"invoice": tips[0].invoice})
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
            bench_start = time.time()
            unwatched = {t.id: t for t in tips}
            watching: dict[str, tuple[BenchTip, float]] = {}

            async def modal_slot() -> None:
                while True:
                    tip = unwatched.pop(rng.choice(list(unwatched)))
                    tip.watched = True
                    watching[tip.id] = (tip, time.monotonic())
                    while True:
                        result = await plugin.result("tip.status", {"invoice": tip.invoice})
                        if result["state"] != "UNPAID":
                            break
                        await trio.sleep(1.0)
                    del watching[tip.id]

            async def pay(tip: BenchTip, watched: bool) -> None:
                tip.paid_ms = time.time_ns() // 1_000_000
                tip.paid_watched = watched
                await rpc(http, sim_url, "sim_pay_invoice", [{"invoice": tip.invoice}])

            paid: list[BenchTip] = []
            async with trio.open_nursery() as nursery:
                for _ in range(WATCHED):
                    nursery.start_soon(modal_slot)
                await trio.sleep(3.0)
                for _ in range(PAYMENTS):
                    await trio.sleep(pay_s / PAYMENTS)
                    ready = [
                        t
                        for t, since in watching.values()
                        if time.monotonic() - since >= 2.0 and t.paid_ms is None
                    ]
                    if ready and rng.random() < WATCHED_PAYMENT_SHARE:
                        tip = rng.choice(ready)
                        await pay(tip, True)
                    else:
                        tip = unwatched.pop(rng.choice(list(unwatched)))
                        await pay(tip, False)
                    paid.append(tip)
                deadline = time.monotonic() + wait_s
                db = root / "state" / "fiberlinkd.sqlite3"
                while time.monotonic() < deadline:
                    found = await trio.to_thread.run_sync(settled_at, db, [t.id for t in paid])
                    if len(found) == len(paid):
                        break
                    await trio.sleep(2.0)
                nursery.cancel_scope.cancel()
            found = await trio.to_thread.run_sync(settled_at, db, [t.id for t in paid])
            counted = await rpc(http, sim_url, "bench_get_invoice_times", [{}])
            stamps = counted["times"]
            channel_polls = [at for at in counted["list_channels"] if at >= bench_start]
    finally:
        for proc in (daemon, sim):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                with trio.move_on_after(15):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    # The reconciler checks SETTLED tips (its own budget): a call for a hash after that tip
    # was credited is the reconciler's (or a poller check already in flight), not a poll.
    settled_by_hash = {t.payment_hash: found[t.id] / 1000 for t in paid if t.id in found}
    in_run = [(at, h) for at, h in stamps if at >= bench_start]
    polls = [at for at, h in in_run if at <= settled_by_hash.get(h, math.inf) + 0.05]
    elapsed = time.time() - bench_start
    result: dict[str, Any] = {
        "rate": rate,
        "get_invoice_max_per_1s": max_in_window([at for at, _ in in_run]),
        "get_invoice_mean_per_s": len(in_run) / elapsed,
        "poller_max_per_1s": max_in_window(polls),
        "poller_mean_per_s": len(polls) / elapsed,
        "list_channels_max_per_1s": max_in_window(channel_polls),
        "list_channels_mean_per_s": len(channel_polls) / elapsed,
    }
    for label, group in (
        ("watched", [t for t in paid if t.paid_watched]),
        ("unwatched", [t for t in paid if not t.paid_watched]),
    ):
        latencies = [
            (found[t.id] - (t.paid_ms or 0)) / 1000 if t.id in found else math.inf for t in group
        ]
        result[label] = {
            "n": len(group),
            "undetected": sum(1 for v in latencies if math.isinf(v)),
            "p50": percentile(latencies, 0.5) if latencies else math.nan,
            "p95": percentile(latencies, 0.95) if latencies else math.nan,
            "max": max(latencies) if latencies else math.nan,
            "detected_p95": percentile(seen, 0.95)
            if (seen := [v for v in latencies if not math.isinf(v)])
            else math.nan,
        }
    return result


def report(result: dict[str, Any]) -> None:
    print(f"max_checks_per_s = {result['rate']:g}")
    for label in ("watched", "unwatched"):
        r = result[label]
        print(
            f"  {label:9}  n={r['n']:3}  p50 {fmt(r['p50'])}  p95 {fmt(r['p95'])}  "
            f"max {fmt(r['max'])}  undetected {r['undetected']} "
            f"(p95 of the detected: {fmt(r['detected_p95'])})"
        )
    print(
        f"  FNN get_invoice at the node: max {result['get_invoice_max_per_1s']} in any 1-s "
        f"window, mean {result['get_invoice_mean_per_s']:.1f}/s (all callers); poller only: "
        f"max {result['poller_max_per_1s']}, mean {result['poller_mean_per_s']:.1f}/s "
        f"(limit {result['rate']:g})"
    )
    print(
        f"  FNN list_channels: max {result['list_channels_max_per_1s']} in any 1-s window, "
        f"mean {result['list_channels_mean_per_s']:.1f}/s"
    )
    print(flush=True)


async def main_async(args: argparse.Namespace) -> None:
    results = []
    for n, rate in enumerate(args.rates):
        print(f"phase {n + 1}: max_checks_per_s = {rate:g}", flush=True)
        result = await run_phase(rate, args.pay_s, args.wait_s, seed=args.seed + n, keep=args.keep)
        report(result)
        results.append(result)
    if args.json:
        print(json.dumps(results, default=str, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("driver", "sim"), default="driver")
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--pay-s", type=float, default=100.0, help="pay 500 tips over this")
    parser.add_argument("--wait-s", type=float, default=120.0, help="then wait this long")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep each phase's temp dir")
    args = parser.parse_args()
    if args.role == "sim":
        trio.run(serve_sim)
    else:
        trio.run(main_async, args)


if __name__ == "__main__":
    main()
