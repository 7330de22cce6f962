"""Compare two FNN JSON-RPC answers, ignoring only what differs by nature.

Two nodes never agree on their keys, so they never agree on anything derived from them or from
the clock: node and payee public keys, signatures, invoice strings, invoice timestamps, the
funding-lock args, MPP payment secrets, and the payment hash of an invoice created without a
preimage. :func:`normalise` replaces each of those with a marker that still checks the value's
*format* (``<pubkey>`` for 66 lowercase hex digits without ``0x``, ``<BAD pubkey: …>``
otherwise), so a simulator that gets the format wrong still fails. Everything else is
compared exactly: envelope keys, error codes and messages, error data, field names, key order
(FNN serialises structs in declaration order, so JSON key order is a fact of the wire),
statuses, amounts, attrs order, payment hashes derived from a given preimage.

Two wasm-wrapper artefacts are normalised away on both sides (see ``translate.py``): the
`` at line L column C`` suffix serde_json adds to ``-32602`` data over HTTP.

:func:`differences` returns human-readable lines (``path: real … != sim …``); an empty list
means the answers agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fiberlinkd.ckb import bech32m

_HEX_UINT_RE = re.compile(r"^0x(0|[1-9a-f][0-9a-f]*)$")
_HASH256_RE = re.compile(r"^0x[0-9a-f]{64}$")
_PUBKEY_RE = re.compile(r"^0[23][0-9a-f]{64}$")
_SIGNATURE_RE = re.compile(r"^([01][0-9a-f]){104}$")
_INVOICE_RE = re.compile(r"^(fib[btd])([0-9]*)1([qpzry9x8gf2tvdw0s3jn54khce6mua7l]+)$", re.I)
_SERDE_POSITION_RE = re.compile(r" at line \d+ column \d+$")
_LOCK_ARGS_RE = re.compile(r"^0x[0-9a-f]{40}$")


@dataclass(frozen=True)
class Masks:
    """Which comparisons to relax for one step.

    ``random_hash``: the step's invoice was created without a preimage, so its payment hash
    is random on each node. ``chain_hash``: the two sides run different chains (the golden
    file was captured on a stand-in dev chain). ``world``: the answer lists the node's
    surroundings (channels, peers, their counts), which differ by scenario: the offline real
    node has none, the simulator always models one channel to one peer. Then only the
    container shape and the hex format of the counts are compared.
    """

    random_hash: bool = False
    chain_hash: bool = False
    world: bool = False


_WORLD_LISTS = ("channels", "peers")
_WORLD_COUNTS = ("channel_count", "pending_channel_count", "peers_count")


def _marker(kind: str, ok: bool, value: Any) -> str:
    return f"<{kind}>" if ok else f"<BAD {kind}: {value!r}>"


def _invoice_marker(value: str) -> str:
    m = _INVOICE_RE.match(value)
    assert m is not None
    case = "upper" if value.isupper() else "lower" if value.islower() else "mixed"
    try:
        hrp, _data, enc = bech32m.decode(value)
        checksum = "bech32m" if enc is bech32m.Encoding.BECH32M else "bech32"
        ok = hrp == (m.group(1) + m.group(2)).lower()
    except bech32m.Bech32Error:
        checksum, ok = "invalid", True
    flag = m.group(3)[0].lower()
    return _marker(
        f"invoice {m.group(1).lower()}{m.group(2)} flag={flag} {checksum} {case}", ok, value
    )


def _norm_str(key: str | None, value: str, parent: str | None, masks: Masks) -> str:
    if _INVOICE_RE.match(value) and len(value) > 60:
        return _invoice_marker(value)
    if key in ("pubkey", "payee_public_key"):
        return _marker("pubkey", bool(_PUBKEY_RE.match(value)), value)
    if key == "signature" and parent == "invoice":
        return _marker("signature", bool(_SIGNATURE_RE.match(value)), value)
    if key == "timestamp" and parent == "data":
        return _marker("timestamp", bool(_HEX_UINT_RE.match(value)), value)
    if key == "payment_secret":
        return _marker("hash256", bool(_HASH256_RE.match(value)), value)
    if key == "payment_hash" and parent == "data" and masks.random_hash:
        return _marker("hash256", bool(_HASH256_RE.match(value)), value)
    if key == "chain_hash" and masks.chain_hash:
        return _marker("hash256", bool(_HASH256_RE.match(value)), value)
    if key == "commit_hash" and parent == "result":
        return "<commit_hash>"
    if key == "args" and parent == "default_funding_lock_script":
        return _marker("blake160", bool(_LOCK_ARGS_RE.match(value)), value)
    return value


def _norm(value: Any, key: str | None, parent: str | None, masks: Masks) -> Any:
    if masks.world and parent == "result":
        if key in _WORLD_LISTS and isinstance(value, list):
            return "<list>"
        if key in _WORLD_COUNTS:
            return _marker(
                "count", isinstance(value, str) and bool(_HEX_UINT_RE.match(value)), value
            )
    if isinstance(value, dict):
        return {k: _norm(v, k, key, masks) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v, key, parent, masks) for v in value]
    if isinstance(value, str):
        return _norm_str(key, value, parent, masks)
    return value


def normalise(answer: Any, masks: Masks = Masks()) -> Any:
    """A copy of a JSON-RPC response with by-nature values replaced by format markers."""
    out = _norm(answer, None, None, masks)
    if isinstance(out, dict):
        err = out.get("error")
        if isinstance(err, dict) and err.get("code") == -32602 and isinstance(err.get("data"), str):
            err["data"] = _SERDE_POSITION_RE.sub("", err["data"])
    return out


def _diff(real: Any, sim: Any, path: str, out: list[str]) -> None:
    if isinstance(real, dict) and isinstance(sim, dict):
        rkeys, skeys = list(real), list(sim)
        missing = [k for k in rkeys if k not in sim]
        extra = [k for k in skeys if k not in real]
        if missing:
            out.append(f"{path or '.'}: keys missing on sim: {missing}")
        if extra:
            out.append(f"{path or '.'}: extra keys on sim: {extra}")
        common_r = [k for k in rkeys if k in sim]
        common_s = [k for k in skeys if k in real]
        if common_r != common_s:
            out.append(f"{path or '.'}: key order real {common_r} != sim {common_s}")
        for k in common_r:
            _diff(real[k], sim[k], f"{path}.{k}", out)
        return
    if isinstance(real, list) and isinstance(sim, list):
        if len(real) != len(sim):
            out.append(f"{path}: real {real!r} != sim {sim!r}")
            return
        for i, (r, s) in enumerate(zip(real, sim, strict=True)):
            _diff(r, s, f"{path}[{i}]", out)
        return
    if type(real) is not type(sim) or real != sim:
        out.append(f"{path or '.'}: real {real!r} != sim {sim!r}")


def differences(real: Any, sim: Any, masks: Masks = Masks()) -> list[str]:
    """Where ``sim`` differs from ``real`` after normalising both; empty when they agree."""
    out: list[str] = []
    _diff(normalise(real, masks), normalise(sim, masks), "", out)
    return out
