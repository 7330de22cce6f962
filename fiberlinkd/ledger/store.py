"""The SQLite store: one writer connection, one reader connection, ordered migrations.

Why stdlib ``sqlite3`` and not aiosqlite: aiosqlite awaits asyncio futures and does not run
under trio. Instead every transaction is a plain sync function ``fn(conn, *args)`` handed
whole to a worker thread (``trio.to_thread.run_sync`` behind a ``CapacityLimiter(1)``), so no
transaction can stay open across a network call.

``transact_grouped`` is the group-commit variant for the API's small hot writes (nonces,
new tips): concurrent callers share one transaction and one fsync, each in its own
SAVEPOINT, so one caller's failure rolls back only its own writes.

``inline=True`` runs ``fn`` on the trio thread instead. Tests that use trio's fake clock need
it: the fake clock jumps while a worker thread runs.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, cast

import attrs
import outcome
import trio

from fiberlinkd.groupcall import GroupCall

P = ParamSpec("P")
T = TypeVar("T")

DB_FILENAME = "fiberlinkd.sqlite3"
BUSY_TIMEOUT_MS = 5_000
GROUP_MAX_OPS = 64  # writes sharing one grouped commit at most

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class LedgerError(Exception):
    """The database cannot be used (newer schema, corrupt file, failed migration)."""


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> tuple[Migration, ...]:
    """The ordered migration scripts shipped in ``fiberlinkd/ledger/migrations``."""
    folder = importlib.resources.files("fiberlinkd.ledger") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise LedgerError(f"migration {migration.name} is out of sequence")
    return tuple(found)


MIGRATIONS = load_migrations()
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open a connection with fiberlinkd's pragmas. Transactions are explicit."""
    if read_only:
        conn = sqlite3.connect(
            f"file:{urllib.parse.quote(str(path))}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")  # this is money: fsync every commit
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply pending migrations, each in its own transaction; return the schema version.

    Errors: :class:`LedgerError` when the file was written by a newer fiberlinkd, or a
    migration fails (that migration is rolled back; earlier ones stay applied).
    """
    current = schema_version(conn)
    if current > len(migrations):
        raise LedgerError(
            f"database schema version {current} is newer than this fiberlinkd knows "
            f"({len(migrations)}); upgrade fiberlinkd or restore a matching backup"
        )
    for migration in migrations[current:]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error | LedgerError):
                raise LedgerError(f"migration {migration.name} failed: {exc}") from exc
            raise
    return schema_version(conn)


def _split_sql(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit implicitly)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise LedgerError(f"incomplete SQL statement at the end of a migration: {buffer[:60]!r}")


@attrs.define
class Ledger:
    """Runs transaction functions against the database. Create it with :func:`open_ledger`."""

    path: Path
    _writer: sqlite3.Connection
    _reader: sqlite3.Connection
    _point_reader: sqlite3.Connection
    inline: bool = False
    _write_limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    _read_limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    group: GroupCall[Callable[[sqlite3.Connection], object], object] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.group = GroupCall(self._run_grouped, max_batch=GROUP_MAX_OPS, name="ledger")

    async def transact(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args)`` inside ``BEGIN IMMEDIATE … COMMIT``; roll back if it raises.

        Cancellation: the worker thread cannot be interrupted, so once started the
        transaction runs to commit or rollback; the caller's cancellation is delivered after.
        """
        if self.inline:
            return _run_transaction(self._writer, fn, *args, **kwargs)
        return await trio.to_thread.run_sync(
            lambda: _run_transaction(self._writer, fn, *args, **kwargs),
            limiter=self._write_limiter,
        )

    async def transact_grouped(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Like :meth:`transact`, but concurrent callers may share one commit.

        ``fn`` runs in its own SAVEPOINT inside a shared ``BEGIN IMMEDIATE … COMMIT``: if it
        raises, its writes are rolled back and its caller gets the exception while the
        others commit. When this returns, ``fn``'s writes are durable, exactly as with
        :meth:`transact`. If the shared COMMIT itself fails (or SQLite abandons the
        transaction), every caller of that batch gets the error and nothing is written.
        Meant for short independent writes on the API's hot path.
        """
        op: Callable[[sqlite3.Connection], object] = lambda conn: fn(conn, *args, **kwargs)  # noqa: E731
        return cast(T, await self.group(op))  # the op returned fn's T

    async def _run_grouped(
        self, ops: list[Callable[[sqlite3.Connection], object]]
    ) -> list[outcome.Outcome[object]]:
        if self.inline:
            return _run_group(self._writer, ops)
        return await trio.to_thread.run_sync(
            _run_group, self._writer, ops, limiter=self._write_limiter
        )

    async def read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a read-only ``fn`` on the reader connection in one consistent snapshot.

        WAL lets it run beside the writer, so reads never queue behind an fsync.
        """
        if self.inline:
            return _run_read(self._reader, fn, *args, **kwargs)
        return await trio.to_thread.run_sync(
            lambda: _run_read(self._reader, fn, *args, **kwargs),
            limiter=self._read_limiter,
        )

    def lookup(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a small bounded read right here on the trio thread.

        For the API's hottest reads (index lookups returning at most a page of rows), where
        a thread hand-off costs more than the query. In WAL mode a reader never waits for
        the writer, so this cannot block the event loop on a lock. Anything whose cost
        grows with history (scans, aggregates over many rows) belongs in :meth:`read`.
        """
        return _run_read(self._point_reader, fn, *args, **kwargs)

    def close(self) -> None:
        self._point_reader.close()
        self._reader.close()
        self._writer.close()


def _run_transaction(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")  # may fail too (deferred constraint, disk full): roll back
    except BaseException:
        if conn.in_transaction:  # some errors already rolled SQLite back
            conn.execute("ROLLBACK")
        raise
    return result


def _run_group(
    conn: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], object]]
) -> list[outcome.Outcome[object]]:
    """Run each op in its own savepoint, then commit them all together."""
    results: list[outcome.Outcome[object]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT grouped_op")
            try:
                result: outcome.Outcome[object] = outcome.Value(op(conn))
            except Exception as exc:
                if not conn.in_transaction:  # SQLite itself gave up (disk full, I/O error)
                    raise
                conn.execute("ROLLBACK TO grouped_op")
                result = outcome.Error(exc)
            conn.execute("RELEASE grouped_op")
            results.append(result)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _run_read(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn, *args, **kwargs)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_FILENAME


def _prepare_schema(conn: sqlite3.Connection, *, migrate_schema: bool) -> None:
    if migrate_schema:
        migrate(conn)
    elif schema_version(conn) != SCHEMA_VERSION:
        raise LedgerError(
            f"database schema version {schema_version(conn)} is not current "
            f"({SCHEMA_VERSION}); run 'fiberlinkd migrate'"
        )


@contextlib.asynccontextmanager
async def open_ledger(
    state_dir: Path, *, inline: bool = False, migrate_schema: bool = True
) -> AsyncIterator[Ledger]:
    """Open (creating if needed) and migrate the database in ``state_dir``.

    Errors: :class:`LedgerError` for a newer schema or a failed migration, or when
    ``migrate_schema`` is false and the schema is not current.
    """
    path = db_path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at startup
    writer = connect(path)
    try:
        _prepare_schema(writer, migrate_schema=migrate_schema)
        reader = connect(path, read_only=True)
        point_reader = connect(path, read_only=True)
    except BaseException:
        writer.close()
        raise
    ledger = Ledger(path, writer, reader, point_reader, inline=inline)
    try:
        yield ledger
    finally:
        ledger.close()
