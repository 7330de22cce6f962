"""Load benchmark for the plugin API.

Usage: ``python tests/bench/api_load.py [--seconds 10] [--seed-ledger N] [--clients K]``.

What it does, every server a separate process on 127.0.0.1:
1. starts bare quart-trio echo endpoints under hypercorn (this script with
   ``--echo-server``): the HTTP stack's ceiling, as a quart view and as an ASGI endpoint
   the way the daemon serves ``/rpc``;
2. starts the FNN simulator (``python -m fiberlinkd devnode``), creates a state directory
   (``fiberlinkd migrate``), inserts an app into ``apps`` and the benchmarked dashboard
   user's history (4,000 settled tips), and starts the daemon (``python -m fiberlinkd run``);
3. drives signed ``tip.status``, ``tip.create`` and ``dashboard.summary`` (and the echo
   endpoints) at concurrency 1, 8 and 32 for ``--seconds`` each with a minimal keep-alive
   HTTP/1.1 client under trio (httpx would cost the shared CPU as much as the server), and
   prints req/s, p50/p95/p99 latency, errors and the daemon's peak RSS (``VmHWM``);
4. with ``--seed-ledger N``: a second state directory filled with N settled tips, their
   ledger entries (hash-chained with ``entry_hash``), timeline events and balance rows,
   spread over many users (the dashboard's user gets a realistic history too); the same
   runs again on it, with a fresh simulator, printed side by side with the empty run and
   the ratio. Use ``--after-reconcile`` with it: the reconciler's first full run over a
   million entries takes about a minute of CPU.

Targets (reported, not asserted): tip.status >= 1000 req/s and tip.create >= 700 req/s at
concurrency 8, p99 <= 30 ms, peak RSS <= 120 MB, and with 1,000,000 entries every figure
within 10 % of the empty database. ``--clients K`` splits the load over K client
processes, to show whether one Python client is the bottleneck.

Traffic goes to loopback only; every loop is bounded by time, and every process this
script starts is stopped by it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fiberlinkd.ledger.entries import GENESIS_HASH, entry_hash  # noqa: E402
from fiberlinkd.ledger.store import db_path  # noqa: E402

APP_ID = "bench"
BENCH_USER = "4242"  # the dashboard's user
METHODS = ("tip.status", "tip.create", "dashboard.summary")
CONCURRENCY = (1, 8, 32)
STATUS_INVOICES = 64  # distinct invoices the tip.status load cycles through
SHANNONS = 10**8
EPOCH_MS = 1_700_000_000_000
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
RECONCILE_WAIT_S = 900.0
BASELINE_TIPS = 4_000  # all of them the dashboard user's: 2,000 received, 2,000 sent


# --- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sign(secret: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    nonce = secrets.token_hex(8)
    sig = hmac.new(secret.encode(), f"{ts}.{nonce}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "x-app-id": APP_ID,
        "x-ts": ts,
        "x-nonce": nonce,
        "x-signature": sig.hexdigest(),
    }


def body_for(method: str, params: dict[str, Any]) -> bytes:
    envelope = {"jsonrpc": "2.0", "id": secrets.token_hex(8), "method": method, "params": params}
    return json.dumps(envelope, separators=(",", ":")).encode()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


@contextlib.contextmanager
def process(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process, stopped (SIGTERM, then SIGKILL) when the block ends."""
    proc = subprocess.Popen(argv, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, *, post: bool = False, expect: int = 200) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                response = client.post(url, content=b"{}") if post else client.get(url)
                if response.status_code == expect:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not answer {expect} within {START_TIMEOUT_S} s")


# --- the echo server (a separate process) ---------------------------------------------------


