"""``audit [--limit N]``: the newest admin actions, newest first.

SUPER_ADMIN sees every row; a COMMUNITY_ADMIN sees only rows about its apps. Arguments
were stored without secrets.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from fiberlinkd.admin.cli import admin_parser, render_table
from fiberlinkd.admin.registry import CommandContext, Scope, admin_command, arg_int
from fiberlinkd.admin.roles import user_name
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.admin import list_audit

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


@admin_command("audit", mutates=False, scope=Scope.APP)
async def audit(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The newest audit rows the caller may see."""
    limit = arg_int(args, "limit", default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    rows = await ctx.rt.ledger.read(list_audit, limit, ctx.caller.visible_app_ids)
    uids = {row.uid for row in rows}
    names = await trio.to_thread.run_sync(lambda: {uid: user_name(uid) for uid in uids})
    return [
        {
            "id": row.id,
            "at": iso_ms(row.at),
            "uid": row.uid,
            "user": names[row.uid],
            "command": row.command,
            "app_id": row.app_id,
            "args": json.loads(row.args_json),
            "outcome": row.outcome,
        }
        for row in rows
    ]


def _render(result: list[dict[str, Any]], _ns: argparse.Namespace) -> str:
    return render_table(result, ["at", "uid", "user", "command", "app_id", "outcome", "args"])


def add_cli(admin_subparsers: Any) -> None:
    parser = admin_parser(
        admin_subparsers,
        "audit",
        command="audit",
        help="show the newest admin actions",
        args=lambda ns: {"limit": ns.limit},
        render=_render,
    )
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="rows (max 1000)")
