"""``freeze --reason TEXT`` / ``unfreeze``: the payouts kill switch.

While frozen the withdrawal executor sends no payment (see :mod:`fiberlinkd.payouts`);
withdrawal requests still queue. The reconciler may freeze too, naming itself in ``by``.
"""

from __future__ import annotations

import argparse
from typing import Any

from fiberlinkd.admin.cli import admin_parser
from fiberlinkd.admin.registry import CommandContext, Scope, admin_command, arg_str
from fiberlinkd.clock import iso_ms
from fiberlinkd.payouts import REASON_MAX_CHARS, clear_frozen, set_frozen


@admin_command("freeze", mutates=True, scope=Scope.SUPER)
async def freeze(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Stop all payouts until unfrozen."""
    reason = arg_str(args, "reason", max_chars=REASON_MAX_CHARS)
    state = await ctx.rt.ledger.transact(set_frozen, reason, ctx.now_ms(), ctx.caller.label)
    return {
        "frozen": True,
        "reason": state.reason,
        "by": state.by,
        "since": iso_ms(state.since_ms),
    }


@admin_command("unfreeze", mutates=True, scope=Scope.SUPER)
async def unfreeze(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Let payouts run again and wake the executor."""
    del args
    was_frozen = await ctx.rt.ledger.transact(clear_frozen, ctx.now_ms())
    ctx.rt.withdrawals_wakeup.set()
    return {"frozen": False, "was_frozen": was_frozen}


def _render(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    if result["frozen"]:
        return f"payouts FROZEN since {result['since']} by {result['by']}: {result['reason']}"
    return "payouts running" + ("" if result["was_frozen"] else " (were not frozen)")


def add_cli(admin_subparsers: Any) -> None:
    parser = admin_parser(
        admin_subparsers,
        "freeze",
        command="freeze",
        help="stop all payouts (kill switch)",
        args=lambda ns: {"reason": ns.reason},
        render=_render,
    )
    parser.add_argument("--reason", required=True, help="why (shown in status and the audit log)")
    admin_parser(
        admin_subparsers,
        "unfreeze",
        command="unfreeze",
        help="let payouts run again",
        render=_render,
    )
