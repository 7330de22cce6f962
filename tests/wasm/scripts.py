"""Call sequences for the differential tests, and a runner that plays them against a URL.

A :class:`Script` is an ordered list of :class:`Step` (one JSON-RPC call each). A step's params
may hold :class:`Ref` values, resolved against earlier answers *of the same run*, so one script
can be played against two nodes whose invoices, keys and random hashes differ.

* :func:`golden_script` turns the 57 cases of ``fnn-golden-dev.json`` into a script for the
  node's network: currency ``Fibd`` becomes ``Fibt``, invoice strings that came from an earlier
  case become references to that case's answer (with the same transformation: verbatim,
  upper-cased, truncated, one character changed), and each step carries the golden answer as
  an HTTP envelope (via :func:`translate.translate`) retargeted to the network.
* :func:`extra_scripts` covers what the golden file does not: expiry, hold invoices and
  settle errors, upper-case hex, oversize values, leading zeros, missing fields, currencies,
  descriptions, parse_invoice and send_payment validation, lists, unknown methods.

Preimages are derived from the script and tag so no two scripts collide on one node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from fiberlinkd.ckb import bech32m
from fiberlinkd.ckb.hashing import ckb_hash

from .compare import Masks, differences
from .translate import Outcome, translate

#: A copy of ``shared/vectors/fnn-golden-dev.json`` kept with the tests, so the tier runs
#: wherever the repository is checked out.
GOLDEN_PATH = Path(__file__).resolve().parent / "fnn-golden-dev.json"
GOLDEN_CURRENCY = "Fibd"
EXPIRY_WAIT_S = 2.0

#: Why ``list_payments`` is not compared: fiber-wasm 0.8.1 does not export it, so the wasm
#: node fails it like an unknown method; FNN 0.8's HTTP server does serve it.
LIST_PAYMENTS_ARTEFACT = (
    "list_payments is not exported by fiber-wasm 0.8.1 (TypeError in the worker); "
    "FNN 0.8 over HTTP serves it, so the wasm answer says nothing about FNN"
)


#: Methods whose answers describe the node's surroundings (see ``compare.Masks.world``).
WORLD_METHODS = frozenset({"node_info", "list_channels", "list_peers"})


@dataclass(frozen=True)
class Ref:
    """A value taken from an earlier step's answer: ``answer["result"]`` then ``path``."""

    step: str
    path: tuple[str, ...]
    transform: Callable[[str], str] | None = None

    def resolve(self, answers: dict[str, dict[str, Any]]) -> Any:
        value: Any = answers[self.step]["result"]
        for key in self.path:
            value = value[key]
        return self.transform(value) if self.transform else value


@dataclass(frozen=True)
class Step:
    """One call.

    ``artefact`` (a reason) excludes the step from comparisons with the real node;
    ``data_artefact`` (a reason) compares everything but ``error.data``.
    """

    name: str
    method: str
    params: Any
    masks: Masks = field(default_factory=Masks)
    wait_before: float = 0.0
    artefact: str | None = None
    data_artefact: str | None = None
    expected: dict[str, Any] | None = None


@dataclass
class Script:
    name: str
    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, method: str, params: Any, **kw: Any) -> None:
        if method in WORLD_METHODS:
            kw.setdefault("masks", Masks(world=True))
        self.steps.append(Step(f"{self.name}.{name}", method, params, **kw))


def resolve(params: Any, answers: dict[str, dict[str, Any]]) -> Any:
    if isinstance(params, Ref):
        return params.resolve(answers)
    if isinstance(params, dict):
        return {k: resolve(v, answers) for k, v in params.items()}
    if isinstance(params, list):
        return [resolve(v, answers) for v in params]
    return params


