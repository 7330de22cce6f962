"""The admin socket server: an actor serving ``fiberlinkd admin`` over a Unix socket.

Task tree::

    AdminServer.run
    └── trio.serve_listeners             accepts on [admin] socket
        └── _serve_connection (one task per connection)
            └── request → resolve caller (SO_PEERCRED uid + admin_grants)
                        → authorize (scope, app grant) → handler → audit (if mutating)

The socket is bound under a temporary name, chmod 0660, then hard-linked into place:
``link`` fails if the name exists, so a live socket is never stolen, and the socket is
never reachable with looser permissions. A socket file nobody listens on (a crash) is
replaced; a live one stops startup with :class:`AdminSocketInUse`.

Errors: bugs in a handler are answered with ``internal`` and then propagate (the
supervisor restarts the actor); a client that disconnects, stalls or sends garbage only
ends its own connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client import Counter

from fiberlinkd.admin.protocol import (
    BUSY,
    FORBIDDEN,
    INTERNAL,
    MAX_MESSAGE_BYTES,
    TOO_LARGE,
    UNKNOWN_COMMAND,
    AdminError,
    MalformedRequest,
    Request,
    decode_request,
    encode,
    error_response,
    ok_response,
    progress_message,
)
from fiberlinkd.admin.registry import (
    APP_ARG,
    CommandContext,
    CommandSpec,
    Scope,
    command_names,
    get_command,
    load_command_modules,
)
from fiberlinkd.admin.roles import Caller, resolve_caller, user_name
from fiberlinkd.ledger.admin import append_audit
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime
from fiberlinkd.supervisor import FatalActorError

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o755  # the socket's own mode is the gate; the dir only needs traversal
SUN_PATH_MAX = 107  # bytes; AF_UNIX's sun_path is 108 including the NUL
LISTEN_BACKLOG = 16
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 300.0  # a connection with no complete request for this long is closed
SEND_TIMEOUT_S = 30.0  # a client that does not read its answer for this long is dropped
PROBE_TIMEOUT_S = 2.0  # connecting to an existing socket file to see whether it is live
AUDIT_BOUND_S = 10.0  # the shielded audit write after a mutating command
RECEIVE_CHUNK_BYTES = 65_536

ADMIN_COMMANDS = Counter(
    "fiberlinkd_admin_commands",
    "Admin socket commands by command and outcome (ok, error, denied, internal)",
    ["command", "outcome"],
)

PeerUidLookup = Callable[[trio.socket.SocketType], int]


class AdminSocketError(FatalActorError):
    """The admin socket cannot be created; ``str()`` is the line the operator reads.

    Fatal: retrying cannot free a path another process holds, so the daemon stops at once.
    """


class AdminSocketInUse(AdminSocketError):
    """Another process is listening on the admin socket path."""


def peer_uid_from_socket(sock: trio.socket.SocketType) -> int:
    """The connecting process's uid, from the kernel (``SO_PEERCRED``), not the message."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@attrs.define
