"""``status``: is the daemon healthy, in one screen.

Version, uptime, schema version, each actor's state and restarts, what the daemon knows
about its node (reachable, version, currency), the payouts switch, and the database size.
Other capabilities add sections with
:func:`fiberlinkd.admin.registry.register_status_section`; each is bounded by
:data:`SECTION_BOUND_S` so one slow section cannot hang ``status``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path
from typing import Any

import trio

from fiberlinkd import __version__
from fiberlinkd.admin.cli import admin_parser, render_mapping, render_table
from fiberlinkd.admin.registry import CommandContext, Scope, admin_command, status_sections
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.admin import schema_version_of
from fiberlinkd.ledger.store import SCHEMA_VERSION
from fiberlinkd.payouts import FrozenState, frozen_state
from fiberlinkd.runtime import Runtime

SECTION_BOUND_S = 5.0


def _read_status(conn: sqlite3.Connection) -> tuple[int, FrozenState | None]:
    return schema_version_of(conn), frozen_state(conn)


def _file_sizes(db: Path) -> dict[str, int]:
    sizes = {}
    for label, path in (("db_bytes", db), ("wal_bytes", Path(f"{db}-wal"))):
        try:
            sizes[label] = os.stat(path).st_size
        except FileNotFoundError:
            sizes[label] = 0
    return sizes


def _node_section(rt: Runtime) -> dict[str, Any]:
    state = rt.node_state
    info = state.info
    return {
        "reachable": state.reachable,
        "version": info.version if info else None,
        "currency": str(info.currency) if info else None,
        "pubkey": info.pubkey if info else None,
        "node_name": info.node_name if info else None,
        "last_ok_at": iso_ms(state.last_ok_ms) if state.last_ok_ms is not None else None,
        "last_error": state.last_error,
        "url": rt.config.fnn.url,
    }


@admin_command("status", mutates=False, scope=Scope.SUPER)
async def status(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Daemon, actors, node, payouts switch, database."""
    del args
    rt = ctx.rt
    now_ms = ctx.now_ms()
    schema_version, frozen = await rt.ledger.read(_read_status)
    sizes = await trio.to_thread.run_sync(_file_sizes, rt.ledger.path)
    result: dict[str, Any] = {
        "version": __version__,
        "started_at": iso_ms(rt.started_at_ms),
        "uptime_s": max(0, now_ms - rt.started_at_ms) // 1000,
        "schema_version": schema_version,
        "actors": [s.as_dict() for s in rt.supervisor.statuses.values()],
        "node": _node_section(rt),
        "payouts": {
            "frozen": frozen is not None,
            "reason": frozen.reason if frozen else None,
            "by": frozen.by if frozen else None,
            "since": iso_ms(frozen.since_ms) if frozen else None,
        },
        "database": {
            "path": str(rt.ledger.path),
            "schema_current": schema_version == SCHEMA_VERSION,
            **sizes,
        },
    }
    for name, section in status_sections().items():
        value: dict[str, Any] = {"error": f"did not answer within {SECTION_BOUND_S:g} s"}
        with trio.move_on_after(SECTION_BOUND_S):
            value = await section(rt)
        result[name] = value
    return result


def _render(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    payouts = result["payouts"]
    node = result["node"]
    db = result["database"]
    lines = [
        f"fiberlinkd {result['version']}  up {_duration(result['uptime_s'])} "
        f"(since {result['started_at']})  schema v{result['schema_version']}",
        "payouts: "
        + (
            f"FROZEN since {payouts['since']} by {payouts['by']}: {payouts['reason']}"
            if payouts["frozen"]
            else "running"
        ),
        "node: "
        + (
            f"reachable, FNN {node['version']}, {node['currency']}"
            if node["reachable"]
            else f"NOT reachable ({node['last_error'] or 'not identified yet'})"
        )
        + f"  [{node['url']}]",
        f"database: {db['path']}  {_size(db['db_bytes'])} + WAL {_size(db['wal_bytes'])}",
        "",
        render_table(result["actors"], ["name", "state", "restarts", "last_error"]),
    ]
    builtin = {
        "version",
        "started_at",
        "uptime_s",
        "schema_version",
        "actors",
        "node",
        "payouts",
        "database",
    }
    for name, value in result.items():
        if name not in builtin:
            lines.extend(["", f"{name}:", render_mapping(value, "  ")])
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def add_cli(admin_subparsers: Any) -> None:
    admin_parser(
        admin_subparsers,
        "status",
        command="status",
        help="daemon health at a glance",
        render=_render,
    )