async def run_script(
    client: httpx.AsyncClient, url: str, script: Script
) -> dict[str, dict[str, Any]]:
    """Play ``script`` against ``url``; answers by step name (parsed HTTP 200 bodies)."""
    answers: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(script.steps, start=1):
        if step.wait_before:
            await trio.sleep(step.wait_before)
        body = {"jsonrpc": "2.0", "id": i, "method": step.method}
        body["params"] = resolve(step.params, answers)
        resp = await client.post(url, json=body)
        assert resp.status_code == 200, f"{step.name}: HTTP {resp.status_code}: {resp.text}"
        answers[step.name] = resp.json()
    return answers


# --------------------------------------------------------------------------- helpers


def preimage(script: str, tag: str) -> str:
    return "0x" + hashlib.sha256(f"{script}/{tag}".encode()).hexdigest()


def ckb_hash_hex(preimage_hex: str) -> str:
    return "0x" + ckb_hash(bytes.fromhex(preimage_hex[2:])).hex()


def sha256_hex(preimage_hex: str) -> str:
    return "0x" + hashlib.sha256(bytes.fromhex(preimage_hex[2:])).hexdigest()


def upper(s: str) -> str:
    return s.upper()


def corrupt(s: str) -> str:
    """Change one data character near the end (any single change breaks the checksum)."""
    i = len(s) - 10
    return s[:i] + ("q" if s[i] != "q" else "p") + s[i + 1 :]


def truncate(n: int) -> Callable[[str], str]:
    def cut(s: str) -> str:
        return s[:-n]

    return cut


def retarget_invoice(s: str, currency: str) -> str:
    """Re-encode a golden invoice string under ``currency``'s HRP (valid bech32m again)."""
    try:
        hrp, data5, spec = bech32m.decode(s)
    except bech32m.Bech32Error:
        return currency.lower() + s[4:] if s.islower() else currency.upper() + s[4:]
    out = bech32m.encode(currency.lower() + hrp[4:], data5, spec)
    return out.upper() if s.isupper() else out


def _retarget(value: Any, currency: str) -> Any:
    if isinstance(value, dict):
        return {k: _retarget(v, currency) for k, v in value.items()}
    if isinstance(value, list):
        return [_retarget(v, currency) for v in value]
    if isinstance(value, str):
        if value == GOLDEN_CURRENCY:
            return currency
        if value.lower().startswith(GOLDEN_CURRENCY.lower()) and len(value) > 60:
            return retarget_invoice(value, currency)
        return value.replace(f"be {GOLDEN_CURRENCY} with", f"be {currency} with")
    return value


# --------------------------------------------------------------------------- golden


def load_golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN_PATH.read_text())
    return data


def golden_envelope(case: dict[str, Any], request_id: int) -> dict[str, Any]:
    """The golden answer as FNN's HTTP server would send it."""
    if "error" in case:
        outcome = Outcome.rejected(case["error"]["wrapper_string"])
    else:
        outcome = Outcome.resolved(case["result"])
    return translate(request_id, case["params"], outcome).envelope


def _invoice_ref(value: str, sources: dict[str, str]) -> Ref | None:
    """Find which earlier golden answer ``value`` was made from, and how."""
    for step, source in sources.items():
        path = ("invoice_address",)
        if value == source:
            return Ref(step, path)
        if value == source.upper():
            return Ref(step, path, upper)
        if source.startswith(value):
            return Ref(step, path, truncate(len(source) - len(value)))
        if len(value) == len(source):
            diff = [i for i, (a, b) in enumerate(zip(value, source, strict=True)) if a != b]
            if diff == [len(source) - 10]:
                return Ref(step, path, corrupt)
    return None


