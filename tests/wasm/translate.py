"""Translate what fiber-js's ``invokeCommand`` answered into FNN's HTTP JSON-RPC envelope.

The WebAssembly build of FNN 0.8.1 (npm ``@nervosnetwork/fiber-js``) has no HTTP server. Its
worker calls the RPC handler directly and reports back in one of two ways:

* it **resolves** with exactly the RPC ``result`` (the same JSON FNN's HTTP server would put
  under ``"result"``);
* it **rejects** with a string, ``${e}`` of whatever the handler threw.

The rejection strings have three forms (``fnn-golden-notes.md``, "How the wrapper reports
errors"); this module maps each to what FNN's HTTP server (jsonrpsee 0.25 plus FNN's biscuit
middleware, ``fnn-rpc.md`` §1.2 and §4.1) answers for the same failure:

1. ``ErrorObject { code: ServerError(-32000), message: "…", data: Some(RawValue(…)) }`` — the
   Rust ``Debug`` text of a jsonrpsee ``ErrorObjectOwned`` returned by the RPC handler. Over
   HTTP that object *is* the ``error`` member, so code, message and data are parsed back out
   (:func:`parse_error_object_debug`) and used verbatim. ``data: None`` means no ``data`` key.
2. ``Error: <serde message>`` — parameter deserialisation failed before the handler ran
   (serde-wasm-bindgen). Over HTTP jsonrpsee answers these with
   ``{"code": -32602, "message": "Invalid params", "data": "<serde message>"}``.
   Two known differences are wasm-wrapper artefacts, handled as follows:

   * serde_json (HTTP) appends `` at line L column C`` to its messages; serde-wasm-bindgen
     has no text position, so the suffix cannot be recreated here. Comparators strip it
     (``compare.py``).
   * With ``params: []`` the HTTP server never reaches serde: jsonrpsee's positional
     parameter reader answers ``"No more params"`` (``fnn-rpc.md`` §1.1). The wasm worker
     instead passes ``undefined`` and serde reports ``invalid type: unit value, expected
     struct …``. When the request's params array is empty and the message has that form,
     the data is rewritten to ``"No more params"``, which is what the HTTP node says.
   * JavaScript has only floating-point numbers, so serde-wasm-bindgen reports a JSON
     number ``5`` as ``floating point `5.0```; serde_json reports an integral JSON number
     as ``integer `5```. Integral floats are rewritten to the serde_json form.
   * A JSON ``null`` where an enum is required reads ``invalid type: unit value, expected
     enum …`` here, but serde_json's enum deserializer says ``expected value``. That one is
     not rewritten; the differential step documents it (``scripts.py``).
3. ``TypeError: …`` — ``fiber.default[name]`` is not a function: the wasm build exports no
   such method. FNN's HTTP biscuit middleware looks every method name up in its rule table
   *before* dispatch, even when authentication is disabled, and answers a name with no rule
   with ``{"code": -32999, "message": "Unauthorized"}`` and no data (``fnn-rpc.md`` §1.2,
   §4.1). The golden notes guessed ``-32601`` for this case, but that guess was not observed
   and contradicts the middleware's source; ``-32601`` only appears over HTTP for a method
   that has a rule but whose module is not registered, which has no wasm equivalent. So
   ``TypeError`` maps to ``-32999``. Caveat: ``list_payments`` *is* a real 0.8 method that
   the 0.8.1 wasm build simply does not export; over HTTP it would work, so differential
   tests must not compare it (see ``scripts.py``).

Anything else (a worker crash reported as an event, a wasm trap) is not an FNN answer at all;
it maps to ``-32603 "Internal error"`` with the raw text as data and ``wasm_artefact`` set in
:class:`Translation`, so tests can fail loudly instead of comparing it.

Every function here is pure; ``test_translate.py`` checks them against every
``wrapper_string`` in ``fnn-golden-dev.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

JSONRPC_VERSION = "2.0"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
UNAUTHORIZED = -32999

#: jsonrpsee ``ErrorCode`` Debug names of the fixed codes (jsonrpsee-types ``error.rs``).
_NAMED_CODES: dict[str, int] = {
    "ParseError": PARSE_ERROR,
    "OversizedRequest": -32007,
    "InvalidRequest": INVALID_REQUEST,
    "MethodNotFound": METHOD_NOT_FOUND,
    "ServerIsBusy": -32009,
    "InvalidParams": INVALID_PARAMS,
    "InternalError": INTERNAL_ERROR,
}

#: Default messages jsonrpsee pairs with each code (used for framework-level answers).
MESSAGES: dict[int, str] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    UNAUTHORIZED: "Unauthorized",
}

_UNIT_VALUE_RE = re.compile(r"^invalid type: unit value, expected struct \w+$")
_INTEGRAL_FLOAT_RE = re.compile(r"floating point `(-?\d+)\.0`")


class TranslationError(ValueError):
    """A wrapper string that claims to be an ``ErrorObject`` does not parse as one."""


@dataclass(frozen=True)
class Outcome:
    """What ``invokeCommand`` did: resolved with ``data`` or rejected with ``error``."""

    ok: bool
    data: Any = None
    error: str = ""

    @classmethod
    def resolved(cls, data: Any) -> Outcome:
        return cls(ok=True, data=data)

    @classmethod
    def rejected(cls, error: str) -> Outcome:
        return cls(ok=False, error=error)


@dataclass(frozen=True)
class RpcError:
    """A JSON-RPC error object; ``has_data`` distinguishes ``data: null`` from no ``data``."""

    code: int
    message: str
    data: Any = None
    has_data: bool = False

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.has_data:
            obj["data"] = self.data
        return obj


@dataclass(frozen=True)
class Translation:
    """The HTTP envelope, and whether it stands for a wrapper failure rather than FNN's."""

    envelope: dict[str, Any]
    wasm_artefact: bool = False


