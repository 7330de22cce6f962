"""``fiberlinkd admin export ledger|tips|withdrawals``: streaming CSV or JSONL.

Client-side by design: the command opens the SQLite file **read-only** (``mode=ro``,
``query_only``) and streams it in keyset chunks of :data:`CHUNK_ROWS`, each chunk in its own
short read transaction, so it never holds a snapshot (or the WAL) for long, never blocks the
daemon's writer, needs no large answer over the admin socket, and still works while the
daemon is stopped (an incident is exactly when an operator wants an export). Access control
is therefore the file's permissions (root or the ``fiberlinkd`` group), not admin grants,
and an export is not in the audit log.

Rows: ``*_at`` columns as ISO-8601 UTC with milliseconds; money columns as integers in base
units, plus ``amount_decimal`` in asset units (exact). ``--since`` is inclusive and
``--until`` exclusive, both on ``created_at``. In CSV, text cells that a spreadsheet would run
as a formula (starting with ``= + - @`` or a control character) get a leading ``'``; JSONL
is always exact. With ``--out`` the file appears only when complete (written beside it,
then renamed); progress goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from fiberlinkd.amounts import CKB_DECIMALS, format_amount
from fiberlinkd.clock import iso_ms
from fiberlinkd.config import ConfigError, load_config
from fiberlinkd.ledger.reconcile import (
    EXPORT_COLUMNS,
    ExportFilter,
    export_chunk,
    export_count,
    export_keyset,
)
from fiberlinkd.ledger.store import connect, db_path

EXPORT_KINDS = ("ledger", "tips", "withdrawals")
FORMATS = ("csv", "jsonl")
CHUNK_ROWS = 2_000

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_TIME_COLUMNS = frozenset({"created_at", "updated_at", "completed_at", "expires_at", "settled_at"})
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(Exception):
    """The export cannot run; ``str()`` is the line printed."""


def parse_time(text: str) -> int:
    """``2026-12-04``, ``2026-12-04T16:00:00Z`` or with an offset/milliseconds → unix ms.

    A time without an offset is UTC. Errors: ``ValueError``.
    """
    try:
        parsed = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not an ISO-8601 date or time (e.g. 2026-12-04 or 2026-12-04T16:00:00Z): {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp() * 1000)


def columns_for(kind: str) -> tuple[str, ...]:
    columns = EXPORT_COLUMNS[kind]
    index = columns.index("amount") + 1
    return (*columns[:index], "amount_decimal", *columns[index:])


def iter_rows(
    conn: sqlite3.Connection, spec: ExportFilter, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[dict[str, Any]]:
    """Rows in keyset order, each chunk read in its own short read transaction."""
    after: tuple[Any, ...] | None = None
    while True:
        conn.execute("BEGIN")
        try:
            rows = export_chunk(conn, spec, after, chunk_rows)
        finally:
            conn.execute("ROLLBACK")
        yield from rows
        if len(rows) < chunk_rows:
            return
        after = export_keyset(spec.kind, rows[-1])


def present(row: Mapping[str, Any], decimals: Mapping[str, int]) -> dict[str, Any]:
    """One exported record: ISO times, ``amount_decimal``, booleans."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        if key in _TIME_COLUMNS and value is not None:
            record[key] = iso_ms(int(value))
        elif key == "cancelled":
            record[key] = bool(value)
        else:
            record[key] = value
        if key == "amount":
            places = decimals.get(str(row.get("asset")))
            record["amount_decimal"] = None if places is None else format_amount(value, places)
    return record


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_rows(
    records: Iterable[Mapping[str, Any]],
    fmt: str,
    out: TextIO,
    columns: tuple[str, ...],
    *,
    on_row: Any = None,
) -> int:
    """Write ``records`` as CSV (header first) or JSON lines; returns how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([_csv_cell(record.get(c)) for c in columns])
            count += 1
            if on_row is not None:
                on_row(count)
    else:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
            if on_row is not None:
                on_row(count)
    return count


def run_export(
    database: Path,
    spec: ExportFilter,
    fmt: str,
    *,
    out_path: Path | None,
    decimals: Mapping[str, int],
    stdout: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:
    """Export to ``out_path`` (atomically) or ``stdout``; returns the row count.

    Errors: :class:`ExportError` when the database cannot be opened or read, or the
    output cannot be written.
    """
    if not database.exists():
        raise ExportError(f"no database at {database} (check --config / --db)")
    try:
        conn = connect(database, read_only=True)
    except sqlite3.Error as exc:
        raise ExportError(f"cannot open {database} read-only: {exc}") from None
    try:
        total = _read(conn, export_count, spec)
        columns = columns_for(spec.kind)
        records = (present(r, decimals) for r in iter_rows(conn, spec))
        on_row = _progress_printer(progress, spec.kind, total) if progress else None
        try:
            if out_path is None:
                count = write_rows(records, fmt, stdout or sys.stdout, columns, on_row=on_row)
            else:
                count = _write_file(out_path, records, fmt, columns, on_row)
        except sqlite3.Error as exc:
            raise ExportError(f"reading {database} failed: {exc}") from None
        if progress is not None:
            print(f"\rexported {count} {spec.kind} rows" + " " * 20, file=progress)
        return count
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    except sqlite3.Error as exc:
        raise ExportError(f"cannot read the database: {exc}") from None
    finally:
        conn.execute("ROLLBACK")


def _write_file(
    out_path: Path,
    records: Iterable[Mapping[str, Any]],
    fmt: str,
    columns: tuple[str, ...],
    on_row: Any,
) -> int:
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as handle:
            count = write_rows(records, fmt, handle, columns, on_row=on_row)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(out_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ExportError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return count


def _progress_printer(stream: TextIO, kind: str, total: int) -> Any:
    def on_row(count: int) -> None:
        if count % CHUNK_ROWS == 0 or count == total:
            percent = count * 100 // total if total else 100
            print(f"\rexporting {kind}: {count}/{total} rows ({percent}%)", end="", file=stream)

    return on_row


# --- the CLI -------------------------------------------------------------------------------------


def add_export_cli(admin_subparsers: Any) -> None:
    """``fiberlinkd admin export KIND --format csv|jsonl [--app] [--since] [--until] [--out]``."""
    parser = admin_subparsers.add_parser(
        "export",
        help="export ledger, tips or withdrawals as CSV or JSON lines (reads the database)",
        description="Stream ledger entries, tips or withdrawals from the database file "
        "(opened read-only; works with the daemon stopped). Needs read access to the state "
        "directory.",
    )
    parser.add_argument("kind", choices=EXPORT_KINDS)
    parser.add_argument("--format", choices=FORMATS, default="csv", dest="export_format")
    parser.add_argument("--app", default=None, help="only this app")
    parser.add_argument("--since", default=None, help="created at or after (ISO date/time, UTC)")
    parser.add_argument("--until", default=None, help="created before (ISO date/time, UTC)")
    parser.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--db", type=Path, default=None, help="database file (overrides config)")
    parser.set_defaults(handler=cmd_export)


def cmd_export(ns: argparse.Namespace) -> int:
    try:
        since = parse_time(ns.since) if ns.since else None
        until = parse_time(ns.until) if ns.until else None
    except ValueError as exc:
        print(f"fiberlinkd admin export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if since is not None and until is not None and since >= until:
        print("fiberlinkd admin export: --since must be before --until", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    database = ns.db or db_path(config.state_path)
    decimals = {"CKB": CKB_DECIMALS, "USDI": config.assets.usdi_decimals}
    spec = ExportFilter(ns.kind, ns.app, since, until)
    try:
        run_export(
            database,
            spec,
            ns.export_format,
            out_path=ns.out,
            decimals=decimals,
            progress=sys.stderr if sys.stderr.isatty() else None,
        )
    except ExportError as exc:
        print(f"fiberlinkd admin export: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `| head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_OK
    return EXIT_OK
