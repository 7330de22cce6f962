"""Run the real FNN 0.8.1 (fiber-js, WebAssembly) in headless Chromium as a JSON-RPC peer.

Two loopback HTTP servers (both ``127.0.0.1``, port 0, threads, stdlib only):

* the **page server** serves the unpacked npm package under ``/pkg/`` and ``page/`` under
  ``/__page/``, every response with ``Cross-Origin-Opener-Policy: same-origin`` and
  ``Cross-Origin-Embedder-Policy: require-corp`` (SharedArrayBuffer needs both), and the
  bridge endpoints the page talks to (``/__bridge/{config,started,next,result,log}``, see
  ``page/loader.js``): the page long-polls for commands and posts the answers back;
* the **RPC server** accepts FNN JSON-RPC over HTTP ``POST /`` and answers like FNN's HTTP
  server: every call goes through the page to ``invokeCommand`` and the answer through
  :func:`translate.translate`.

Chromium is Debian's, started with the flags from issue 4 (loopback only, fresh profile) and
stopped by its own process group at teardown. The node starts on the bundled ``testnet``
chain (currency ``Fibt``) with no bootnodes and ``ckb.rpc_url`` on a loopback port that is
bound but never listened on, so any chain call is refused at once. ``start()`` never settles
when startup fails, so both the page and :meth:`RealNode.start` bound it.

Only the HTTP behaviour the tests need is modelled: POST only (405 otherwise), JSON
content-type (415 otherwise), single or batch requests, ``params`` as a positional array.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .translate import (
    INVALID_REQUEST,
    MESSAGES,
    PARSE_ERROR,
    UNAUTHORIZED,
    Outcome,
    RpcError,
    envelope,
    translate,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / ".cache" / "fiber-js" / "package"
PAGE_DIR = Path(__file__).resolve().parent / "page"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "run .ci/install-wasm-node"

START_TIMEOUT_S = 45.0
CALL_TIMEOUT_S = 30.0
POLL_WAIT_S = 10.0

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--enable-logging=stderr",
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".map": "application/json",
}


def missing_prerequisite() -> str | None:
    """One line saying why the wasm tier cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"wasm tier: chromium not installed; {INSTALL_HINT}"
    if not (PACKAGE_DIR / "dist" / "index.js").is_file():
        return f"wasm tier: @nervosnetwork/fiber-js@0.8.1 not unpacked; {INSTALL_HINT}"
    return None


class RealNodeError(RuntimeError):
    """The real node did not start, or a call through the page did not complete."""


def node_config(ckb_rpc_port: int) -> str:
    """The FNN YAML config: testnet (bundled spec), loopback only, unreachable CKB RPC."""
    return f"""\
fiber:
  listening_addr: "/ip4/127.0.0.1/tcp/0"
  bootnode_addrs: []
  announce_listening_addr: false
  announced_addrs: []
  chain: testnet
rpc:
  listening_addr: "127.0.0.1:0"
ckb:
  rpc_url: "http://127.0.0.1:{ckb_rpc_port}/"
services:
  - fiber
  - rpc
  - ckb
"""


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] | None = None


