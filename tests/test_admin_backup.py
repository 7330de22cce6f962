"""``backup`` while the daemon writes, and ``restore`` with the daemon stopped.

Rules under test:
- the backup is taken online in page batches from one read snapshot: writes continue
  during it, and the copy is consistent (its rows are exactly a prefix of the writes) and
  passes ``PRAGMA integrity_check``; progress lines reach the client; the file is 0600 and
  self-contained (no -wal needed);
- the path must be absolute and new; a failed backup leaves no partial file;
- restore verifies the copy (integrity, a fiberlinkd schema no newer than ours), moves the
  old database and its -wal/-shm aside as ``…before-restore-<time>``, installs the copy,
  and the daemon opens it; it refuses while the admin socket is live, and a bad backup
  leaves the current database untouched.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.admin.commands import backup as backup_module
from fiberlinkd.admin.commands.backup import (
    BackupError,
    BackupProgress,
    cmd_restore,
    restore_database,
)
from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.admin import append_audit
from fiberlinkd.ledger.store import DB_FILENAME, SCHEMA_VERSION
from tests.test_admin_support import ok, read_line, refused, server_env, short_tempdir


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


def _write_row(conn: sqlite3.Connection, n: int) -> int:
    return append_audit(
        conn,
        at=n,
        uid=1,
        command="test.write",
        app_id=None,
        args_json=json.dumps({"n": n, "pad": "x" * 2000}),
        outcome="ok",
    )


def _numbers(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [
            row[0]
            for row in conn.execute(
                "SELECT at FROM audit_log WHERE command = 'test.write' ORDER BY id"
            )
        ]
    finally:
        conn.close()


async def _backup_with_progress(
    socket_path: Path, target: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stream = await trio.open_unix_socket(str(socket_path))
    async with stream:
        request = {"id": 1, "command": "backup", "args": {"path": str(target)}}
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buffer = bytearray()
        progress = []
        while True:
            answer = json.loads(await read_line(stream, buffer))
            if "ok" in answer:
                return progress, answer
            progress.append(answer["progress"])


async def test_backup_is_consistent_and_checked_while_writes_continue(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_module, "BACKUP_PAGES_PER_STEP", 8)
    monkeypatch.setattr(backup_module, "PROGRESS_INTERVAL_S", 0.01)
    original_update = BackupProgress.update

    def slow_update(self: BackupProgress, status: int, remaining: int, total: int) -> None:
        original_update(self, status, remaining, total)
        import time

        time.sleep(0.002)

    monkeypatch.setattr(BackupProgress, "update", slow_update)
    target = short_dir / "copy.sqlite3"
    async with server_env(short_dir) as (rt, _peer, socket_path):
        for n in range(600):
            await rt.ledger.transact(_write_row, n)
        written = 600
        during = 0
        done = trio.Event()

        async def keep_writing() -> None:
            nonlocal written, during
            while not done.is_set():
                await rt.ledger.transact(_write_row, written)
                written += 1
                during += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            progress, answer = await _backup_with_progress(socket_path, target)
            done.set()
        assert answer["ok"] is True, answer
        result = answer["result"]
        assert during > 0, "the daemon kept writing during the backup"
        assert progress, "progress lines were sent"
        assert progress[-1]["total_pages"] >= progress[0]["done_pages"]
        assert result["integrity_check"] == "ok"
        assert result["schema_version"] == SCHEMA_VERSION
        assert result["path"] == str(target)
    numbers = _numbers(target)
    assert numbers == list(range(len(numbers)))  # a prefix: one consistent snapshot
    assert 600 <= len(numbers) <= written
    _assert_closed_private_copy(target)


def _assert_closed_private_copy(target: Path) -> None:
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert not Path(f"{target}-wal").exists()
    assert not Path(f"{target}.partial").exists()
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


async def test_backup_needs_a_new_absolute_path_in_an_existing_directory(short_dir: Path) -> None:
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        relative = await refused(socket_path, "backup", {"path": "copy.sqlite3"})
        assert relative["code"] == "bad_request"
        taken = short_dir / "taken.sqlite3"
        taken.write_text("keep me")
        assert (await refused(socket_path, "backup", {"path": str(taken)}))["code"] == "conflict"
        assert taken.read_text() == "keep me"
        missing = await refused(socket_path, "backup", {"path": str(short_dir / "no" / "x.db")})
        assert missing["code"] == "failed"
        assert "does not exist" in missing["message"]
        assert sorted(os.listdir(short_dir)) == [
            "admin.sock",
            "state",
            "taken.sqlite3",
        ]


async def test_restore_installs_a_backup_and_keeps_the_old_database_aside(short_dir: Path) -> None:
    target = short_dir / "copy.sqlite3"
    state = short_dir / "state"
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        before = await ok(socket_path, "app.add", {"app_id": "forum"})
        await ok(socket_path, "backup", {"path": str(target)})
        await ok(socket_path, "app.add", {"app_id": "later"})
    result = restore_database(target, state, now=1_800_000_000)
    aside = state / f"{DB_FILENAME}.before-restore-20270115T080000Z"
    assert result["previous_files"][0] == str(aside)
    assert result["schema_version"] == SCHEMA_VERSION
    assert not (state / f"{DB_FILENAME}.restore-tmp").exists()
    async with open_ledger(state) as ledger:
        apps = await ledger.read(lambda c: [r[0] for r in c.execute("SELECT app_id FROM apps")])
        secret = await ledger.read(
            lambda c: c.execute("SELECT hmac_secret FROM apps").fetchone()[0]
        )
    assert apps == ["forum"]
    assert secret == before["secret"]
    old = sqlite3.connect(aside)
    try:
        assert sorted(r[0] for r in old.execute("SELECT app_id FROM apps")) == ["forum", "later"]
    finally:
        old.close()


def _fresh_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE apps (app_id TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"garbage" * 1000), "not"),
        (_fresh_db, "is not a fiberlinkd database"),
        ("newer", "newer than this fiberlinkd knows"),
    ],
)
async def test_restore_refuses_a_bad_backup_and_leaves_the_database_alone(
    short_dir: Path, make: Any, message: str
) -> None:
    state = short_dir / "state"
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        await ok(socket_path, "app.add", {"app_id": "forum"})
        await ok(socket_path, "backup", {"path": str(short_dir / "good.sqlite3")})
    bad = short_dir / "bad.sqlite3"
    if make == "newer":
        bad.write_bytes((short_dir / "good.sqlite3").read_bytes())
        conn = sqlite3.connect(bad)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    else:
        make(bad)
    before = sorted(p.name for p in state.iterdir())
    with pytest.raises(BackupError, match=message):
        restore_database(bad, state)
    assert sorted(p.name for p in state.iterdir()) == before


def test_restore_refuses_a_live_database_with_its_wal(short_dir: Path) -> None:
    live = short_dir / "live.sqlite3"
    conn = sqlite3.connect(live)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    try:
        with pytest.raises(BackupError, match="not a closed backup"):
            restore_database(live, short_dir / "state")
    finally:
        conn.close()


async def test_restore_refuses_while_the_daemon_is_running(short_dir: Path) -> None:
    config = short_dir / "fiberlinkd.toml"
    async with server_env(short_dir) as (_rt, _peer, socket_path):
        await ok(socket_path, "backup", {"path": str(short_dir / "good.sqlite3")})
        config.write_text(
            f'state_dir = "{short_dir / "state"}"\n[admin]\nsocket = "{socket_path}"\n'
        )
        ns = argparse.Namespace(path=short_dir / "good.sqlite3", config=config, socket=None)
        out, err = io.StringIO(), io.StringIO()
        code = await trio.to_thread.run_sync(lambda: cmd_restore(ns, out=out, err=err))
    assert code == 1
    assert err.getvalue() == (
        f"fiberlinkd restore: the daemon is running (its admin socket {socket_path} answers); "
        "stop it first: systemctl stop fiberlinkd\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert cmd_restore(ns, out=out, err=err) == 0, err.getvalue()
    assert "restored" in out.getvalue()
