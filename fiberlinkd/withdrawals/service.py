"""``withdrawal.quote`` and ``withdrawal.request``: the API-facing domain functions.

The HTTP/JSON-RPC layer authenticates the app and calls :func:`quote` / :func:`request`
with the raw ``params`` object; everything else is validated here. Results follow
``plugin-wire-contract.md`` §4.4-4.5 exactly (amounts are canonical decimal strings).

- The quote has no side effects. A destination the user must fix comes back as
  ``destinationValid: false`` with a message; any other problem (policy, balance, paused
  payouts) keeps ``destinationValid: true`` and explains itself in ``validationMessage``
  (the plugin hides it then, and :func:`request` rejects with the same message).
- The request re-validates everything, then runs every policy and balance check *inside*
  the write transaction that creates the withdrawal and reserves amount + fee cap
  (:func:`fiberlinkd.ledger.withdrawals.create_withdrawal`). An identical request within
  60 s returns the earlier withdrawal. The executor is nudged after the commit.

Errors: ``RpcError`` -32602 (``data.field`` names the field when there is one) for bad
params and every refusal; -32000 while the node is unknown or does not answer.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import attrs
import trio

from fiberlinkd.amounts import AmountError, format_amount, parse_amount
from fiberlinkd.api.errors import INTERNAL_ERROR, RpcError, invalid_params
from fiberlinkd.fnn.errors import FnnError
from fiberlinkd.fnn.types import Invoice
from fiberlinkd.ledger.entries import Balance, get_balance
from fiberlinkd.ledger.withdrawals import (
    CKB_ADDRESS,
    INSUFFICIENT_MESSAGE,
    PAYMENT_REQUEST,
    PENDING,
    WithdrawalDraft,
    WithdrawalRefused,
    check_request,
    create_withdrawal,
    get_policy,
)
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime
from fiberlinkd.withdrawals.destinations import (
    ONCHAIN_DISABLED_MESSAGE,
    Destination,
    DestinationInvalid,
    OnchainPayouts,
    check_invoice,
    destination_from_params,
    fee_cap,
    node_identity,
    parse_invoice_bounded,
)
from fiberlinkd.withdrawals.policy import Policy, PolicyError

log = logging.getLogger(__name__)

USER_ID_MAX_CHARS = 64
DRY_RUN_BOUND_S = 3.0
QUOTE_BALANCE_MESSAGE = "Amount exceeds your available balance."


@attrs.frozen
class _Params:
    user_id: str
    asset: str
    decimals: int
    amount: int
    destination: Destination


def asset_decimals(rt: Runtime, asset: str) -> int:
    return 8 if asset == "CKB" else rt.config.assets.usdi_decimals


def _parse_params(rt: Runtime, params: dict[str, Any]) -> _Params:
    user_id = params.get("userId")
    if not isinstance(user_id, str) or not user_id.strip():
        raise invalid_params("userId must be a non-empty string", "userId")
    if len(user_id) > USER_ID_MAX_CHARS:
        raise invalid_params(f"userId is longer than {USER_ID_MAX_CHARS} characters", "userId")
    asset = params.get("asset")
    enabled = rt.config.assets.enabled
    if not isinstance(asset, str) or asset not in enabled:
        raise invalid_params(f"asset must be one of {', '.join(enabled)}", "asset")
    decimals = asset_decimals(rt, asset)
    raw_amount = params.get("amount")
    if not isinstance(raw_amount, str):
        raise invalid_params("amount must be a decimal string", "amount")
    try:
        amount = parse_amount(raw_amount.strip(), decimals)
    except AmountError as exc:
        raise invalid_params(str(exc), "amount") from None
    if amount <= 0:
        raise invalid_params("amount must be greater than zero", "amount")
    return _Params(user_id, asset, decimals, amount, destination_from_params(params))


def _onchain(rt: Runtime) -> OnchainPayouts | None:
    """On-chain payouts (issue 11) plug in here; until then they are disabled."""
    del rt
    return None


async def _checked_invoice(rt: Runtime, p: _Params) -> Invoice:
    """Errors: DestinationInvalid; -32000 when the node is unknown or silent."""
    info, currency = node_identity(rt.node_state.info)
    invoice = await parse_invoice_bounded(rt.node, p.destination.value)
    check_invoice(
        invoice,
        info=info,
        currency=currency,
        asset=p.asset,
        decimals=p.decimals,
        amount=p.amount,
        now_ms=rt.clock.now_ms(),
        min_remaining_s=rt.config.withdrawals.invoice_min_remaining_s,
    )
    return invoice


def _draft(
    app_id: str, p: _Params, *, payment_hash: str | None, fee: int, wid: str
) -> WithdrawalDraft:
    return WithdrawalDraft(
        id=wid,
        app_id=app_id,
        user_id=p.user_id,
        asset=p.asset,
        decimals=p.decimals,
        amount=p.amount,
        destination_kind=p.destination.kind,
        destination=p.destination.value,
        payment_hash=payment_hash,
        fee_reserved=fee,
        state=PENDING,
    )


def _policy_unusable(exc: PolicyError, app_id: str) -> RpcError:
    log.error("stored withdrawal policy is invalid", extra=kv(app=app_id, error=str(exc)))
    return RpcError(INTERNAL_ERROR, "Withdrawal policy is misconfigured; contact the operator")


def _quote_snapshot(
    conn: Any, draft: WithdrawalDraft, defaults: Policy, now_ms: int
) -> tuple[Policy, Balance, str | None, str | None]:
    """(policy, balance, refusal message, refusal field) without writing anything."""
    policy = get_policy(conn, draft.app_id, defaults)
    balance = get_balance(conn, draft.app_id, draft.user_id, draft.asset)
    try:
        check_request(conn, draft, defaults=defaults, now_ms=now_ms)
    except WithdrawalRefused as exc:
        return policy, balance, exc.message, exc.field
    return policy, balance, None, None


async def _estimate_fee(rt: Runtime, invoice_text: str, cap: int) -> int:
    """A ``dry_run`` route fee, capped; the cap when the node cannot route right now."""
    try:
        with trio.fail_after(DRY_RUN_BOUND_S):
            estimate = await rt.node.send_payment(
                invoice=invoice_text, max_fee_amount=cap, dry_run=True
            )
    except (FnnError, trio.TooSlowError):
        return cap
    return min(estimate.fee, cap)


async def quote(rt: Runtime, app_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """``withdrawal.quote``. No side effects. Errors: see the module docstring."""
    p = _parse_params(rt, params)
    node_identity(rt.node_state.info)
    cap = fee_cap(p.amount, rt.config.withdrawals.max_fee_ppm)
    defaults = Policy.defaults(rt.config.withdrawals)
    destination_valid = True
    message: str | None = None
    payment_hash: str | None = None
    if p.destination.kind == CKB_ADDRESS:
        if _onchain(rt) is None:
            destination_valid, message = False, ONCHAIN_DISABLED_MESSAGE
    else:
        try:
            payment_hash = (await _checked_invoice(rt, p)).payment_hash
        except DestinationInvalid as exc:
            destination_valid, message = False, exc.message
    draft = _draft(app_id, p, payment_hash=payment_hash, fee=cap, wid="quote")
    try:
        policy, balance, refusal, field = await rt.ledger.read(
            _quote_snapshot, draft, defaults, rt.clock.now_ms()
        )
    except PolicyError as exc:
        raise _policy_unusable(exc, app_id) from None
    network_fee = cap
    if destination_valid:
        if refusal is not None:
            if field == "destination":
                destination_valid = False
            message = QUOTE_BALANCE_MESSAGE if refusal == INSUFFICIENT_MESSAGE else refusal
        elif p.destination.kind == PAYMENT_REQUEST:
            network_fee = await _estimate_fee(rt, p.destination.value, cap)
    minimum = policy.limits_for(p.asset, p.decimals).min_amount
    return {
        "asset": p.asset,
        "amount": format_amount(p.amount, p.decimals),
        "minimumAmount": format_amount(minimum, p.decimals),
        "availableBalance": format_amount(max(0, balance.available), p.decimals),
        "lockedBalance": format_amount(balance.reserved, p.decimals),
        "networkFee": format_amount(network_fee, p.decimals),
        "receiveAmount": format_amount(p.amount, p.decimals),
        "destinationValid": destination_valid,
        "validationMessage": message,
    }


async def request(rt: Runtime, app_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """``withdrawal.request`` → ``{"id", "state"}``. Errors: see the module docstring."""
    p = _parse_params(rt, params)
    if p.destination.kind == CKB_ADDRESS:
        # Issue 11: when _onchain(rt) is set, check the address with it and create the
        # payout (LIQUIDITY_PENDING while the hot wallet is short). Until then: refused.
        raise invalid_params(ONCHAIN_DISABLED_MESSAGE, "destination")
    try:
        invoice = await _checked_invoice(rt, p)
    except DestinationInvalid as exc:
        raise invalid_params(exc.message, "destination") from None
    cap = fee_cap(p.amount, rt.config.withdrawals.max_fee_ppm)
    draft = _draft(app_id, p, payment_hash=invoice.payment_hash, fee=cap, wid=str(uuid.uuid4()))
    try:
        created = await rt.ledger.transact(
            create_withdrawal,
            draft,
            defaults=Policy.defaults(rt.config.withdrawals),
            now_ms=rt.clock.now_ms(),
        )
    except WithdrawalRefused as exc:
        raise invalid_params(exc.message, exc.field) from None
    except PolicyError as exc:
        raise _policy_unusable(exc, app_id) from None
    w = created.withdrawal
    if created.created:
        log.info(
            "withdrawal requested",
            extra=kv(id=w.id, app=app_id, user=w.user_id, asset=w.asset, amount=w.amount),
        )
        rt.withdrawals_wakeup.set()
    return {"id": w.id, "state": w.state}
