"""The SQLite ledger store and the append-only entries on top of it.

Rules under test:
- a fresh install and an install migrated one step at a time (closing the file between
  steps) end with the same schema: same ``sqlite_master`` SQL, same ``user_version``;
- a failed migration leaves the file as it was (schema, version, rows), and the connection
  usable; a file written by a newer fiberlinkd is refused with a message saying so;
- ``transact`` is all or nothing: an exception in ``fn`` or at COMMIT rolls back whole;
  threaded mode runs ``fn`` in a worker thread one at a time, inline mode on the trio
  thread; a started transaction is not torn by cancellation;
- ``transact_grouped``: concurrent callers share a commit (fewer transactions than
  callers) and each write is committed when its call returns; an op that raises rolls back
  only its own writes and only its caller sees the error; when SQLite ends the shared
  transaction, or the shared COMMIT fails, every op of that batch fails and none commits;
- every connection runs WAL, ``synchronous=FULL`` and ``foreign_keys=ON``; the reader
  cannot write;
- ``append_entry`` is idempotent by key, chains every entry to the one before it, moves the
  balance row in the same transaction, and the CHECK constraints refuse an overdraft.
All databases are real files in ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import outcome
import pytest
import trio

from fiberlinkd.ledger import Ledger, LedgerError, open_ledger
from fiberlinkd.ledger.entries import (
    GENESIS_HASH,
    EntryKind,
    LedgerEntry,
    append_entry,
    entry_hash,
    get_balance,
)
from fiberlinkd.ledger.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    connect,
    db_path,
    migrate,
    schema_version,
)

NOW_MS = 1_800_000_000_000
APP = "forum-1"


def schema_of(path: Path) -> tuple[int, list[tuple[str, str, str, str | None]]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        return int(conn.execute("PRAGMA user_version").fetchone()[0]), rows
    finally:
        conn.close()


def contents_of(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    finally:
        conn.close()


def add_app(conn: sqlite3.Connection, app_id: str = APP) -> None:
    conn.execute(
        "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES (?, ?, ?)",
        (app_id, "s" * 32, NOW_MS),
    )


def count_apps(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM apps").fetchone()[0])


def credit(
    conn: sqlite3.Connection,
    amount: int,
    key: str,
    *,
    user: str = "alice",
    reserved_delta: int = 0,
    kind: str = EntryKind.TIP_CREDIT,
) -> bool:
    return append_entry(
        conn,
        app_id=APP,
        user_id=user,
        asset="CKB",
        amount=amount,
        kind=kind,
        ref=key.rsplit(":", 1)[-1],
        idempotency_key=key,
        now_ms=NOW_MS,
        reserved_delta=reserved_delta,
    )


@pytest.fixture(params=["threaded", "inline"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(tmp_path / "state", inline=request.param == "inline") as opened:
        await opened.transact(add_app)
        yield opened


# --- migrations ---------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 4


async def test_fresh_install_and_step_by_step_migration_give_the_same_schema(
    tmp_path: Path,
) -> None:
    fresh_dir = tmp_path / "fresh"
    async with open_ledger(fresh_dir):
        pass
    stepped = tmp_path / "stepped.sqlite3"
    for step in range(1, SCHEMA_VERSION + 1):
        conn = connect(stepped)
        try:
            assert migrate(conn, MIGRATIONS[:step]) == step
        finally:
            conn.close()
    fresh_version, fresh_schema = schema_of(db_path(fresh_dir))
    stepped_version, stepped_schema = schema_of(stepped)
    assert fresh_version == stepped_version == SCHEMA_VERSION
    assert fresh_schema == stepped_schema
    names = {row[1] for row in fresh_schema}
    assert {
        "apps",
        "admin_grants",
        "settings",
        "audit_log",
        "nonces",
        "tip_intents",
        "tip_events",
        "ledger_entries",
        "balances",
        "withdrawals",
        "withdrawal_events",
        "withdrawal_policies",
        "reconcile_runs",
        "reconcile_findings",
    } <= names


async def test_reopening_a_current_database_changes_nothing(tmp_path: Path) -> None:
    async with open_ledger(tmp_path) as ledger:
        await ledger.transact(add_app)
    before = schema_of(db_path(tmp_path)), contents_of(db_path(tmp_path))
    async with open_ledger(tmp_path) as ledger:
        assert await ledger.read(count_apps) == 1
    assert (schema_of(db_path(tmp_path)), contents_of(db_path(tmp_path))) == before


def test_migrate_applies_only_pending_migrations(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    try:
        assert migrate(conn, MIGRATIONS[:1]) == 1
        add_app(conn)  # autocommit: rows written at version 1 survive later migrations
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION
        assert count_apps(conn) == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    "bad_sql",
    [
        "CREATE TABLE half_done (a INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
        "CREATE TABLE half_done (a INTEGER);\nCREATE TABLE apps (x);\n",
        "CREATE TABLE half_done (a INTEGER);\nCREATE TABLE unfinished (a INTEGER\n",
    ],
    ids=["runtime-error", "duplicate-table", "incomplete-statement"],
)
def test_a_failed_migration_leaves_the_file_unchanged(tmp_path: Path, bad_sql: str) -> None:
    path = tmp_path / "db.sqlite3"
    conn = connect(path)
    try:
        migrate(conn)
        add_app(conn)
        before = schema_of(path), contents_of(path)
        bad = Migration(SCHEMA_VERSION + 1, f"{SCHEMA_VERSION + 1:04d}_bad.sql", bad_sql)
        with pytest.raises(LedgerError, match=rf"migration {bad.name} failed"):
            migrate(conn, (*MIGRATIONS, bad))
        assert not conn.in_transaction, "the failed migration must be rolled back"
        assert schema_version(conn) == SCHEMA_VERSION
        # the connection is still usable
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert (schema_of(path), contents_of(path)) == before


def test_a_failed_first_migration_leaves_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = connect(path)
    try:
        bad = (Migration(1, "0001_bad.sql", "CREATE TABLE t (a);\nSELECT nonsense(;\n"),)
        with pytest.raises(LedgerError, match=r"0001_bad\.sql"):
            migrate(conn, bad)
    finally:
        conn.close()
    assert schema_of(path) == (0, [])


async def test_a_database_from_a_newer_fiberlinkd_is_refused_clearly(tmp_path: Path) -> None:
    async with open_ledger(tmp_path):
        pass
    conn = sqlite3.connect(db_path(tmp_path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = schema_of(db_path(tmp_path))
    with pytest.raises(LedgerError) as info:
        async with open_ledger(tmp_path):
            pass  # pragma: no cover
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1} is newer than this fiberlinkd knows" in message
    assert "upgrade fiberlinkd" in message
    assert schema_of(db_path(tmp_path)) == before


async def test_open_without_migrating_refuses_an_old_schema(tmp_path: Path) -> None:
    conn = connect(db_path(tmp_path))
    migrate(conn, MIGRATIONS[:1])
    conn.close()
    with pytest.raises(LedgerError, match="run 'fiberlinkd migrate'"):
        async with open_ledger(tmp_path, migrate_schema=False):
            pass  # pragma: no cover
    assert schema_of(db_path(tmp_path))[0] == 1


async def test_open_ledger_creates_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    async with open_ledger(state) as ledger:
        assert ledger.path == state / "fiberlinkd.sqlite3"
    assert db_path(state).is_file()


@pytest.mark.parametrize("name", ["a?b", "c#d", "e%20f", "with space"])
async def test_reader_and_writer_open_the_same_file_whatever_its_path(
    tmp_path: Path, name: str
) -> None:
    async with open_ledger(tmp_path / name) as ledger:
        await ledger.transact(add_app)
        assert await ledger.read(count_apps) == 1
        assert await ledger.read(schema_version) == SCHEMA_VERSION


# --- connection settings ------------------------------------------------------------------


def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
    return (
        conn.execute("PRAGMA journal_mode").fetchone()[0],
        conn.execute("PRAGMA synchronous").fetchone()[0],
        conn.execute("PRAGMA foreign_keys").fetchone()[0],
    )


async def test_writer_and_reader_use_wal_full_sync_and_foreign_keys(ledger: Ledger) -> None:
    def outside_transaction(conn: sqlite3.Connection) -> tuple[str, int, int]:
        return pragmas(conn)

    # pragmas are read inside the store's transaction wrappers; the values are per connection
    assert await ledger.transact(outside_transaction) == ("wal", 2, 1)
    assert await ledger.read(outside_transaction) == ("wal", 2, 1)


async def test_the_reader_cannot_write(ledger: Ledger) -> None:
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
        await ledger.read(add_app, "other-app")
    assert await ledger.read(count_apps) == 1


async def test_foreign_keys_are_enforced(ledger: Ledger) -> None:
    def grant_for_unknown_app(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO admin_grants (uid, role, app_id, created_at)"
            " VALUES (1000, 'COMMUNITY_ADMIN', 'no-such-app', 0)"
        )

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await ledger.transact(grant_for_unknown_app)


# --- transactions -------------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_transact_commits_and_returns_the_result(ledger: Ledger) -> None:
    def add_and_count(conn: sqlite3.Connection, app_id: str) -> int:
        add_app(conn, app_id)
        return count_apps(conn)

    assert await ledger.transact(add_and_count, "second") == 2
    assert await ledger.read(count_apps) == 2


async def test_transact_rolls_back_everything_when_fn_raises(ledger: Ledger) -> None:
    def add_then_fail(conn: sqlite3.Connection) -> None:
        add_app(conn, "doomed")
        credit(conn, 500, "settlement:tip_intent:t1")
        raise Boom("after two writes")

    with pytest.raises(Boom):
        await ledger.transact(add_then_fail)
    assert await ledger.read(count_apps) == 1
    assert await ledger.read(get_balance, APP, "alice", "CKB") == (
        await ledger.read(get_balance, APP, "nobody", "CKB")
    )
    # the writer is usable afterwards
    assert await ledger.transact(credit, 7, "k1") is True


async def test_a_failing_commit_rolls_back_and_keeps_the_writer_usable(ledger: Ledger) -> None:
    def violate_at_commit(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute(
            "INSERT INTO admin_grants (uid, role, app_id, created_at)"
            " VALUES (1, 'COMMUNITY_ADMIN', 'ghost', 0)"
        )
        add_app(conn, "also-rolled-back")

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await ledger.transact(violate_at_commit)
    assert await ledger.read(count_apps) == 1
    await ledger.transact(add_app, "next")
    assert await ledger.read(count_apps) == 2


async def test_the_original_error_survives_when_sqlite_already_rolled_back(
    ledger: Ledger,
) -> None:
    def roll_back_then_fail(conn: sqlite3.Connection) -> None:
        add_app(conn, "gone")
        conn.execute("ROLLBACK")
        raise Boom("the real problem")

    with pytest.raises(Boom, match="the real problem"):
        await ledger.transact(roll_back_then_fail)
    assert await ledger.read(count_apps) == 1


async def test_threaded_mode_runs_fn_in_a_worker_thread(tmp_path: Path) -> None:
    async with open_ledger(tmp_path) as ledger:
        assert ledger.inline is False
        writer_thread = await ledger.transact(lambda _conn: threading.get_ident())
        reader_thread = await ledger.read(lambda _conn: threading.get_ident())
    assert threading.get_ident() not in (writer_thread, reader_thread)


async def test_inline_mode_runs_fn_on_the_trio_thread(tmp_path: Path) -> None:
    async with open_ledger(tmp_path, inline=True) as ledger:
        assert await ledger.transact(lambda _conn: threading.get_ident()) == threading.get_ident()
        assert await ledger.read(lambda _conn: threading.get_ident()) == threading.get_ident()


async def test_threaded_transactions_run_one_at_a_time(tmp_path: Path) -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    def bump(conn: sqlite3.Connection) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        value = conn.execute("SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM settings")
        current = int(value.fetchone()[0])
        time.sleep(0.002)  # widen the race window a lost update would need
        conn.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES ('n', ?, 0)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(current + 1),),
        )
        with lock:
            inside -= 1

    async with open_ledger(tmp_path) as ledger:
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(ledger.transact, bump)
        total = await ledger.read(
            lambda conn: int(conn.execute("SELECT value FROM settings").fetchone()[0])
        )
    assert total == 40
    assert most == 1


async def test_a_started_threaded_transaction_is_not_torn_by_cancellation(
    tmp_path: Path,
) -> None:
    def slow_insert(conn: sqlite3.Connection) -> None:
        add_app(conn, "slow")
        time.sleep(0.3)

    async with open_ledger(tmp_path) as ledger:
        with trio.move_on_after(0.05) as scope:
            await ledger.transact(slow_insert)
            await trio.lowlevel.checkpoint()  # the postponed cancellation arrives here
        assert scope.cancelled_caught
        assert await ledger.read(count_apps) == 1  # committed whole, cancellation came after


async def test_reads_see_a_consistent_snapshot(tmp_path: Path) -> None:
    async with open_ledger(tmp_path) as ledger:
        await ledger.transact(add_app)

        def read_twice(conn: sqlite3.Connection) -> tuple[int, int]:
            first = count_apps(conn)
            other = connect(ledger.path)  # a concurrent writer commits between our reads
            try:
                add_app(other, "between")
            finally:
                other.close()
            return first, count_apps(conn)

        assert await ledger.read(read_twice) == (1, 1)
        assert await ledger.read(count_apps) == 2


# --- grouped transactions -----------------------------------------------------------------


def committed_apps(path: Path) -> set[str]:
    """The app ids a separate connection sees: committed rows only."""
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT app_id FROM apps")}
    finally:
        conn.close()


async def concurrently(
    calls: dict[str, Callable[[], Awaitable[object]]],
) -> dict[str, outcome.Outcome[object]]:
    """Start every call at once in one nursery; each name's own outcome."""
    results: dict[str, outcome.Outcome[object]] = {}

    async def run(name: str, call: Callable[[], Awaitable[object]]) -> None:
        try:  # not outcome.acapture: that would capture Cancelled too
            results[name] = outcome.Value(await call())
        except Exception as exc:
            results[name] = outcome.Error(exc)

    async with trio.open_nursery() as nursery:
        for name, call in calls.items():
            nursery.start_soon(run, name, call)
    return results