def golden_script(currency: str = "Fibt") -> Script:
    """The golden cases as a script for a node whose currency is ``currency``."""
    golden = load_golden()
    script = Script("golden")
    sources: dict[str, str] = {}
    for i, case in enumerate(golden["cases"], start=1):
        name = f"golden.{case['name']}"
        params = _retarget(case["params"], currency)
        for obj in case["params"]:
            for key, value in obj.items():
                if key == "invoice" and isinstance(value, str) and len(value) > 60:
                    ref = _invoice_ref(value, sources)
                    assert ref is not None, f"{name}: unknown invoice source"
                    params[0][key] = ref
        result = case.get("result")
        if isinstance(result, dict) and "invoice_address" in result:
            sources[name] = result["invoice_address"]
        script.steps.append(
            Step(
                name,
                case["method"],
                params,
                masks=Masks(
                    random_hash=case["name"] == "new_invoice_no_preimage",
                    world=case["method"] in WORLD_METHODS,
                ),
                wait_before=EXPIRY_WAIT_S if case["name"] == "get_invoice_after_expiry" else 0.0,
                artefact=LIST_PAYMENTS_ARTEFACT if case["method"] == "list_payments" else None,
                expected=_retarget(golden_envelope(case, i), currency),
            )
        )
    return script


# --------------------------------------------------------------------------- extra scripts

OTHER_PUBKEY = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
OFF_CURVE_PUBKEY = "02" + "00" * 32
UNKNOWN_HASH = "0x" + "34" * 32
DESCRIPTION_LIMIT_BYTES = 639


def _new(script: Script, tag: str, **fields: Any) -> dict[str, Any]:
    """new_invoice params with the script's currency and a fresh preimage unless given."""
    params: dict[str, Any] = {"amount": "0x64", "currency": "Fibt"}
    if "payment_hash" not in fields and "payment_preimage" not in fields:
        params["payment_preimage"] = preimage(script.name, tag)
    params.update(fields)
    return params


def expiry_script() -> Script:
    """Short expiry, Expired status, settle/pay/cancel after expiry; one shared wait."""
    s = Script("expiry")
    p_norm = preimage(s.name, "normal")
    p_hold = preimage(s.name, "hold")
    h_norm, h_hold = ckb_hash_hex(p_norm), ckb_hash_hex(p_hold)
    s.add("new_short", "new_invoice", [_new(s, "normal", expiry="0x1", payment_preimage=p_norm)])
    s.add("new_short_hold", "new_invoice", [_new(s, "hold", expiry="0x1", payment_hash=h_hold)])
    s.add("new_expiry_zero", "new_invoice", [_new(s, "zero", expiry="0x0")])
    s.add("get_open", "get_invoice", [{"payment_hash": h_norm}])
    s.add("get_expired", "get_invoice", [{"payment_hash": h_norm}], wait_before=EXPIRY_WAIT_S)
    s.add("get_expired_hold", "get_invoice", [{"payment_hash": h_hold}])
    s.add(
        "get_expiry_zero", "get_invoice", [{"payment_hash": ckb_hash_hex(preimage(s.name, "zero"))}]
    )
    s.add(
        "settle_expired_hold",
        "settle_invoice",
        [{"payment_hash": h_hold, "payment_preimage": p_hold}],
    )
    s.add(
        "settle_expired_hold_wrong",
        "settle_invoice",
        [{"payment_hash": h_hold, "payment_preimage": p_norm}],
    )
    s.add(
        "pay_expired_own",
        "send_payment",
        [{"invoice": Ref("expiry.new_short", ("invoice_address",))}],
    )
    s.add("cancel_expired", "cancel_invoice", [{"payment_hash": h_norm}])
    s.add("get_cancelled", "get_invoice", [{"payment_hash": h_norm}])
    s.add("cancel_again", "cancel_invoice", [{"payment_hash": h_norm}])
    s.add("cancel_expired_hold", "cancel_invoice", [{"payment_hash": h_hold}])
    s.add(
        "settle_cancelled_hold",
        "settle_invoice",
        [{"payment_hash": h_hold, "payment_preimage": p_hold}],
    )
    s.add(
        "parse_expired",
        "parse_invoice",
        [{"invoice": Ref("expiry.new_short", ("invoice_address",))}],
    )
    return s