class Bridge:
    """Thread-safe mailbox between the RPC server threads and the page's long poll."""

    def __init__(self, config: str, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending: dict[int, _Pending] = {}
        self.lock = threading.Lock()
        self.call_lock = threading.Lock()
        self.next_id = 0
        self.started = threading.Event()
        self.start_answer: dict[str, Any] = {}
        self.closed = False
        self.page_log: list[str] = []

    def invoke(self, method: str, params: list[Any], timeout: float = CALL_TIMEOUT_S) -> Outcome:
        """Run ``invokeCommand(method, params)`` in the page; one call at a time."""
        with self.call_lock:
            with self.lock:
                self.next_id += 1
                cid = self.next_id
                slot = self.pending[cid] = _Pending()
            self.commands.put({"id": cid, "method": method, "params": params})
            if not slot.done.wait(timeout):
                raise RealNodeError(f"{method}: no answer from the page within {timeout} s")
            with self.lock:
                del self.pending[cid]
            answer = slot.answer or {}
            if answer.get("ok"):
                return Outcome.resolved(answer.get("data"))
            return Outcome.rejected(str(answer.get("error")))

    def deliver(self, answer: dict[str, Any]) -> None:
        with self.lock:
            slot = self.pending.get(int(answer.get("id", -1)))
        if slot is not None:
            slot.answer = answer
            slot.done.set()


def _make_page_handler(bridge: Bridge) -> type[BaseHTTPRequestHandler]:
    roots = {"/pkg/": PACKAGE_DIR, "/__page/": PAGE_DIR}

    class PageHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any) -> None:
            self._send(200, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/__bridge/config":
                self._json(
                    {
                        "config": bridge.config,
                        "prefix": bridge.prefix,
                        "start_timeout_ms": int(START_TIMEOUT_S * 1000),
                    }
                )
                return
            if path == "/__bridge/next":
                if bridge.closed:
                    self._send(410)
                    return
                try:
                    cmd = bridge.commands.get(timeout=POLL_WAIT_S)
                except queue.Empty:
                    self._send(204)
                    return
                self._json(cmd)
                return
            for prefix, root in roots.items():
                if path.startswith(prefix):
                    target = (root / path[len(prefix) :]).resolve()
                    if target.is_relative_to(root.resolve()) and target.is_file():
                        ctype = _CONTENT_TYPES.get(target.suffix, "application/octet-stream")
                        self._send(200, target.read_bytes(), ctype)
                        return
            self._send(404, b"not found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            if self.path == "/__bridge/started":
                bridge.start_answer = body
                bridge.started.set()
            elif self.path == "/__bridge/result":
                bridge.deliver(body)
            elif self.path == "/__bridge/log":
                bridge.page_log.append(str(body.get("line")))
            else:
                self._send(404, b"not found")
                return
            self._send(204)

    return PageHandler


def answer_request(bridge: Bridge, request: Any) -> dict[str, Any]:
    """Answer one JSON-RPC request object the way FNN's HTTP server does."""
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
        return envelope(None, error=RpcError(INVALID_REQUEST, MESSAGES[INVALID_REQUEST]))
    method = request.get("method")
    if not isinstance(method, str):
        return envelope(
            request.get("id"), error=RpcError(INVALID_REQUEST, MESSAGES[INVALID_REQUEST])
        )
    if "id" not in request:
        # FNN's auth middleware demands a token for notifications even with auth disabled.
        return envelope(None, error=RpcError(UNAUTHORIZED, MESSAGES[UNAUTHORIZED]))
    params = request.get("params", [])
    if not isinstance(params, list):
        raise RealNodeError("the wasm bridge supports positional (array) params only")
    outcome = bridge.invoke(method, params)
    translation = translate(request["id"], params, outcome)
    if translation.wasm_artefact:
        raise RealNodeError(f"{method}: wrapper failure, not an FNN answer: {outcome.error}")
    return translation.envelope


def _make_rpc_handler(bridge: Bridge) -> type[BaseHTTPRequestHandler]:
    class RpcHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED, b"Used HTTP Method is not allowed.", "text/plain"
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in ("application/json", "application/json-rpc"):
                self._send(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    b"Supplied content type is not allowed. "
                    b"Content-Type: application/json is required",
                    "text/plain",
                )
                return
            try:
                request = json.loads(raw)
            except ValueError:
                reply: Any = envelope(None, error=RpcError(PARSE_ERROR, MESSAGES[PARSE_ERROR]))
            else:
                try:
                    if isinstance(request, list):
                        reply = [answer_request(bridge, r) for r in request]
                    else:
                        reply = answer_request(bridge, request)
                except RealNodeError as exc:
                    self._send(HTTPStatus.BAD_GATEWAY, str(exc).encode(), "text/plain")
                    return
            self._send(200, json.dumps(reply).encode(), "application/json; charset=utf-8")

    return RpcHandler


@dataclass
class RealNode:
    """A running real node: ``url`` is its loopback FNN JSON-RPC endpoint."""

    url: str
    bridge: Bridge
    startup_seconds: float
    chromium_log: Path


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="wasm-http", daemon=True)
    thread.start()
    return thread


def _stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # Chromium runs in its own session (start_new_session) whose group id is its pid;
        # signal that group only, so its helper processes go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    # Wait for the helpers (renderer, GPU, utility processes) of the same group to go too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def run_real_node() -> Iterator[RealNode]:
    """Start Chromium with the node page; yield once ``start()`` resolved; stop everything."""
    reason = missing_prerequisite()
    if reason is not None:
        raise RealNodeError(reason)
    workdir = Path(tempfile.mkdtemp(prefix="fnn-wasm-"))
    # Bound but never listening: connecting is refused at once (no chain calls succeed).
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    bridge = Bridge(node_config(closed.getsockname()[1]), f"/wasm-{time.time_ns()}")
    page_server = ThreadingHTTPServer(("127.0.0.1", 0), _make_page_handler(bridge))
    rpc_server = ThreadingHTTPServer(("127.0.0.1", 0), _make_rpc_handler(bridge))
    page_server.daemon_threads = rpc_server.daemon_threads = True
    _serve(page_server)
    _serve(rpc_server)
    page_port = page_server.server_address[1]
    rpc_port = rpc_server.server_address[1]
    log_path = workdir / "chromium.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            began = time.monotonic()
            proc = subprocess.Popen(
                [
                    str(CHROMIUM),
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={workdir / 'profile'}",
                    f"http://127.0.0.1:{page_port}/__page/index.html",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + START_TIMEOUT_S + 5
        while not bridge.started.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
        if not bridge.started.is_set() or not bridge.start_answer.get("ok"):
            tail = log_path.read_text(errors="replace")[-2000:]
            why = bridge.start_answer.get("error") or (
                f"chromium exited with {proc.returncode}" if proc.poll() is not None else "timeout"
            )
            raise RealNodeError(
                f"real FNN node did not start: {why}\npage log: {bridge.page_log}\n"
                f"chromium log tail:\n{tail}"
            )
        yield RealNode(
            url=f"http://127.0.0.1:{rpc_port}/",
            bridge=bridge,
            startup_seconds=time.monotonic() - began,
            chromium_log=log_path,
        )
    finally:
        bridge.closed = True
        if proc is not None:
            _stop_chromium(proc)
        rpc_server.shutdown()
        page_server.shutdown()
        rpc_server.server_close()
        page_server.server_close()
        closed.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    """``python -m tests.wasm.realnode``: serve the real node until interrupted."""
    stop = {signal.SIGINT, signal.SIGTERM}
    with run_real_node() as node:
        # Blocked only now, so Chromium (already started) does not inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        print(f"real FNN 0.8.1 (wasm) listening on {node.url}", flush=True)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