def add_app_named(conn: sqlite3.Connection, app_id: str) -> str:
    add_app(conn, app_id)
    return app_id


async def test_concurrent_grouped_writes_share_commits_and_are_durable_on_return(
    ledger: Ledger,
) -> None:
    n = 20
    committed_on_return: dict[str, bool] = {}

    async def write(app_id: str) -> None:
        assert await ledger.transact_grouped(add_app_named, app_id) == app_id
        committed_on_return[app_id] = app_id in committed_apps(ledger.path)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(write, f"grouped-{i}")
    names = {f"grouped-{i}" for i in range(n)}
    assert committed_on_return == dict.fromkeys(names, True)
    assert ledger.group.items == n
    assert 1 <= ledger.group.batches < n
    assert committed_apps(ledger.path) == {APP} | names


async def test_a_failing_grouped_op_rolls_back_only_its_own_writes(ledger: Ledger) -> None:
    def credit_c(conn: sqlite3.Connection) -> bool:
        add_app(conn, "c")
        return credit(conn, 100, "k:c")

    def write_then_fail(conn: sqlite3.Connection) -> None:
        add_app(conn, "doomed")
        credit(conn, 500, "k:doomed")
        raise ValueError("after two writes")

    got = await concurrently(
        {
            "a": lambda: ledger.transact_grouped(add_app_named, "a"),
            "duplicate": lambda: ledger.transact_grouped(add_app, APP),
            "b": lambda: ledger.transact_grouped(add_app_named, "b"),
            "doomed": lambda: ledger.transact_grouped(write_then_fail),
            "c": lambda: ledger.transact_grouped(credit_c),
        }
    )
    assert ledger.group.batches == 1  # all five shared one transaction
    assert (got["a"].unwrap(), got["b"].unwrap(), got["c"].unwrap()) == ("a", "b", True)
    with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: apps\.app_id"):
        got["duplicate"].unwrap()
    with pytest.raises(ValueError, match="after two writes"):
        got["doomed"].unwrap()
    assert committed_apps(ledger.path) == {APP, "a", "b", "c"}
    chain = await ledger.read(entries)
    assert [e.idempotency_key for e in chain] == ["k:c"]
    assert chain[0].prev_hash == GENESIS_HASH  # chained past the rolled-back entry
    assert (await ledger.read(get_balance, APP, "alice", "CKB")).settled == 100
    assert await ledger.transact_grouped(add_app_named, "later") == "later"
    assert "later" in committed_apps(ledger.path)


