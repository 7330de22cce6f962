"""Identity and roles on the admin socket.

Rules under test:
- the uid comes from the socket (the injected SO_PEERCRED lookup), never from the message;
- uid 0 and the daemon's own uid are SUPER_ADMIN without a grant;
- a uid without a grant is refused for every command, with a message naming the grant to
  ask for;
- a COMMUNITY_ADMIN sees and changes only its apps: app lists and the audit log are
  filtered, any command naming another app (existing or not) is refused the same way,
  and SUPER_ADMIN-only commands are refused naming SUPER_ADMIN;
- grants and revocations take effect on the next request, even on an open connection;
- a denied state-changing command is written to the audit log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fiberlinkd.runtime import Runtime
from tests.test_admin_support import (
    ALICE,
    BOB,
    DAEMON_UID,
    MALLORY,
    Peer,
    ok,
    read_line,
    refused,
    server_env,
    short_tempdir,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


async def _two_forums(socket_path: Path, peer: Peer) -> None:
    """As the daemon uid: apps forum-a and forum-b; alice admins a, bob admins b."""
    peer.uid = DAEMON_UID
    await ok(socket_path, "app.add", {"app_id": "forum-a"})
    await ok(socket_path, "app.add", {"app_id": "forum-b"})
    await ok(
        socket_path, "grant", {"user": str(ALICE), "role": "COMMUNITY_ADMIN", "app_id": "forum-a"}
    )
    await ok(
        socket_path, "grant", {"user": str(BOB), "role": "community_admin", "app_id": "forum-b"}
    )


async def test_ungranted_uid_is_refused_with_the_missing_grant_named(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        peer.uid = MALLORY
        for command in ("app.list", "whoami", "status", "audit", "app.add"):
            error = await refused(socket_path, command, {"app_id": "x"})
            assert error["code"] == "forbidden"
            assert error["message"] == (
                f"uid {MALLORY} has no fiberlinkd grant; ask an operator to run: "
                f"fiberlinkd admin grant {MALLORY} COMMUNITY_ADMIN --app <id>"
            )


async def test_root_and_the_daemon_uid_are_super_admin_without_a_grant(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        for uid, because in ((0, "root"), (DAEMON_UID, "daemon uid")):
            peer.uid = uid
            me = await ok(socket_path, "whoami")
            assert (me["uid"], me["role"], me["apps"], me["because"]) == (
                uid,
                "SUPER_ADMIN",
                None,
                because,
            )
            assert await ok(socket_path, "grants") == []


async def test_community_admin_lists_only_its_apps(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = ALICE
        assert [a["app_id"] for a in await ok(socket_path, "app.list")] == ["forum-a"]
        assert (await ok(socket_path, "whoami"))["apps"] == ["forum-a"]
        peer.uid = DAEMON_UID
        assert [a["app_id"] for a in await ok(socket_path, "app.list")] == ["forum-a", "forum-b"]


async def test_community_admin_cannot_touch_another_app_nor_probe_for_one(
    short_dir: Path,
) -> None:
    async with server_env(short_dir) as (rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = ALICE
        for app_id in ("forum-b", "no-such-forum"):
            for command in ("app.rotate_secret", "app.disable", "app.enable"):
                error = await refused(socket_path, command, {"app_id": app_id})
                assert error == {
                    "code": "forbidden",
                    "message": f"uid {ALICE} has no grant for app {app_id!r}; ask an operator "
                    f"to run: fiberlinkd admin grant {ALICE} COMMUNITY_ADMIN --app {app_id}",
                }
        # its own app works
        rotated = await ok(socket_path, "app.rotate_secret", {"app_id": "forum-a"})
        assert len(rotated["secret"]) == 64
        assert (await ok(socket_path, "app.disable", {"app_id": "forum-a"}))["enabled"] is False
        apps = await rt.ledger.read(
            lambda c: dict(c.execute("SELECT app_id, disabled_at IS NULL FROM apps").fetchall())
        )
        assert apps == {"forum-a": 0, "forum-b": 1}


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("status", {}),
        ("grants", {}),
        ("app.add", {"app_id": "forum-a"}),
        ("grant", {"user": "1001", "role": "SUPER_ADMIN"}),
        ("revoke", {"user": "1001", "role": "COMMUNITY_ADMIN", "app_id": "forum-a"}),
        ("backup", {"path": "/nonexistent/x.sqlite3"}),
        ("freeze", {"reason": "x"}),
        ("unfreeze", {}),
    ],
)
async def test_community_admin_cannot_run_super_admin_commands(
    short_dir: Path, command: str, args: dict[str, str]
) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = ALICE
        error = await refused(socket_path, command, args)
        assert error == {
            "code": "forbidden",
            "message": f"{command!r} needs SUPER_ADMIN and uid {ALICE} is COMMUNITY_ADMIN; ask an "
            f"operator to run: fiberlinkd admin grant {ALICE} SUPER_ADMIN",
        }


async def test_community_admin_sees_only_its_apps_audit_rows(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = BOB
        await ok(socket_path, "app.rotate_secret", {"app_id": "forum-b"})
        peer.uid = ALICE
        await ok(socket_path, "app.rotate_secret", {"app_id": "forum-a"})
        rows = await ok(socket_path, "audit")
        assert {row["app_id"] for row in rows} == {"forum-a"}
        assert [(r["uid"], r["command"]) for r in rows] == [
            (ALICE, "app.rotate_secret"),
            (DAEMON_UID, "grant"),
            (DAEMON_UID, "app.add"),
        ]
        peer.uid = DAEMON_UID
        everything = await ok(socket_path, "audit")
        assert len(everything) == 6
        assert {row["app_id"] for row in everything} == {"forum-a", "forum-b"}


async def test_a_super_admin_grant_gives_every_app(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        await ok(socket_path, "grant", {"user": str(MALLORY), "role": "SUPER_ADMIN"})
        peer.uid = MALLORY
        assert len(await ok(socket_path, "app.list")) == 2
        assert (await ok(socket_path, "whoami"))["because"] == "grant"
        assert len(await ok(socket_path, "grants")) == 3


async def test_revoking_takes_effect_on_the_next_request_of_an_open_connection(
    short_dir: Path,
) -> None:
    async with server_env(short_dir) as (_rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = ALICE
        stream = await trio.open_unix_socket(str(socket_path))  # uid fixed at connect
        async with stream:
            buffer = bytearray()
            request = b'{"id": 1, "command": "app.list"}\n'
            await stream.send_all(request)
            assert json.loads(await read_line(stream, buffer))["ok"] is True
            peer.uid = DAEMON_UID
            await ok(
                socket_path,
                "revoke",
                {"user": str(ALICE), "role": "COMMUNITY_ADMIN", "app_id": "forum-a"},
            )
            await stream.send_all(request)
            answer = json.loads(await read_line(stream, buffer))
            assert answer["error"]["code"] == "forbidden"
            assert "has no fiberlinkd grant" in answer["error"]["message"]


async def test_a_denied_state_change_is_audited(short_dir: Path) -> None:
    async with server_env(short_dir) as (rt, peer, socket_path):
        await _two_forums(socket_path, peer)
        peer.uid = ALICE
        await refused(socket_path, "app.disable", {"app_id": "forum-b"})
        peer.uid = MALLORY
        await refused(socket_path, "freeze", {"reason": "mischief"})
        rows = await _audit_rows(rt)
        assert rows[-2:] == [
            (ALICE, "app.disable", "forum-b", {"app_id": "forum-b"}, "denied"),
            (MALLORY, "freeze", None, {"reason": "mischief"}, "denied"),
        ]


async def _audit_rows(rt: Runtime) -> list[tuple[object, ...]]:
    rows = await rt.ledger.read(
        lambda c: c.execute(
            "SELECT uid, command, app_id, args_json, outcome FROM audit_log ORDER BY id"
        ).fetchall()
    )
    return [
        (
            r["uid"],
            r["command"],
            r["app_id"],
            json.loads(r["args_json"]),
            r["outcome"].split(":")[0],
        )
        for r in rows
    ]
