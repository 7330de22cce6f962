"""``backup PATH`` (daemon running) and ``fiberlinkd restore PATH`` (daemon stopped).

Backup: the daemon copies its database with SQLite's online backup API, page batches of
:data:`BACKUP_PAGES_PER_STEP`, from one read snapshot, so writes go on meanwhile and the
copy is consistent as of the snapshot. The copy is written as ``PATH.partial`` (mode 0600:
it holds the apps' HMAC secrets), switched to rollback-journal mode so it is one
self-contained file, checked with ``PRAGMA integrity_check``, fsynced, and only then
linked to ``PATH``. ``PATH`` must be absolute and must not exist; the daemon writes it as
its own user.

Restore: refuses while the admin socket is live, copies the backup next to the database,
verifies the copy (integrity check, a fiberlinkd schema no newer than this build), moves the
current database and its ``-wal``/``-shm`` aside as
``fiberlinkd.sqlite3.before-restore-<time>[-wal|-shm]``, and renames the copy into place.
An older schema is migrated when the daemon next starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from fiberlinkd.admin.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    admin_parser,
    resolve_socket_path,
)
from fiberlinkd.admin.protocol import CONFLICT, FAILED, AdminError, bad_request
from fiberlinkd.admin.registry import CommandContext, Scope, admin_command, arg_str
from fiberlinkd.config import ConfigError, load_config
from fiberlinkd.ledger.store import DB_FILENAME, SCHEMA_VERSION, connect, db_path

BACKUP_PAGES_PER_STEP = 256  # 1 MiB of 4 KiB pages between progress updates
PROGRESS_INTERVAL_S = 0.5
BACKUP_FILE_MODE = 0o600
REQUIRED_TABLES = ("apps", "ledger_entries", "balances")


class BackupError(Exception):
    """A backup or restore step failed; ``str()`` is the operator's line."""


class BackupTargetExists(BackupError):
    """The backup path is taken; backups never overwrite."""


@attrs.define
class BackupProgress:
    """Written by the backup thread, read by the reporting task (ints: no lock needed)."""

    done_pages: int = 0
    total_pages: int = 0

    def update(self, _status: int, remaining: int, total: int) -> None:
        self.total_pages = total
        self.done_pages = total - remaining


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_database(path: Path) -> int:
    """Integrity-check a fiberlinkd database file; return its schema version.

    Errors: :class:`BackupError` naming the problem.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"{path} cannot be opened as SQLite: {exc}") from None
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            raise BackupError(f"{path} failed the integrity check: {'; '.join(problems[:5])}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a usable SQLite database: {exc}") from None
    finally:
        conn.close()
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if version < 1 or missing:
        raise BackupError(f"{path} is not a fiberlinkd database (schema version {version})")
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"{path} has schema version {version}, newer than this fiberlinkd knows "
            f"({SCHEMA_VERSION}); upgrade fiberlinkd first"
        )
    return version


def backup_database(source: Path, target: Path, progress: BackupProgress) -> dict[str, Any]:
    """Copy the live database at ``source`` to the new file ``target`` (sync; run it in a
    worker thread). Errors: :class:`BackupError`; nothing is left behind on failure."""
    if target.exists():
        raise BackupTargetExists(f"{target} exists; choose a new path")
    if not target.parent.is_dir():
        raise BackupError(f"directory {target.parent} does not exist")
    live_names = {source.name + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    if target.parent.resolve() == source.parent.resolve() and target.name in live_names:
        raise BackupError(f"{target} is one of the live database's own files")
    partial = target.with_name(target.name + ".partial")
    started = time.monotonic()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, BACKUP_FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise BackupError(f"cannot create {partial}: {exc.strerror}") from None
    try:
        src = connect(source, read_only=True)
        dest = sqlite3.connect(partial, isolation_level=None)
        try:
            src.execute("BEGIN")  # one read snapshot for the whole copy
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            src.backup(dest, pages=BACKUP_PAGES_PER_STEP, progress=progress.update, sleep=0)
            src.execute("ROLLBACK")
            dest.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dest.close()
            src.close()
        version = check_database(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.link(partial, target)  # never overwrites
        partial.unlink()
        _fsync_dir(target.parent)
    except FileExistsError:
        partial.unlink(missing_ok=True)
        raise BackupTargetExists(
            f"{target} appeared while the backup ran; choose a new path"
        ) from None
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise BackupError(f"backup to {target} failed: {detail}") from None
    except BackupError:
        partial.unlink(missing_ok=True)
        raise
    return {
        "path": str(target),
        "size_bytes": target.stat().st_size,
        "pages": progress.total_pages,
        "schema_version": version,
        "integrity_check": "ok",
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


async def _report_progress(ctx: CommandContext, progress: BackupProgress) -> None:
    sent = (-1, -1)
    while True:
        await trio.sleep(PROGRESS_INTERVAL_S)
        now = (progress.done_pages, progress.total_pages)
        if now != sent and now[1] > 0:
            await ctx.progress({"done_pages": now[0], "total_pages": now[1]})
            sent = now


@admin_command("backup", mutates=True, scope=Scope.SUPER)
async def backup(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Write a consistent, integrity-checked copy of the database to a new file."""
    target = Path(arg_str(args, "path", max_chars=4096))
    if not target.is_absolute():
        raise bad_request("backup path must be absolute (the daemon has its own cwd)")
    progress = BackupProgress()
    failure: BackupError | None = None
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_progress, ctx, progress)
        try:
            result = await trio.to_thread.run_sync(
                backup_database, ctx.rt.ledger.path, target, progress
            )
        except BackupError as exc:
            failure = exc  # raised outside the nursery, so it is not wrapped in a group
        finally:
            nursery.cancel_scope.cancel()
    if isinstance(failure, BackupTargetExists):
        raise AdminError(CONFLICT, str(failure))
    if failure is not None:
        raise AdminError(FAILED, str(failure))
    return result


