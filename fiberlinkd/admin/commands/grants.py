"""``grant | revoke | grants | whoami``: which Unix users may use the admin socket.

USER is a login name or a numeric uid (resolved by the daemon with ``pwd``). ROLE is
``SUPER_ADMIN`` (everything) or ``COMMUNITY_ADMIN`` (one app per grant, ``--app``). root
and the daemon's own user are always SUPER_ADMIN and need no grant.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from fiberlinkd.admin.cli import admin_parser, render_table
from fiberlinkd.admin.protocol import bad_request, not_found
from fiberlinkd.admin.registry import (
    APP_ARG,
    CommandContext,
    Scope,
    admin_command,
    arg_opt_str,
    arg_str,
)
from fiberlinkd.admin.roles import Role, resolve_user, user_name
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.admin import UnknownApp, add_grant, list_grants, remove_grant


async def _grant_args(args: dict[str, Any]) -> tuple[int, str | None, Role, str | None]:
    user = arg_str(args, "user", max_chars=256)
    try:
        uid, name = await trio.to_thread.run_sync(resolve_user, user)
    except LookupError as exc:
        raise bad_request(str(exc)) from None
    role_text = arg_str(args, "role", max_chars=32).upper()
    try:
        role = Role(role_text)
    except ValueError:
        raise bad_request("role must be SUPER_ADMIN or COMMUNITY_ADMIN") from None
    app_id = arg_opt_str(args, APP_ARG, max_chars=64)
    if role is Role.SUPER_ADMIN and app_id is not None:
        raise bad_request("SUPER_ADMIN is global: drop --app")
    if role is Role.COMMUNITY_ADMIN and app_id is None:
        raise bad_request("COMMUNITY_ADMIN is per app: add --app ID")
    return uid, name, role, app_id


def _who(uid: int, name: str | None) -> str:
    return f"uid {uid} ({name})" if name else f"uid {uid}"


@admin_command("grant", mutates=True, scope=Scope.SUPER)
async def grant(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Give a Unix user a role (COMMUNITY_ADMIN needs an app)."""
    uid, name, role, app_id = await _grant_args(args)
    try:
        created = await ctx.rt.ledger.transact(add_grant, uid, role.value, app_id, ctx.now_ms())
    except UnknownApp:
        raise not_found(f"no app {app_id!r}; create it first: fiberlinkd admin app add") from None
    return {"uid": uid, "user": name, "role": role.value, "app_id": app_id, "created": created}


@admin_command("revoke", mutates=True, scope=Scope.SUPER)
async def revoke(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Take a role away from a Unix user."""
    uid, name, role, app_id = await _grant_args(args)
    if not await ctx.rt.ledger.transact(remove_grant, uid, role.value, app_id):
        where = f" for app {app_id!r}" if app_id else ""
        raise not_found(f"{_who(uid, name)} has no {role.value} grant{where}")
    return {"uid": uid, "user": name, "role": role.value, "app_id": app_id, "revoked": True}


@admin_command("grants", mutates=False, scope=Scope.SUPER)
async def grants(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every grant, with the user's login name where known."""
    del args
    rows = await ctx.rt.ledger.read(list_grants)
    names = await trio.to_thread.run_sync(lambda: {row.uid: user_name(row.uid) for row in rows})
    return [
        {
            "uid": row.uid,
            "user": names[row.uid],
            "role": row.role,
            "app_id": row.app_id,
            "created_at": iso_ms(row.created_at),
        }
        for row in rows
    ]


@admin_command("whoami", mutates=False, scope=Scope.APP)
async def whoami(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """The caller's uid, role and apps as the daemon sees them."""
    del args
    caller = ctx.caller
    return {
        "uid": caller.uid,
        "user": caller.name,
        "role": caller.role.value if caller.role else None,
        "apps": None if caller.is_super else sorted(caller.app_ids),
        "because": caller.source,
    }


# --- CLI --------------------------------------------------------------------------------


def _role(text: str) -> str:
    return text.upper()


def _cli_grant_args(ns: argparse.Namespace) -> dict[str, Any]:
    return {"user": ns.user, "role": ns.role, APP_ARG: ns.app}


def _render_change(result: dict[str, Any], ns: argparse.Namespace) -> str:
    who = _who(result["uid"], result["user"])
    where = f" for app {result['app_id']}" if result["app_id"] else ""
    if ns.admin_command == "revoke":
        return f"revoked {result['role']}{where} from {who}"
    if not result["created"]:
        return f"{who} already has {result['role']}{where} (no change)"
    return f"granted {result['role']}{where} to {who}"


def _render_grants(result: list[dict[str, Any]], _ns: argparse.Namespace) -> str:
    return render_table(result, ["uid", "user", "role", "app_id", "created_at"])


def add_cli(admin_subparsers: Any) -> None:
    for name, command, text in (
        ("grant", "grant", "give a Unix user a role"),
        ("revoke", "revoke", "take a role away from a Unix user"),
    ):
        parser = admin_parser(
            admin_subparsers,
            name,
            command=command,
            help=text,
            args=_cli_grant_args,
            render=_render_change,
        )
        parser.add_argument("user", metavar="USER", help="login name or numeric uid")
        parser.add_argument(
            "role",
            metavar="ROLE",
            type=_role,
            choices=[r.value for r in Role],
            help="SUPER_ADMIN or COMMUNITY_ADMIN",
        )
        parser.add_argument("--app", default=None, metavar="ID", help="the app (COMMUNITY_ADMIN)")
    admin_parser(
        admin_subparsers, "grants", command="grants", help="list grants", render=_render_grants
    )
    admin_parser(admin_subparsers, "whoami", command="whoami", help="show your role and apps")