def hold_script() -> Script:
    """Hold invoices (payment_hash only) and every settle_invoice error reachable offline."""
    s = Script("hold")
    p = preimage(s.name, "hold")
    h = ckb_hash_hex(p)
    p_sha = preimage(s.name, "sha")
    h_sha = sha256_hex(p_sha)
    wrong = preimage(s.name, "wrong")
    s.add(
        "new_hold",
        "new_invoice",
        [_new(s, "hold", payment_hash=h, description="hold", expiry="0xe10")],
    )
    s.add("get_hold", "get_invoice", [{"payment_hash": h}])
    s.add("settle_wrong", "settle_invoice", [{"payment_hash": h, "payment_preimage": wrong}])
    s.add("settle_right_open", "settle_invoice", [{"payment_hash": h, "payment_preimage": p}])
    s.add(
        "settle_unknown", "settle_invoice", [{"payment_hash": UNKNOWN_HASH, "payment_preimage": p}]
    )
    s.add("settle_missing_preimage", "settle_invoice", [{"payment_hash": h}])
    s.add("settle_missing_hash", "settle_invoice", [{"payment_preimage": p}])
    s.add("settle_no_params", "settle_invoice", [])
    s.add("dup_hash", "new_invoice", [_new(s, "dup", payment_hash=h)])
    s.add("dup_by_preimage", "new_invoice", [_new(s, "dup2", payment_preimage=p)])
    s.add(
        "new_hold_sha256",
        "new_invoice",
        [_new(s, "sha", payment_hash=h_sha, hash_algorithm="sha256")],
    )
    s.add(
        "settle_sha256_right_open",
        "settle_invoice",
        [{"payment_hash": h_sha, "payment_preimage": p_sha}],
    )
    s.add(
        "settle_sha256_ckbhash_preimage",
        "settle_invoice",
        [{"payment_hash": h_sha, "payment_preimage": wrong}],
    )
    s.add(
        "new_hold_bad_algorithm",
        "new_invoice",
        [_new(s, "alg", payment_hash=h_sha, hash_algorithm="SHA256")],
    )
    s.add("cancel_hold", "cancel_invoice", [{"payment_hash": h}])
    s.add("get_cancelled_hold", "get_invoice", [{"payment_hash": h}])
    s.add("settle_cancelled", "settle_invoice", [{"payment_hash": h, "payment_preimage": p}])
    s.add(
        "settle_cancelled_wrong", "settle_invoice", [{"payment_hash": h, "payment_preimage": wrong}]
    )
    s.add(
        "pay_cancelled_hold",
        "send_payment",
        [{"invoice": Ref("hold.new_hold", ("invoice_address",))}],
    )
    return s