def serve_echo(port: int) -> None:
    """Bare quart-trio echo endpoints under hypercorn: the HTTP stack's ceiling, two ways.

    ``/rpc`` is a quart view (the issue's "bare quart-trio endpoint"); ``/rpc-asgi`` is the
    same echo served the way the daemon serves ``/rpc``: an ASGI middleware installed with
    quart's ``app.asgi_app`` hook in front of the quart-trio app.
    """
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("echo")

    @app.post("/rpc")
    async def rpc() -> Response:
        body = await request.get_data()
        return Response(body, content_type="application/json")

    quart_app = app.asgi_app

    async def echo_asgi(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http" or scope["path"] != "/rpc-asgi":
            await quart_app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        body = b"".join(chunks)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    app.asgi_app = echo_asgi  # type: ignore[method-assign]
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75
    trio.run(serve, app, config)


# --- seeding ----------------------------------------------------------------------------------


def seed_ledger(db: Path, n: int) -> None:
    """N settled tips, their credits (hash-chained), timeline events and balance rows.

    Spread over ``max(100, n // 100)`` users; ``BENCH_USER`` receives and sends about
    2,000 of them each (``BASELINE_TIPS``), so the dashboard reads a realistic history.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    last = conn.execute("SELECT id, entry_hash FROM ledger_entries ORDER BY id DESC LIMIT 1")
    row = last.fetchone()
    entry_id, prev = (row[0], row[1]) if row else (0, GENESIS_HASH)
    users = max(100, n // 100)
    bench_every = max(2, n // (BASELINE_TIPS // 2))
    balances: dict[str, int] = {}
    chunk = 50_000
    started = time.monotonic()
    for base in range(0, n, chunk):
        tips: list[tuple[Any, ...]] = []
        events: list[tuple[str, int, str | None, str, str]] = []
        entries: list[tuple[Any, ...]] = []
        for i in range(base, min(n, base + chunk)):
            to_user = f"u{i % users}"
            from_user = f"u{(i * 7 + 1) % users}"
            if from_user == to_user:
                from_user = f"u{(i + 1) % users}"
            if i % bench_every == 0:
                to_user = BENCH_USER
            elif i % bench_every == 1:
                from_user = BENCH_USER
            tip_id = f"{i:032x}"
            created = EPOCH_MS + i * 100
            settled = created + 4_000
            amount = (i % 500 + 1) * SHANNONS // 10
            tips.append(
                (
                    tip_id,
                    APP_ID,
                    str(i % 50_000 + 1),
                    from_user,
                    to_user,
                    amount,
                    f"fibdseed{i:012d}",
                    f"0x{i:064x}",
                    created,
                    created + 3_600_000,
                    settled,
                )
            )
            events.append((tip_id, created, None, "UNPAID", "TIP_CREATE"))
            events.append((tip_id, settled, "UNPAID", "SETTLED", "SETTLEMENT_POLLER"))
            entry_id += 1
            key = f"settlement:tip_intent:{tip_id}"
            digest = entry_hash(
                prev_hash=prev,
                entry_id=entry_id,
                app_id=APP_ID,
                user_id=to_user,
                asset="CKB",
                amount=amount,
                reserved_delta=0,
                kind="TIP_CREDIT",
                ref=tip_id,
                idempotency_key=key,
                created_at=settled,
            )
            entries.append(
                (entry_id, APP_ID, to_user, "CKB", amount, tip_id, key, settled, prev, digest)
            )
            prev = digest
            balances[to_user] = balances.get(to_user, 0) + amount
        conn.executemany(
            "INSERT INTO tip_intents (id, app_id, post_id, from_user_id, to_user_id, asset,"
            " amount, invoice, payment_hash, state, message, created_at, expires_at, settled_at,"
            " next_check_at, check_count) VALUES (?, ?, ?, ?, ?, 'CKB', ?, ?, ?, 'SETTLED',"
            " 'thanks', ?, ?, ?, NULL, 1)",
            tips,
        )
        conn.executemany(
            "INSERT INTO tip_events (tip_id, at, from_state, to_state, source)"
            " VALUES (?, ?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO ledger_entries (id, app_id, user_id, asset, amount, reserved_delta,"
            " kind, ref, idempotency_key, created_at, prev_hash, entry_hash)"
            " VALUES (?, ?, ?, ?, ?, 0, 'TIP_CREDIT', ?, ?, ?, ?, ?)",
            entries,
        )
        print(f"  seeded {min(n, base + chunk):>9,} tips", end="\r", flush=True)
    conn.executemany(
        "INSERT INTO balances (app_id, user_id, asset, settled, reserved, updated_at)"
        " VALUES (?, ?, 'CKB', ?, 0, ?) ON CONFLICT (app_id, user_id, asset)"
        " DO UPDATE SET settled = settled + excluded.settled",
        [(APP_ID, user, total, EPOCH_MS) for user, total in balances.items()],
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    print(f"  seeded {n:,} settled tips and entries in {time.monotonic() - started:.1f} s")


# --- the load generator -------------------------------------------------------------------------


class Load:
    """Signed requests of one method from ``concurrency`` tasks for ``seconds``."""

    def __init__(self, url: str, secret: str, invoices: list[str]) -> None:
        self.url = url
        self.secret = secret
        self.invoices = invoices
        self.counter = 0

    def request(self, method: str) -> tuple[str, bytes, dict[str, str]]:
        self.counter += 1
        if method.startswith("echo"):
            body = body_for("health.ping", {"n": self.counter})
            return self.url, body, {"Content-Type": "application/json"}
        if method == "tip.status":
            params: dict[str, Any] = {"invoice": self.invoices[self.counter % len(self.invoices)]}
        elif method == "tip.create":
            n = self.counter
            params = {
                "amount": f"{n % 100 + 1}.5",
                "asset": "CKB",
                "postId": str(n % 10_000 + 1),
                "fromUserId": f"load{n % 50_000}",
                "toUserId": f"author{n % 997}",
                "message": "Great post <3",
            }
        else:
            params = {
                "userId": BENCH_USER,
                "limit": 20,
                "includeAdmin": False,
                "filters": {"withdrawalState": "ALL", "settlementState": "ALL"},
            }
        body = body_for(method, params)
        return self.url, body, sign(self.secret, body)

    async def run(self, method: str, concurrency: int, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        connections = [await HttpConnection.open(self.url) for _ in range(concurrency)]
        try:
            # Warm the connections outside the measured window.
            async with trio.open_nursery() as nursery:
                for conn in connections:
                    nursery.start_soon(self._one, conn, method, [], {})
            started = trio.current_time()
            cpu_started = time.process_time()
            deadline = started + seconds

            async def worker(conn: HttpConnection) -> None:
                while trio.current_time() < deadline:
                    await self._one(conn, method, latencies, errors)

            async with trio.open_nursery() as nursery:
                for conn in connections:
                    nursery.start_soon(worker, conn)
            elapsed = trio.current_time() - started
            client_cpu = time.process_time() - cpu_started
        finally:
            for conn in connections:
                await conn.aclose()
        ms = sorted(latencies)
        return {
            "method": method,
            "concurrency": concurrency,
            "requests": len(ms),
            "rps": len(ms) / elapsed,
            "p50": percentile(ms, 0.50),
            "p95": percentile(ms, 0.95),
            "p99": percentile(ms, 0.99),
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "client_cpu_s": client_cpu,
            "elapsed_s": elapsed,
        }

    async def _one(
        self,
        conn: HttpConnection,
        method: str,
        latencies: list[float],
        errors: dict[str, int],
    ) -> None:
        _, body, headers = self.request(method)
        t0 = time.perf_counter()
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                status, answer = await conn.post(body, headers)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ProtocolError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            await conn.reconnect()
            return
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            errors[f"http {status}"] = errors.get(f"http {status}", 0) + 1
            return
        if not method.startswith("echo"):
            error = json.loads(answer).get("error")
            if error is not None:
                key = f"{error['code']} {error['message'][:40]}"
                errors[key] = errors.get(key, 0) + 1


class ProtocolError(Exception):
    """The server's answer is not the HTTP/1.1 response this client understands."""


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client connection for the load generator.

    httpx costs about as much CPU per request as the endpoints being measured, and on a
    2-core machine the load generator competes with the server for the same cores. This
    client sends a ready-made request and reads a Content-Length answer, nothing more, so
    the figures describe the server. (httpx still makes the set-up calls above.)
    """

    def __init__(self, url: str, stream: trio.SocketStream) -> None:
        self.url = url
        self.stream = stream
        self.buffer = bytearray()
        parts = httpx.URL(url)
        self.head = f"POST {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.netloc.decode()}\r\n"

    @classmethod
    async def open(cls, url: str) -> HttpConnection:
        parts = httpx.URL(url)
        stream = await trio.open_tcp_stream(parts.host, parts.port or 80)
        return cls(url, stream)

    async def reconnect(self) -> None:
        await self.aclose()
        fresh = await HttpConnection.open(self.url)
        self.stream, self.buffer = fresh.stream, bytearray()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"{self.head}{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body
        await self.stream.send_all(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length = None
        close = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        if length is None:
            raise ProtocolError(f"answer without Content-Length: {head[0]!r}")
        while len(self.buffer) < length:
            await self._fill()
        answer = bytes(self.buffer[:length])
        del self.buffer[:length]
        if close:  # the server recycles connections (hypercorn: every 1,000 requests)
            await self.reconnect()
        return status, answer

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ProtocolError("connection closed by the server")
        self.buffer += chunk


def run_worker(spec_json: str) -> None:
    """``--worker``: one client process of a multi-process run; prints its raw results."""
    spec = json.loads(spec_json)
    load = Load(spec["url"], spec["secret"], spec["invoices"])
    load.counter = spec["offset"]
    result = trio.run(load.run, spec["method"], spec["concurrency"], spec["seconds"])
    print(json.dumps(result))


def drive(
    server_pid: int,
    url: str,
    secret: str,
    invoices: list[str],
    method: str,
    concurrency: int,
    seconds: float,
    clients: int,
) -> dict[str, Any]:
    cpu_before = cpu_s(server_pid)
    result = _drive(url, secret, invoices, method, concurrency, seconds, clients)
    server_cpu = cpu_s(server_pid) - cpu_before
    done = max(1, result["requests"])
    result["server_cpu_ms"] = server_cpu * 1000 / done
    result["server_cpu_util"] = server_cpu / result["elapsed_s"]
    result["client_cpu_ms"] = result["client_cpu_s"] * 1000 / done
    return result


def _drive(
    url: str,
    secret: str,
    invoices: list[str],
    method: str,
    concurrency: int,
    seconds: float,
    clients: int,
) -> dict[str, Any]:
    if clients <= 1 or concurrency < clients:
        return trio.run(Load(url, secret, invoices).run, method, concurrency, seconds)
    procs = []
    for k in range(clients):
        spec = {
            "url": url,
            "secret": secret,
            "invoices": invoices,
            "method": method,
            "concurrency": concurrency // clients + (1 if k < concurrency % clients else 0),
            "seconds": seconds,
            "offset": k * 10_000_000,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    parts = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in procs]
    # Percentiles of the union are not derivable from parts: report the worst part's.
    return {
        "method": method,
        "concurrency": concurrency,
        "requests": sum(p["requests"] for p in parts),
        "rps": sum(p["rps"] for p in parts),
        "p50": max(p["p50"] for p in parts),
        "p95": max(p["p95"] for p in parts),
        "p99": max(p["p99"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "error_kinds": {k: v for p in parts for k, v in p["error_kinds"].items()},
        "client_cpu_s": sum(p["client_cpu_s"] for p in parts),
        "elapsed_s": max(p["elapsed_s"] for p in parts),
    }


# --- one database state -------------------------------------------------------------------------


@contextlib.contextmanager
def simulator() -> Iterator[tuple[str, int]]:
    """A fresh FNN simulator process: ``(url, pid)``."""
    devnode = [sys.executable, "-m", "fiberlinkd", "devnode", "--listen", "127.0.0.1:0"]
    with process([*devnode, "--network", "Fibd"], cwd=ROOT, stdout=subprocess.PIPE) as sim:
        assert sim.stdout is not None
        line = sim.stdout.readline().strip()
        if not line.startswith("devnode listening on "):
            raise SystemExit(f"bench: unexpected devnode output: {line!r}")
        url = line.removeprefix("devnode listening on ")
        print(f"bench: FNN simulator at {url} (pid {sim.pid})")
        yield url, sim.pid


def write_config(workdir: Path, state: Path, api_port: int, fnn_url: str) -> Path:
    config = workdir / f"{state.name}.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        'log_level = "warning"\n'
        "[api]\n"
        f'listen = "127.0.0.1:{api_port}"\n'
        "graceful_timeout_s = 2.0\n"
        "[api.rate_limits]\n"
        # The bench is one app hammering three methods: lift the limits out of the way.
        "per_app_method_per_minute = 100000000\n"
        "tip_create_per_user_per_minute = 100000\n"
        "[fnn]\n"
        f'url = "{fnn_url}"\n'
        "[admin]\n"
        f'socket = "{workdir / (state.name + "-admin.sock")}"\n'
    )
    return config


def prepare_state(workdir: Path, name: str, fnn_url: str, seed: int) -> tuple[Path, str, int]:
    state = workdir / name
    port = free_port()
    config = write_config(workdir, state, port, fnn_url)
    subprocess.run(
        [sys.executable, "-m", "fiberlinkd", "migrate", "--config", str(config)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    secret = secrets.token_hex(32)
    db = db_path(state)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(
            "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
            (APP_ID, secret, int(time.time() * 1000)),
        )
    if seed:
        seed_ledger(db, seed)
    return config, secret, port


def bench_state(
    label: str, config: Path, secret: str, port: int, args: argparse.Namespace, sim_pid: int
) -> tuple[list[dict[str, Any]], float]:
    url = f"http://127.0.0.1:{port}/rpc"
    stderr = open(config.with_suffix(".log"), "w")  # noqa: SIM115 - closed below
    with (
        stderr,
        process(
            [sys.executable, "-m", "fiberlinkd", "run", "--config", str(config)],
            cwd=ROOT,
            stderr=stderr,
        ) as daemon,
    ):
        wait_http(f"http://127.0.0.1:{port}/healthz/ready")
        print(
            f"[{label}] daemon pid {daemon.pid} ready;"
            f" RSS after start {peak_rss_mb(daemon.pid):.0f} MB"
        )
        if args.after_reconcile:
            wait_reconciled(db_path(Path(load_state_dir(config))), label)
        invoices = trio.run(_make_invoices, url, secret)
        results = []
        for method in args.methods:
            for concurrency in args.concurrency:
                sim_before = cpu_s(sim_pid)
                result = drive(
                    daemon.pid,
                    url,
                    secret,
                    invoices,
                    method,
                    concurrency,
                    args.seconds,
                    args.clients,
                )
                sim_cpu = cpu_s(sim_pid) - sim_before
                result["sim_cpu_ms"] = sim_cpu * 1000 / max(1, result["requests"])
                results.append(result)
                print_row(label, result)
        peak = peak_rss_mb(daemon.pid)
        print(f"[{label}] daemon peak RSS (VmHWM): {peak:.1f} MB")
    return results, peak


def load_state_dir(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("state_dir = "):
            return line.split('"')[1]
    raise SystemExit(f"bench: no state_dir in {config}")


def wait_reconciled(db: Path, label: str) -> None:
    """Wait for the reconciler's first full run (10 s after start) to finish, and report it."""
    started = time.monotonic()
    deadline = started + RECONCILE_WAIT_S
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT status, finished_at - started_at, summary FROM reconcile_runs"
                " WHERE status != 'RUNNING' ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if row is not None:
                print(
                    f"[{label}] reconciler's first run: {row[0]} in {row[1] / 1000:.1f} s"
                    f" ({(row[2] or '')[:300]})"
                )
                return
            time.sleep(0.5)
    print(f"[{label}] reconciler still running after {RECONCILE_WAIT_S:.0f} s; measuring anyway")


async def _make_invoices(url: str, secret: str) -> list[str]:
    load = Load(url, secret, ["-"])
    invoices = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(STATUS_INVOICES):
            _, body, headers = load.request("tip.create")
            response = await client.post(url, content=body, headers=headers)
            invoices.append(response.json()["result"]["invoice"])
    return invoices


def print_row(label: str, r: dict[str, Any]) -> None:
    kinds = ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items())
    print(
        f"  {label:<8} {r['method']:<18} c={r['concurrency']:<3} {r['rps']:>8.0f} req/s"
        f"  p50 {r['p50']:6.2f}  p95 {r['p95']:6.2f}  p99 {r['p99']:6.2f} ms"
        f"  errors {r['errors']}  server CPU {r['server_cpu_ms']:.2f} ms/req"
        f" ({r['server_cpu_util']:.0%} of a core), client CPU {r['client_cpu_ms']:.2f} ms/req"
        + (f", FNN simulator CPU {r['sim_cpu_ms']:.2f} ms/req" if "sim_cpu_ms" in r else "")
        + (f" ({kinds})" if kinds else ""),
        flush=True,
    )