class AdminServer:
    """The admin socket actor. ``peer_uid`` and ``daemon_uid`` are injectable for tests."""

    rt: Runtime
    peer_uid: PeerUidLookup = peer_uid_from_socket
    daemon_uid: int = attrs.field(factory=os.geteuid)
    max_connections: int = MAX_CONNECTIONS
    _connections: int = attrs.field(default=0, init=False)

    @property
    def socket_path(self) -> Path:
        return Path(self.rt.config.admin.socket)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; the socket file is removed on the way out.

        Errors: :class:`AdminSocketInUse` / :class:`AdminSocketError` before starting.
        """
        load_command_modules()
        path = self.socket_path
        sock, inode = await bind_admin_socket(path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    trio.serve_listeners, self._serve_connection, [trio.SocketListener(sock)]
                )
                log.info("admin socket listening", extra=kv(path=str(path)))
                task_status.started()
        finally:
            sock.close()
            _unlink_if_ours(path, inode)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._connections >= self.max_connections:
                busy = AdminError(BUSY, "too many admin connections; try again")
                await _send(stream, error_response(None, busy))
                return
            self._connections += 1
            try:
                uid = self.peer_uid(stream.socket)
                name = await trio.to_thread.run_sync(user_name, uid)
                await self._serve_requests(stream, uid, name)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away
            finally:
                self._connections -= 1

    async def _serve_requests(self, stream: trio.SocketStream, uid: int, name: str | None) -> None:
        reader = _LineReader(stream)
        while True:
            line: bytes | _TooLarge | None = None
            with trio.move_on_after(IDLE_TIMEOUT_S):
                line = await reader.readline()
            if line is None:
                return  # end of stream, or idle for too long
            if not isinstance(line, _TooLarge) and not line.strip():
                continue  # blank lines are keep-alives, not requests
            if isinstance(line, _TooLarge):
                error = AdminError(TOO_LARGE, f"request line longer than {MAX_MESSAGE_BYTES} bytes")
                await _send(stream, error_response(None, error))
                return
            response = await self._answer(stream, line, uid, name)
            if not await _send(stream, response):
                return

    async def _answer(
        self, stream: trio.SocketStream, line: bytes, uid: int, name: str | None
    ) -> bytes:
        try:
            request = decode_request(line)
        except MalformedRequest as exc:
            ADMIN_COMMANDS.labels("malformed", "error").inc()
            return error_response(exc.request_id, exc)
        spec = get_command(request.command)
        if spec is None:
            ADMIN_COMMANDS.labels("unknown", "error").inc()
            known = ", ".join(command_names())
            error = AdminError(
                UNKNOWN_COMMAND, f"unknown command {request.command!r}; known: {known}"
            )
            return error_response(request.id, error)
        caller = await self.rt.ledger.read(
            resolve_caller, uid, daemon_uid=self.daemon_uid, name=name
        )

        async def send_progress(data: dict[str, Any]) -> None:
            await _send(stream, progress_message(request.id, data))

        ctx = CommandContext(self.rt, caller, send_progress)
        try:
            authorize(spec, caller, request.args)
            result = await spec.handler(ctx, request.args)
            encoded = ok_response(request.id, result)
        except AdminError as exc:
            outcome = "denied" if exc.code == FORBIDDEN else "error"
            await self._finish(spec, request, caller, f"{outcome}: {exc.message}", outcome)
            return error_response(request.id, exc)
        except Exception:
            log.exception("admin command failed with a bug", extra=kv(command=spec.name, uid=uid))
            await self._finish(spec, request, caller, "error: internal", "internal")
            error = AdminError(INTERNAL, "internal error; the daemon's log has the details")
            await _send(stream, error_response(request.id, error))
            raise
        await self._finish(spec, request, caller, "ok", "ok")
        return encoded

    async def _finish(
        self, spec: CommandSpec, request: Request, caller: Caller, outcome: str, label: str
    ) -> None:
        ADMIN_COMMANDS.labels(spec.name, label).inc()
        log.info(
            "admin command",
            extra=kv(command=spec.name, uid=caller.uid, user=caller.name, outcome=label),
        )
        if not spec.mutates:
            return
        app_id = request.args.get(APP_ARG)
        args_json = encode(spec.audit_args(request.args)).decode().rstrip("\n")
        with trio.move_on_after(AUDIT_BOUND_S) as scope:
            scope.shield = True
            await self.rt.ledger.transact(
                append_audit,
                at=self.rt.clock.now_ms(),
                uid=caller.uid,
                command=spec.name,
                app_id=app_id if isinstance(app_id, str) else None,
                args_json=args_json,
                outcome=outcome[:1000],
            )


def authorize(spec: CommandSpec, caller: Caller, args: dict[str, Any]) -> None:
    """Check the caller may run ``spec`` with ``args``. Errors: ``forbidden`` AdminError."""
    caller.require_granted()
    if spec.scope is Scope.SUPER:
        caller.require_super(spec.name)
        return
    app_id = args.get(APP_ARG)
    if isinstance(app_id, str):
        caller.require_app(app_id)


@attrs.frozen
class _TooLarge:
    pass


class _LineReader:
    """Reads newline-terminated lines of at most MAX_MESSAGE_BYTES from a stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def readline(self) -> bytes | _TooLarge | None:
        """The next line without its newline; a final unterminated line counts; ``None``
        at end of stream; :class:`_TooLarge` when the line exceeds the bound."""
        searched = 0
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                if newline + 1 > MAX_MESSAGE_BYTES:
                    return _TooLarge()
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            if len(self._buffer) >= MAX_MESSAGE_BYTES:
                return _TooLarge()
            if self._eof:
                if self._buffer.strip():
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                return None
            searched = len(self._buffer)
            chunk = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
            if not chunk:
                self._eof = True
            self._buffer += chunk


async def _send(stream: trio.abc.SendStream, data: bytes) -> bool:
    """Send within SEND_TIMEOUT_S; ``False`` when the client is gone or not reading."""
    with trio.move_on_after(SEND_TIMEOUT_S):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True
    return False


async def bind_admin_socket(path: Path) -> tuple[trio.socket.SocketType, int]:
    """Create the listening socket at ``path`` (mode 0660); return it and its inode.

    Errors: :class:`AdminSocketInUse` when a live process listens there,
    :class:`AdminSocketError` for a path that is too long or not a socket.
    """
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    for candidate in (path, temp):
        if len(os.fsencode(candidate)) > SUN_PATH_MAX:
            raise AdminSocketError(
                f"[admin] socket: path is longer than {SUN_PATH_MAX} bytes: {candidate}"
            )
    path.parent.mkdir(parents=True, exist_ok=True, mode=SOCKET_DIR_MODE)
    await _remove_stale_socket(path)
    temp.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(temp))
        os.chmod(temp, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
        try:
            os.link(temp, path)  # atomic: fails when the name exists, never steals
        except FileExistsError:
            raise AdminSocketInUse(
                f"admin socket {path} appeared while starting; is another fiberlinkd running?"
            ) from None
        inode = os.lstat(path).st_ino
    except BaseException:
        sock.close()
        raise
    finally:
        temp.unlink(missing_ok=True)
    return sock, inode


async def _remove_stale_socket(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AdminSocketError(
            f"[admin] socket: {path} exists and is not a socket; refusing to replace it"
        )
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.fail_after(PROBE_TIMEOUT_S):
                await probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            log.warning("replacing a stale admin socket", extra=kv(path=str(path)))
            await trio.Path(path).unlink(missing_ok=True)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            raise AdminSocketInUse(
                f"admin socket {path} belongs to another user and may be in use; remove it "
                "if no fiberlinkd is running"
            ) from None
        except trio.TooSlowError:
            pass  # a listener with a full backlog is alive
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                raise
            await trio.Path(path).unlink(missing_ok=True)
            return
    raise AdminSocketInUse(
        f"admin socket {path} is in use by a running process; is fiberlinkd already "
        "running? (systemctl status fiberlinkd)"
    )


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket file unless a newer daemon has replaced it meanwhile."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