def validation_script() -> Script:
    """new_invoice / get_invoice / parse_invoice input rules: hex, sizes, fields, currency."""
    s = Script("validation")
    p_up = preimage(s.name, "upper")
    p_bare = preimage(s.name, "bare")
    p_ok = preimage(s.name, "ok")
    # Upper-case hex digits are accepted and echoed in lower case; the prefix must be "0x".
    s.add("amount_upper_digits", "new_invoice", [_new(s, "a1", amount="0xABCDEF")])
    s.add("amount_upper_prefix", "new_invoice", [_new(s, "a2", amount="0X64")])
    s.add("amount_empty_hex", "new_invoice", [_new(s, "a3", amount="0x")])
    s.add("amount_empty", "new_invoice", [_new(s, "a4", amount="")])
    s.add("amount_non_hex", "new_invoice", [_new(s, "a5", amount="0xg1")])
    s.add("amount_double_zero", "new_invoice", [_new(s, "a6", amount="0x00")])
    s.add("amount_negative", "new_invoice", [_new(s, "a7", amount="-0x1")])
    s.add(
        "preimage_upper", "new_invoice", [_new(s, "p1", payment_preimage="0x" + p_up[2:].upper())]
    )
    s.add("get_preimage_upper", "get_invoice", [{"payment_hash": ckb_hash_hex(p_up)}])
    s.add("preimage_no_prefix", "new_invoice", [_new(s, "p2", payment_preimage=p_bare[2:])])
    s.add("get_hash_no_prefix", "get_invoice", [{"payment_hash": ckb_hash_hex(p_bare)[2:]}])
    s.add("preimage_33_bytes", "new_invoice", [_new(s, "p3", payment_preimage=p_ok + "ab")])
    s.add("preimage_odd_length", "new_invoice", [_new(s, "p4", payment_preimage=p_ok[:-1])])
    s.add("preimage_non_hex", "new_invoice", [_new(s, "p5", payment_preimage="0x" + "zz" * 32)])
    s.add("hash_31_bytes", "get_invoice", [{"payment_hash": UNKNOWN_HASH[:-2]}])
    s.add("expiry_upper", "new_invoice", [_new(s, "e1", expiry="0xE10")])
    s.add("expiry_u64_overflow", "new_invoice", [_new(s, "e2", expiry="0x10000000000000000")])
    s.add("expiry_u64_max", "new_invoice", [_new(s, "e3", expiry="0xffffffffffffffff")])
    s.add("amount_u128_max_plus_digit", "new_invoice", [_new(s, "a8", amount="0x" + "f" * 33)])
    s.add("final_delta_too_small", "new_invoice", [_new(s, "f1", final_expiry_delta="0x1")])
    s.add("final_delta_min", "new_invoice", [_new(s, "f2", final_expiry_delta=hex(9_600_000))])
    s.add("final_delta_max", "new_invoice", [_new(s, "f3", final_expiry_delta=hex(1_209_600_000))])
    s.add(
        "final_delta_too_big", "new_invoice", [_new(s, "f4", final_expiry_delta=hex(1_209_600_001))]
    )
    s.add(
        "final_delta_leading_zero", "new_invoice", [_new(s, "f5", final_expiry_delta="0x0927c00")]
    )
    s.add("desc_max", "new_invoice", [_new(s, "d1", description="d" * DESCRIPTION_LIMIT_BYTES)])
    s.add(
        "desc_too_long",
        "new_invoice",
        [_new(s, "d2", description="d" * (DESCRIPTION_LIMIT_BYTES + 1))],
    )
    s.add("desc_multibyte_too_long", "new_invoice", [_new(s, "d3", description="\u00e9" * 320)])
    s.add("desc_empty", "new_invoice", [_new(s, "d4", description="")])
    s.add("desc_unicode", "new_invoice", [_new(s, "d5", description="tip \u2615 \u00fc")])
    s.add("currency_dev_on_testnet", "new_invoice", [_new(s, "c1", currency="Fibd")])
    s.add("currency_mainnet", "new_invoice", [_new(s, "c2", currency="Fibb")])
    s.add("currency_lowercase", "new_invoice", [_new(s, "c3", currency="fibt")])
    s.add(
        "currency_null",
        "new_invoice",
        [_new(s, "c4", currency=None)],
        data_artefact=(
            "JSON null reaches serde-wasm-bindgen as JS null and reads 'invalid type: unit "
            "value, expected enum Currency'; over HTTP serde_json's enum deserializer answers "
            "'expected value at line 1 column N' for null; code and message still compare"
        ),
    )
    s.add("amount_json_number", "new_invoice", [_new(s, "n1", amount=100)])
    s.add("expiry_json_number", "new_invoice", [_new(s, "n2", expiry=3600)])
    s.add(
        "both_hash_and_preimage",
        "new_invoice",
        [_new(s, "b1", payment_preimage=p_ok, payment_hash=ckb_hash_hex(p_ok))],
    )
    s.add("missing_everything", "new_invoice", [{}])
    s.add("missing_currency_only", "new_invoice", [{"amount": "0x1"}])
    s.add("no_params", "new_invoice", [])
    s.add("unknown_field_ignored", "new_invoice", [_new(s, "u1", no_such_field=1)])
    s.add(
        "udt_bad_hash_type",
        "new_invoice",
        [
            _new(
                s,
                "t1",
                udt_type_script={"code_hash": "0x" + "11" * 32, "hash_type": "bogus", "args": "0x"},
            )
        ],
    )
    s.add("allow_trampoline", "new_invoice", [_new(s, "t2", allow_trampoline_routing=True)])
    s.add(
        "allow_mpp_sha256",
        "new_invoice",
        [_new(s, "t3", allow_mpp=True, hash_algorithm="sha256", description="mpp")],
    )
    s.add("allow_mpp_false", "new_invoice", [_new(s, "t5", allow_mpp=False)])
    s.add("hash_algorithm_ckb_hash", "new_invoice", [_new(s, "t6", hash_algorithm="ckb_hash")])
    s.add(
        "all_fields",
        "new_invoice",
        [
            _new(
                s,
                "t4",
                description="all",
                expiry="0x3c",
                final_expiry_delta=hex(10_000_000),
                hash_algorithm="ckb_hash",
                allow_mpp=False,
            )
        ],
    )
    s.add("get_missing_hash", "get_invoice", [{}])
    s.add("cancel_missing_hash", "cancel_invoice", [{}])
    s.add("cancel_no_params", "cancel_invoice", [])
    s.add("parse_missing_invoice", "parse_invoice", [{}])
    s.add("parse_empty", "parse_invoice", [{"invoice": ""}])
    s.add(
        "parse_mixed_case",
        "parse_invoice",
        [
            {
                "invoice": Ref(
                    "validation.desc_unicode",
                    ("invoice_address",),
                    lambda v: v[:20] + v[20:].upper(),
                )
            }
        ],
    )
    s.add(
        "parse_own",
        "parse_invoice",
        [{"invoice": Ref("validation.all_fields", ("invoice_address",))}],
    )
    s.add(
        "parse_own_upper",
        "parse_invoice",
        [{"invoice": Ref("validation.all_fields", ("invoice_address",), upper)}],
    )
    s.add(
        "parse_foreign_fnn_invoice",
        "parse_invoice",
        [{"invoice": load_golden()["cases"][1]["result"]["invoice_address"]}],
    )
    s.add(
        "parse_bech32_not_m",
        "parse_invoice",
        [{"invoice": bech32m.encode("fibt100", [1] * 40, bech32m.Encoding.BECH32)}],
    )
    s.add(
        "parse_wrong_hrp",
        "parse_invoice",
        [{"invoice": bech32m.encode("lnbc100", [1] * 40, bech32m.Encoding.BECH32M)}],
    )
    s.add(
        "parse_short_data",
        "parse_invoice",
        [{"invoice": bech32m.encode("fibt100", [1] * 3, bech32m.Encoding.BECH32M)}],
    )
    s.add("parse_number", "parse_invoice", [{"invoice": 5}])
    return s


