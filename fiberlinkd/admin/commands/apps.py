"""``app add | list | rotate-secret | disable | enable``: the forums that may call the API.

Secrets are generated here (``secrets.token_hex(32)``: 256 bits), returned once in the
result of ``app.add`` / ``app.rotate_secret`` and never listed again. ``--secret-file``
makes the CLI write the secret to a new 0600 file instead of printing it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from pathlib import Path
from typing import Any

from fiberlinkd.admin.cli import CliError, admin_group, admin_parser, render_table
from fiberlinkd.admin.protocol import CONFLICT, AdminError, bad_request, not_found
from fiberlinkd.admin.registry import APP_ARG, CommandContext, Scope, admin_command, arg_str
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.admin import (
    AppExists,
    AppRecord,
    get_app,
    insert_app,
    list_apps,
    set_app_disabled,
    set_app_secret,
)

APP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_BYTES = 32  # 64 hex characters


def app_json(app: AppRecord) -> dict[str, Any]:
    return {
        "app_id": app.app_id,
        "enabled": app.enabled,
        "created_at": iso_ms(app.created_at),
        "disabled_at": iso_ms(app.disabled_at) if app.disabled_at is not None else None,
    }


def _app_id(args: dict[str, Any]) -> str:
    app_id = arg_str(args, APP_ARG, max_chars=64)
    if not APP_ID_PATTERN.fullmatch(app_id):
        raise bad_request(
            f"app id {app_id!r} is not valid: 1-64 characters, letters, digits, '.', '_', '-'"
        )
    return app_id


@admin_command("app.add", mutates=True, scope=Scope.SUPER)
async def app_add(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Create an app with a fresh HMAC secret (returned once)."""
    app_id = _app_id(args)
    secret = secrets.token_hex(SECRET_BYTES)
    try:
        app = await ctx.rt.ledger.transact(insert_app, app_id, secret, ctx.now_ms())
    except AppExists:
        raise AdminError(
            CONFLICT,
            f"app {app_id!r} exists already; use 'fiberlinkd admin app rotate-secret "
            f"{app_id}' for a new secret",
        ) from None
    return {**app_json(app), "secret": secret}


@admin_command("app.list", mutates=False, scope=Scope.APP)
async def app_list(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The apps the caller may see (all for SUPER_ADMIN), without secrets."""
    del args
    apps = await ctx.rt.ledger.read(list_apps, ctx.caller.visible_app_ids)
    return [app_json(app) for app in apps]


@admin_command("app.rotate_secret", mutates=True, scope=Scope.APP)
async def app_rotate_secret(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Replace an app's HMAC secret; the old one stops working at once."""
    app_id = _app_id(args)
    secret = secrets.token_hex(SECRET_BYTES)
    if not await ctx.rt.ledger.transact(set_app_secret, app_id, secret):
        raise not_found(f"no app {app_id!r}")
    app = await ctx.rt.ledger.read(get_app, app_id)
    assert app is not None  # apps are never deleted
    return {**app_json(app), "secret": secret, "rotated_at": iso_ms(ctx.now_ms())}


async def _set_disabled(ctx: CommandContext, args: dict[str, Any], disable: bool) -> dict[str, Any]:
    app_id = _app_id(args)
    disabled_at = ctx.now_ms() if disable else None
    changed = await ctx.rt.ledger.transact(set_app_disabled, app_id, disabled_at)
    if changed is None:
        raise not_found(f"no app {app_id!r}")
    app, did_change = changed
    return {**app_json(app), "changed": did_change}


@admin_command("app.disable", mutates=True, scope=Scope.APP)
async def app_disable(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Refuse the app's API requests from now on (its data stays)."""
    return await _set_disabled(ctx, args, disable=True)


@admin_command("app.enable", mutates=True, scope=Scope.APP)
async def app_enable(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Accept the app's API requests again."""
    return await _set_disabled(ctx, args, disable=False)


# --- CLI --------------------------------------------------------------------------------


def _check_secret_file(path: Path | None) -> None:
    if path is None:
        return
    if path.exists():
        raise CliError(f"--secret-file {path} exists; choose a new path", exit_code=2)
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CliError(f"--secret-file: cannot write in {parent}", exit_code=2)


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to a new file created 0600. Errors: ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _secret_to_file(result: Any, ns: argparse.Namespace) -> Any:
    path: Path | None = ns.secret_file
    if path is None or not isinstance(result, dict) or "secret" not in result:
        return result
    try:
        write_secret_file(path, result["secret"])
    except OSError as exc:
        raise CliError(
            f"the daemon made a new secret but writing {path} failed ({exc.strerror}); "
            f"run 'fiberlinkd admin app rotate-secret {result.get('app_id')}' to get another"
        ) from None
    without = {key: value for key, value in result.items() if key != "secret"}
    return {**without, "secret_file": str(path.absolute())}


def _app_args(ns: argparse.Namespace) -> dict[str, Any]:
    _check_secret_file(getattr(ns, "secret_file", None))
    return {APP_ARG: ns.app_id}


def _render_secret(result: dict[str, Any], ns: argparse.Namespace, verb: str) -> str:
    lines = [f"app {result['app_id']} {verb}."]
    if "secret_file" in result:
        lines.append(f"HMAC secret written to {result['secret_file']} (mode 0600).")
    else:
        lines.append("HMAC secret (shown once; paste it into the Discourse plugin settings):")
        lines.append(f"  {result['secret']}")
    if ns.admin_command == "app.rotate_secret":
        lines.append("The old secret no longer works: update the plugin now.")
    return "\n".join(lines)


def _render_apps(result: list[dict[str, Any]], _ns: argparse.Namespace) -> str:
    return render_table(result, ["app_id", "enabled", "created_at", "disabled_at"])


def _render_toggle(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    state = "enabled" if result["enabled"] else "disabled"
    return f"app {result['app_id']} is {state}" + ("" if result["changed"] else " (no change)")


def add_cli(admin_subparsers: Any) -> None:
    group = admin_group(admin_subparsers, "app", help="forums (apps) and their HMAC secrets")

    add = admin_parser(
        group,
        "add",
        command="app.add",
        help="create an app; prints its new HMAC secret once",
        args=_app_args,
        render=lambda r, ns: _render_secret(r, ns, "added"),
        transform=_secret_to_file,
    )
    add.add_argument("app_id", metavar="ID")
    add.add_argument("--secret-file", type=Path, default=None, help="write the secret here (0600)")

    admin_parser(group, "list", command="app.list", help="list apps", render=_render_apps)

    rotate = admin_parser(
        group,
        "rotate-secret",
        command="app.rotate_secret",
        help="give an app a new HMAC secret (the old one stops working)",
        args=_app_args,
        render=lambda r, ns: _render_secret(r, ns, "has a new secret"),
        transform=_secret_to_file,
    )
    rotate.add_argument("app_id", metavar="ID")
    rotate.add_argument(
        "--secret-file", type=Path, default=None, help="write the secret here (0600)"
    )

    for name, command, text in (
        ("disable", "app.disable", "refuse an app's API requests"),
        ("enable", "app.enable", "accept an app's API requests again"),
    ):
        parser = admin_parser(
            group, name, command=command, help=text, args=_app_args, render=_render_toggle
        )
        parser.add_argument("app_id", metavar="ID")
