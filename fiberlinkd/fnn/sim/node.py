"""The simulated FNN node: invoices, payment sessions, one channel, faults, persistence.

``SimNode.call(method, params)`` answers one JSON-RPC call the way FNN 0.8 does
(``fnn-rpc.md`` §10): it returns the ``result`` or raises :class:`RpcError` (code, message,
data). Everything is synchronous and in memory; time comes from :meth:`SimNode.now_ms`
(wall clock plus an offset tests may advance).

The world around the node:

- one public CKB channel (ChannelReady) to a peer, funded on both sides, 99 CKB reserve
  already subtracted from both balances;
- behind the peer, one "remote" node that issues invoices (``sim_remote_invoice``); paying
  it costs one intermediary hop at 1000 ppm: ``fee = ceil(amount * 1000 / 1e6)``; paying
  the peer itself is free;
- a remote payer that pays our invoices through the channel (``sim_pay_invoice``).

Payments move lazily: a session records when it becomes ``Inflight`` and when it resolves
(``Success`` or ``Failed``); every call first applies the transitions whose time has come.
So status changes arrive "asynchronously" (after ``inflight_delay_ms`` / ``settle_delay_ms``)
without background tasks, survive a restart from the state file, and follow the node clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import cattrs
import coincurve

from fiberlinkd.ckb.hashing import blake160, ckb_hash

from .. import hexcodec
from ..types import MAINNET_CHAIN_HASH, TESTNET_CHAIN_HASH
from . import params as P
from .invoices import DecodedInvoice, InvoiceError, decode_invoice, encode_invoice, molecule_script

FNN_VERSION = "0.8.1"
COMMIT_HASH = "fiberlinkd-simulator"
DEV_CHAIN_HASH = "0x" + ckb_hash(b"fiberlinkd devnode dev chain").hex()
CHAIN_HASHES = {"Fibb": MAINNET_CHAIN_HASH, "Fibt": TESTNET_CHAIN_HASH, "Fibd": DEV_CHAIN_HASH}
SECP256K1_BLAKE160_CODE_HASH = "0x9bd7e06f3ecf4be0f2fcd2188b23f1b9fcc88e5d4b65a8637b17723bbda3cce8"
CKB_SHANNONS = 100_000_000
CHANNEL_RESERVE_SHANNONS = 99 * CKB_SHANNONS
DEFAULT_LOCAL_BALANCE_SHANNONS = 10_000 * CKB_SHANNONS
DEFAULT_REMOTE_BALANCE_SHANNONS = 10_000 * CKB_SHANNONS
HOP_FEE_RATE_PPM = 1000
DEFAULT_MAX_FEE_RATE_PER_MILLE = 5
DEFAULT_FINAL_EXPIRY_DELTA_MS = 9_600_000
MIN_FINAL_EXPIRY_DELTA_MS = 9_600_000
MAX_FINAL_EXPIRY_DELTA_MS = 1_209_600_000
DEFAULT_TLC_EXPIRY_DELTA_MS = 14_400_000
MAX_DESCRIPTION_BYTES = 639
DEFAULT_LIST_LIMIT = 15
U64_MAX = 2**64 - 1
MAX_PARTS = 24
DEFAULT_FAILED_ERROR = "TemporaryChannelFailure"
STATE_VERSION = 1

INVALID_PARAMS = -32602
BUSINESS = -32000
UNAUTHORIZED = -32999
METHOD_NOT_FOUND = -32601


class RpcError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str, data: Any = None, *, has_data: bool = True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.has_data = has_data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.has_data:
            out["data"] = self.data
        return out


def unauthorized() -> RpcError:
    return RpcError(UNAUTHORIZED, "Unauthorized", has_data=False)


# --- state records ----------------------------------------------------------------------


@attrs.define
class InvoiceRecord:
    payment_hash: str
    invoice_address: str
    invoice: dict[str, Any]  # CkbInvoice JSON
    amount: int
    timestamp_ms: int
    expiry_s: int | None
    preimage: str | None  # None: hold invoice until settled
    hash_algorithm: str
    status: str  # stored status: Open, Received, Paid, Cancelled
    is_udt: bool = False
    received_amount: int = 0
    tlc_id: int | None = None


@attrs.define
class PaymentSession:
    payment_hash: str
    status: str
    created_at: int
    last_updated_at: int
    failed_error: str | None
    fee: int
    custom_records: dict[str, Any] | None
    amount: int
    target: str
    inflight_at: int | None = None
    resolve_at: int | None = None
    outcome: str | None = None  # "Success" or the failed_error to end with
    tlc_id: int = 0
    preimage: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "payment_hash": self.payment_hash,
            "status": self.status,
            "created_at": hexcodec.encode_uint(self.created_at),
            "last_updated_at": hexcodec.encode_uint(self.last_updated_at),
            "failed_error": self.failed_error,
            "fee": hexcodec.encode_uint(self.fee),
            "custom_records": self.custom_records,
        }


@attrs.define
class RemoteInvoice:
    payment_hash: str
    invoice_address: str
    amount: int
    preimage: str
    payee: str
    status: str = "Open"


@attrs.define
class ChannelState:
    channel_id: str
    outpoint: str
    peer: str
    created_at: int
    local_balance: int
    remote_balance: int
    offered_tlc_balance: int = 0
    received_tlc_balance: int = 0


@attrs.define
class SuccessRecord:
    payment_hash: str
    amount: int
    fee: int
    at_ms: int


@attrs.define
class IncomingRecord:
    payment_hash: str
    amount: int
    at_ms: int


@attrs.define
class Fault:
    method: str
    kind: str
    count: int = 1
    message: str | None = None
    failed_error: str | None = None


@attrs.define
class _Persisted:
    version: int
    network: str
    node_key: str
    peer_key: str
    remote_key: str
    clock_offset_ms: int
    next_tlc_id: int
    channel: ChannelState
    invoices: list[InvoiceRecord]
    payments: list[PaymentSession]
    remote_invoices: list[RemoteInvoice]
    successes: list[SuccessRecord]
    incoming: list[IncomingRecord]


_converter = cattrs.Converter()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_hash() -> str:
    return "0x" + secrets.token_bytes(32).hex()


def _hash_preimage(preimage: str, algorithm: str) -> str:
    raw = bytes.fromhex(preimage[2:])
    digest = hashlib.sha256(raw).digest() if algorithm == "sha256" else ckb_hash(raw)
    return "0x" + digest.hex()


def _pubkey_of(key: coincurve.PrivateKey) -> str:
    return key.public_key.format(compressed=True).hex()


def _on_curve(pubkey: str) -> bool:
    try:
        coincurve.PublicKey(bytes.fromhex(pubkey))
    except ValueError:
        return False
    return True


def _hop_fee(amount: int) -> int:
    return -(-amount * HOP_FEE_RATE_PPM // 1_000_000)


# --- the node ---------------------------------------------------------------------------


class SimNode:
    """One simulated FNN node. See the module docstring."""

    def __init__(
        self,
        network: str = "Fibd",
        *,
        state_path: Path | None = None,
        inflight_delay_s: float = 0.05,
        settle_delay_s: float = 0.15,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if network not in CHAIN_HASHES:
            raise ValueError(f"network must be one of {', '.join(CHAIN_HASHES)}: {network!r}")
        self.network = network
        self.state_path = state_path
        self.inflight_delay_ms = int(inflight_delay_s * 1000)
        self.settle_delay_ms = max(int(settle_delay_s * 1000), self.inflight_delay_ms)
        self._wall_ms = wall_ms
        self.clock_offset_ms = 0
        self.faults: list[Fault] = []
        self._dirty = False
        self._key = coincurve.PrivateKey()
        self._peer_key = coincurve.PrivateKey()
        self._remote_key = coincurve.PrivateKey()
        self._next_tlc_id = 0
        now = self.now_ms()
        self.channel = ChannelState(
            channel_id=_random_hash(),
            outpoint=_random_hash() + "00000000",
            peer=_pubkey_of(self._peer_key),
            created_at=now,
            local_balance=DEFAULT_LOCAL_BALANCE_SHANNONS,
            remote_balance=DEFAULT_REMOTE_BALANCE_SHANNONS,
        )
        self.invoices: dict[str, InvoiceRecord] = {}
        self.payments: dict[str, PaymentSession] = {}
        self.remote_invoices: dict[str, RemoteInvoice] = {}
        self.successes: list[SuccessRecord] = []
        self.incoming: list[IncomingRecord] = []
        if state_path is not None and state_path.exists():
            self._load(state_path)
        elif state_path is not None:
            self._dirty = True
            self.flush()

    # -- identity and time

    @property
    def pubkey(self) -> str:
        return _pubkey_of(self._key)

    @property
    def peer_pubkey(self) -> str:
        return self.channel.peer

    @property
    def remote_pubkey(self) -> str:
        return _pubkey_of(self._remote_key)

    @property
    def chain_hash(self) -> str:
        return CHAIN_HASHES[self.network]

    def now_ms(self) -> int:
        return self._wall_ms() + self.clock_offset_ms

    def advance_clock(self, seconds: float) -> None:
        """Move the node's clock forward (expiry, payment progress) without sleeping."""
        self.clock_offset_ms += int(seconds * 1000)
        self._dirty = True
        self.advance()
        self.flush()

    # -- persistence

    def _load(self, path: Path) -> None:
        raw = json.loads(path.read_text())
        state = _converter.structure(raw, _Persisted)
        if state.network != self.network:
            raise ValueError(
                f"state file {path} belongs to network {state.network}, not {self.network}"
            )
        self._key = coincurve.PrivateKey(bytes.fromhex(state.node_key))
        self._peer_key = coincurve.PrivateKey(bytes.fromhex(state.peer_key))
        self._remote_key = coincurve.PrivateKey(bytes.fromhex(state.remote_key))
        self.clock_offset_ms = state.clock_offset_ms
        self._next_tlc_id = state.next_tlc_id
        self.channel = state.channel
        self.invoices = {r.payment_hash: r for r in state.invoices}
        self.payments = {p.payment_hash: p for p in state.payments}
        self.remote_invoices = {r.payment_hash: r for r in state.remote_invoices}
        self.successes = state.successes
        self.incoming = state.incoming

    def flush(self) -> None:
        """Write the state file (atomically) if anything changed since the last write."""
        if not self._dirty or self.state_path is None:
            return
        state = _Persisted(
            version=STATE_VERSION,
            network=self.network,
            node_key=self._key.secret.hex(),
            peer_key=self._peer_key.secret.hex(),
            remote_key=self._remote_key.secret.hex(),
            clock_offset_ms=self.clock_offset_ms,
            next_tlc_id=self._next_tlc_id,
            channel=self.channel,
            invoices=list(self.invoices.values()),
            payments=list(self.payments.values()),
            remote_invoices=list(self.remote_invoices.values()),
            successes=self.successes,
            incoming=self.incoming,
        )
        text = json.dumps(_converter.unstructure(state), indent=1)
        directory = self.state_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".devnode-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False

    # -- lazy payment progress

    def advance(self) -> None:
        """Apply every payment transition whose time has come, in time order."""
        now = self.now_ms()
        events: list[tuple[int, int, PaymentSession]] = []
        for s in self.payments.values():
            if s.status == "Created" and s.inflight_at is not None and s.inflight_at <= now:
                events.append((s.inflight_at, 0, s))
            resolving = s.status in ("Created", "Inflight") and s.resolve_at is not None
            if resolving and s.resolve_at is not None and s.resolve_at <= now:
                events.append((s.resolve_at, 1, s))
        for at, step, s in sorted(events, key=lambda e: (e[0], e[1])):
            if step == 0:
                s.status = "Inflight"
                s.last_updated_at = at
            else:
                self._resolve(s, at)
            self._dirty = True

    def _resolve(self, s: PaymentSession, at: int) -> None:
        total = s.amount + s.fee
        self.channel.offered_tlc_balance -= total
        s.last_updated_at = at
        s.inflight_at = s.resolve_at = None
        if s.outcome == "Success":
            s.status = "Success"
            self.channel.local_balance -= total
            self.channel.remote_balance += total
            self.successes.append(SuccessRecord(s.payment_hash, s.amount, s.fee, at))
            remote = self.remote_invoices.get(s.payment_hash)
            if remote is not None:
                remote.status = "Paid"
        else:
            s.status = "Failed"
            s.failed_error = s.outcome or DEFAULT_FAILED_ERROR
            s.fee = 0
        s.outcome = None

    # -- faults

    def add_fault(
        self,
        method: str,
        kind: str,
        count: int = 1,
        message: str | None = None,
        failed_error: str | None = None,
    ) -> None:
        """Make the next ``count`` calls of ``method`` fail with ``kind`` (see simulator)."""
        if kind not in P.FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.faults.append(Fault(method, kind, count, message, failed_error))

    def take_fault(self, method: str, *, payment: bool = False) -> Fault | None:
        """Consume one use of the first matching fault (transport kinds, or payment_fails)."""
        for fault in self.faults:
            if fault.method != method or (fault.kind == "payment_fails") != payment:
                continue
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            return fault
        return None

    # -- dispatch

    def call(self, method: str, params: Any) -> Any:
        """Answer one JSON-RPC call; raises :class:`RpcError`. Writes state afterwards."""
        try:
            self.advance()
            handler = _HANDLERS.get(method)
            if handler is None:
                if method in _FNN_METHODS_NOT_SIMULATED:
                    raise RpcError(METHOD_NOT_FOUND, "Method not found", has_data=False)
                raise unauthorized()
            struct, fn = handler
            if struct is None:
                return fn(self, {})
            try:
                values = P.parse(struct, params)
            except P.ParamsError as exc:
                raise RpcError(INVALID_PARAMS, "Invalid params", str(exc)) from None
            return fn(self, values)
        finally:
            self.flush()

    # -- info

    def _node_info(self, _: dict[str, Any]) -> dict[str, Any]:
        udt_cfg_infos: list[dict[str, Any]] = []
        return {
            "version": FNN_VERSION,
            "commit_hash": COMMIT_HASH,
            "pubkey": self.pubkey,
            "features": [
                "GOSSIP_QUERIES_REQUIRED",
                "BASIC_MPP_REQUIRED",
                "TRAMPOLINE_ROUTING_REQUIRED",
            ],
            "addresses": [],
            "chain_hash": self.chain_hash,
            "open_channel_auto_accept_min_ckb_funding_amount": hexcodec.encode_uint(
                100 * CKB_SHANNONS
            ),
            "auto_accept_channel_ckb_funding_amount": hexcodec.encode_uint(
                CHANNEL_RESERVE_SHANNONS
            ),
            "default_funding_lock_script": {
                "code_hash": SECP256K1_BLAKE160_CODE_HASH,
                "hash_type": "type",
                "args": "0x" + blake160(bytes.fromhex(self.pubkey)).hex(),
            },
            "tlc_expiry_delta": hexcodec.encode_uint(DEFAULT_TLC_EXPIRY_DELTA_MS),
            "tlc_min_value": "0x0",
            "tlc_fee_proportional_millionths": hexcodec.encode_uint(HOP_FEE_RATE_PPM),
            "channel_count": "0x1",
            "pending_channel_count": "0x0",
            "peers_count": "0x1",
            "udt_cfg_infos": udt_cfg_infos,
        }

    def _list_peers(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"peers": [{"pubkey": self.peer_pubkey, "address": "/ip4/127.0.0.1/tcp/8228"}]}

    # -- invoices

    def _invoice_status(self, record: InvoiceRecord) -> str:
        expiry_s = record.expiry_s
        if (
            record.status == "Open"
            and expiry_s is not None
            and self.now_ms() > record.timestamp_ms + expiry_s * 1000
        ):
            return "Expired"
        return record.status

    def _invoice_info(self, record: InvoiceRecord) -> dict[str, Any]:
        return {
            "invoice_address": record.invoice_address,
            "invoice": record.invoice,
            "status": self._invoice_status(record),
        }

    def _new_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        data = P.echo(P.NEW_INVOICE, v)

        def fail(message: str) -> RpcError:
            return RpcError(BUSINESS, message, data)

        if v["currency"] != self.network:
            raise fail(f"Currency must be {self.network} with the chain network")
        delta = v["final_expiry_delta"]
        if delta is not None and delta < MIN_FINAL_EXPIRY_DELTA_MS:
            raise fail(
                f"final_expiry_delta must be greater than or equal to {MIN_FINAL_EXPIRY_DELTA_MS}"
            )
        if delta is not None and delta > MAX_FINAL_EXPIRY_DELTA_MS:
            raise fail(
                f"final_expiry_delta must be less than or equal to {MAX_FINAL_EXPIRY_DELTA_MS}"
            )
        if v["payment_preimage"] is not None and v["payment_hash"] is not None:
            raise fail("Both payment_hash and payment_preimage are set")
        description = v["description"]
        if description is not None and len(description.encode()) > MAX_DESCRIPTION_BYTES:
            raise fail(
                f"Description with length of {len(description.encode())} is too long, "
                f"max length is {MAX_DESCRIPTION_BYTES}"
            )
        algorithm = v["hash_algorithm"] or "ckb_hash"
        preimage: str | None
        if v["payment_hash"] is not None:
            preimage, payment_hash = None, v["payment_hash"]
        else:
            preimage = v["payment_preimage"] or _random_hash()
            payment_hash = _hash_preimage(preimage, algorithm)
        if payment_hash in self.invoices:
            raise fail("invoice already exists")
        attrs_list: list[dict[str, Any]] = []
        if description is not None:
            attrs_list.append({"description": description})
        if v["expiry"] is not None:
            attrs_list.append({"expiry_time": hexcodec.encode_uint(v["expiry"])})
        if v["fallback_address"] is not None:
            attrs_list.append({"fallback_addr": v["fallback_address"]})
        # FNN adds the feature attr whenever a feature flag is *given*, even as false.
        features = []
        if v["allow_mpp"]:
            features.append("BASIC_MPP_OPTIONAL")
        if v["allow_trampoline_routing"]:
            features.append("TRAMPOLINE_ROUTING_OPTIONAL")
        if v["allow_mpp"] is not None or v["allow_trampoline_routing"] is not None:
            attrs_list.append({"feature": features})
        if v["allow_mpp"]:
            attrs_list.append({"payment_secret": _random_hash()})
        attrs_list.append(
            {
                "final_htlc_minimum_expiry_delta": hexcodec.encode_uint(
                    delta if delta is not None else DEFAULT_FINAL_EXPIRY_DELTA_MS
                )
            }
        )
        if v["udt_type_script"] is not None:
            attrs_list.append({"udt_script": molecule_script(v["udt_type_script"])})
        if v["hash_algorithm"] is not None:  # present whenever given (fnn-rpc.md §7.2)
            attrs_list.append({"hash_algorithm": v["hash_algorithm"]})
        attrs_list.append({"payee_public_key": self.pubkey})
        now = self.now_ms()
        address, decoded = encode_invoice(
            currency=v["currency"],
            amount=v["amount"],
            payment_hash=payment_hash,
            timestamp_ms=now,
            attrs_list=attrs_list,
            key=self._key,
        )
        invoice_json = decoded.to_json()
        self.invoices[payment_hash] = InvoiceRecord(
            payment_hash=payment_hash,
            invoice_address=address,
            invoice=invoice_json,
            amount=v["amount"],
            timestamp_ms=now,
            expiry_s=v["expiry"],
            preimage=preimage,
            hash_algorithm=algorithm,
            status="Open",
            is_udt=v["udt_type_script"] is not None,
        )
        self._dirty = True
        return {"invoice_address": address, "invoice": invoice_json}

    def _parse_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        try:
            decoded = decode_invoice(v["invoice"])
        except InvoiceError as exc:
            raise RpcError(BUSINESS, str(exc), P.echo(P.PARSE_INVOICE, v)) from None
        return {"invoice": decoded.to_json()}

    def _get_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        record = self.invoices.get(v["payment_hash"])
        if record is None:
            raise RpcError(BUSINESS, "invoice not found", P.echo(P.INVOICE, v))
        return self._invoice_info(record)

    def _cancel_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        record = self.invoices.get(v["payment_hash"])
        if record is None:
            raise RpcError(BUSINESS, "invoice not found", P.echo(P.INVOICE, v))
        if record.status in ("Paid", "Cancelled"):
            raise RpcError(
                BUSINESS,
                f"invoice can not be canceled, current status: {record.status}",
                P.echo(P.INVOICE, v),
            )
        if record.status == "Received" and not record.is_udt:
            self.channel.received_tlc_balance -= record.received_amount
        record.status = "Cancelled"
        record.tlc_id = None
        self._dirty = True
        return self._invoice_info(record)

    def _settle_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        data = P.echo(P.SETTLE_INVOICE, v)
        record = self.invoices.get(v["payment_hash"])
        if record is None:
            raise RpcError(BUSINESS, "Invoice not found", data)
        if _hash_preimage(v["payment_preimage"], record.hash_algorithm) != record.payment_hash:
            raise RpcError(BUSINESS, "Hash mismatch", data)
        status = self._invoice_status(record)
        if status != "Received":
            message = {
                "Open": "Invoice is still open",
                "Cancelled": "Invoice is already cancelled",
                "Expired": "Invoice is already expired",
                "Paid": "Invoice is already paid",
            }[status]
            raise RpcError(BUSINESS, message, data)
        record.preimage = v["payment_preimage"]
        self._credit_incoming(record, record.received_amount, held=True)
        return {}

    def _credit_incoming(self, record: InvoiceRecord, amount: int, *, held: bool) -> None:
        if not record.is_udt:
            if held:
                self.channel.received_tlc_balance -= amount
            self.channel.local_balance += amount
            self.channel.remote_balance -= amount
        record.status = "Paid"
        record.tlc_id = None
        self.incoming.append(IncomingRecord(record.payment_hash, amount, self.now_ms()))
        self._dirty = True

    # -- payments

    def _send_payment(self, v: dict[str, Any]) -> dict[str, Any]:
        data = P.echo(P.SEND_PAYMENT, v)
        now = self.now_ms()

        def invalid(message: str) -> RpcError:
            return RpcError(
                BUSINESS,
                f'InvalidParameter: Failed to validate payment request: "{message}"',
                data,
            )

        for pubkey in (v["target_pubkey"], *(v["trampoline_hops"] or ())):
            if pubkey is not None and not _on_curve(pubkey):
                raise RpcError(BUSINESS, f"invalid pubkey '{pubkey}': malformed public key", data)
        invoice: DecodedInvoice | None = None
        if v["invoice"] is not None:
            try:
                invoice = decode_invoice(v["invoice"])
            except InvoiceError:
                raise invalid("invoice is invalid") from None
            if invoice.is_expired(now):
                raise invalid("invoice is expired")

        def from_invoice(name: str, given: Any, in_invoice: Any) -> Any:
            if given is not None and in_invoice is not None and given != in_invoice:
                raise invalid(f"{name} does not match the invoice")
            value = given if given is not None else in_invoice
            if value is None:
                raise invalid(f"{name} is missing")
            return value

        target: str = from_invoice("target_pubkey", v["target_pubkey"], invoice and invoice.payee)
        amount: int = from_invoice("amount", v["amount"], invoice and invoice.amount)
        invoice_udt = invoice.attr("udt_script") if invoice is not None else None
        given_udt = v["udt_type_script"]
        if (
            given_udt is not None
            and invoice_udt is not None
            and molecule_script(given_udt) != invoice_udt
        ):
            raise invalid("udt_type_script does not match the invoice")
        is_udt = given_udt is not None or invoice_udt is not None
        preimage: str | None = None
        if v["keysend"]:
            if invoice is not None:
                raise invalid("keysend payment should not have invoice")
            if v["payment_hash"] is not None:
                raise invalid("keysend payment should not have payment_hash")
            preimage = _random_hash()
            payment_hash = _hash_preimage(preimage, "ckb_hash")
        else:
            payment_hash = from_invoice(
                "payment_hash", v["payment_hash"], invoice and invoice.payment_hash
            )
        if amount == 0:
            raise invalid("amount must be greater than 0")
        delta = v["final_tlc_expiry_delta"]
        if delta is not None and not (
            MIN_FINAL_EXPIRY_DELTA_MS <= delta <= MAX_FINAL_EXPIRY_DELTA_MS
        ):
            raise invalid(
                "invalid final_tlc_expiry_delta, expect between "
                f"{MIN_FINAL_EXPIRY_DELTA_MS} and {MAX_FINAL_EXPIRY_DELTA_MS}"
            )
        max_parts = v["max_parts"]
        if max_parts is not None:
            if not 1 <= max_parts <= MAX_PARTS:
                raise invalid(f"invalid max_parts, value should be in range [1, {MAX_PARTS}]")
            if max_parts > 1 and not (invoice is not None and invoice.allows_mpp):
                raise invalid("payment invoice is not allow MPP")
        if not is_udt and amount >= U64_MAX:
            raise invalid(f"The payment amount ({amount}) should be less than {U64_MAX}")

        existing = self.payments.get(payment_hash)
        if existing is not None and existing.status != "Failed":
            raise RpcError(
                BUSINESS,
                f"InvalidParameter: Payment session already exists: Hash256({payment_hash}) "
                f"with payment session status: {existing.status}",
                data,
            )

        dry_run = bool(v["dry_run"])

        def route_error(reason: str) -> RpcError:
            message = f"Send payment error: Failed to build route, {reason}"
            if not dry_run:
                self.payments[payment_hash] = PaymentSession(
                    payment_hash=payment_hash,
                    status="Failed",
                    created_at=now,
                    last_updated_at=now,
                    failed_error=message,
                    fee=0,
                    custom_records=v["custom_records"],
                    amount=amount,
                    target=target,
                )
                self._dirty = True
            return RpcError(BUSINESS, message, data)

        if target == self.pubkey and not v["allow_self_payment"]:
            raise route_error(
                "Feature not enabled: allow_self_payment is not enabled, can not pay to self"
            )
        outbound = 0 if is_udt else self.spendable()
        if amount > outbound:
            raise route_error(
                f"Insufficient balance: max outbound liquidity {outbound} is insufficient, "
                f"required amount: {amount}"
            )
        if target == self.peer_pubkey:
            fee = 0
        elif target == self.remote_pubkey:
            fee = _hop_fee(amount)
        else:
            raise route_error("PathFind error: no path found")
        max_fee_rate = v["max_fee_rate"]
        if max_fee_rate is None:
            max_fee_rate = DEFAULT_MAX_FEE_RATE_PER_MILLE
        fee_limit = -(-amount * max_fee_rate // 1000)
        if v["max_fee_amount"] is not None:
            fee_limit = min(fee_limit, v["max_fee_amount"])
        if fee > fee_limit or amount + fee > outbound:
            raise route_error("PathFind error: no path found")

        session = PaymentSession(
            payment_hash=payment_hash,
            status="Created",
            created_at=now,
            last_updated_at=now,
            failed_error=None,
            fee=fee,
            custom_records=v["custom_records"],
            amount=amount,
            target=target,
            preimage=preimage,
        )
        if dry_run:
            return session.to_json()
        fault = self.take_fault("send_payment", payment=True)
        session.outcome = (
            "Success" if fault is None else (fault.failed_error or DEFAULT_FAILED_ERROR)
        )
        session.inflight_at = now + self.inflight_delay_ms
        session.resolve_at = now + self.settle_delay_ms
        session.tlc_id = self._new_tlc_id()
        self.channel.offered_tlc_balance += amount + fee
        self.payments[payment_hash] = session
        self._dirty = True
        return session.to_json()

    def _new_tlc_id(self) -> int:
        tlc_id = self._next_tlc_id
        self._next_tlc_id += 1
        return tlc_id

    def _get_payment(self, v: dict[str, Any]) -> dict[str, Any]:
        session = self.payments.get(v["payment_hash"])
        if session is None:
            raise RpcError(
                BUSINESS,
                f"InvalidParameter: Payment session not found: Hash256({v['payment_hash']})",
                P.echo(P.GET_PAYMENT, v),
            )
        return session.to_json()

    def _list_payments(self, v: dict[str, Any]) -> dict[str, Any]:
        limit = DEFAULT_LIST_LIMIT if v["limit"] is None else v["limit"]
        items = sorted(self.payments.values(), key=lambda s: s.payment_hash)
        if v["status"] is not None:
            items = [s for s in items if s.status == v["status"]]
        if v["after"] is not None:
            items = [s for s in items if s.payment_hash > v["after"]]
        page = items[:limit]
        return {
            "payments": [s.to_json() for s in page],
            "last_cursor": page[-1].payment_hash if page else None,
        }

    # -- channels

    def spendable(self) -> int:
        """Our outbound liquidity now: local balance minus pending outgoing TLCs."""
        return max(0, self.channel.local_balance - self.channel.offered_tlc_balance)

    def _list_channels(self, v: dict[str, Any]) -> dict[str, Any]:
        if v["include_closed"] and v["only_pending"]:
            raise RpcError(
                BUSINESS,
                "only_pending and include_closed are mutually exclusive",
                P.echo(P.LIST_CHANNELS, v),
            )
        if v["only_pending"] or (v["pubkey"] is not None and v["pubkey"] != self.peer_pubkey):
            return {"channels": []}
        return {"channels": [self._channel_json()]}

    def _pending_tlcs(self) -> list[dict[str, Any]]:
        tlcs: list[tuple[int, dict[str, Any]]] = [
            (
                s.tlc_id,
                self._tlc_json(
                    s.tlc_id,
                    s.amount + s.fee,
                    s.payment_hash,
                    s.created_at,
                    {"Outbound": "Committed"},
                ),
            )
            for s in self.payments.values()
            if s.status in ("Created", "Inflight")
        ]
        tlcs.extend(
            (
                r.tlc_id,
                self._tlc_json(
                    r.tlc_id,
                    r.received_amount,
                    r.payment_hash,
                    r.timestamp_ms,
                    {"Inbound": "Committed"},
                ),
            )
            for r in self.invoices.values()
            if r.status == "Received" and r.tlc_id is not None and not r.is_udt
        )
        return [t for _, t in sorted(tlcs, key=lambda t: t[0])]

    @staticmethod
    def _tlc_json(
        tlc_id: int, amount: int, payment_hash: str, since_ms: int, status: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "id": hexcodec.encode_uint(tlc_id),
            "amount": hexcodec.encode_uint(amount),
            "payment_hash": payment_hash,
            "expiry": hexcodec.encode_uint(since_ms + DEFAULT_FINAL_EXPIRY_DELTA_MS),
            "forwarding_channel_id": None,
            "forwarding_tlc_id": None,
            "status": status,
        }

    def _channel_json(self) -> dict[str, Any]:
        c = self.channel
        return {
            "channel_id": c.channel_id,
            "is_public": True,
            "is_acceptor": False,
            "is_one_way": False,
            "channel_outpoint": c.outpoint,
            "pubkey": c.peer,
            "funding_udt_type_script": None,
            "state": {"state_name": "ChannelReady"},
            "local_balance": hexcodec.encode_uint(c.local_balance),
            "offered_tlc_balance": hexcodec.encode_uint(c.offered_tlc_balance),
            "remote_balance": hexcodec.encode_uint(c.remote_balance),
            "received_tlc_balance": hexcodec.encode_uint(c.received_tlc_balance),
            "pending_tlcs": self._pending_tlcs(),
            "latest_commitment_transaction_hash": None,
            "created_at": hexcodec.encode_uint(c.created_at),
            "enabled": True,
            "tlc_expiry_delta": hexcodec.encode_uint(DEFAULT_TLC_EXPIRY_DELTA_MS),
            "tlc_fee_proportional_millionths": hexcodec.encode_uint(HOP_FEE_RATE_PPM),
            "shutdown_transaction_hash": None,
            "failure_detail": None,
        }

    # -- the outside world (control surface; also callable in-process)

    def pay_invoice(self, invoice: str, amount: int | None = None) -> dict[str, Any]:
        """A remote payer pays one of our invoices through the channel.

        Returns ``{"payment_hash", "status": "Success"|"Inflight", "invoice_status"}``
        (``Inflight`` / ``Received`` for a hold invoice until ``settle_invoice``).
        Errors: :class:`RpcError` -32000 with FNN's invoice-parse text, or the TLC error
        the payer would see (``IncorrectOrUnknownPaymentDetails``, ``InvoiceExpired``,
        ``InvoiceCancelled``, ``TemporaryChannelFailure``).
        """
        values = {"invoice": invoice, "amount": amount}
        result: dict[str, Any] = self.call(
            "sim_pay_invoice",
            [
                {
                    k: (hexcodec.encode_uint(x) if isinstance(x, int) else x)
                    for k, x in values.items()
                    if x is not None
                }
            ],
        )
        return result

    def _sim_pay_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        data = P.echo(P.SIM_PAY_INVOICE, v)
        try:
            decoded = decode_invoice(v["invoice"])
        except InvoiceError as exc:
            raise RpcError(BUSINESS, str(exc), data) from None
        record = self.invoices.get(decoded.payment_hash)
        if record is None or record.invoice_address != v["invoice"].lower():
            raise RpcError(BUSINESS, "IncorrectOrUnknownPaymentDetails", data)
        status = self._invoice_status(record)
        if status == "Expired":
            raise RpcError(BUSINESS, "InvoiceExpired", data)
        if status == "Cancelled":
            raise RpcError(BUSINESS, "InvoiceCancelled", data)
        if status != "Open":
            raise RpcError(BUSINESS, "IncorrectOrUnknownPaymentDetails", data)
        amount = record.amount if v["amount"] is None else v["amount"]
        if amount < record.amount or amount == 0:
            raise RpcError(BUSINESS, "IncorrectOrUnknownPaymentDetails", data)
        if not record.is_udt:
            available = self.channel.remote_balance - self.channel.received_tlc_balance
            if amount > available:
                raise RpcError(BUSINESS, "TemporaryChannelFailure", data)
        if record.preimage is not None:
            self._credit_incoming(record, amount, held=False)
            return {
                "payment_hash": record.payment_hash,
                "status": "Success",
                "invoice_status": "Paid",
            }
        record.status = "Received"
        record.received_amount = amount
        record.tlc_id = self._new_tlc_id()
        if not record.is_udt:
            self.channel.received_tlc_balance += amount
        self._dirty = True
        return {
            "payment_hash": record.payment_hash,
            "status": "Inflight",
            "invoice_status": "Received",
        }

    def remote_invoice(
        self,
        amount: int,
        *,
        currency: str | None = None,
        expiry_s: int | None = None,
        udt_type_script: dict[str, str] | None = None,
        description: str | None = None,
        payee: str = "remote",
    ) -> dict[str, Any]:
        """A remote node issues an invoice our node can pay: ``{"invoice", "payment_hash"}``.

        ``payee="remote"`` (default) sits one hop behind our peer (1000 ppm fee);
        ``payee="peer"`` is our channel peer itself (no fee).
        """
        params: dict[str, Any] = {"amount": amount, "payee": payee}
        if currency is not None:
            params["currency"] = currency
        if expiry_s is not None:
            params["expiry"] = expiry_s
        if udt_type_script is not None:
            params["udt_type_script"] = udt_type_script
        if description is not None:
            params["description"] = description
        result: dict[str, Any] = self.call("sim_remote_invoice", [params])
        return result

    def _sim_remote_invoice(self, v: dict[str, Any]) -> dict[str, Any]:
        key = self._peer_key if v["payee"] == "peer" else self._remote_key
        preimage = _random_hash()
        payment_hash = _hash_preimage(preimage, "ckb_hash")
        attrs_list: list[dict[str, Any]] = []
        if v["description"] is not None:
            attrs_list.append({"description": v["description"]})
        if v["expiry"] is not None:
            attrs_list.append({"expiry_time": hexcodec.encode_uint(v["expiry"])})
        attrs_list.append(
            {"final_htlc_minimum_expiry_delta": hexcodec.encode_uint(DEFAULT_FINAL_EXPIRY_DELTA_MS)}
        )
        if v["udt_type_script"] is not None:
            attrs_list.append({"udt_script": molecule_script(v["udt_type_script"])})
        attrs_list.append({"payee_public_key": _pubkey_of(key)})
        address, _ = encode_invoice(
            currency=v["currency"] or self.network,
            amount=v["amount"],
            payment_hash=payment_hash,
            timestamp_ms=self.now_ms(),
            attrs_list=attrs_list,
            key=key,
        )
        self.remote_invoices[payment_hash] = RemoteInvoice(
            payment_hash, address, v["amount"], preimage, _pubkey_of(key)
        )
        self._dirty = True
        return {"invoice": address, "payment_hash": payment_hash}

    def _sim_fault(self, v: dict[str, Any]) -> dict[str, Any]:
        count = 1 if v["count"] is None else v["count"]
        self.add_fault(v["method"], v["kind"], count, v["message"], v["failed_error"])
        return {}

    def set_liquidity(self, outbound: int, inbound: int | None = None) -> None:
        """Set our spendable outbound capacity (and optionally the peer's side)."""
        self.channel.local_balance = outbound + self.channel.offered_tlc_balance
        if inbound is not None:
            self.channel.remote_balance = inbound + self.channel.received_tlc_balance
        self._dirty = True
        self.flush()

    def _sim_set_liquidity(self, v: dict[str, Any]) -> dict[str, Any]:
        self.set_liquidity(v["outbound"], v["inbound"])
        return {}

    def successful_payments(self) -> list[SuccessRecord]:
        """Every outgoing payment that reached ``Success``, in order (after advancing)."""
        self.advance()
        self.flush()
        return list(self.successes)

    def _sim_list_successful_payments(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "payments": [
                {
                    "payment_hash": s.payment_hash,
                    "amount": hexcodec.encode_uint(s.amount),
                    "fee": hexcodec.encode_uint(s.fee),
                    "at": hexcodec.encode_uint(s.at_ms),
                }
                for s in self.successes
            ]
        }

    def _sim_advance_time(self, v: dict[str, Any]) -> dict[str, Any]:
        self.advance_clock(v["seconds"])
        return {}

    def payment(self, payment_hash: str) -> PaymentSession | None:
        """The session for ``payment_hash`` (after advancing), for test assertions."""
        self.advance()
        self.flush()
        return self.payments.get(hexcodec.decode_hash256(payment_hash))

    def invoice_status(self, payment_hash: str) -> str | None:
        """The reported status of one of our invoices, or None."""
        record = self.invoices.get(hexcodec.decode_hash256(payment_hash))
        return None if record is None else self._invoice_status(record)


_Handler = Callable[[SimNode, dict[str, Any]], Any]

_HANDLERS: dict[str, tuple[P.Struct | None, _Handler]] = {
    "node_info": (None, SimNode._node_info),
    "list_peers": (None, SimNode._list_peers),
    "new_invoice": (P.NEW_INVOICE, SimNode._new_invoice),
    "parse_invoice": (P.PARSE_INVOICE, SimNode._parse_invoice),
    "get_invoice": (P.INVOICE, SimNode._get_invoice),
    "cancel_invoice": (P.INVOICE, SimNode._cancel_invoice),
    "settle_invoice": (P.SETTLE_INVOICE, SimNode._settle_invoice),
    "send_payment": (P.SEND_PAYMENT, SimNode._send_payment),
    "get_payment": (P.GET_PAYMENT, SimNode._get_payment),
    "list_payments": (P.LIST_PAYMENTS, SimNode._list_payments),
    "list_channels": (P.LIST_CHANNELS, SimNode._list_channels),
    "sim_pay_invoice": (P.SIM_PAY_INVOICE, SimNode._sim_pay_invoice),
    "sim_remote_invoice": (P.SIM_REMOTE_INVOICE, SimNode._sim_remote_invoice),
    "sim_fault": (P.SIM_FAULT, SimNode._sim_fault),
    "sim_set_liquidity": (P.SIM_SET_LIQUIDITY, SimNode._sim_set_liquidity),
    "sim_list_successful_payments": (None, SimNode._sim_list_successful_payments),
    "sim_advance_time": (P.SIM_ADVANCE_TIME, SimNode._sim_advance_time),
}

# FNN methods with an auth rule that this simulator does not model: FNN would answer them;
# we answer -32601 (what FNN says when the method's module is not enabled).
_FNN_METHODS_NOT_SIMULATED = frozenset(
    {
        "open_channel", "accept_channel", "abandon_channel", "shutdown_channel",
        "update_channel", "open_channel_with_external_funding", "submit_signed_funding_tx",
        "connect_peer", "disconnect_peer", "graph_nodes", "graph_channels", "build_router",
        "send_payment_with_router", "receive_btc", "send_btc", "get_cch_order",
    }
)  # fmt: skip

SIM_METHODS = frozenset(m for m in _HANDLERS if m.startswith("sim_"))