def payments_script() -> Script:
    """send_payment validation, get_payment, lists, node_info, unknown methods."""
    s = Script("payments")
    own = Ref("payments.own_invoice", ("invoice_address",))
    s.add("own_invoice", "new_invoice", [_new(s, "own", amount="0x5f5e100", description="own")])
    s.add("send_no_args", "send_payment", [{}])
    s.add("send_no_params", "send_payment", [])
    s.add("send_amount_only", "send_payment", [{"amount": "0x64"}])
    s.add("send_target_only", "send_payment", [{"target_pubkey": OTHER_PUBKEY}])
    s.add(
        "send_target_amount_no_keysend",
        "send_payment",
        [{"target_pubkey": OTHER_PUBKEY, "amount": "0x64"}],
    )
    s.add(
        "send_keysend",
        "send_payment",
        [{"target_pubkey": OTHER_PUBKEY, "amount": "0x64", "keysend": True}],
    )
    s.add(
        "send_keysend_zero",
        "send_payment",
        [{"target_pubkey": OTHER_PUBKEY, "amount": "0x0", "keysend": True}],
    )
    s.add("send_keysend_with_invoice", "send_payment", [{"invoice": own, "keysend": True}])
    s.add(
        "send_keysend_with_hash",
        "send_payment",
        [
            {
                "target_pubkey": OTHER_PUBKEY,
                "amount": "0x64",
                "keysend": True,
                "payment_hash": UNKNOWN_HASH,
            }
        ],
    )
    s.add(
        "send_bad_pubkey_hex",
        "send_payment",
        [{"target_pubkey": "zz", "amount": "0x64", "keysend": True}],
    )
    s.add(
        "send_off_curve_pubkey",
        "send_payment",
        [{"target_pubkey": OFF_CURVE_PUBKEY, "amount": "0x64", "keysend": True}],
    )
    s.add(
        "send_pubkey_0x",
        "send_payment",
        [{"target_pubkey": "0x" + OTHER_PUBKEY, "amount": "0x64", "keysend": True}],
    )
    s.add("send_garbage_invoice", "send_payment", [{"invoice": "fibtgarbage"}])
    s.add("send_own_invoice", "send_payment", [{"invoice": own}])
    s.add("send_own_invoice_dry_run", "send_payment", [{"invoice": own, "dry_run": True}])
    s.add(
        "send_own_invoice_allow_self",
        "send_payment",
        [{"invoice": own, "allow_self_payment": True}],
    )
    s.add("send_own_invoice_amount_mismatch", "send_payment", [{"invoice": own, "amount": "0x1"}])
    s.add(
        "send_own_invoice_hash_mismatch",
        "send_payment",
        [{"invoice": own, "payment_hash": UNKNOWN_HASH}],
    )
    s.add("send_max_parts_zero", "send_payment", [{"invoice": own, "max_parts": "0x0"}])
    s.add(
        "send_amount_u64_max",
        "send_payment",
        [{"target_pubkey": OTHER_PUBKEY, "amount": "0xffffffffffffffff", "keysend": True}],
    )
    s.add("get_payment_unknown", "get_payment", [{"payment_hash": UNKNOWN_HASH}])
    s.add("get_payment_missing", "get_payment", [{}])
    s.add("get_payment_bad_hash", "get_payment", [{"payment_hash": "0x12"}])
    s.add("list_channels", "list_channels", [{}])
    s.add("list_channels_no_params", "list_channels", [])
    s.add("list_channels_by_peer", "list_channels", [{"pubkey": OTHER_PUBKEY}])
    s.add("list_channels_closed", "list_channels", [{"include_closed": True}])
    s.add(
        "list_channels_exclusive", "list_channels", [{"only_pending": True, "include_closed": True}]
    )
    s.add("list_peers", "list_peers", [])
    s.add("list_peers_object", "list_peers", [{}])
    s.add("node_info_object", "node_info", [{}])
    s.add("unknown_method", "no_such_method", [{}])
    s.add("misspelled_method", "get_invoices", [{"payment_hash": UNKNOWN_HASH}])
    s.add("list_payments", "list_payments", [{}], artefact=LIST_PAYMENTS_ARTEFACT)
    return s


