"""The admin socket's wire format: newline-delimited JSON, one request → one response.

Request (one line, at most :data:`MAX_MESSAGE_BYTES` including the newline)::

    {"id": 1, "command": "app.list", "args": {}}

Response::

    {"id": 1, "ok": true, "result": ...}
    {"id": 1, "ok": false, "error": {"code": "forbidden", "message": "..."}}

A long command (``backup``) may send progress lines first, which carry no ``ok``::

    {"id": 1, "progress": {"done_pages": 100, "total_pages": 400}}

``id`` is echoed (any JSON scalar; ``null`` when the request could not be read). ``args``
is an object and may be omitted. A client may send several requests on one connection;
they are answered in order. A line that is too long ends the connection after its error
answer (the stream cannot be resynchronised); any other malformed line is answered and the
connection stays usable.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

MAX_MESSAGE_BYTES = 1024 * 1024  # one request or response line, newline included

# Error codes (the ``error.code`` strings a client can branch on).
BAD_REQUEST = "bad_request"  # not JSON, wrong shape, invalid arguments
TOO_LARGE = "too_large"  # a line longer than MAX_MESSAGE_BYTES
UNKNOWN_COMMAND = "unknown_command"
FORBIDDEN = "forbidden"  # the caller lacks the grant; the message names it
NOT_FOUND = "not_found"
CONFLICT = "conflict"
FAILED = "failed"  # the command ran and could not do its job (e.g. a backup path problem)
INTERNAL = "internal"  # a bug; details are in the daemon's log
BUSY = "busy"  # too many connections


class AdminError(Exception):
    """A command's refusal or failure, answered to the client as ``{"code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class MalformedRequest(AdminError):
    """A request line that cannot be run; ``request_id`` is its ``id`` when one was readable."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(BAD_REQUEST, message)
        self.request_id = request_id


def bad_request(message: str) -> AdminError:
    return AdminError(BAD_REQUEST, message)


def not_found(message: str) -> AdminError:
    return AdminError(NOT_FOUND, message)


@attrs.frozen
class Request:
    id: Any  # a JSON scalar, echoed back
    command: str
    args: dict[str, Any]


def decode_request(line: bytes) -> Request:
    """Parse one request line (without its newline).

    Errors: :class:`MalformedRequest`, carrying the ``id`` when one was readable.
    """
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise MalformedRequest("request is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedRequest("request must be a JSON object with id, command, args")
    request_id = data.get("id")
    if isinstance(request_id, dict | list):
        raise MalformedRequest("id must be a string, number or null")
    command = data.get("command")
    if not isinstance(command, str) or not command:
        raise MalformedRequest("command must be a non-empty string", request_id)
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MalformedRequest("args must be a JSON object", request_id)
    return Request(id=request_id, command=command, args=args)


def encode(message: dict[str, Any]) -> bytes:
    """One line of compact JSON with its newline."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def ok_response(request_id: Any, result: Any) -> bytes:
    return encode({"id": request_id, "ok": True, "result": result})


def error_response(request_id: Any, error: AdminError) -> bytes:
    return encode({"id": request_id, "ok": False, "error": error.as_error()})


def progress_message(request_id: Any, progress: dict[str, Any]) -> bytes:
    return encode({"id": request_id, "progress": progress})
