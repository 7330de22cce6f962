"""Differential tests: the FNN simulator against the real FNN 0.8.1 node and the golden file.

Rules:

* The same scripts (``scripts.py``) are played against the real node (WebAssembly build in
  headless Chromium, ``real_node`` fixture, once per session) and a fresh simulator
  (``fiberlinkd.fnn.simulator.open_simulator``, network ``Fibt``); every answer must agree
  after ``compare.normalise`` (which masks only keys, signatures, invoice strings,
  timestamps and random hashes, and still checks their formats).
* The golden file's 57 cases also run against the simulator alone, without Chromium, so the
  simulator's fidelity is checked everywhere; that test is not marked ``wasm``.
* Steps whose real answer is a wasm-wrapper artefact carry the reason in ``scripts.py``
  (``artefact`` / ``data_artefact``) and are not compared (or not their error data).
* The comparator itself is tested: deliberately wrong simulator answers must fail it.
* When a difference shows the simulator is wrong, do not loosen the comparison: record the
  call, the real answer and the simulator's answer in ``FINDINGS.md``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from .compare import Masks, differences, normalise
from .realnode import RealNode
from .scripts import (
    Script,
    compare_runs,
    extra_scripts,
    golden_answers,
    golden_script,
    run_script,
)

GOLDEN = golden_script("Fibt")
SCRIPTS: list[Script] = [golden_script("Fibt"), *extra_scripts()]
Answers = dict[str, dict[str, Any]]


@pytest.fixture
async def sim_url(http: httpx.AsyncClient) -> AsyncIterator[str]:
    """A fresh simulator on Fibt whose outbound liquidity is 0, like the offline real node.

    The simulator always models one ready channel to one peer; the real node here has no
    channel at all, so its route errors say "max outbound liquidity 0". Setting the
    simulator's liquidity to 0 (its documented ``sim_set_liquidity`` control) gives the same
    starting point; listings of channels and peers are compared by shape only
    (``compare.Masks.world``).
    """
    from fiberlinkd.fnn.simulator import open_simulator

    async with open_simulator(network="Fibt", host="127.0.0.1", port=0) as sim:
        body = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "sim_set_liquidity",
            "params": [{"outbound": "0x0", "inbound": "0x0"}],
        }
        reply = (await http.post(sim.url, json=body)).json()
        assert reply.get("result") == {}, reply
        yield sim.url


async def _real_run(
    node: RealNode, cache: dict[str, Answers], http: httpx.AsyncClient, script: Script
) -> Answers:
    if script.name not in cache:
        cache[script.name] = await run_script(http, node.url, script)
    return cache[script.name]


def _report(diffs: list[str]) -> str:
    return f"{len(diffs)} difference(s):\n" + "\n".join(diffs)


# --------------------------------------------------------------------- comparator (always)


def _golden_answer(name: str) -> dict[str, Any]:
    answer = golden_answers(GOLDEN)[f"golden.{name}"]
    return copy.deepcopy(answer)


def test_comparator_ignores_values_that_differ_by_nature() -> None:
    real = _golden_answer("get_invoice_existing")
    sim = copy.deepcopy(real)
    inv = sim["result"]["invoice"]
    inv["signature"] = "1f" * 104
    inv["data"]["timestamp"] = "0x19000000000"
    inv["data"]["attrs"][-1]["payee_public_key"] = "03" + "ab" * 32
    other = _golden_answer("new_invoice_udt")["result"]["invoice_address"]
    assert other != real["result"]["invoice_address"]
    sim["result"]["invoice_address"] = other
    assert differences(real, sim) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(answer: dict[str, Any]) -> None:
        obj: Any = answer
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        obj[keys[-1]] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(answer: dict[str, Any]) -> None:
        obj: Any = answer
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]

    return mutate


def _reorder(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(answer: dict[str, Any]) -> None:
        obj: Any = answer
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[k]
        inner = obj[keys[-1]]
        obj[keys[-1]] = dict(reversed(list(inner.items())))

    return mutate


def _swap_attrs(i: int, j: int) -> Callable[[dict[str, Any]], None]:
    def mutate(answer: dict[str, Any]) -> None:
        attrs = answer["result"]["invoice"]["data"]["attrs"]
        attrs[i], attrs[j] = attrs[j], attrs[i]

    return mutate


WRONG_SIM_ANSWERS: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("status", "get_invoice_after_cancel", _set("result.status", "Canceled")),
    ("status_expired", "get_invoice_after_expiry", _set("result.status", "Open")),
    ("amount_uppercase", "new_invoice_basic", _set("result.invoice.amount", "0x5F5E100")),
    ("amount_leading_zero", "new_invoice_basic", _set("result.invoice.amount", "0x05f5e100")),
    ("missing_status", "get_invoice_existing", _drop("result.status")),
    ("extra_status", "new_invoice_basic", _set("result.status", "Open")),
    ("key_order", "get_invoice_existing", _reorder("result")),
    ("attr_value", "new_invoice_basic", _set("result.invoice.data.attrs.1.expiry_time", "0xe11")),
    ("attr_order", "new_invoice_basic", _swap_attrs(0, 1)),
    ("hash", "new_invoice_basic", _set("result.invoice.data.payment_hash", "0x" + "00" * 32)),
    ("signature_format", "new_invoice_basic", _set("result.invoice.signature", "ab" * 65)),
    ("pubkey_0x", "node_info", _set("result.pubkey", "0x02" + "ab" * 32)),
    ("error_code", "get_invoice_unknown", _set("error.code", -32602)),
    ("error_message_case", "get_invoice_unknown", _set("error.message", "Invoice not found")),
    ("error_data_missing", "get_invoice_unknown", _drop("error.data")),
    ("error_data_nulls", "new_invoice_duplicate_preimage", _drop("error.data.fallback_address")),
    ("invalid_params_text", "new_invoice_missing_currency", _set("error.data", "missing currency")),
    ("unknown_method_code", "unknown_method", _set("error.code", -32601)),
    ("list_shape", "list_channels", _set("result", {"channels": [], "last_cursor": None})),
    (
        "settle_message",
        "settle_invoice_right_preimage_open",
        _set("error.message", "Hash mismatch"),
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate"),
    [(c, m) for _, c, m in WRONG_SIM_ANSWERS],
    ids=[name for name, _, _ in WRONG_SIM_ANSWERS],
)
def test_deliberately_wrong_sim_answer_fails(
    case: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    real = _golden_answer(case)
    sim = copy.deepcopy(real)
    mutate(sim)
    assert json.dumps(sim) != json.dumps(real)
    assert differences(real, sim) != []


def test_wrong_answer_fails_a_whole_run() -> None:
    real = golden_answers(GOLDEN)
    sim = copy.deepcopy(real)
    assert compare_runs(GOLDEN, real, sim, chain_hash_differs=True) == []
    sim["golden.cancel_invoice_again"]["error"]["message"] = "invoice already cancelled"
    diffs = compare_runs(GOLDEN, real, sim, chain_hash_differs=True)
    assert len(diffs) == 1
    assert "golden.cancel_invoice_again" in diffs[0]


def test_serde_position_suffix_is_ignored() -> None:
    real = _golden_answer("new_invoice_missing_currency")
    sim = copy.deepcopy(real)
    sim["error"]["data"] += " at line 1 column 93"
    assert differences(real, sim) == []


def test_bech32_instead_of_bech32m_is_caught() -> None:
    from fiberlinkd.ckb import bech32m

    real = _golden_answer("new_invoice_basic")
    hrp, data5, _ = bech32m.decode(real["result"]["invoice_address"])
    sim = copy.deepcopy(real)
    sim["result"]["invoice_address"] = bech32m.encode(hrp, data5, bech32m.Encoding.BECH32)
    assert differences(real, sim) != []
    assert "bech32m" in json.dumps(normalise(real, Masks()))


# --------------------------------------------------------------------- simulator vs golden


async def test_golden_cases_against_simulator(sim_url: str, http: httpx.AsyncClient) -> None:
    """Fidelity without Chromium: the simulator must answer the 57 golden cases like FNN."""
    answers = await run_script(http, sim_url, GOLDEN)
    diffs = compare_runs(GOLDEN, golden_answers(GOLDEN), answers, chain_hash_differs=True)
    assert diffs == [], _report(diffs)


# --------------------------------------------------------------------- real node


@pytest.mark.wasm
async def test_golden_cases_against_real_node(
    real_node: RealNode, real_runs: dict[str, Answers], http: httpx.AsyncClient
) -> None:
    """The fixture (page, bridge, translation) reproduces the golden capture."""
    answers = await _real_run(real_node, real_runs, http, SCRIPTS[0])
    diffs = compare_runs(GOLDEN, golden_answers(GOLDEN), answers, chain_hash_differs=True)
    assert diffs == [], _report(diffs)


@pytest.mark.wasm
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
async def test_simulator_matches_real_node(
    script: Script,
    real_node: RealNode,
    real_runs: dict[str, Answers],
    sim_url: str,
    http: httpx.AsyncClient,
) -> None:
    results: dict[str, Answers] = {}

    async def play(label: str, url: str | None) -> None:
        if url is None:
            results[label] = await _real_run(real_node, real_runs, http, script)
        else:
            results[label] = await run_script(http, url, script)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(play, "real", None)
        nursery.start_soon(play, "sim", sim_url)
    diffs = compare_runs(script, results["real"], results["sim"])
    assert diffs == [], _report(diffs)


@pytest.mark.wasm
async def test_wrong_sim_answer_fails_against_real_node(
    real_node: RealNode, real_runs: dict[str, Answers], http: httpx.AsyncClient
) -> None:
    script = SCRIPTS[2]  # hold
    real = await _real_run(real_node, real_runs, http, script)
    fake_sim = copy.deepcopy(real)
    assert compare_runs(script, real, fake_sim) == []
    fake_sim["hold.settle_right_open"]["error"]["message"] = "Invoice is open"
    fake_sim["hold.get_hold"]["result"]["status"] = "Received"
    diffs = compare_runs(script, real, fake_sim)
    assert len(diffs) == 2, _report(diffs)
