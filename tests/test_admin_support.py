"""Shared helpers for the admin tests (this module holds no tests).

- :func:`short_tempdir`: AF_UNIX paths are limited to 108 bytes, so sockets live in a short
  directory under /tmp instead of ``tmp_path``.
- :class:`FakeNode`: the smallest stateful FiberNode the admin side needs (node_info).
- :func:`admin_runtime`: a Runtime on a real SQLite file, built directly.
- :func:`serving`: an :class:`AdminServer` on a real socket whose peer uid is taken from a
  :class:`Peer` the test controls (the injected ``SO_PEERCRED`` lookup).
- :func:`ask` / :func:`ask_raw`: a trio client speaking the wire protocol.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from fiberlinkd.admin.server import AdminServer
from fiberlinkd.clock import WallClock
from fiberlinkd.config import AdminConfig, Config
from fiberlinkd.fnn.types import NodeInfo
from fiberlinkd.ledger import open_ledger
from fiberlinkd.nodewatch import NodeState
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.supervisor import Supervisor

DAEMON_UID = 4242  # the daemon's uid as the server is told (the tests run as another)
ALICE = 1001
BOB = 1002
MALLORY = 1003  # never granted
REPLY_BOUND_S = 10.0


@contextlib.contextmanager
def short_tempdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fla-", dir="/tmp"))
    assert len(str(path)) < 60
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@attrs.define
class FakeNode:
    version: str = "0.6.1"
    chain_hash: str = "0x" + "ab" * 32
    node_info_calls: int = 0

    async def node_info(self) -> NodeInfo:
        self.node_info_calls += 1
        return NodeInfo(version=self.version, pubkey="02" + "11" * 32, chain_hash=self.chain_hash)


@attrs.define
class Peer:
    """The uid the injected peer-credential lookup reports for new connections."""

    uid: int = DAEMON_UID


@contextlib.asynccontextmanager
async def admin_runtime(state_dir: Path, socket_path: Path) -> AsyncIterator[Runtime]:
    config = Config(state_dir=str(state_dir), admin=AdminConfig(socket=str(socket_path)))
    clock = WallClock()
    async with open_ledger(state_dir) as ledger:
        yield Runtime(
            config=config,
            ledger=ledger,
            node=FakeNode(),  # type: ignore[arg-type]
            node_state=NodeState(),
            clock=clock,
            supervisor=Supervisor(),
            started_at_ms=clock.now_ms(),
            watch_list=WatchList(),
        )


@contextlib.asynccontextmanager
async def serving(rt: Runtime, peer: Peer) -> AsyncIterator[AdminServer]:
    server = AdminServer(rt, peer_uid=lambda _sock: peer.uid, daemon_uid=DAEMON_UID)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def server_env(short_dir: Path) -> AsyncIterator[tuple[Runtime, Peer, Path]]:
    """A runtime on ``short_dir/state`` and a server on ``short_dir/admin.sock``."""
    socket_path = short_dir / "admin.sock"
    peer = Peer()
    async with admin_runtime(short_dir / "state", socket_path) as rt, serving(rt, peer):
        yield rt, peer, socket_path


async def read_line(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    with trio.fail_after(REPLY_BOUND_S):
        while b"\n" not in buffer:
            chunk = await stream.receive_some(65_536)
            if not chunk:
                raise EOFError(f"connection closed; pending {bytes(buffer)[:80]!r}")
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def ask_raw(socket_path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, return every answer line until the server closes."""
    stream = await trio.open_unix_socket(str(socket_path))
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        answers: list[dict[str, Any]] = []
        buffer = bytearray()
        while True:
            try:
                answers.append(json.loads(await read_line(stream, buffer)))
            except EOFError:
                return answers


async def ask(
    socket_path: Path, command: str, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One request on a fresh connection; returns the final answer (progress lines skipped)."""
    stream = await trio.open_unix_socket(str(socket_path))
    async with stream:
        request = {"id": 7, "command": command, "args": args or {}}
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buffer = bytearray()
        while True:
            answer: dict[str, Any] = json.loads(await read_line(stream, buffer))
            if "ok" in answer:
                assert answer["id"] == 7
                return answer


async def ok(socket_path: Path, command: str, args: dict[str, Any] | None = None) -> Any:
    answer = await ask(socket_path, command, args)
    assert answer["ok"] is True, answer
    return answer["result"]


async def refused(
    socket_path: Path, command: str, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer = await ask(socket_path, command, args)
    assert answer["ok"] is False, answer
    error: dict[str, Any] = answer["error"]
    return error
