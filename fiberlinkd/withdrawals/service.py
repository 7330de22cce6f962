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
- ``CKB_ADDRESS`` (when ``[onchain] enabled``): the address is checked against the Fiber
  node's network, the minimum is the larger of the policy minimum and the recipient cell's
  minimum capacity, the fee is an upper bound for the transaction (the actual fee is charged
  on completion). A request the hot wallet cannot cover right now is created
  ``LIQUIDITY_PENDING`` (:func:`fiberlinkd.ledger.onchain.create_onchain_withdrawal`).

Errors: ``RpcError`` -32602 (``data.field`` names the field when there is one) for bad
params and every refusal; -32000 while the node (Fiber or CKB) is unknown or does not
answer, or on-chain payouts are stopped.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import attrs
import trio

from fiberlinkd.amounts import AmountError, format_amount, parse_amount
from fiberlinkd.api.errors import INTERNAL_ERROR, SERVICE_UNAVAILABLE, RpcError, invalid_params
from fiberlinkd.ckb.client import CkbClientError
from fiberlinkd.fnn.errors import FnnError
from fiberlinkd.fnn.types import Invoice
from fiberlinkd.ledger.entries import Balance, get_balance
from fiberlinkd.ledger.onchain import create_onchain_withdrawal
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
from fiberlinkd.onchain.service import OnchainService, OnchainUnavailable
from fiberlinkd.runtime import Runtime
from fiberlinkd.withdrawals.destinations import (
    ONCHAIN_DISABLED_MESSAGE,
    Destination,
    DestinationInvalid,
    OnchainCheck,
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


def _onchain(rt: Runtime) -> OnchainService | None:
    """On-chain payouts, when ``[onchain] enabled`` (the daemon sets ``rt.onchain``)."""
    return rt.onchain


def _onchain_check(rt: Runtime, p: _Params) -> tuple[OnchainService, OnchainCheck]:
    """Errors: DestinationInvalid; OnchainUnavailable; -32602 while disabled."""
    onchain = _onchain(rt)
    if onchain is None:
        raise DestinationInvalid(ONCHAIN_DISABLED_MESSAGE)
    _info, currency = node_identity(rt.node_state.info)
    check = onchain.check_address(address=p.destination.value, asset=p.asset, currency=currency)
    return onchain, check


def _below_onchain_minimum(p: _Params, check: OnchainCheck) -> str | None:
    if p.amount < check.minimum_amount:
        return (
            f"Minimum withdrawal to this address is "
            f"{format_amount(check.minimum_amount, p.decimals)} {p.asset}"
        )
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
    onchain_check: OnchainCheck | None = None
    if p.destination.kind == CKB_ADDRESS:
        try:
            onchain_check = _onchain_check(rt, p)[1]
        except DestinationInvalid as exc:
            destination_valid, message = False, exc.message
        except OnchainUnavailable as exc:
            message = exc.message
        if onchain_check is not None:
            cap = onchain_check.network_fee
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
        elif onchain_check is not None and message is None:
            message = _below_onchain_minimum(p, onchain_check)
    minimum = policy.limits_for(p.asset, p.decimals).min_amount
    if onchain_check is not None:
        minimum = max(minimum, onchain_check.minimum_amount)
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
        return await _request_onchain(rt, app_id, p)
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


async def _request_onchain(rt: Runtime, app_id: str, p: _Params) -> dict[str, Any]:
    """A CKB_ADDRESS withdrawal: PENDING, or LIQUIDITY_PENDING while the wallet is short."""
    try:
        onchain, check = _onchain_check(rt, p)
    except DestinationInvalid as exc:
        raise invalid_params(exc.message, "destination") from None
    except OnchainUnavailable as exc:
        raise RpcError(SERVICE_UNAVAILABLE, exc.message) from None
    below = _below_onchain_minimum(p, check)
    if below is not None:
        raise invalid_params(below, "amount")
    try:
        view = await onchain.wallet_view(rt.ledger)
    except (CkbClientError, trio.TooSlowError) as exc:
        log.warning("CKB node did not answer for a withdrawal request", extra=kv(error=repr(exc)))
        raise RpcError(
            SERVICE_UNAVAILABLE, "Service unavailable: the CKB node did not answer; try again"
        ) from None
    draft = _draft(app_id, p, payment_hash=None, fee=check.network_fee, wid=str(uuid.uuid4()))
    try:
        created = await rt.ledger.transact(
            create_onchain_withdrawal,
            draft,
            defaults=Policy.defaults(rt.config.withdrawals),
            now_ms=rt.clock.now_ms(),
            wallet_available=view.available,
            change_reserve=onchain.change_reserve,
        )
    except WithdrawalRefused as exc:
        raise invalid_params(exc.message, exc.field) from None
    except PolicyError as exc:
        raise _policy_unusable(exc, app_id) from None
    w = created.withdrawal
    if created.created:
        log.info(
            "on-chain withdrawal requested",
            extra=kv(
                id=w.id,
                app=app_id,
                user=w.user_id,
                amount=w.amount,
                fee_cap=w.fee_reserved,
                state=w.state,
            ),
        )
        onchain.wakeup.set()
    return {"id": w.id, "state": w.state}