def _parse_rust_str(text: str, pos: int) -> tuple[str, int]:
    """Parse a Rust ``Debug``-escaped string literal starting at ``text[pos] == '"'``.

    Returns the decoded string and the index just past the closing quote. Handles the escapes
    ``str::escape_debug`` produces: ``\\" \\\\ \\' \\n \\r \\t \\0`` and ``\\u{…}``.
    """
    if pos >= len(text) or text[pos] != '"':
        raise TranslationError(f"expected '\"' at offset {pos}")
    out: list[str] = []
    i = pos + 1
    simple = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0"}
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            break
        esc = text[i + 1]
        if esc in simple:
            out.append(simple[esc])
            i += 2
        elif esc == "u" and text.startswith("{", i + 2):
            end = text.find("}", i + 3)
            if end < 0:
                raise TranslationError(f"unterminated \\u{{ escape at offset {i}")
            out.append(chr(int(text[i + 3 : end], 16)))
            i = end + 1
        else:
            raise TranslationError(f"unknown escape \\{esc} at offset {i}")
    raise TranslationError("unterminated string literal")


_CODE_RE = re.compile(r"(?P<name>[A-Za-z]+)(?:\((?P<num>-?\d+)\))?")


def parse_error_object_debug(text: str) -> RpcError:
    """Parse jsonrpsee's ``ErrorObject { code: …, message: "…", data: … }`` Debug text.

    ``code`` is ``ServerError(n)`` or one of the named codes; ``data`` is ``None`` or
    ``Some(RawValue(<json>))``, where ``<json>`` is the raw JSON text serde_json kept.
    """
    head = "ErrorObject { code: "
    if not text.startswith(head):
        raise TranslationError("not an ErrorObject Debug string")
    pos = len(head)
    m = _CODE_RE.match(text, pos)
    if m is None:
        raise TranslationError(f"unparseable code at offset {pos}")
    name, num = m.group("name"), m.group("num")
    if num is not None:
        if name != "ServerError":
            raise TranslationError(f"unexpected code variant {name}({num})")
        code = int(num)
    elif name in _NAMED_CODES:
        code = _NAMED_CODES[name]
    else:
        raise TranslationError(f"unknown code variant {name}")
    pos = m.end()
    sep = ", message: "
    if not text.startswith(sep, pos):
        raise TranslationError(f"expected {sep!r} at offset {pos}")
    message, pos = _parse_rust_str(text, pos + len(sep))
    sep = ", data: "
    if not text.startswith(sep, pos):
        raise TranslationError(f"expected {sep!r} at offset {pos}")
    pos += len(sep)
    if text.startswith("None", pos):
        pos += len("None")
        has_data, data = False, None
    elif text.startswith("Some(RawValue(", pos):
        pos += len("Some(RawValue(")
        try:
            data, pos = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TranslationError(f"data is not JSON: {exc}") from exc
        if not text.startswith("))", pos):
            raise TranslationError(f"expected '))' at offset {pos}")
        pos += 2
        has_data = True
    else:
        raise TranslationError(f"unexpected data at offset {pos}")
    if text[pos:] != " }":
        raise TranslationError(f"trailing text {text[pos:]!r}")
    return RpcError(code=code, message=message, data=data, has_data=has_data)


def error_for_rejection(error: str, *, params: Any) -> tuple[RpcError, bool]:
    """Map one rejection string to the HTTP error object; the flag marks wrapper failures.

    ``params`` is the request's ``params`` member (needed for the ``"No more params"`` case).
    """
    if error.startswith("ErrorObject { "):
        return parse_error_object_debug(error), False
    if error.startswith("Error: "):
        detail = error[len("Error: ") :]
        if params == [] and _UNIT_VALUE_RE.match(detail):
            detail = "No more params"
        detail = _INTEGRAL_FLOAT_RE.sub(r"integer `\1`", detail)
        return RpcError(INVALID_PARAMS, MESSAGES[INVALID_PARAMS], detail, has_data=True), False
    if error.startswith("TypeError: "):
        return RpcError(UNAUTHORIZED, MESSAGES[UNAUTHORIZED]), False
    return RpcError(INTERNAL_ERROR, MESSAGES[INTERNAL_ERROR], error, has_data=True), True


def envelope(
    request_id: Any, *, result: Any = None, error: RpcError | None = None
) -> dict[str, Any]:
    """A jsonrpsee response object: keys in jsonrpsee's order (jsonrpc, id, result|error)."""
    if error is not None:
        return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "error": error.to_json()}
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "result": result}


def translate(request_id: Any, params: Any, outcome: Outcome) -> Translation:
    """The HTTP JSON-RPC response FNN would send for a call that ended with ``outcome``."""
    if outcome.ok:
        return Translation(envelope(request_id, result=outcome.data))
    err, artefact = error_for_rejection(outcome.error, params=params)
    return Translation(envelope(request_id, error=err), wasm_artefact=artefact)
