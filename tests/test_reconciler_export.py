"""``admin export ledger|tips|withdrawals``: streaming CSV / JSONL from the database file.

Rules: the database is a real SQLite file in tmp_path, written through the real ledger
functions while it is open (WAL); the export opens it read-only beside the writer. Chunk
boundaries are exercised with tiny chunks; ``--out`` files appear only when complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from fiberlinkd.amounts import CKB_DECIMALS
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.reconcile import ExportFilter
from fiberlinkd.ledger.store import connect, db_path
from fiberlinkd.reconciler import export
from tests.test_reconciler_support import CKB, FakeNode, add_tip, open_runtime, seed_clean, tamper

DECIMALS = {"CKB": CKB_DECIMALS, "USDI": 6}


async def _seeded(tmp_path: Path) -> tuple[Path, int]:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        now = rt.clock.now_ms()
        await rt.ledger.transact(add_tip, "tip-evil", CKB, now_ms=now + 5_000, state="UNPAID")
        await tamper(
            rt, "UPDATE tip_intents SET message = '=HYPERLINK(\"x\")' WHERE id = 'tip-evil'"
        )
        return db_path(rt.config.state_path), now


async def test_a_tips_csv_export_has_a_header_iso_times_decimal_amounts_and_safe_cells(
    tmp_path: Path,
) -> None:
    database, now = await _seeded(tmp_path)
    out = tmp_path / "tips.csv"
    count = export.run_export(
        database, ExportFilter("tips"), "csv", out_path=out, decimals=DECIMALS
    )
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert count == len(rows) == 12
    assert list(rows[0]) == list(export.columns_for("tips"))
    tip3 = next(r for r in rows if r["id"] == "tip3")
    assert (tip3["amount"], tip3["amount_decimal"], tip3["state"]) == (str(4 * CKB), "4", "SETTLED")
    usdi = next(r for r in rows if r["id"] == "tip-usdi")
    assert usdi["amount_decimal"] == "7"
    evil = next(r for r in rows if r["id"] == "tip-evil")
    assert evil["message"] == '\'=HYPERLINK("x")'
    assert evil["created_at"] == iso_ms(now + 5_000)
    assert not (tmp_path / "tips.csv.partial").exists()


async def test_a_jsonl_export_filters_by_app_and_time_window(tmp_path: Path) -> None:
    database, now = await _seeded(tmp_path)
    stream = io.StringIO()
    spec = ExportFilter("tips", app_id="forum", since_ms=now + 1, until_ms=now + 10_000)
    export.run_export(database, spec, "jsonl", out_path=None, decimals=DECIMALS, stdout=stream)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["id"] for r in records] == ["tip-evil"]
    assert records[0]["message"] == '=HYPERLINK("x")'  # JSONL stays exact

    stream = io.StringIO()
    export.run_export(
        database,
        ExportFilter("tips", app_id="other"),
        "jsonl",
        out_path=None,
        decimals=DECIMALS,
        stdout=stream,
    )
    assert stream.getvalue() == ""


async def test_ledger_and_withdrawal_exports_stream_every_row_across_chunks(
    tmp_path: Path,
) -> None:
    database, _ = await _seeded(tmp_path)
    conn = connect(database, read_only=True)
    try:
        entries = list(export.iter_rows(conn, ExportFilter("ledger"), chunk_rows=2))
        everything = conn.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0]
        assert [e["id"] for e in entries] == list(range(1, everything + 1))
        # Tips share one created_at: the (created_at, id) keyset must not skip or repeat.
        tips = list(export.iter_rows(conn, ExportFilter("tips"), chunk_rows=2))
        assert len({t["id"] for t in tips}) == len(tips) == 12
        withdrawals = list(export.iter_rows(conn, ExportFilter("withdrawals"), chunk_rows=3))
        assert len(withdrawals) == 7
        done = export.present(next(w for w in withdrawals if w["id"] == "w-done"), DECIMALS)
        assert (done["state"], done["fee_paid"], done["cancelled"]) == ("COMPLETED", 400, False)
    finally:
        conn.close()


async def test_the_cli_writes_the_file_and_reports_usage_and_missing_database_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database, _ = await _seeded(tmp_path)
    out = tmp_path / "ledger.jsonl"
    parser = _parser()
    ns = parser.parse_args(
        [
            "export",
            "ledger",
            "--format",
            "jsonl",
            "--db",
            str(database),
            "--out",
            str(out),
            "--since",
            "2020-01-01",
        ]
    )
    assert ns.handler(ns) == 0
    assert len(out.read_text().splitlines()) > 20

    ns = parser.parse_args(
        ["export", "tips", "--db", str(database), "--since", "2030-01-02", "--until", "2030-01-01"]
    )
    assert ns.handler(ns) == 2
    ns = parser.parse_args(["export", "tips", "--db", str(database), "--since", "yesterday"])
    assert ns.handler(ns) == 2
    ns = parser.parse_args(["export", "tips", "--db", str(tmp_path / "missing.sqlite3")])
    assert ns.handler(ns) == 1
    assert "no database at" in capsys.readouterr().err


def test_times_parse_as_utc_dates_or_iso_timestamps() -> None:
    assert export.parse_time("1970-01-02") == 86_400_000
    assert export.parse_time("1970-01-01T00:00:01.5Z") == 1_500
    assert export.parse_time("1970-01-01T01:00:00+01:00") == 0
    with pytest.raises(ValueError, match="ISO-8601"):
        export.parse_time("01/02/1970")


def test_an_export_never_writes_to_the_database(tmp_path: Path) -> None:
    database = tmp_path / "x.sqlite3"
    sqlite3.connect(database).close()
    with pytest.raises(export.ExportError, match="cannot read"):
        export.run_export(
            database,
            ExportFilter("tips"),
            "csv",
            out_path=None,
            decimals=DECIMALS,
            stdout=io.StringIO(),
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    export.add_export_cli(parser.add_subparsers())
    return parser
