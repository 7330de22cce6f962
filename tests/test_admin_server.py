"""The admin socket server: the socket file, the wire protocol, and robustness.

Rules under test:
- the socket is created 0660 (never reachable with looser permissions), its directory is
  created, and it is removed on shutdown;
- a stale socket file (nothing listening) is replaced; a live one is never stolen: startup
  fails with AdminSocketInUse and the running server keeps serving; a non-socket file at
  the path is refused, not deleted;
- newline-delimited JSON: ids are echoed, several requests share a connection, a final
  line without newline is answered, blank lines are ignored;
- malformed input (not JSON, not an object, no command, args not an object, unknown
  command) is answered with an error and the connection stays usable;
- a line over the size bound is answered with too_large and ends the connection;
- the peer uid comes from SO_PEERCRED by default;
- a bug in a handler is answered with ``internal`` and then propagates (supervisor's job).
Real Unix sockets in short /tmp directories; no mocks.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.admin.protocol import MAX_MESSAGE_BYTES
from fiberlinkd.admin.registry import CommandContext, Scope, admin_command
from fiberlinkd.admin.server import (
    AdminServer,
    AdminSocketError,
    AdminSocketInUse,
    peer_uid_from_socket,
)
from tests.test_admin_support import (
    DAEMON_UID,
    Peer,
    admin_runtime,
    ask,
    ask_raw,
    ok,
    server_env,
    serving,
    short_tempdir,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@admin_command("test.boom", mutates=True, scope=Scope.SUPER)
async def _boom(ctx: CommandContext, args: dict[str, Any]) -> None:
    raise RuntimeError("a bug in a command")


async def test_socket_is_created_0660_in_a_new_directory_and_removed_on_shutdown(
    short_dir: Path,
) -> None:
    socket_path = short_dir / "run" / "admin.sock"
    async with admin_runtime(short_dir / "state", socket_path) as rt:
        async with serving(rt, Peer()):
            info = os.lstat(socket_path)
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o660
            assert sorted(p.name for p in socket_path.parent.iterdir()) == ["admin.sock"]
            assert (await ok(socket_path, "whoami"))["role"] == "SUPER_ADMIN"
        assert not socket_path.exists()


async def test_stale_socket_file_from_a_crash_is_replaced(short_dir: Path) -> None:
    socket_path = short_dir / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    async with admin_runtime(short_dir / "state", socket_path) as rt, serving(rt, Peer()):
        assert (await ok(socket_path, "whoami"))["uid"] == DAEMON_UID


async def test_live_socket_is_not_stolen_and_keeps_serving(short_dir: Path) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        inode = os.lstat(socket_path).st_ino
        second = AdminServer(rt, peer_uid=lambda _s: DAEMON_UID, daemon_uid=DAEMON_UID)
        with pytest.raises(AdminSocketInUse, match="is in use"):
            await second.run()
        assert os.lstat(socket_path).st_ino == inode
        assert (await ok(socket_path, "whoami"))["role"] == "SUPER_ADMIN"


async def test_a_regular_file_at_the_socket_path_is_refused_not_deleted(short_dir: Path) -> None:
    socket_path = short_dir / "admin.sock"
    socket_path.write_text("not a socket")
    async with admin_runtime(short_dir / "state", socket_path) as rt:
        with pytest.raises(AdminSocketError, match="is not a socket"):
            await AdminServer(rt).run()
    assert socket_path.read_text() == "not a socket"


async def test_ids_are_echoed_and_requests_share_a_connection(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        lines = b"".join(
            json.dumps({"id": request_id, "command": "whoami"}).encode() + b"\n"
            for request_id in ("a", 2, None)
        )
        answers = await ask_raw(socket_path, b"\n" + lines + b"  \n")
        assert [a["id"] for a in answers] == ["a", 2, None]
        assert all(a["ok"] for a in answers)


async def test_final_line_without_newline_is_answered(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        answers = await ask_raw(socket_path, b'{"id": 1, "command": "whoami"}')
        assert [a["ok"] for a in answers] == [True]


@pytest.mark.parametrize(
    ("line", "request_id", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"id": [1]}', None, "id must be"),
        (b'{"id": 3}', 3, "command must be"),
        (b'{"id": 4, "command": 5}', 4, "command must be"),
        (b'{"id": 5, "command": "whoami", "args": [1]}', 5, "args must be"),
    ],
)
async def test_malformed_requests_are_answered_and_the_connection_stays_usable(
    short_dir: Path, line: bytes, request_id: Any, message: str
) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        answers = await ask_raw(socket_path, line + b'\n{"id": 9, "command": "whoami"}\n')
        assert answers[0] == {
            "id": request_id,
            "ok": False,
            "error": {"code": "bad_request", "message": answers[0]["error"]["message"]},
        }
        assert message in answers[0]["error"]["message"]
        assert answers[1]["id"] == 9
        assert answers[1]["ok"] is True


async def test_unknown_command_is_answered_with_the_known_ones(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        answer = await ask(socket_path, "app.frobnicate")
        assert answer["error"]["code"] == "unknown_command"
        assert "app.list" in answer["error"]["message"]


async def test_oversize_request_is_refused_and_ends_the_connection(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        huge = b'{"id": 1, "command": "whoami", "args": {"x": "' + b"a" * MAX_MESSAGE_BYTES
        answers = await ask_raw(socket_path, huge + b'"}}\n{"id": 2, "command": "whoami"}\n')
        assert answers == [
            {
                "id": None,
                "ok": False,
                "error": {
                    "code": "too_large",
                    "message": f"request line longer than {MAX_MESSAGE_BYTES} bytes",
                },
            }
        ]
        assert (await ok(socket_path, "whoami"))["uid"] == DAEMON_UID  # server unharmed


async def test_a_client_that_vanishes_mid_request_does_not_hurt_the_server(
    short_dir: Path,
) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        stream = await trio.open_unix_socket(str(socket_path))
        await stream.send_all(b'{"id": 1, "comm')
        await stream.aclose()
        assert (await ok(socket_path, "whoami"))["uid"] == DAEMON_UID


async def test_peer_uid_comes_from_so_peercred() -> None:
    left, right = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid_from_socket(left) == os.geteuid()


async def test_a_bug_in_a_handler_is_answered_internal_then_propagates(short_dir: Path) -> None:
    socket_path = short_dir / "admin.sock"
    async with admin_runtime(short_dir / "state", socket_path) as rt:
        server = AdminServer(rt, peer_uid=lambda _s: DAEMON_UID, daemon_uid=DAEMON_UID)
        answers: list[dict[str, Any]] = []
        with pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="a bug"), flatten_subgroups=True
        ):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                answers = await ask_raw(socket_path, b'{"id": 1, "command": "test.boom"}\n')
        assert answers[0]["error"]["code"] == "internal"
        rows = await rt.ledger.read(
            lambda conn: conn.execute("SELECT command, outcome FROM audit_log").fetchall()
        )
        assert [tuple(r) for r in rows] == [("test.boom", "error: internal")]
