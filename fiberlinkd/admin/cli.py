"""``fiberlinkd admin …`` (a client of the admin socket) and ``fiberlinkd restore``.

The client is plain blocking Python: connect, send one request line, print progress lines
to stderr, print the answer. Human-readable tables by default, the exact result JSON with
``--json``. Exit codes: 0 ok, 1 the daemon refused or failed (its message is printed) or
cannot be reached, 2 bad usage or configuration.

Socket path, first found: ``--socket``, ``$FIBERLINKD_ADMIN_SOCKET``, ``[admin] socket`` in
the config file.

Command modules add their parsers with :func:`admin_parser` (see the recipe in
:mod:`fiberlinkd.admin`).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from fiberlinkd.admin.protocol import MAX_MESSAGE_BYTES, encode
from fiberlinkd.config import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

SOCKET_ENV = "FIBERLINKD_ADMIN_SOCKET"
CLIENT_CONNECT_TIMEOUT_S = 5.0
CLIENT_REPLY_TIMEOUT_S = 120.0  # per line; long commands send progress lines meanwhile
MAX_REPLY_BYTES = 64 * MAX_MESSAGE_BYTES

ArgsBuilder = Callable[[argparse.Namespace], dict[str, Any]]
Renderer = Callable[[Any, argparse.Namespace], str]
Transform = Callable[[Any, argparse.Namespace], Any]


class CliError(Exception):
    """A problem the client reports itself; ``str()`` is the line printed."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DaemonError(Exception):
    """The daemon answered ``ok: false``."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "error")))
        self.error = error


# --- helpers for command modules --------------------------------------------------------


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the exact result as JSON")
    parser.add_argument("--socket", default=None, help="admin socket path (overrides config)")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")


def admin_group(admin_subparsers: Any, name: str, *, help: str) -> Any:
    """A command group (``app``, ``withdrawals``): returns its sub-subparsers."""
    group = admin_subparsers.add_parser(name, help=help, description=help)
    return group.add_subparsers(dest=f"admin_{name}_command", metavar="COMMAND", required=True)


def admin_parser(
    subparsers: Any,
    name: str,
    *,
    command: str,
    help: str,
    args: ArgsBuilder | None = None,
    render: Renderer | None = None,
    transform: Transform | None = None,
) -> argparse.ArgumentParser:
    """Add a leaf parser that sends ``command`` with ``args(namespace)`` to the daemon.

    ``render(result, ns) -> str`` prints the human form (default: :func:`render_default`);
    ``transform(result, ns) -> result`` runs first in both modes (e.g. writes a secret to
    a file and drops it from the output). ``args`` may raise :class:`CliError`.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
    add_client_options(parser)
    parser.set_defaults(
        handler=cmd_admin,
        admin_command=command,
        admin_args=args or (lambda _ns: {}),
        admin_render=render or render_default,
        admin_transform=transform,
    )
    return parser


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain text table; nested values are shown as compact JSON."""
    if not rows:
        return "(none)"
    if columns is None:
        columns = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.extend(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )
    return "\n".join(line.rstrip() for line in lines)


def render_mapping(data: dict[str, Any], indent: str = "") -> str:
    """``key: value`` lines; nested objects indented, lists of objects as tables."""
    lines: list[str] = []
    width = max((len(key) for key in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines.append(render_mapping(value, indent + "  "))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{key}:")
            lines.extend(indent + "  " + line for line in render_table(value).splitlines())
        else:
            lines.append(f"{indent}{key + ':':<{width + 1}} {_cell(value)}")
    return "\n".join(lines)


def render_default(result: Any, _ns: argparse.Namespace) -> str:
    if isinstance(result, list) and all(isinstance(item, dict) for item in result):
        return render_table(result)
    if isinstance(result, dict):
        return render_mapping(result)
    return _cell(result)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


# --- the client ------------------------------------------------------------------------


def resolve_socket_path(ns: argparse.Namespace, environ: dict[str, str] | None = None) -> Path:
    """``--socket``, else ``$FIBERLINKD_ADMIN_SOCKET``, else the config's ``[admin] socket``.

    Errors: :class:`CliError` (exit 2) when the config cannot be read.
    """
    environ = dict(os.environ) if environ is None else environ
    if getattr(ns, "socket", None):
        return Path(ns.socket)
    if environ.get(SOCKET_ENV):
        return Path(environ[SOCKET_ENV])
    try:
        config = load_config(getattr(ns, "config", None), environ=environ)
    except ConfigError as exc:
        raise CliError(f"{exc} (or pass --socket PATH)", EXIT_USAGE) from None
    return Path(config.admin.socket)


def connect_socket(path: Path) -> socket.socket:
    """Connect to the admin socket. Errors: :class:`CliError` saying what to do."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_CONNECT_TIMEOUT_S)
    try:
        sock.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise CliError(
            f"cannot connect to {path} (is the daemon running? check: systemctl status "
            "fiberlinkd; or pass --socket PATH)"
        ) from None
    except PermissionError:
        sock.close()
        raise CliError(
            f"permission denied on {path}: run as root, or add your user to the fiberlinkd "
            "group (sudo usermod -aG fiberlinkd $USER, then log in again)"
        ) from None
    except TimeoutError:
        sock.close()
        raise CliError(f"the daemon did not accept a connection on {path} in time") from None
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot connect to the admin socket {path}: {exc.strerror}") from None
    return sock


