"""The ``fiberlinkd`` command line.

Rules under test:
- ``--version`` prints the package version; ``python -m fiberlinkd`` is the same program as
  the ``fiberlinkd`` console script;
- every subcommand (and every nested one) answers ``--help`` with exit 0;
- ``migrate`` creates the database in the state directory, prints the schema version, is
  repeatable, and refuses a database from a newer fiberlinkd with exit 1;
- usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fiberlinkd import __version__
from fiberlinkd.cli import build_parser, main
from fiberlinkd.ledger.store import DB_FILENAME, SCHEMA_VERSION
from tests.test_config import clean_env, run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "fiberlinkd.toml"

# One way to run the CLI in a clean environment, shared with the config tests.
run_module = run_cli


def command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every subcommand path, e.g. ('run',), ('admin', 'app', 'create')."""
    paths: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(command_paths(sub, (*prefix, name)))
    return paths


def test_version_is_printed_by_python_dash_m() -> None:
    result = run_module("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fiberlinkd {__version__}"


def test_the_console_script_is_the_same_program() -> None:
    script = Path(sys.executable).parent / "fiberlinkd"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (package not installed)")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fiberlinkd {__version__}"


def test_the_foundation_subcommands_exist() -> None:
    paths = command_paths(build_parser())
    assert {("run",), ("check-config",), ("migrate",)} <= set(paths)


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "check-config", "migrate"):
        assert name in out


def test_every_subcommand_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = command_paths(build_parser())
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: fiberlinkd " + " ".join(path)), (path, out[:200])


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_migrate_creates_the_database_and_prints_its_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = clean_env(FIBERLINKD_STATE_DIR=str(state))
    result = run_module("migrate", "--config", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr
    database = state / DB_FILENAME
    assert result.stdout.strip() == f"schema version {SCHEMA_VERSION} at {database}"
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    again = run_module("migrate", "--config", str(EXAMPLE), env=env)
    assert again.returncode == 0
    assert again.stdout == result.stdout


def test_migrate_refuses_a_database_from_a_newer_fiberlinkd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / DB_FILENAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    conn.close()
    result = run_module(
        "migrate", "--config", str(EXAMPLE), env=clean_env(FIBERLINKD_STATE_DIR=str(state))
    )
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("migrate: database schema version")
    assert "is newer than this fiberlinkd knows" in line


def test_migrate_in_process_reports_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{tmp_path / "st"}"\n')
    assert main(["migrate", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(f"schema version {SCHEMA_VERSION} at ")
    assert (tmp_path / "st" / DB_FILENAME).is_file()


def test_run_with_an_unopenable_state_dir_exits_1_with_one_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{blocker / "state"}"\n[api]\nlisten = "127.0.0.1:0"\n'
        f'[admin]\nsocket = "{tmp_path / "a.sock"}"\n'
    )
    result = run_module("run", "--config", str(config))
    assert result.returncode == 1
    assert "daemon could not run" in result.stderr