def extra_scripts() -> list[Script]:
    return [expiry_script(), hold_script(), validation_script(), payments_script()]


# --------------------------------------------------------------------------- comparing runs


def _without_error_data(answer: dict[str, Any]) -> dict[str, Any]:
    if isinstance(answer.get("error"), dict):
        answer = {**answer, "error": {k: v for k, v in answer["error"].items() if k != "data"}}
    return answer


def compare_runs(
    script: Script,
    real: dict[str, dict[str, Any]],
    sim: dict[str, dict[str, Any]],
    *,
    chain_hash_differs: bool = False,
) -> list[str]:
    """Every difference between two runs of ``script``, one line each, step by step."""
    out: list[str] = []
    for step in script.steps:
        if step.artefact:
            continue
        r, s = real[step.name], sim[step.name]
        if step.data_artefact:
            r, s = _without_error_data(r), _without_error_data(s)
        masks = replace(step.masks, chain_hash=step.masks.chain_hash or chain_hash_differs)
        out += [f"{step.name} [{step.method}] {d}" for d in differences(r, s, masks)]
    return out


def golden_answers(script: Script) -> dict[str, dict[str, Any]]:
    """The golden script's expected answers, keyed like :func:`run_script`'s."""
    return {step.name: step.expected for step in script.steps if step.expected is not None}