def summary(
    echo: dict[str, list[dict[str, Any]]],
    empty: list[dict[str, Any]],
    seeded: list[dict[str, Any]] | None,
    peaks: tuple[float, float | None],
    seed_n: int,
) -> None:
    ceiling = {r["concurrency"]: r["rps"] for r in echo["echo"]}
    asgi_ceiling = {r["concurrency"]: r["rps"] for r in echo["echo-asgi"]}

    def cells(r: dict[str, Any]) -> str:
        return (
            f"{r['rps']:>7.0f} {r['p50']:>6.2f} {r['p95']:>6.2f} {r['p99']:>6.2f}"
            f" {r['errors']:>4} {r['server_cpu_ms']:>6.2f}"
        )

    def ratios(r: dict[str, Any]) -> str:
        c, nan = r["concurrency"], float("nan")
        view, asgi = r["rps"] / ceiling.get(c, nan), r["rps"] / asgi_ceiling.get(c, nan)
        return f" {view:>6.2f} {asgi:>6.2f}"

    print()
    cols = f"{'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6} {'err':>4} {'cpu/rq':>6}"
    head = f"{'method':<20} {'conc':>4} | {cols} {'/echo':>6} {'/asgi':>6}"
    if seeded is not None:
        head += f" | {cols.replace('  req/s', ' seeded')} | {'rps ratio':>9} {'p99 ratio':>9}"
    print("latency in ms; cpu/rq = server CPU ms per request (all threads)")
    print("/echo: share of a quart view's echo; /asgi: of the same echo served as /rpc is")
    print(head)
    print("-" * len(head))
    for label, kind in (("echo (quart view)", "echo"), ("echo (ASGI, as /rpc)", "echo-asgi")):
        for r in echo[kind]:
            print(f"{label:<20} {r['concurrency']:>4} | {cells(r)}{ratios(r)}")
    for i, r in enumerate(empty):
        line = f"{r['method']:<20} {r['concurrency']:>4} | {cells(r)}{ratios(r)}"
        if seeded is not None:
            s = seeded[i]
            line += f" | {cells(s)} | {s['rps'] / r['rps']:>9.2f} {s['p99'] / r['p99']:>9.2f}"
        print(line)
    print("-" * len(head))
    peak_line = f"daemon peak RSS: baseline {peaks[0]:.1f} MB"
    if peaks[1] is not None:
        peak_line += f", seeded with {seed_n:,} entries {peaks[1]:.1f} MB"
    print(peak_line)
    targets = {r["method"]: r for r in empty if r["concurrency"] == 8}
    checks = []
    if "tip.status" in targets:
        checks.append(("tip.status >= 1000 req/s at c=8", targets["tip.status"]["rps"] >= 1000))
    if "tip.create" in targets:
        checks.append(("tip.create >= 700 req/s at c=8", targets["tip.create"]["rps"] >= 700))
    checks.append(("p99 <= 30 ms at c=8", all(r["p99"] <= 30 for r in targets.values())))
    checks.append(("peak RSS <= 120 MB", max(p for p in peaks if p is not None) <= 120))
    if seeded is not None:
        within = all(s["rps"] >= 0.9 * r["rps"] for r, s in zip(empty, seeded, strict=True))
        checks.append((f"req/s with {seed_n:,} entries within 10 % of empty", within))
    for name, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per method and concurrency")
    parser.add_argument("--seed-ledger", type=int, default=0, metavar="N")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument(
        "--after-reconcile",
        action="store_true",
        help="start measuring only after the reconciler's first full run (10 s after start),"
        " which otherwise competes with the API for the CPU",
    )
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=list(CONCURRENCY)
    )
    parser.add_argument(
        "--methods", type=lambda s: s.split(","), default=list(METHODS), help="comma-separated"
    )
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        serve_echo(args.echo_server)
        return 0
    if args.worker:
        run_worker(args.worker)
        return 0

    print(
        f"bench: {os.cpu_count()} CPUs, {args.seconds:g} s per run,"
        f" {args.clients} client process(es)"
    )
    with tempfile.TemporaryDirectory(prefix="fiberlinkd-bench-") as tmp:
        workdir = Path(tmp)
        echo_port = free_port()
        with process(
            [sys.executable, __file__, "--echo-server", str(echo_port)], cwd=ROOT
        ) as echo_server:
            echo_url = f"http://127.0.0.1:{echo_port}/rpc"
            wait_http(echo_url, post=True)
            echo: dict[str, list[dict[str, Any]]] = {"echo": [], "echo-asgi": []}
            for kind, path in (("echo", "/rpc"), ("echo-asgi", "/rpc-asgi")):
                for concurrency in args.concurrency:
                    result = drive(
                        echo_server.pid,
                        f"http://127.0.0.1:{echo_port}{path}",
                        "",
                        ["-"],
                        kind,
                        concurrency,
                        args.seconds,
                        args.clients,
                    )
                    echo[kind].append(result)
                    print_row("echo", result)

        # The baseline holds only the benchmarked user's own history, so the seeded run
        # differs by the size of everyone else's history alone. Each database state gets
        # its own fresh simulator: the second run must not inherit the first one's node.
        with simulator() as (fnn_url, sim_pid):
            config, secret, port = prepare_state(workdir, "empty", fnn_url, BASELINE_TIPS)
            empty, empty_peak = bench_state("empty", config, secret, port, args, sim_pid)
        seeded = None
        seeded_peak = None
        if args.seed_ledger:
            with simulator() as (fnn_url, sim_pid):
                print(f"bench: seeding {args.seed_ledger:,} settled tips ...")
                config, secret, port = prepare_state(workdir, "seeded", fnn_url, args.seed_ledger)
                seeded, seeded_peak = bench_state("seeded", config, secret, port, args, sim_pid)
        summary(echo, empty, seeded, (empty_peak, seeded_peak), args.seed_ledger)
    return 0


if __name__ == "__main__":
    random.seed(0)
    raise SystemExit(main())
