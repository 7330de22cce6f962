"""The admin command registry: command name → handler, scope, audit rules.

Command modules (listed in :data:`fiberlinkd.admin.commands.MODULES`) register handlers at
import time with :func:`admin_command`, and may contribute sections to ``status`` with
:func:`register_status_section`. The server looks commands up here; it never imports a
command module by name itself.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from fiberlinkd.admin.protocol import bad_request
from fiberlinkd.admin.roles import Caller
from fiberlinkd.runtime import Runtime

JsonResult = Any  # anything json.dumps accepts
Handler = Callable[["CommandContext", dict[str, Any]], Awaitable[JsonResult]]
StatusSection = Callable[[Runtime], Awaitable[dict[str, Any]]]
ProgressSender = Callable[[dict[str, Any]], Awaitable[None]]

APP_ARG = "app_id"  # the argument every app-scoped command uses for its app
REDACTED = "<redacted>"
# Argument names that are never written to the audit log, whatever a command declares.
_SECRET_NAME = re.compile(r"secret|token|password|passphrase|private|preimage", re.IGNORECASE)
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


class Scope(enum.Enum):
    """Who may run a command.

    - ``SUPER``: only SUPER_ADMIN.
    - ``APP``: any granted caller. When the request carries ``app_id`` the server checks
      ``caller.require_app(app_id)`` before the handler runs; a handler that lists data
      across apps must filter by ``ctx.caller.visible_app_ids`` itself.
    """

    SUPER = "super"
    APP = "app"


@attrs.frozen
class CommandSpec:
    name: str
    handler: Handler
    mutates: bool  # audited by the server when true
    scope: Scope
    secret_args: frozenset[str] = frozenset()  # never written to the audit log
    summary: str = ""

    def audit_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` with secrets replaced by ``<redacted>``."""
        return {
            key: REDACTED if key in self.secret_args or _SECRET_NAME.search(key) else value
            for key, value in args.items()
        }


@attrs.define
class CommandContext:
    """What a handler gets besides its arguments."""

    rt: Runtime
    caller: Caller
    _progress: ProgressSender | None = None

    def now_ms(self) -> int:
        return self.rt.clock.now_ms()

    async def progress(self, data: dict[str, Any]) -> None:
        """Send a progress line to the client (shown while a long command runs)."""
        if self._progress is not None:
            await self._progress(data)


_COMMANDS: dict[str, CommandSpec] = {}
_STATUS_SECTIONS: dict[str, StatusSection] = {}


def admin_command(
    name: str,
    *,
    mutates: bool,
    scope: Scope,
    secret_args: tuple[str, ...] = (),
    summary: str = "",
) -> Callable[[Handler], Handler]:
    """Register ``async def handler(ctx, args) -> JSON-able`` under ``name``.

    ``name`` is dotted lower case (``withdrawals.list``). Registering a name twice is a
    bug and raises ``ValueError`` at import time.
    """
    if not _COMMAND_NAME.fullmatch(name):
        raise ValueError(f"admin command name must be dotted lower case: {name!r}")

    def register(handler: Handler) -> Handler:
        if name in _COMMANDS and _COMMANDS[name].handler is not handler:
            raise ValueError(f"admin command {name!r} is registered twice")
        _COMMANDS[name] = CommandSpec(
            name=name,
            handler=handler,
            mutates=mutates,
            scope=scope,
            secret_args=frozenset(secret_args),
            summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
        )
        return handler

    return register


def get_command(name: str) -> CommandSpec | None:
    return _COMMANDS.get(name)


def command_names() -> list[str]:
    return sorted(_COMMANDS)


BUILTIN_STATUS_KEYS = frozenset(
    {"version", "uptime_s", "started_at", "schema_version", "actors", "node", "payouts", "database"}
)


def register_status_section(name: str, section: StatusSection) -> None:
    """Add ``status[name] = await section(rt)``. Errors: ``ValueError`` for a clash."""
    if name in BUILTIN_STATUS_KEYS or (
        name in _STATUS_SECTIONS and _STATUS_SECTIONS[name] is not section
    ):
        raise ValueError(f"status section {name!r} is taken")
    _STATUS_SECTIONS[name] = section


def status_sections() -> dict[str, StatusSection]:
    return dict(_STATUS_SECTIONS)


def load_command_modules() -> None:
    """Import every module named in :data:`fiberlinkd.admin.commands.MODULES` (idempotent)."""
    from fiberlinkd.admin.commands import MODULES  # the list imports this module

    for module in MODULES:
        importlib.import_module(module)


# --- argument helpers for handlers ------------------------------------------------------


def arg_str(args: Mapping[str, Any], name: str, *, max_chars: int = 1000) -> str:
    """A required non-empty string argument. Errors: ``bad_request`` naming it."""
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"argument {name!r} is required (a non-empty string)")
    if len(value) > max_chars:
        raise bad_request(f"argument {name!r} is longer than {max_chars} characters")
    return value


def arg_opt_str(args: Mapping[str, Any], name: str, *, max_chars: int = 1000) -> str | None:
    if args.get(name) is None:
        return None
    return arg_str(args, name, max_chars=max_chars)


def arg_int(args: Mapping[str, Any], name: str, *, default: int, minimum: int, maximum: int) -> int:
    value = args.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"argument {name!r} must be an integer")
    if not minimum <= value <= maximum:
        raise bad_request(f"argument {name!r} must be between {minimum} and {maximum}")
    return value
