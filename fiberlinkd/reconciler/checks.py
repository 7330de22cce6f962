"""Internal checks: pure functions over one chunk of rows, each returning its findings.

Each function sees one snapshot-consistent chunk (see :mod:`fiberlinkd.ledger.reconcile`)
and knows nothing about I/O, so tests feed it rows directly. Codes (all CRITICAL unless
noted; a CRITICAL finding freezes payouts):

- balances: ``BALANCE_MISMATCH`` (row ≠ sums of its entries), ``NEGATIVE_BALANCE``,
  ``RESERVATION_EXCEEDS_BALANCE``, ``RESERVATION_MISMATCH`` (reserved ≠ in-flight
  withdrawals' amount + fee_reserved)
- entries: ``CHAIN_BROKEN`` (first broken id), ``CHAIN_ANCHOR_MISMATCH``,
  ``ENTRY_WITHOUT_BALANCE``, ``UNKNOWN_ENTRY_KIND``, ``ENTRY_SHAPE_INVALID`` (signs of
  amount / reserved_delta do not fit the kind), ``MALFORMED_ENTRY_KEY``, ``ORPHAN_CREDIT``,
  ``ORPHAN_WITHDRAWAL_ENTRY``
- tips: ``SETTLED_TIP_MISSING_CREDIT``, ``DUPLICATE_CREDIT``, ``CREDIT_AMOUNT_MISMATCH``,
  ``CREDIT_ACCOUNT_MISMATCH``, ``UNSETTLED_TIP_HAS_CREDIT``
- withdrawals: ``COMPLETED_WITHDRAWAL_MISSING_DEBIT``, ``DUPLICATE_DEBIT``,
  ``DEBIT_AMOUNT_MISMATCH``, ``COMPLETED_WITHDRAWAL_MISSING_EVIDENCE``,
  ``UNCOMPLETED_WITHDRAWAL_HAS_DEBIT``, ``RESERVATION_NOT_RELEASED``,
  ``IN_FLIGHT_RESERVATION_MISMATCH``, ``WITHDRAWAL_ENTRY_ACCOUNT_MISMATCH``,
  ``STUCK_PROCESSING`` (WARNING)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs

from fiberlinkd.ledger.entries import GENESIS_HASH, EntryKind
from fiberlinkd.ledger.reconcile import (
    CRITICAL,
    IN_FLIGHT_STATES,
    INFO,
    SEVERITIES,
    WARNING,
    BalanceSums,
    EntryCheckRow,
    Finding,
    TipWithCredits,
    WithdrawalWithEntries,
)

__all__ = [
    "CRITICAL",
    "INFO",
    "WARNING",
    "ChainState",
    "Finding",
    "FindingSink",
    "check_balances",
    "check_entries",
    "check_tips",
    "check_withdrawals",
    "verify_chain",
]

MAX_FINDINGS_PER_CODE = 100  # beyond this a run keeps one summary finding per code

WITHDRAWAL_KINDS = (
    EntryKind.WITHDRAWAL_RESERVE,
    EntryKind.WITHDRAWAL_DEBIT,
    EntryKind.WITHDRAWAL_RELEASE,
)
KNOWN_KINDS = (EntryKind.TIP_CREDIT, *WITHDRAWAL_KINDS)
_KEY_VERB = {
    EntryKind.WITHDRAWAL_RESERVE: "reserve",
    EntryKind.WITHDRAWAL_DEBIT: "debit",
    EntryKind.WITHDRAWAL_RELEASE: "release",
}


@attrs.define
class FindingSink:
    """Collects a run's findings, keeping at most :data:`MAX_FINDINGS_PER_CODE` per code."""

    max_per_code: int = MAX_FINDINGS_PER_CODE
    _kept: list[Finding] = attrs.field(factory=list)
    _per_code: Counter[str] = attrs.field(factory=Counter)
    _severity_of: dict[str, str] = attrs.field(factory=dict)

    def add(self, finding: Finding) -> None:
        self._per_code[finding.code] += 1
        previous = self._severity_of.get(finding.code)
        if previous is None or SEVERITIES.index(finding.severity) > SEVERITIES.index(previous):
            self._severity_of[finding.code] = finding.severity
        if self._per_code[finding.code] <= self.max_per_code:
            self._kept.append(finding)

    def extend(self, findings: Sequence[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    def findings(self) -> list[Finding]:
        result = list(self._kept)
        for code, count in sorted(self._per_code.items()):
            if count > self.max_per_code:
                result.append(
                    Finding(
                        self._severity_of[code],
                        code,
                        f"{count - self.max_per_code} more {code} findings not listed",
                        {"total": count, "listed": self.max_per_code},
                    )
                )
        return result

    def counts(self) -> dict[str, int]:
        """Findings per severity, including the ones not listed."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in self._kept:
            counts[finding.severity] += 1
        for code, count in self._per_code.items():
            if count > self.max_per_code:
                counts[self._severity_of[code]] += count - self.max_per_code
        return counts


def _owner(app_id: str, user_id: str, asset: str) -> dict[str, str]:
    return {"app_id": app_id, "user_id": user_id, "asset": asset}


# --- balances --------------------------------------------------------------------------------


def check_balances(rows: Sequence[BalanceSums]) -> list[Finding]:
    """Each balance row equals its entries' sums, is not negative, and its reservation is
    exactly what its in-flight withdrawals hold."""
    found: list[Finding] = []
    for b in rows:
        owner = _owner(b.app_id, b.user_id, b.asset)
        if b.settled != b.entries_amount or b.reserved != b.entries_reserved:
            found.append(
                Finding(
                    CRITICAL,
                    "BALANCE_MISMATCH",
                    f"balance {b.app_id}/{b.user_id}/{b.asset} is settled={b.settled}"
                    f" reserved={b.reserved} but its {b.entry_count} entries sum to"
                    f" settled={b.entries_amount} reserved={b.entries_reserved}",
                    {
                        **owner,
                        "settled": b.settled,
                        "reserved": b.reserved,
                        "entries_settled": b.entries_amount,
                        "entries_reserved": b.entries_reserved,
                        "entry_count": b.entry_count,
                    },
                )
            )
        if b.settled < 0 or b.reserved < 0:
            found.append(
                Finding(
                    CRITICAL,
                    "NEGATIVE_BALANCE",
                    f"balance {b.app_id}/{b.user_id}/{b.asset} is negative:"
                    f" settled={b.settled} reserved={b.reserved}",
                    {**owner, "settled": b.settled, "reserved": b.reserved},
                )
            )
        elif b.reserved > b.settled:
            found.append(
                Finding(
                    CRITICAL,
                    "RESERVATION_EXCEEDS_BALANCE",
                    f"balance {b.app_id}/{b.user_id}/{b.asset} reserves {b.reserved}"
                    f" of only {b.settled}",
                    {**owner, "settled": b.settled, "reserved": b.reserved},
                )
            )
        if b.reserved != b.in_flight_reserved:
            found.append(
                Finding(
                    CRITICAL,
                    "RESERVATION_MISMATCH",
                    f"balance {b.app_id}/{b.user_id}/{b.asset} reserves {b.reserved} but its"
                    f" in-flight withdrawals hold {b.in_flight_reserved}",
                    {**owner, "reserved": b.reserved, "in_flight": b.in_flight_reserved},
                )
            )
    return found


# --- entries and the hash chain ----------------------------------------------------------------


@attrs.frozen
class ChainState:
    """Where chain verification stands after the entries seen so far."""

    last_id: int = 0
    last_hash: str = GENESIS_HASH
    broken_at: int | None = None  # first broken entry id; verification stops there


def verify_chain(
    state: ChainState, entries: Sequence[EntryCheckRow]
) -> tuple[ChainState, Finding | None]:
    """Continue verifying the chain over ``entries`` (the next ones in id order).

    Entry *n* must have id ``n-1``'s id + 1, ``prev_hash`` equal to entry *n-1*'s
    ``entry_hash``, and an ``entry_hash`` that recomputes. The first violation is reported
    once, with its entry id; later chunks are not verified further.
    """
    if state.broken_at is not None:
        return state, None
    last_id, last_hash = state.last_id, state.last_hash
    for e in entries:
        problem = None
        if e.id != last_id + 1:
            problem = f"entry ids jump from {last_id} to {e.id} (entries deleted)"
        elif e.prev_hash != last_hash:
            problem = "prev_hash does not match the previous entry's hash"
        elif e.entry_hash != e.expected_hash():
            problem = "entry_hash does not match the entry's contents (entry edited)"
        if problem is not None:
            finding = Finding(
                CRITICAL,
                "CHAIN_BROKEN",
                f"ledger hash chain broken at entry {e.id}: {problem}",
                {"entry_id": e.id, "previous_id": last_id, "problem": problem},
            )
            return ChainState(last_id, last_hash, e.id), finding
        last_id, last_hash = e.id, e.entry_hash
    return ChainState(last_id, last_hash, None), None


def check_anchor(anchor: tuple[int, str] | None, stored: tuple[int, str] | None) -> Finding | None:
    """The entry a previous clean run ended at must still exist with the same hash."""
    if anchor is None:
        return None
    if stored is None or stored[1] != anchor[1]:
        return Finding(
            CRITICAL,
            "CHAIN_ANCHOR_MISMATCH",
            f"ledger entry {anchor[0]} no longer has the hash a previous run recorded"
            " (entries rewritten or removed)",
            {
                "entry_id": anchor[0],
                "recorded_hash": anchor[1],
                "found_hash": stored[1] if stored else None,
            },
        )
    return None


def check_entries(entries: Sequence[EntryCheckRow]) -> list[Finding]:
    """Per-entry checks: owner row, kind, sign shape, key format, ref target."""
    found: list[Finding] = []
    for e in entries:
        refs = {
            "entry_id": e.id,
            "kind": e.kind,
            "ref": e.ref,
            **_owner(e.app_id, e.user_id, e.asset),
        }
        if not e.has_balance:
            found.append(
                Finding(
                    CRITICAL,
                    "ENTRY_WITHOUT_BALANCE",
                    f"entry {e.id} belongs to {e.app_id}/{e.user_id}/{e.asset},"
                    " which has no balance row",
                    refs,
                )
            )
        if e.kind not in KNOWN_KINDS:
            found.append(
                Finding(
                    CRITICAL,
                    "UNKNOWN_ENTRY_KIND",
                    f"entry {e.id} has unknown kind {e.kind!r}",
                    refs,
                )
            )
            continue
        if not _shape_ok(e):
            found.append(
                Finding(
                    CRITICAL,
                    "ENTRY_SHAPE_INVALID",
                    f"entry {e.id} ({e.kind}) has amount={e.amount}"
                    f" reserved_delta={e.reserved_delta}, which that kind never writes",
                    {**refs, "amount": e.amount, "reserved_delta": e.reserved_delta},
                )
            )
        if e.kind == EntryKind.TIP_CREDIT:
            if e.idempotency_key != f"settlement:tip_intent:{e.ref}":
                found.append(_malformed_key(e, refs))
            if not e.ref_exists:
                found.append(
                    Finding(
                        CRITICAL,
                        "ORPHAN_CREDIT",
                        f"credit entry {e.id} points to tip {e.ref!r}, which does not exist",
                        {**refs, "amount": e.amount},
                    )
                )
        else:
            if not e.idempotency_key.startswith(f"withdrawal:{_KEY_VERB[e.kind]}:{e.ref}"):
                found.append(_malformed_key(e, refs))
            if not e.ref_exists:
                found.append(
                    Finding(
                        CRITICAL,
                        "ORPHAN_WITHDRAWAL_ENTRY",
                        f"{e.kind} entry {e.id} points to withdrawal {e.ref!r},"
                        " which does not exist",
                        {**refs, "amount": e.amount, "reserved_delta": e.reserved_delta},
                    )
                )
    return found


def _shape_ok(e: EntryCheckRow) -> bool:
    if e.kind == EntryKind.TIP_CREDIT:
        return e.amount > 0 and e.reserved_delta == 0
    if e.kind == EntryKind.WITHDRAWAL_RESERVE:
        return e.amount == 0 and e.reserved_delta > 0
    if e.kind == EntryKind.WITHDRAWAL_DEBIT:
        return e.amount < 0 and e.reserved_delta == e.amount
    return e.amount == 0 and e.reserved_delta < 0  # WITHDRAWAL_RELEASE


def _malformed_key(e: EntryCheckRow, refs: dict[str, object]) -> Finding:
    return Finding(
        CRITICAL,
        "MALFORMED_ENTRY_KEY",
        f"entry {e.id} ({e.kind}) has idempotency key {e.idempotency_key!r},"
        f" which does not name its ref {e.ref!r}",
        {**refs, "idempotency_key": e.idempotency_key},
    )


# --- tips ------------------------------------------------------------------------------------


def check_tips(tips: Sequence[TipWithCredits]) -> list[Finding]:
    """Every SETTLED tip has exactly one credit of its amount to its recipient; no other
    tip has a credit."""
    found: list[Finding] = []
    for tip in tips:
        refs = {
            "tip_id": tip.id,
            "state": tip.state,
            "amount": tip.amount,
            **_owner(tip.app_id, tip.to_user_id, tip.asset),
        }
        credit_ids = [c.id for c in tip.credits]
        if tip.state != "SETTLED":
            if tip.credits:
                found.append(
                    Finding(
                        CRITICAL,
                        "UNSETTLED_TIP_HAS_CREDIT",
                        f"tip {tip.id} is {tip.state} but has credit entries {credit_ids}",
                        {**refs, "entry_ids": credit_ids},
                    )
                )
            continue
        if not tip.credits:
            found.append(
                Finding(
                    CRITICAL,
                    "SETTLED_TIP_MISSING_CREDIT",
                    f"tip {tip.id} is SETTLED but its recipient was never credited",
                    refs,
                )
            )
            continue
        if len(tip.credits) > 1:
            found.append(
                Finding(
                    CRITICAL,
                    "DUPLICATE_CREDIT",
                    f"tip {tip.id} was credited {len(tip.credits)} times: {credit_ids}",
                    {
                        **refs,
                        "entry_ids": credit_ids,
                        "credited_total": sum(c.amount for c in tip.credits),
                    },
                )
            )
        for credit in tip.credits:
            if credit.amount != tip.amount:
                found.append(
                    Finding(
                        CRITICAL,
                        "CREDIT_AMOUNT_MISMATCH",
                        f"tip {tip.id} is for {tip.amount} but entry {credit.id}"
                        f" credited {credit.amount}",
                        {**refs, "entry_id": credit.id, "credited": credit.amount},
                    )
                )
            if (credit.app_id, credit.user_id, credit.asset) != (
                tip.app_id,
                tip.to_user_id,
                tip.asset,
            ):
                found.append(
                    Finding(
                        CRITICAL,
                        "CREDIT_ACCOUNT_MISMATCH",
                        f"tip {tip.id} should credit {tip.app_id}/{tip.to_user_id}/{tip.asset}"
                        f" but entry {credit.id} credited"
                        f" {credit.app_id}/{credit.user_id}/{credit.asset}",
                        {
                            **refs,
                            "entry_id": credit.id,
                            "credited_app_id": credit.app_id,
                            "credited_user_id": credit.user_id,
                            "credited_asset": credit.asset,
                        },
                    )
                )
    return found


# --- withdrawals -------------------------------------------------------------------------------


def check_withdrawals(
    withdrawals: Sequence[WithdrawalWithEntries], *, now_ms: int, stuck_processing_ms: int
) -> list[Finding]:
    """Debits, evidence and reservations of each withdrawal match its state."""
    found: list[Finding] = []
    for w in withdrawals:
        refs = {
            "withdrawal_id": w.id,
            "state": w.state,
            "cancelled": w.cancelled,
            "amount": w.amount,
            **_owner(w.app_id, w.user_id, w.asset),
        }
        debits = [e for e in w.entries if e.kind == EntryKind.WITHDRAWAL_DEBIT]
        net_reserved = sum(e.reserved_delta for e in w.entries)
        found.extend(
            Finding(
                CRITICAL,
                "WITHDRAWAL_ENTRY_ACCOUNT_MISMATCH",
                f"withdrawal {w.id} belongs to {w.app_id}/{w.user_id}/{w.asset} but"
                f" entry {e.id} moved {e.app_id}/{e.user_id}/{e.asset}",
                {**refs, "entry_id": e.id},
            )
            for e in w.entries
            if (e.app_id, e.user_id, e.asset) != (w.app_id, w.user_id, w.asset)
        )
        if w.state == "COMPLETED":
            found.extend(_check_completed(w, refs))
        elif debits:
            found.append(
                Finding(
                    CRITICAL,
                    "UNCOMPLETED_WITHDRAWAL_HAS_DEBIT",
                    f"withdrawal {w.id} is {w.state} but was debited by entries"
                    f" {[d.id for d in debits]}",
                    {
                        **refs,
                        "entry_ids": [d.id for d in debits],
                        "debited": -sum(d.amount for d in debits),
                    },
                )
            )
        in_flight = w.state in IN_FLIGHT_STATES and not w.cancelled
        expected = w.amount + w.fee_reserved if in_flight else 0
        if net_reserved != expected:
            code = "IN_FLIGHT_RESERVATION_MISMATCH" if in_flight else "RESERVATION_NOT_RELEASED"
            found.append(
                Finding(
                    CRITICAL,
                    code,
                    f"withdrawal {w.id} ({w.state}{', cancelled' if w.cancelled else ''})"
                    f" holds a reservation of {net_reserved}; expected {expected}",
                    {
                        **refs,
                        "reserved": net_reserved,
                        "expected_reserved": expected,
                        "fee_reserved": w.fee_reserved,
                    },
                )
            )
        if w.state == "PROCESSING" and now_ms - w.processing_since > stuck_processing_ms:
            found.append(
                Finding(
                    WARNING,
                    "STUCK_PROCESSING",
                    f"withdrawal {w.id} has been PROCESSING for"
                    f" {(now_ms - w.processing_since) // 1000} s without an outcome",
                    {
                        **refs,
                        "since_ms": w.processing_since,
                        "payment_hash": w.payment_hash,
                        "tx_hash": w.tx_hash,
                    },
                )
            )
    return found


def _check_completed(w: WithdrawalWithEntries, refs: dict[str, object]) -> list[Finding]:
    found: list[Finding] = []
    evidence = w.payment_hash if w.destination_kind == "PAYMENT_REQUEST" else w.tx_hash
    if not evidence or w.fee_paid is None:
        found.append(
            Finding(
                CRITICAL,
                "COMPLETED_WITHDRAWAL_MISSING_EVIDENCE",
                f"withdrawal {w.id} is COMPLETED without"
                f" {'a payment hash' if w.destination_kind == 'PAYMENT_REQUEST' else 'a tx hash'}"
                f"{'' if w.fee_paid is not None else ' and without fee_paid'}",
                {
                    **refs,
                    "payment_hash": w.payment_hash,
                    "tx_hash": w.tx_hash,
                    "fee_paid": w.fee_paid,
                },
            )
        )
    typed = [e for e in w.entries if e.kind == EntryKind.WITHDRAWAL_DEBIT]
    if not typed:
        found.append(
            Finding(
                CRITICAL,
                "COMPLETED_WITHDRAWAL_MISSING_DEBIT",
                f"withdrawal {w.id} is COMPLETED but its owner was never debited",
                refs,
            )
        )
        return found
    if len(typed) > 1:
        found.append(
            Finding(
                CRITICAL,
                "DUPLICATE_DEBIT",
                f"withdrawal {w.id} was debited {len(typed)} times: {[d.id for d in typed]}",
                {
                    **refs,
                    "entry_ids": [d.id for d in typed],
                    "debited": -sum(d.amount for d in typed),
                },
            )
        )
    # The user pays the fee the node charged, but never more than the cap they reserved.
    expected = -(w.amount + min(w.fee_paid or 0, w.fee_reserved))
    found.extend(
        Finding(
            CRITICAL,
            "DEBIT_AMOUNT_MISMATCH",
            f"withdrawal {w.id} should debit {-expected} (amount + fee charged) but"
            f" entry {debit.id} debited {-debit.amount}",
            {
                **refs,
                "entry_id": debit.id,
                "debited": -debit.amount,
                "expected": -expected,
                "fee_paid": w.fee_paid,
            },
        )
        for debit in typed
        if debit.amount != expected
    )
    return found
