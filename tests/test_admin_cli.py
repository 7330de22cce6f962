"""``fiberlinkd admin …`` and ``fiberlinkd restore`` as an operator types them.

Rules under test:
- the issue's "done means": with the daemon running on a temp state dir, ``admin app add
  forum --json`` returns the app and its secret, ``admin status --json`` shows every actor,
  ``admin backup backup.sqlite3`` (a relative path, made absolute by the CLI) writes a copy
  whose integrity_check is ok, and ``restore`` accepts it once the daemon has stopped;
- human-readable tables by default, exact JSON with ``--json``; secrets never in lists;
- ``--secret-file`` writes the secret to a new 0600 file and keeps it off stdout; an
  existing file is refused before the daemon is asked;
- the daemon's refusal exits 1 with its message; an absent daemon exits 1 explaining what
  to check;
- the socket path comes from ``--socket``, else ``$FIBERLINKD_ADMIN_SOCKET``, else the config.
The CLI is blocking code, so it runs in a worker thread beside the trio server.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.admin.cli import resolve_socket_path
from fiberlinkd.admin.server import AdminServer
from fiberlinkd.cli import main
from fiberlinkd.config import load_config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.runtime import Runtime
from fiberlinkd.supervisor import ActorRun
from tests.test_admin_support import FakeNode, ok, server_env, short_tempdir


@pytest.fixture
def short_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("FIBERLINKD_ADMIN_SOCKET", raising=False)
    with short_tempdir() as path:
        yield path


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_operator_story_app_status_backup_restore(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = short_dir / "fiberlinkd.toml"
    socket_path = short_dir / "run" / "admin.sock"
    config_path.write_text(
        f'state_dir = "{short_dir / "state"}"\n'
        f'[admin]\nsocket = "{socket_path}"\n'
        '[fnn]\nurl = "http://127.0.0.1:9/"\n'
    )
    config = load_config(config_path, environ={})
    cfg = ("--config", str(config_path))

    def actors(rt: Runtime, _stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
        return [("admin", AdminServer(rt).run)]  # the real SO_PEERCRED lookup

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        rt: Runtime = await nursery.start(
            lambda task_status: run_daemon(
                config, node=FakeNode(), stop=stop, actors=actors, task_status=task_status
            )
        )
        code, out, err = await run_cli(capsys, "admin", "app", "add", "forum", "--json", *cfg)
        assert code == 0, err
        app = json.loads(out)
        assert (app["app_id"], app["enabled"], len(app["secret"])) == ("forum", True, 64)

        code, out, err = await run_cli(capsys, "admin", "status", "--json", *cfg)
        assert code == 0, err
        status = json.loads(out)
        assert {a["name"]: a["state"] for a in status["actors"]} == {
            "nodewatch": "running",
            "admin": "running",
        }
        assert status["uptime_s"] >= 0

        monkeypatch.chdir(short_dir)
        code, out, err = await run_cli(capsys, "admin", "backup", "backup.sqlite3", *cfg)
        assert code == 0, err
        assert out.startswith(f"backup written to {short_dir / 'backup.sqlite3'} (")
        assert "integrity_check ok" in out

        code, out, err = await run_cli(capsys, "restore", "backup.sqlite3", *cfg)
        assert code == 1
        assert "the daemon is running" in err
        assert rt.ledger.path.exists()
        stop.set()

    conn = sqlite3.connect(short_dir / "backup.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    code, out, err = await run_cli(capsys, "restore", "backup.sqlite3", *cfg)
    assert code == 0, err
    assert f"restored {short_dir / 'backup.sqlite3'} into {rt.ledger.path}" in out
    assert "before-restore-" in out
    assert "systemctl start fiberlinkd" in out


async def test_tables_by_default_and_exact_json_on_request(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        sock = ("--socket", str(socket_path))
        code, out, _ = await run_cli(capsys, "admin", "app", "add", "forum", *sock)
        assert code == 0
        secret = out.splitlines()[2].strip()
        assert out == (
            "app forum added.\n"
            "HMAC secret (shown once; paste it into the Discourse plugin settings):\n"
            f"  {secret}\n"
        )
        code, out, _ = await run_cli(capsys, "admin", "app", "list", *sock)
        assert code == 0
        header, row = out.splitlines()
        assert header.split() == ["APP_ID", "ENABLED", "CREATED_AT", "DISABLED_AT"]
        assert row.split()[:2] == ["forum", "yes"]
        assert secret not in out
        code, out, _ = await run_cli(capsys, "admin", "app", "list", "--json", *sock)
        assert json.loads(out) == await ok(socket_path, "app.list")
        code, out, _ = await run_cli(capsys, "admin", "freeze", "--reason", "drill", *sock)
        assert out.startswith("payouts FROZEN since ")
        assert out.rstrip().endswith(": drill")
        code, out, _ = await run_cli(capsys, "admin", "status", *sock)
        assert code == 0
        assert "payouts: FROZEN" in out
        assert "node: NOT reachable (not identified yet)" in out
        code, out, _ = await run_cli(
            capsys, "admin", "grant", "1001", "community_admin", "--app", "forum", *sock
        )
        assert out == "granted COMMUNITY_ADMIN for app forum to uid 1001\n"
        code, out, _ = await run_cli(capsys, "admin", "audit", "--limit", "1", *sock)
        assert out.splitlines()[0].split() == [
            "AT",
            "UID",
            "USER",
            "COMMAND",
            "APP_ID",
            "OUTCOME",
            "ARGS",
        ]
        assert "grant" in out.splitlines()[1]


async def test_secret_file_gets_the_secret_at_0600_and_stdout_does_not(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = short_dir / "forum.secret"
    async with server_env(short_dir) as (rt, _peer, socket_path):
        sock = ("--socket", str(socket_path))
        code, out, err = await run_cli(
            capsys,
            "admin",
            "app",
            "add",
            "forum",
            "--secret-file",
            str(secret_file),
            "--json",
            *sock,
        )
        assert code == 0, err
        result = json.loads(out)
        assert "secret" not in result
        assert result["secret_file"] == str(secret_file)
        assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
        stored = await rt.ledger.read(
            lambda c: c.execute("SELECT hmac_secret FROM apps").fetchone()[0]
        )
        assert secret_file.read_text() == stored + "\n"
        assert stored not in out

        code, out, err = await run_cli(
            capsys, "admin", "app", "add", "other", "--secret-file", str(secret_file), *sock
        )
        assert code == 2
        assert f"--secret-file {secret_file} exists" in err
        assert [a["app_id"] for a in await ok(socket_path, "app.list")] == ["forum"]


async def test_daemon_refusals_exit_1_with_the_daemons_message(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        sock = ("--socket", str(socket_path))
        await run_cli(capsys, "admin", "app", "add", "forum", *sock)
        code, out, err = await run_cli(capsys, "admin", "app", "add", "forum", *sock)
        assert code == 1
        assert out == ""
        assert err.startswith("fiberlinkd admin: app 'forum' exists already")
        code, out, err = await run_cli(capsys, "admin", "app", "add", "forum", "--json", *sock)
        assert code == 1
        assert json.loads(out)["error"]["code"] == "conflict"


async def test_an_absent_daemon_is_explained(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = short_dir / "admin.sock"
    code, out, err = await run_cli(capsys, "admin", "status", "--socket", str(missing))
    assert code == 1
    assert out == ""
    assert err == (
        f"fiberlinkd admin: cannot connect to {missing} (is the daemon running? check: "
        "systemctl status fiberlinkd; or pass --socket PATH)\n"
    )


def test_socket_path_from_flag_then_environment_then_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[admin]\nsocket = "/run/from-config.sock"\n')
    ns: Any = argparse.Namespace(socket=None, config=config)
    env = {"FIBERLINKD_ADMIN_SOCKET": "/run/from-env.sock"}
    assert resolve_socket_path(ns, {}) == Path("/run/from-config.sock")
    assert resolve_socket_path(ns, env) == Path("/run/from-env.sock")
    ns.socket = "/run/from-flag.sock"
    assert resolve_socket_path(ns, env) == Path("/run/from-flag.sock")
