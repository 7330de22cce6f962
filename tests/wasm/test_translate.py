"""Unit tests of ``translate.py`` (wasm-wrapper answers → FNN HTTP JSON-RPC envelopes).

Rules: no Chromium, no network, pure functions only, so these always run. Every
``wrapper_string`` of the golden file is translated and must give exactly the code, message
and data the capture parsed out of it (RPC errors) or the documented HTTP equivalent
(parameter errors, unknown methods).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .scripts import load_golden
from .translate import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    SERVER_ERROR,
    UNAUTHORIZED,
    Outcome,
    TranslationError,
    parse_error_object_debug,
    translate,
)

GOLDEN = load_golden()
ERROR_CASES = [c for c in GOLDEN["cases"] if "error" in c]
RESULT_CASES = [c for c in GOLDEN["cases"] if "error" not in c]


def test_golden_file_has_every_kind() -> None:
    kinds = {c["error"]["kind"] for c in ERROR_CASES}
    assert kinds == {"rpc_error", "params_deserialization", "js_type_error_no_such_export"}
    assert len(GOLDEN["cases"]) == 57


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c["name"])
def test_every_golden_wrapper_string(case: dict[str, Any]) -> None:
    err = case["error"]
    tr = translate(7, case["params"], Outcome.rejected(err["wrapper_string"]))
    assert not tr.wasm_artefact
    env = tr.envelope
    assert list(env) == ["jsonrpc", "id", "error"]
    assert env["jsonrpc"] == "2.0"
    assert env["id"] == 7
    got = env["error"]
    if err["kind"] == "rpc_error":
        assert got == {"code": err["code"], "message": err["message"], "data": err["data"]}
        assert list(got) == ["code", "message", "data"]
        # Key order inside data is FNN's struct order, kept as the raw JSON had it.
        assert json.dumps(got["data"]) == json.dumps(err["data"])
    elif err["kind"] == "params_deserialization":
        assert got["code"] == INVALID_PARAMS
        assert got["message"] == "Invalid params"
        if case["params"] == []:
            assert got["data"] == "No more params"
        else:
            assert got["data"] == err["http_equivalent_inferred"]["data_contains"]
    else:
        # fnn-rpc.md §1.2: FNN's middleware answers unknown methods before dispatch.
        assert got == {"code": UNAUTHORIZED, "message": "Unauthorized"}


@pytest.mark.parametrize("case", RESULT_CASES, ids=lambda c: c["name"])
def test_results_pass_through_unchanged(case: dict[str, Any]) -> None:
    env = translate("a", case["params"], Outcome.resolved(case["result"])).envelope
    assert env == {"jsonrpc": "2.0", "id": "a", "result": case["result"]}
    assert list(env) == ["jsonrpc", "id", "result"]


def test_data_none_means_no_data_key() -> None:
    err = parse_error_object_debug(
        'ErrorObject { code: ServerError(-32000), message: "boom", data: None }'
    )
    assert err.to_json() == {"code": SERVER_ERROR, "message": "boom"}


def test_named_codes_and_escapes() -> None:
    text = (
        'ErrorObject { code: InvalidParams, message: "a \\"q\\" \\\\ \\n \\u{1f600} \'s", '
        'data: Some(RawValue("No more params")) }'
    )
    err = parse_error_object_debug(text)
    assert err.code == INVALID_PARAMS
    assert err.message == 'a "q" \\ \n \U0001f600 \'s'
    assert err.to_json()["data"] == "No more params"


def test_data_with_parentheses_and_braces_in_strings() -> None:
    text = (
        'ErrorObject { code: ServerError(-32000), message: "x", '
        'data: Some(RawValue({"invoice":"a)) }b","n":[1,{"k":null}]})) }'
    )
    assert parse_error_object_debug(text).data == {"invoice": "a)) }b", "n": [1, {"k": None}]}


@pytest.mark.parametrize(
    "text",
    [
        'ErrorObject { code: ServerError(-32000), message: "x", data: Some(RawValue({)) }',
        'ErrorObject { code: Bogus, message: "x", data: None }',
        'ErrorObject { code: ServerError(-32000), message: "x, data: None }',
        'ErrorObject { code: ServerError(-32000), message: "x", data: None } trailing',
    ],
)
def test_malformed_error_objects_are_rejected(text: str) -> None:
    with pytest.raises(TranslationError):
        parse_error_object_debug(text)


def test_integral_float_is_reported_like_serde_json() -> None:
    wrapper = "Error: invalid type: floating point `5.0`, expected a string"
    env = translate(1, [{"invoice": 5}], Outcome.rejected(wrapper)).envelope
    assert env["error"]["data"] == "invalid type: integer `5`, expected a string"


def test_unit_value_only_becomes_no_more_params_for_empty_params() -> None:
    wrapper = "Error: invalid type: unit value, expected struct InvoiceParams"
    assert translate(1, [], Outcome.rejected(wrapper)).envelope["error"]["data"] == (
        "No more params"
    )
    got = translate(1, [None], Outcome.rejected(wrapper)).envelope["error"]["data"]
    assert got == "invalid type: unit value, expected struct InvoiceParams"


def test_unrecognised_rejection_is_a_wrapper_artefact() -> None:
    tr = translate(1, [], Outcome.rejected("RuntimeError: unreachable"))
    assert tr.wasm_artefact
    assert tr.envelope["error"] == {
        "code": INTERNAL_ERROR,
        "message": "Internal error",
        "data": "RuntimeError: unreachable",
    }