# --- restore (CLI side, daemon stopped) --------------------------------------------------


def socket_is_live(path: Path) -> bool:
    """Whether a process accepts connections on ``path``.

    Errors: :class:`BackupError` when that cannot be told (permission denied).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except PermissionError:
            raise BackupError(
                f"cannot tell whether the daemon is running (no permission on {path}); "
                "run restore as root or as the fiberlinkd user"
            ) from None
        except TimeoutError:
            return True
        return True


def restore_database(backup: Path, state_dir: Path, *, now: float | None = None) -> dict[str, Any]:
    """Verify ``backup`` and install it as the database in ``state_dir`` (daemon stopped).

    Errors: :class:`BackupError`; the current database is untouched unless every check
    passed.
    """
    backup = backup.absolute()
    if not backup.is_file():
        raise BackupError(f"{backup} is not a file")
    wal = Path(f"{backup}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise BackupError(
            f"{backup} has a non-empty {wal.name} beside it: it is a live database, not a "
            "closed backup; take one with 'fiberlinkd admin backup'"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    live = db_path(state_dir)
    if live.exists() and live.samefile(backup):
        raise BackupError(f"{backup} is the live database itself")
    staging = state_dir / f"{DB_FILENAME}.restore-tmp"
    staging.unlink(missing_ok=True)
    try:
        shutil.copyfile(backup, staging)
        os.chmod(staging, BACKUP_FILE_MODE)
        version = check_database(staging)
        _match_owner(staging, live if live.exists() else state_dir)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise BackupError(f"cannot copy {backup} into {state_dir}: {exc.strerror}") from None
    except BackupError:
        staging.unlink(missing_ok=True)
        raise
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside_base = state_dir / f"{DB_FILENAME}.before-restore-{stamp}"
    moved = []
    for suffix in ("", "-wal", "-shm"):
        current = Path(f"{live}{suffix}")
        if current.exists():
            aside = Path(f"{aside_base}{suffix}")
            os.rename(current, aside)
            moved.append(str(aside))
    os.rename(staging, live)
    _fsync_dir(state_dir)
    return {
        "restored_from": str(backup),
        "database": str(live),
        "schema_version": version,
        "current_schema_version": SCHEMA_VERSION,
        "previous_files": moved,
    }


def _match_owner(path: Path, like: Path) -> None:
    """As root, give the restored file the owner of the database it replaces, so the
    daemon's user can still write it."""
    if os.geteuid() != 0:
        return
    info = like.stat()
    os.chown(path, info.st_uid, info.st_gid)


def _refuse_if_running(socket_path: Path) -> None:
    if socket_is_live(socket_path):
        raise BackupError(
            f"the daemon is running (its admin socket {socket_path} answers); stop it "
            "first: systemctl stop fiberlinkd"
        )


def cmd_restore(
    ns: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(ns.config)
    except ConfigError as exc:
        print(exc, file=err)
        return 2
    try:
        _refuse_if_running(resolve_socket_path(ns))
        result = restore_database(ns.path, config.state_path)
    except (BackupError, CliError) as exc:
        print(f"fiberlinkd restore: {exc}", file=err)
        return EXIT_FAILURE
    print(f"restored {result['restored_from']} into {result['database']}", file=out)
    if result["previous_files"]:
        print(f"the previous database was moved to {result['previous_files'][0]}", file=out)
    if result["schema_version"] < SCHEMA_VERSION:
        print(
            f"schema version {result['schema_version']} will be migrated to {SCHEMA_VERSION} "
            "when the daemon starts",
            file=out,
        )
    print("start the daemon: systemctl start fiberlinkd", file=out)
    return EXIT_OK


# --- CLI --------------------------------------------------------------------------------


def _render(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    return (
        f"backup written to {result['path']} ({result['size_bytes']} bytes, "
        f"schema v{result['schema_version']}, integrity_check ok, {result['duration_ms']} ms)"
    )


def add_cli(admin_subparsers: Any) -> None:
    parser = admin_parser(
        admin_subparsers,
        "backup",
        command="backup",
        help="write an online, integrity-checked copy of the database (written by the daemon "
        "as its user: pick a directory it can write)",
        args=lambda ns: {"path": os.path.abspath(ns.path)},
        render=_render,
    )
    parser.add_argument("path", metavar="PATH", help="new file to write (must not exist)")
