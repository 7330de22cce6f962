"""Executor timing and invoice checks on trio's fake clock, with a small stateful fake node.

Rules under test:
- a retryable failure is retried after exactly retry_base_s x 2^(attempt-1) x (0.5 + j/2);
- a payment still in flight is followed in-process, then handed to the schedule, and
  completes once the node reports Success, with no second send;
- USDI invoices must carry the node's USDI script (molecule bytes as FNN prints them).

The fake follows FNN's session rules (fnn-rpc.md §8.4): a second send for a hash whose
session is not Failed is refused; a Failed session may be resent. Ledger inline mode,
TrioClock, ``autojump_clock``.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from fiberlinkd.clock import TrioClock
from fiberlinkd.fnn.errors import FnnNodeError
from fiberlinkd.fnn.sim.invoices import molecule_script
from fiberlinkd.fnn.types import Currency, Invoice, NodeInfo, Payment, PaymentStatus, Script
from fiberlinkd.ledger.withdrawals import COMPLETED, WithdrawalDraft, create_withdrawal
from fiberlinkd.withdrawals import executor as executor_module
from fiberlinkd.withdrawals.destinations import DestinationInvalid, check_invoice, molecule_hex
from fiberlinkd.withdrawals.executor import WithdrawalExecutor
from fiberlinkd.withdrawals.policy import Policy
from tests.test_withdrawals_support import (
    CKB,
    FAST_WITHDRAWALS,
    balance,
    fund,
    make_config,
    open_runtime,
    withdrawal,
)

OUR_PUBKEY = "02" + "11" * 32
HASH = "0x" + "ab" * 32
USDI = Script(code_hash="0x" + "cd" * 32, hash_type="type", args="0x" + "01" * 20)


@attrs.define
class Session:
    status: PaymentStatus
    created: float
    resolve_at: float
    outcome: PaymentStatus
    failed_error: str | None


@attrs.define
class FakePayNode:
    """Sends resolve ``settle_after_s`` after send_payment; ``fail_first`` sends fail."""

    settle_after_s: float = 1.0
    fail_first: int = 0
    sessions: dict[str, Session] = attrs.field(factory=dict)
    send_times: list[float] = attrs.field(factory=list)

    async def node_info(self) -> NodeInfo:
        return NodeInfo(version="0.8.1", pubkey=OUR_PUBKEY, chain_hash="0x" + "dd" * 32)

    async def send_payment(
        self, *, invoice: str, max_fee_amount: int | None = None, dry_run: bool = False
    ) -> Payment:
        del invoice, max_fee_amount, dry_run
        now = trio.current_time()
        existing = self.sessions.get(HASH)
        if existing is not None and self._status(existing) is not PaymentStatus.FAILED:
            raise FnnNodeError(-32000, f"InvalidParameter: Payment session already exists: {HASH}")
        self.send_times.append(now)
        failing = len(self.send_times) <= self.fail_first
        self.sessions[HASH] = Session(
            PaymentStatus.CREATED,
            now,
            now + self.settle_after_s,
            PaymentStatus.FAILED if failing else PaymentStatus.SUCCESS,
            "TemporaryChannelFailure" if failing else None,
        )
        return self._payment(self.sessions[HASH])

    async def get_payment(self, payment_hash: str) -> Payment:
        session = self.sessions.get(payment_hash)
        if session is None:
            raise FnnNodeError(-32000, f"InvalidParameter: Payment session not found: {HASH}")
        return self._payment(session)

    def _status(self, s: Session) -> PaymentStatus:
        if trio.current_time() >= s.resolve_at:
            return s.outcome
        return PaymentStatus.INFLIGHT

    def _payment(self, s: Session) -> Payment:
        status = self._status(s)
        return Payment(
            payment_hash=HASH,
            status=status,
            created_at_ms=int(s.created * 1000),
            last_updated_at_ms=int(trio.current_time() * 1000),
            failed_error=s.failed_error if status is PaymentStatus.FAILED else None,
            fee=0 if status is PaymentStatus.FAILED else 1000,
        )


async def _insert(rt: object) -> str:
    draft = WithdrawalDraft(
        id="w1",
        app_id="forum",
        user_id="alice",
        asset="CKB",
        decimals=8,
        amount=100 * CKB,
        destination_kind="PAYMENT_REQUEST",
        destination="fibd1fake",
        payment_hash=HASH,
        fee_reserved=CKB // 2,
    )
    created = await rt.ledger.transact(  # type: ignore[attr-defined]
        create_withdrawal,
        draft,
        defaults=Policy.defaults(FAST_WITHDRAWALS),
        now_ms=rt.clock.now_ms(),  # type: ignore[attr-defined]
    )
    return created.withdrawal.id  # type: ignore[no-any-return]


async def test_retry_happens_exactly_after_the_backoff(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(tmp_path, attrs.evolve(FAST_WITHDRAWALS, retry_base_s=10.0))
    node = FakePayNode(settle_after_s=1.0, fail_first=2)
    async with open_runtime(tmp_path, node, clock=TrioClock(), config=config, inline=True) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid = await _insert(rt)
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt, jitter=lambda: 0.5).run)
            with trio.fail_after(600):
                while (await withdrawal(rt, wid)).state != COMPLETED:
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        first, second, third = node.send_times
        # failure observed at first + 1 s (+ the poll at which we saw it), then 10 s x 0.75
        poll = 0.05 + 0.1 + 0.2 + 0.4 + 0.8  # growing poll: the first read after 1 s
        assert second - first == pytest.approx(poll + 7.5, abs=0.01)
        assert third - second == pytest.approx(poll + 15.0, abs=0.01)
        assert await balance(rt, "alice") == (1000 * CKB - 100 * CKB - 1000, 0)


async def test_long_inflight_payment_is_followed_by_the_schedule_and_sent_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "FOLLOW_INLINE_S", 5.0)
    node = FakePayNode(settle_after_s=200.0)
    async with open_runtime(tmp_path, node, clock=TrioClock(), inline=True) as rt:
        await fund(rt, "alice", 1000 * CKB)
        wid = await _insert(rt)
        async with trio.open_nursery() as nursery:
            await nursery.start(WithdrawalExecutor(rt).run)
            await trio.sleep(30)
            w = await withdrawal(rt, wid)
            assert w.state == "PROCESSING"
            assert "Inflight" in (w.last_error or "")
            with trio.fail_after(600):
                while (await withdrawal(rt, wid)).state != COMPLETED:
                    await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert len(node.send_times) == 1
        assert trio.current_time() < 200 + executor_module.RECHECK_S + 10


def _invoice(udt: str | None) -> Invoice:
    return Invoice(
        currency=Currency.FIBD,
        amount=5_000_000,
        payment_hash=HASH,
        timestamp_ms=1_000_000,
        expiry_s=3600,
        description=None,
        payee_pubkey="03" + "22" * 32,
        udt_script=udt,
    )


def test_usdi_invoice_must_carry_the_nodes_usdi_script() -> None:
    info = NodeInfo(
        version="0.8.1",
        pubkey=OUR_PUBKEY,
        chain_hash="0x" + "dd" * 32,
        udt_scripts=(("USDI", USDI),),
    )
    expected = molecule_hex(USDI)
    assert expected == molecule_script(attrs.asdict(USDI))
    kwargs = {
        "info": info,
        "currency": Currency.FIBD,
        "decimals": 6,
        "amount": 5_000_000,
        "now_ms": 1_000_000,
        "min_remaining_s": 600,
    }
    check_invoice(_invoice(expected), asset="USDI", **kwargs)  # type: ignore[arg-type]
    for udt, asset in ((None, "USDI"), ("0x" + "00" * 20, "USDI"), (expected, "CKB")):
        with pytest.raises(DestinationInvalid):
            check_invoice(_invoice(udt), asset=asset, **kwargs)  # type: ignore[arg-type]