def call(
    path: Path,
    command: str,
    args: dict[str, Any],
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Send one request and return its result.

    Errors: :class:`DaemonError` for ``ok: false``; :class:`CliError` for connection
    problems or an unreadable answer.
    """
    with connect_socket(path) as sock:
        sock.settimeout(CLIENT_REPLY_TIMEOUT_S)
        try:
            sock.sendall(encode({"id": 1, "command": command, "args": args}))
            with sock.makefile("rb") as replies:
                while True:
                    line = replies.readline(MAX_REPLY_BYTES)
                    if not line:
                        raise CliError("the daemon closed the connection without an answer")
                    reply = json.loads(line)
                    if not isinstance(reply, dict):
                        raise CliError("the daemon sent an answer that is not a JSON object")
                    if "progress" in reply and "ok" not in reply:
                        if on_progress is not None and isinstance(reply["progress"], dict):
                            on_progress(reply["progress"])
                        continue
                    if reply.get("ok") is True:
                        return reply.get("result")
                    error = reply.get("error")
                    raise DaemonError(error if isinstance(error, dict) else {"message": error})
        except TimeoutError:
            raise CliError("the daemon did not answer in time") from None
        except (BrokenPipeError, ConnectionResetError):
            raise CliError("the daemon closed the connection") from None
        except ValueError:
            raise CliError("the daemon sent an answer that is not JSON") from None


def _print_progress(progress: dict[str, Any]) -> None:
    if not sys.stderr.isatty():
        return
    done, total = progress.get("done_pages"), progress.get("total_pages")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        print(f"\r{done * 100 // total:3d}% ({done}/{total} pages)", end="", file=sys.stderr)
        if done >= total:
            print(file=sys.stderr)


def cmd_admin(
    ns: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one admin command from a parsed namespace (the ``handler`` of every leaf)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        path = resolve_socket_path(ns)
        request_args = ns.admin_args(ns)
        result = call(path, ns.admin_command, request_args, on_progress=_print_progress)
        if ns.admin_transform is not None:
            result = ns.admin_transform(result, ns)
    except CliError as exc:
        print(f"fiberlinkd admin: {exc}", file=err)
        return exc.exit_code
    except DaemonError as exc:
        if ns.json:
            print(json.dumps({"error": exc.error}, indent=2), file=out)
        print(f"fiberlinkd admin: {exc}", file=err)
        return EXIT_FAILURE
    if ns.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(ns.admin_render(result, ns), file=out)
    return EXIT_OK


# --- registration with the top-level parser ---------------------------------------------


def add_cli(subparsers: Any) -> None:
    """Register ``admin`` (with every command module's parsers) and ``restore``."""
    from fiberlinkd.admin.commands import MODULES
    from fiberlinkd.admin.commands.backup import cmd_restore

    admin = subparsers.add_parser(
        "admin",
        help="manage the running daemon over its admin socket",
        description="Manage the running daemon over its admin socket. Access: root, the "
        "daemon's user, or users granted a role (fiberlinkd admin grant).",
    )
    admin_sub = admin.add_subparsers(dest="admin_name", metavar="COMMAND", required=True)
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        add = getattr(module, "add_cli", None)
        if add is not None:
            add(admin_sub)

    restore = subparsers.add_parser(
        "restore",
        help="install a backup (daemon stopped); the old database is kept aside",
        description="Verify a backup (integrity check, schema version) and install it as "
        "the daemon's database. The daemon must be stopped. The current database is moved "
        "aside as fiberlinkd.sqlite3.before-restore-<time>.",
    )
    restore.add_argument("path", type=Path, help="the backup file")
    restore.add_argument("--config", type=Path, default=None, help="TOML config file")
    restore.add_argument("--socket", default=None, help="admin socket path (overrides config)")
    restore.set_defaults(handler=cmd_restore)