async def test_when_sqlite_ends_the_shared_transaction_every_op_of_the_batch_fails(
    ledger: Ledger,
) -> None:
    def roll_back_then_fail(conn: sqlite3.Connection) -> None:
        add_app(conn, "gone")
        conn.execute("ROLLBACK")  # as SQLite does on some errors (disk full, I/O error)
        raise Boom("the transaction is gone")

    got = await concurrently(
        {
            "a": lambda: ledger.transact_grouped(add_app_named, "a"),
            "rolled-back": lambda: ledger.transact_grouped(roll_back_then_fail),
            "b": lambda: ledger.transact_grouped(add_app_named, "b"),
        }
    )
    assert ledger.group.batches == 1
    for name in ("a", "rolled-back", "b"):
        with pytest.raises(Boom, match="the transaction is gone"):
            got[name].unwrap()
    assert committed_apps(ledger.path) == {APP}
    assert await ledger.transact_grouped(add_app_named, "after") == "after"
    await ledger.transact(add_app, "plain")
    assert committed_apps(ledger.path) == {APP, "after", "plain"}


async def test_a_failing_shared_commit_fails_every_op_and_commits_nothing(
    ledger: Ledger,
) -> None:
    def violate_at_commit(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute(
            "INSERT INTO admin_grants (uid, role, app_id, created_at)"
            " VALUES (1, 'COMMUNITY_ADMIN', 'ghost', 0)"
        )

    got = await concurrently(
        {
            "a": lambda: ledger.transact_grouped(add_app_named, "a"),
            "dangling": lambda: ledger.transact_grouped(violate_at_commit),
        }
    )
    assert ledger.group.batches == 1
    for name in ("a", "dangling"):
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            got[name].unwrap()
    assert committed_apps(ledger.path) == {APP}
    assert await ledger.transact_grouped(add_app_named, "after") == "after"
    assert committed_apps(ledger.path) == {APP, "after"}


# --- ledger entries -----------------------------------------------------------------------


def entries(conn: sqlite3.Connection) -> list[LedgerEntry]:
    rows = conn.execute("SELECT * FROM ledger_entries ORDER BY id").fetchall()
    return [LedgerEntry.from_row(row) for row in rows]


def recomputed_hash(entry: LedgerEntry) -> str:
    return entry_hash(
        prev_hash=entry.prev_hash,
        entry_id=entry.id,
        app_id=entry.app_id,
        user_id=entry.user_id,
        asset=entry.asset,
        amount=entry.amount,
        reserved_delta=entry.reserved_delta,
        kind=entry.kind,
        ref=entry.ref,
        idempotency_key=entry.idempotency_key,
        created_at=entry.created_at,
    )


async def test_an_entry_credits_the_balance_in_the_same_transaction(ledger: Ledger) -> None:
    assert await ledger.transact(credit, 1_000, "settlement:tip_intent:t1") is True
    balance = await ledger.read(get_balance, APP, "alice", "CKB")
    assert (balance.settled, balance.reserved, balance.available) == (1_000, 0, 1_000)


async def test_replaying_an_idempotency_key_is_a_no_op(ledger: Ledger) -> None:
    key = "settlement:tip_intent:t1"
    assert await ledger.transact(credit, 1_000, key) is True
    assert await ledger.transact(credit, 1_000, key) is False
    assert await ledger.transact(credit, 999_999, key) is False  # even with other values
    assert (await ledger.read(get_balance, APP, "alice", "CKB")).settled == 1_000
    assert len(await ledger.read(entries)) == 1


async def test_concurrent_replays_credit_exactly_once(ledger: Ledger) -> None:
    results: list[bool] = []

    async def attempt() -> None:
        results.append(await ledger.transact(credit, 250, "settlement:tip_intent:race"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(attempt)
    assert sorted(results) == [False] * 9 + [True]
    assert (await ledger.read(get_balance, APP, "alice", "CKB")).settled == 250


async def test_entries_form_a_hash_chain_from_genesis(ledger: Ledger) -> None:
    await ledger.transact(credit, 500, "k:1")
    await ledger.transact(credit, 700, "k:2", user="bob")
    await ledger.transact(credit, 0, "k:3", reserved_delta=200, kind=EntryKind.WITHDRAWAL_RESERVE)
    await ledger.transact(credit, -100, "k:4", reserved_delta=-200, kind=EntryKind.WITHDRAWAL_DEBIT)
    chain = await ledger.read(entries)
    assert [e.id for e in chain] == [1, 2, 3, 4]
    assert chain[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(chain):
        assert after.prev_hash == before.entry_hash
    for entry in chain:
        assert entry.entry_hash == recomputed_hash(entry)
        assert len(entry.entry_hash) == 64


def test_a_hand_edited_entry_no_longer_matches_its_hash(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    try:
        migrate(conn)
        add_app(conn)
        credit(conn, 500, "k:1")
        conn.execute("UPDATE ledger_entries SET amount = 5000000 WHERE id = 1")
        (entry,) = entries(conn)
        assert recomputed_hash(entry) != entry.entry_hash
    finally:
        conn.close()


def test_the_hash_separates_fields_unambiguously() -> None:
    common = {
        "prev_hash": GENESIS_HASH,
        "entry_id": 1,
        "asset": "CKB",
        "amount": 1,
        "reserved_delta": 0,
        "kind": "TIP_CREDIT",
        "ref": "r",
        "idempotency_key": "k",
        "created_at": 0,
    }
    assert entry_hash(app_id="ab", user_id="c", **common) != entry_hash(  # type: ignore[arg-type]
        app_id="a",
        user_id="bc",
        **common,  # type: ignore[arg-type]
    )


async def test_an_overdraft_is_refused_and_rolls_back_the_entry(ledger: Ledger) -> None:
    await ledger.transact(credit, 1_000, "k:credit")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await ledger.transact(credit, -1_001, "k:overdraw", kind=EntryKind.WITHDRAWAL_DEBIT)
    assert (await ledger.read(get_balance, APP, "alice", "CKB")).settled == 1_000
    assert [e.idempotency_key for e in await ledger.read(entries)] == ["k:credit"]
    # the key was not burnt: a valid retry with it still works
    assert await ledger.transact(credit, -1_000, "k:overdraw", kind=EntryKind.WITHDRAWAL_DEBIT)


async def test_a_first_entry_cannot_open_a_negative_balance(ledger: Ledger) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await ledger.transact(credit, -1, "k:neg", user="newcomer")
    assert await ledger.read(entries) == []


async def test_reservations_cannot_exceed_the_settled_balance(ledger: Ledger) -> None:
    await ledger.transact(credit, 1_000, "k:credit")
    await ledger.transact(
        credit, 0, "withdrawal:reserve:w1", reserved_delta=600, kind=EntryKind.WITHDRAWAL_RESERVE
    )
    balance = await ledger.read(get_balance, APP, "alice", "CKB")
    assert (balance.settled, balance.reserved, balance.available) == (1_000, 600, 400)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await ledger.transact(
            credit,
            0,
            "withdrawal:reserve:w2",
            reserved_delta=401,
            kind=EntryKind.WITHDRAWAL_RESERVE,
        )
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        # debiting settled below what is reserved is an overdraft of the reservation
        await ledger.transact(credit, -500, "k:debit", kind=EntryKind.WITHDRAWAL_DEBIT)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await ledger.transact(
            credit,
            0,
            "withdrawal:release:w9",
            reserved_delta=-601,
            kind=EntryKind.WITHDRAWAL_RELEASE,
        )
    assert await ledger.read(get_balance, APP, "alice", "CKB") == balance


async def test_entries_for_an_unknown_app_are_refused(ledger: Ledger) -> None:
    def credit_ghost(conn: sqlite3.Connection) -> bool:
        return append_entry(
            conn,
            app_id="ghost",
            user_id="u",
            asset="CKB",
            amount=1,
            kind=EntryKind.TIP_CREDIT,
            ref="t",
            idempotency_key="ghost:1",
            now_ms=NOW_MS,
        )

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await ledger.transact(credit_ghost)


async def test_balance_rows_always_equal_the_sums_of_their_entries(ledger: Ledger) -> None:
    import random

    rng = random.Random(7)
    for i in range(300):
        user = rng.choice(["alice", "bob", "carol"])
        amount = rng.randint(-5_000, 10_000)
        reserved = rng.choice([0, 0, rng.randint(-3_000, 3_000)])
        with contextlib.suppress(sqlite3.IntegrityError):  # refused overdrafts leave no trace
            await ledger.transact(credit, amount, f"k:{i}", user=user, reserved_delta=reserved)

    def sums(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT user_id, sum(amount), sum(reserved_delta) FROM ledger_entries"
                " GROUP BY user_id ORDER BY user_id"
            )
        ]

    def rows(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT user_id, settled, reserved FROM balances ORDER BY user_id"
            )
        ]

    assert await ledger.read(sums) == await ledger.read(rows)
    for _user, settled, reserved in await ledger.read(rows):
        assert 0 <= reserved <= settled  # type: ignore[operator]
    chain = await ledger.read(entries)
    assert all(e.entry_hash == recomputed_hash(e) for e in chain)


async def test_get_balance_of_a_stranger_is_zero(ledger: Ledger) -> None:
    balance = await ledger.read(get_balance, APP, "stranger", "CKB")
    assert (balance.settled, balance.reserved, balance.available) == (0, 0, 0)
