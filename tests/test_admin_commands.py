"""Admin commands over a real socket: apps, grants, audit, freeze, status.

Rules under test:
- ``app.add`` returns a 256-bit hex secret once (the API accepts it); a duplicate id is a
  conflict; ids are validated; ``app.list`` never shows secrets;
- ``app.rotate_secret`` replaces the secret at once; ``app.disable``/``enable`` switch the
  API's acceptance and report whether anything changed;
- grants: USER by name or uid; COMMUNITY_ADMIN needs an existing app; SUPER_ADMIN takes
  none; a repeated grant is a no-op; revoking a missing grant is not_found;
- every state-changing command (and only those) writes an audit row with who, what, when,
  the app and the arguments without secrets; secrets never reach audit_log;
- ``freeze``/``unfreeze`` drive the shared payouts switch and wake the executor;
- ``status`` shows version, uptime, schema version, every actor, the node, the switch, the
  database size, and sections contributed by other modules.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import fiberlinkd.admin.commands.status as status_module
from fiberlinkd import __version__
from fiberlinkd.admin import registry
from fiberlinkd.admin.registry import CommandSpec, Scope, register_status_section
from fiberlinkd.ledger.auth import app_secret
from fiberlinkd.ledger.store import SCHEMA_VERSION
from fiberlinkd.payouts import is_frozen
from fiberlinkd.runtime import Runtime
from fiberlinkd.supervisor import ActorStatus
from tests.test_admin_support import (
    ALICE,
    DAEMON_UID,
    FakeNode,
    ok,
    refused,
    server_env,
    short_tempdir,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


async def _audit(rt: Runtime) -> list[dict[str, Any]]:
    rows = await rt.ledger.read(
        lambda c: c.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
    )
    return [dict(row) for row in rows]


async def test_app_add_returns_a_strong_secret_once_and_lists_never_show_it(
    short_dir: Path,
) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        added = await ok(socket_path, "app.add", {"app_id": "forum"})
        assert set(added) == {"app_id", "enabled", "created_at", "disabled_at", "secret"}
        assert added["app_id"] == "forum"
        assert added["enabled"] is True
        assert len(added["secret"]) == 64
        int(added["secret"], 16)
        assert await rt.ledger.read(app_secret, "forum") == added["secret"]
        listed = await ok(socket_path, "app.list")
        assert listed == [{k: v for k, v in added.items() if k != "secret"}]
        assert added["secret"] not in json.dumps(await ok(socket_path, "audit"))
        assert added["secret"] not in json.dumps(await _audit(rt))


async def test_app_add_refuses_a_duplicate_and_a_bad_id(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        await ok(socket_path, "app.add", {"app_id": "forum"})
        error = await refused(socket_path, "app.add", {"app_id": "forum"})
        assert error["code"] == "conflict"
        assert "rotate-secret forum" in error["message"]
        for bad in ("", "has space", "-leading", "x" * 65, None):
            assert (await refused(socket_path, "app.add", {"app_id": bad}))["code"] == (
                "bad_request"
            )


async def test_rotate_replaces_the_secret_at_once(short_dir: Path) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        added = await ok(socket_path, "app.add", {"app_id": "forum"})
        rotated = await ok(socket_path, "app.rotate_secret", {"app_id": "forum"})
        assert rotated["secret"] != added["secret"]
        assert await rt.ledger.read(app_secret, "forum") == rotated["secret"]
        assert (await refused(socket_path, "app.rotate_secret", {"app_id": "nope"}))[
            "code"
        ] == "not_found"


async def test_disable_and_enable_switch_the_api_and_report_changes(short_dir: Path) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        added = await ok(socket_path, "app.add", {"app_id": "forum"})
        first = await ok(socket_path, "app.disable", {"app_id": "forum"})
        assert (first["enabled"], first["changed"]) == (False, True)
        assert await rt.ledger.read(app_secret, "forum") is None
        second = await ok(socket_path, "app.disable", {"app_id": "forum"})
        assert (second["changed"], second["disabled_at"]) == (False, first["disabled_at"])
        enabled = await ok(socket_path, "app.enable", {"app_id": "forum"})
        assert (enabled["enabled"], enabled["changed"], enabled["disabled_at"]) == (
            True,
            True,
            None,
        )
        assert await rt.ledger.read(app_secret, "forum") == added["secret"]
        assert (await refused(socket_path, "app.enable", {"app_id": "nope"}))["code"] == "not_found"


async def test_grants_by_name_or_uid_with_role_rules(short_dir: Path) -> None:
    me = pwd.getpwuid(os.getuid())
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        await ok(socket_path, "app.add", {"app_id": "forum"})
        by_name = await ok(
            socket_path, "grant", {"user": me.pw_name, "role": "COMMUNITY_ADMIN", "app_id": "forum"}
        )
        assert (by_name["uid"], by_name["user"], by_name["created"]) == (
            me.pw_uid,
            me.pw_name,
            True,
        )
        again = await ok(
            socket_path,
            "grant",
            {"user": str(me.pw_uid), "role": "COMMUNITY_ADMIN", "app_id": "forum"},
        )
        assert again["created"] is False
        await ok(socket_path, "grant", {"user": str(ALICE), "role": "SUPER_ADMIN"})
        grants = await ok(socket_path, "grants")
        assert [(g["uid"], g["role"], g["app_id"]) for g in grants] == sorted(
            [(me.pw_uid, "COMMUNITY_ADMIN", "forum"), (ALICE, "SUPER_ADMIN", None)]
        )
        problems = [
            ({"user": "no-such-user-xyz", "role": "SUPER_ADMIN"}, "bad_request", "no such user"),
            ({"user": "1001", "role": "OWNER"}, "bad_request", "SUPER_ADMIN or COMMUNITY_ADMIN"),
            ({"user": "1001", "role": "SUPER_ADMIN", "app_id": "forum"}, "bad_request", "global"),
            ({"user": "1001", "role": "COMMUNITY_ADMIN"}, "bad_request", "--app"),
            ({"user": "1001", "role": "COMMUNITY_ADMIN", "app_id": "nope"}, "not_found", "nope"),
        ]
        for args, code, text in problems:
            error = await refused(socket_path, "grant", args)
            assert error["code"] == code
            assert text in error["message"]
        revoked = await ok(socket_path, "revoke", {"user": str(ALICE), "role": "SUPER_ADMIN"})
        assert revoked["revoked"] is True
        missing = await refused(socket_path, "revoke", {"user": str(ALICE), "role": "SUPER_ADMIN"})
        assert missing == {"code": "not_found", "message": f"uid {ALICE} has no SUPER_ADMIN grant"}


async def test_state_changes_and_only_they_are_audited_without_secrets(short_dir: Path) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        await ok(socket_path, "app.add", {"app_id": "forum"})
        await ok(socket_path, "app.list")
        await ok(socket_path, "status")
        await ok(socket_path, "freeze", {"reason": "drill"})
        await refused(socket_path, "app.add", {"app_id": "forum"})
        rows = await _audit(rt)
        assert [(r["uid"], r["command"], r["app_id"], r["outcome"]) for r in rows] == [
            (DAEMON_UID, "app.add", "forum", "ok"),
            (DAEMON_UID, "freeze", None, "ok"),
            (DAEMON_UID, "app.add", "forum", rows[2]["outcome"]),
        ]
        assert rows[2]["outcome"].startswith("error: app 'forum' exists already")
        assert [json.loads(r["args_json"]) for r in rows] == [
            {"app_id": "forum"},
            {"reason": "drill"},
            {"app_id": "forum"},
        ]
        assert all(abs(r["at"] - rt.clock.now_ms()) < 60_000 for r in rows)
        listed = await ok(socket_path, "audit", {"limit": 2})
        assert [r["command"] for r in listed] == ["app.add", "freeze"]
        assert listed[1]["args"] == {"reason": "drill"}
        assert (await refused(socket_path, "audit", {"limit": 0}))["code"] == "bad_request"


def test_secret_arguments_are_redacted_for_the_audit_log() -> None:
    async def handler(ctx: Any, args: dict[str, Any]) -> None:
        return None

    spec = CommandSpec(
        "x.set", handler, mutates=True, scope=Scope.SUPER, secret_args=frozenset({"key_hex"})
    )
    assert spec.audit_args(
        {"key_hex": "aa", "hmac_secret": "bb", "fnn_token": "cc", "app_id": "forum"}
    ) == {
        "key_hex": "<redacted>",
        "hmac_secret": "<redacted>",
        "fnn_token": "<redacted>",
        "app_id": "forum",
    }


async def test_freeze_and_unfreeze_drive_the_shared_switch_and_wake_the_executor(
    short_dir: Path,
) -> None:
    async with server_env(short_dir) as (rt, _peer, socket_path):
        frozen = await ok(socket_path, "freeze", {"reason": "incident 42"})
        assert (frozen["frozen"], frozen["reason"], frozen["by"]) == (
            True,
            "incident 42",
            f"uid {DAEMON_UID}",
        )
        assert await rt.ledger.read(is_frozen) == (True, "incident 42")
        status = await ok(socket_path, "status")
        assert status["payouts"]["frozen"] is True
        assert status["payouts"]["reason"] == "incident 42"
        assert (await refused(socket_path, "freeze", {"reason": " "}))["code"] == "bad_request"
        assert await ok(socket_path, "unfreeze") == {"frozen": False, "was_frozen": True}
        assert await rt.ledger.read(is_frozen) == (False, None)
        assert await rt.withdrawals_wakeup.wait(0) is True
        assert await ok(socket_path, "unfreeze") == {"frozen": False, "was_frozen": False}


async def test_status_shows_daemon_actors_node_switch_database_and_sections(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sections registered here must not outlive the test
    monkeypatch.setattr(registry, "_STATUS_SECTIONS", dict(registry._STATUS_SECTIONS))
    monkeypatch.setattr(status_module, "SECTION_BOUND_S", 0.05)

    async def withdrawals_section(rt: Runtime) -> dict[str, Any]:
        return {"pending": 3}

    async def slow_section(rt: Runtime) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    register_status_section("test_withdrawals", withdrawals_section)
    register_status_section("test_slow", slow_section)
    with pytest.raises(ValueError, match="taken"):
        register_status_section("actors", withdrawals_section)
    async with server_env(short_dir) as (rt, _peer, socket_path):
        rt.supervisor.statuses["settlement"] = ActorStatus("settlement", "running", 0)
        rt.supervisor.statuses["withdrawals"] = ActorStatus(
            "withdrawals", "restarting", 2, "RuntimeError: boom"
        )
        rt.node_state.info = await FakeNode().node_info()
        rt.node_state.last_ok_ms = rt.clock.now_ms()
        status = await ok(socket_path, "status")
        assert status["version"] == __version__
        assert status["schema_version"] == SCHEMA_VERSION
        assert 0 <= status["uptime_s"] < 60
        assert status["actors"] == [
            {"name": "settlement", "state": "running", "restarts": 0, "last_error": None},
            {
                "name": "withdrawals",
                "state": "restarting",
                "restarts": 2,
                "last_error": "RuntimeError: boom",
            },
        ]
        assert status["node"]["reachable"] is True
        assert (status["node"]["version"], status["node"]["currency"]) == ("0.6.1", "Fibd")
        assert status["payouts"] == {"frozen": False, "reason": None, "by": None, "since": None}
        assert status["database"]["db_bytes"] > 0
        assert status["database"]["schema_current"] is True
        assert status["test_withdrawals"] == {"pending": 3}
        assert status["test_slow"] == {"error": "did not answer within 0.05 s"}
