"""Admin commands for withdrawals and per-app withdrawal policy (``fiberlinkd admin …``).

    withdrawals list [--app] [--state] [--user] [--limit]
    withdrawals show ID          the row, its timeline and what the node says (get_payment)
    withdrawals cancel ID        PENDING / RETRY_PENDING / LIQUIDITY_PENDING only, and only
                                 when nothing can have been paid: if it was ever sent, the
                                 node must show the session Failed or not found (on chain:
                                 no signed transaction that may still commit)
    withdrawals retry ID         a FAILED (not cancelled) one whose payment the node confirms
                                 is not successful; reserves the balance again
    wallet                       the hot wallet: address, balance, reserved, liquidity
    policy show APP
    policy set APP [--min-amount] [--max-per-request] [--user-daily-limit]
                   [--app-daily-limit] [--cooldown-s] [--allowed-assets CKB,USDI]

Mutating commands are audited by the admin server. "Not found" at the node (and, for a
cancel, "Failed") is trusted only for a row that has been quiet for :data:`NOT_FOUND_QUIET_S`
(a send still travelling to the node could otherwise create or re-create the session after
we looked).
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from fiberlinkd.admin.cli import admin_group, admin_parser, render_mapping, render_table
from fiberlinkd.admin.protocol import CONFLICT, FAILED, AdminError, bad_request, not_found
from fiberlinkd.admin.registry import (
    APP_ARG,
    CommandContext,
    Scope,
    admin_command,
    arg_int,
    arg_opt_str,
    arg_str,
    register_status_section,
)
from fiberlinkd.amounts import format_amount
from fiberlinkd.ckb.client import CkbClientError
from fiberlinkd.clock import iso_ms
from fiberlinkd.fnn.errors import (
    FnnContractError,
    FnnNodeError,
    FnnTransportError,
    is_payment_session_not_found,
)
from fiberlinkd.fnn.types import Payment, PaymentStatus
from fiberlinkd.ledger.admin import get_app
from fiberlinkd.ledger.onchain import onchain_totals
from fiberlinkd.ledger.withdrawals import (
    CKB_ADDRESS,
    LIQUIDITY_PENDING,
    PENDING,
    RETRY_PENDING,
    STATES,
    Withdrawal,
    WithdrawalRefused,
    counts_by_state,
    fail_withdrawal,
    get_policy,
    get_withdrawal,
    has_policy_row,
    list_events,
    list_withdrawals,
    put_policy,
    reopen_failed,
)
from fiberlinkd.onchain.service import NETWORK_FOR_CURRENCY
from fiberlinkd.runtime import Runtime
from fiberlinkd.withdrawals.policy import Policy, PolicyError

NODE_BOUND_S = 5.0
NOT_FOUND_QUIET_S = 120.0
CANCELLABLE = (PENDING, RETRY_PENDING, LIQUIDITY_PENDING)


def _decimals(rt: Runtime, asset: str) -> int:
    return 8 if asset == "CKB" else rt.config.assets.usdi_decimals


def _row_json(rt: Runtime, w: Withdrawal) -> dict[str, Any]:
    decimals = _decimals(rt, w.asset)
    return {
        "id": w.id,
        "app_id": w.app_id,
        "user_id": w.user_id,
        "asset": w.asset,
        "amount": format_amount(w.amount, decimals),
        "state": w.state,
        "destination_kind": w.destination_kind,
        "destination": w.destination,
        "payment_hash": w.payment_hash,
        "tx_hash": w.tx_hash,
        "fee_reserved": format_amount(w.fee_reserved, decimals),
        "fee_paid": None if w.fee_paid is None else format_amount(w.fee_paid, decimals),
        "attempts": w.attempts,
        "next_attempt_at": None if w.next_attempt_at is None else iso_ms(w.next_attempt_at),
        "last_error": w.last_error,
        "failure_reason": w.failure_reason,
        "cancelled": w.cancelled,
        "created_at": iso_ms(w.created_at),
        "updated_at": iso_ms(w.updated_at),
        "completed_at": None if w.completed_at is None else iso_ms(w.completed_at),
    }


async def _node_payment(rt: Runtime, payment_hash: str) -> Payment | None:
    """The node's session, ``None`` for "not found". Errors: AdminError FAILED if silent."""
    try:
        with trio.fail_after(NODE_BOUND_S):
            return await rt.node.get_payment(payment_hash)
    except FnnNodeError as exc:
        if is_payment_session_not_found(exc):
            return None
        raise AdminError(
            FAILED, f"the node answered get_payment with an error: {exc.message}"
        ) from None
    except (FnnTransportError, FnnContractError, trio.TooSlowError) as exc:
        raise AdminError(
            FAILED, f"the node did not answer get_payment ({type(exc).__name__}); try again"
        ) from None


async def _chain_evidence(rt: Runtime, w: Withdrawal) -> dict[str, Any] | str:
    """What the CKB node says about an on-chain withdrawal's transaction."""
    if w.tx_hash is None:
        return "no transaction signed"
    if rt.onchain is None:
        return "on-chain payouts are not enabled; cannot ask the CKB node"
    try:
        with trio.fail_after(NODE_BOUND_S):
            status = await rt.onchain.chain.get_transaction(
                bytes.fromhex(w.tx_hash.removeprefix("0x"))
            )
    except (CkbClientError, trio.TooSlowError) as exc:
        return f"the CKB node did not answer get_transaction ({type(exc).__name__})"
    return {"tx_hash": w.tx_hash, "status": status.status, "block_number": status.block_number}


async def _lookup(ctx: CommandContext, args: dict[str, Any]) -> Withdrawal:
    withdrawal_id = arg_str(args, "id", max_chars=100)
    w = await ctx.rt.ledger.read(get_withdrawal, withdrawal_id)
    if w is None or not ctx.caller.can_see(w.app_id):
        ctx.caller.require_granted()
        raise not_found(f"withdrawal {withdrawal_id} not found")
    return w


async def _require_not_paid(ctx: CommandContext, w: Withdrawal, action: str) -> str:
    """Prove with the node that ``w``'s payment did not and cannot succeed; returns evidence."""
    if w.destination_kind == CKB_ADDRESS:
        # An on-chain row holds a signed transaction only while it may still commit
        # (PROCESSING / COMPLETED); abandoned ones were proven dead by the CKB node.
        if w.tx_hash is not None:
            raise AdminError(
                CONFLICT, f"transaction {w.tx_hash} is signed for it and may still commit"
            )
        return "no transaction signed"
    if w.sent_at is None or w.payment_hash is None:
        return "never sent"
    payment = await _node_payment(ctx.rt, w.payment_hash)
    quiet_s = (ctx.now_ms() - w.updated_at) / 1000
    if payment is None:
        if quiet_s < NOT_FOUND_QUIET_S:
            raise AdminError(
                CONFLICT,
                f"the node has no session yet, but the withdrawal changed {quiet_s:.0f} s ago; "
                f"{action} again after {NOT_FOUND_QUIET_S:.0f} s",
            )
        return "node: no payment session"
    if payment.status is PaymentStatus.FAILED:
        # The Failed session may be an earlier attempt's while a resend is still on its
        # way to the node (which would re-create the session): a cancel releases the
        # reservation, so it trusts a Failed session only once the row has been quiet.
        if action == "cancel" and quiet_s < NOT_FOUND_QUIET_S:
            raise AdminError(
                CONFLICT,
                f"the node shows the payment Failed, but the withdrawal changed "
                f"{quiet_s:.0f} s ago and a resend may still reach the node; "
                f"{action} again after {NOT_FOUND_QUIET_S:.0f} s",
            )
        return f"node: payment Failed ({payment.failed_error})"
    if payment.status is PaymentStatus.SUCCESS:
        raise AdminError(
            CONFLICT,
            f"the node reports this payment as Success: it was paid. Do not {action} it; "
            "run the reconciler and look at the ledger",
        )
    raise AdminError(CONFLICT, f"the node has this payment {payment.status}; wait for it to finish")


@admin_command("withdrawals.list", mutates=False, scope=Scope.APP)
async def withdrawals_list(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """List withdrawals, newest first."""
    app_id = arg_opt_str(args, APP_ARG, max_chars=64)
    state = arg_opt_str(args, "state", max_chars=32)
    if state is not None and state not in STATES:
        raise bad_request(f"state must be one of {', '.join(STATES)}")
    user_id = arg_opt_str(args, "user_id", max_chars=64)
    limit = arg_int(args, "limit", default=50, minimum=1, maximum=1000)
    visible = ctx.caller.visible_app_ids
    app_ids: list[str] | None = None if visible is None else sorted(visible)
    if app_id is not None:
        app_ids = [app_id]
    rows = await ctx.rt.ledger.read(
        list_withdrawals, app_ids=app_ids, state=state, user_id=user_id, limit=limit
    )
    return [_row_json(ctx.rt, w) for w in rows]


@admin_command("withdrawals.show", mutates=False, scope=Scope.APP)
async def withdrawals_show(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """One withdrawal with its timeline and the node's evidence."""
    w = await _lookup(ctx, args)
    events = await ctx.rt.ledger.read(list_events, w.id)
    evidence: dict[str, Any] | str
    if w.destination_kind == CKB_ADDRESS:
        evidence = await _chain_evidence(ctx.rt, w)
    elif w.payment_hash is None:
        evidence = "no payment hash"
    else:
        try:
            payment = await _node_payment(ctx.rt, w.payment_hash)
        except AdminError as exc:
            evidence = exc.message
        else:
            evidence = (
                "no payment session at the node"
                if payment is None
                else {
                    "status": str(payment.status),
                    "fee": format_amount(payment.fee, _decimals(ctx.rt, w.asset)),
                    "failed_error": payment.failed_error,
                    "created_at": iso_ms(payment.created_at_ms),
                    "last_updated_at": iso_ms(payment.last_updated_at_ms),
                }
            )
    return {
        "withdrawal": _row_json(ctx.rt, w),
        "timeline": [
            {"at": iso_ms(e.at), "from": e.from_state, "to": e.to_state, "detail": e.detail}
            for e in events
        ],
        "node": evidence,
    }


@admin_command("withdrawals.cancel", mutates=True, scope=Scope.APP)
async def withdrawals_cancel(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Cancel a withdrawal nothing was paid for, and release its reservation."""
    w = await _lookup(ctx, args)
    if w.state not in CANCELLABLE:
        raise AdminError(
            CONFLICT, f"only {', '.join(CANCELLABLE)} withdrawals can be cancelled; it is {w.state}"
        )
    evidence = await _require_not_paid(ctx, w, "cancel")
    done = await ctx.rt.ledger.transact(
        fail_withdrawal,
        w.id,
        reason=f"cancelled by {ctx.caller.label} ({evidence})",
        now_ms=ctx.now_ms(),
        from_states=(w.state,),
        cancelled=True,
        expect_updated_at=w.updated_at,
    )
    if done is None:
        raise AdminError(CONFLICT, "the withdrawal changed meanwhile; look at it again")
    return _row_json(ctx.rt, done)


@admin_command("withdrawals.retry", mutates=True, scope=Scope.APP)
async def withdrawals_retry(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Send a FAILED withdrawal again (same invoice), reserving the balance again."""
    w = await _lookup(ctx, args)
    if w.state != "FAILED":
        raise AdminError(CONFLICT, f"only a FAILED withdrawal can be retried; it is {w.state}")
    await _require_not_paid(ctx, w, "retry")
    try:
        done = await ctx.rt.ledger.transact(
            reopen_failed,
            w.id,
            now_ms=ctx.now_ms(),
            by=ctx.caller.label,
            expect_updated_at=w.updated_at,
        )
    except WithdrawalRefused as exc:
        raise AdminError(CONFLICT, exc.message) from None
    ctx.rt.withdrawals_wakeup.set()
    return _row_json(ctx.rt, done)


async def _require_app_row(ctx: CommandContext, app_id: str) -> None:
    if await ctx.rt.ledger.read(get_app, app_id) is None:
        raise not_found(f"app {app_id} not found")


async def _policy_json(ctx: CommandContext, app_id: str) -> dict[str, Any]:
    defaults = Policy.defaults(ctx.rt.config.withdrawals)

    def both(conn: Any) -> tuple[Policy, bool]:
        return get_policy(conn, app_id, defaults), has_policy_row(conn, app_id)

    try:
        policy, own = await ctx.rt.ledger.read(both)
    except PolicyError as exc:
        raise AdminError(FAILED, f"the stored policy is invalid: {exc}; set it again") from None
    return {"app_id": app_id, "source": "app" if own else "defaults", **policy.as_dict()}


@admin_command("policy.show", mutates=False, scope=Scope.APP)
async def policy_show(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """An app's withdrawal policy (config defaults where it sets nothing)."""
    app_id = arg_str(args, APP_ARG, max_chars=64)
    await _require_app_row(ctx, app_id)
    return await _policy_json(ctx, app_id)


POLICY_FIELDS = (
    "min_amount",
    "max_per_request",
    "user_daily_limit",
    "app_daily_limit",
    "cooldown_s",
    "allowed_assets",
)


@admin_command("policy.set", mutates=True, scope=Scope.APP)
async def policy_set(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Change an app's withdrawal policy (the fields given; the rest stay)."""
    app_id = arg_str(args, APP_ARG, max_chars=64)
    await _require_app_row(ctx, app_id)
    changes = {name: args.get(name) for name in POLICY_FIELDS if args.get(name) is not None}
    if not changes:
        raise bad_request(f"give at least one of: {', '.join(POLICY_FIELDS)}")
    defaults = Policy.defaults(ctx.rt.config.withdrawals)
    now_ms = ctx.now_ms()

    def update(conn: Any) -> None:
        put_policy(conn, app_id, get_policy(conn, app_id, defaults).updated(changes), now_ms)

    try:
        await ctx.rt.ledger.transact(update)
    except PolicyError as exc:
        raise bad_request(str(exc)) from None
    return await _policy_json(ctx, app_id)


async def _status(rt: Runtime) -> dict[str, Any]:
    counts = await rt.ledger.read(counts_by_state)
    return {"by_state": counts}


register_status_section("withdrawals", _status)


def _ckb(units: int) -> str:
    return format_amount(units, 8)


async def wallet_report(rt: Runtime) -> dict[str, Any]:
    """The hot wallet: address, balance, what pending payouts hold, liquidity."""
    onchain = rt.onchain
    if onchain is None:
        return {"enabled": False}
    currency = rt.node_state.currency
    network = onchain.network or (NETWORK_FOR_CURRENCY[currency] if currency else None)
    totals = await rt.ledger.read(onchain_totals)
    report: dict[str, Any] = {
        "enabled": True,
        "address": onchain.wallet.address(network) if network else None,
        "network": network,
        "network_ok": onchain.ready,
        "network_error": onchain.network_error,
        "ckb_url": onchain.url,
        "confirmations": onchain.config.confirmations,
    }
    try:
        view = await onchain.wallet_view(rt.ledger)
    except (CkbClientError, trio.TooSlowError) as exc:
        report["chain"] = f"the CKB node did not answer ({type(exc).__name__})"
        view = None
    held = totals.held
    waiting = totals.owed.get(LIQUIDITY_PENDING, 0)
    if view is not None:
        report["balance"] = _ckb(view.balance)
        report["spendable"] = _ckb(view.spendable)
        report["in_flight_inputs"] = _ckb(view.in_flight_inputs)
        report["incoming_change"] = _ckb(view.incoming)
        report["available"] = _ckb(view.available)
        short = held + waiting + onchain.change_reserve - view.available
        report["shortfall"] = _ckb(max(0, short) if held + waiting else 0)
    report["reserved"] = {
        "pending": _ckb(held),
        "pending_count": totals.count.get(PENDING, 0) + totals.count.get(RETRY_PENDING, 0),
        "processing": _ckb(totals.owed.get("PROCESSING", 0)),
        "processing_count": totals.count.get("PROCESSING", 0),
        "liquidity_pending": _ckb(waiting),
        "liquidity_pending_count": totals.count.get(LIQUIDITY_PENDING, 0),
        "change_reserve": _ckb(onchain.change_reserve),
    }
    return report


@admin_command("wallet.show", mutates=False, scope=Scope.SUPER)
async def wallet_show(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """The hot wallet's address, balance and what is reserved for pending payouts."""
    del args
    return await wallet_report(ctx.rt)


register_status_section("onchain", wallet_report)


# --- CLI --------------------------------------------------------------------------------

_LIST_COLUMNS = ["id", "app_id", "user_id", "amount", "asset", "state", "attempts", "created_at"]


def _render_show(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    parts = [render_mapping(result["withdrawal"]), "", "timeline:"]
    parts.append(render_table(result["timeline"], ["at", "from", "to", "detail"]))
    node = result["node"]
    parts.extend(
        ["", "node:", render_mapping(node, "  ") if isinstance(node, dict) else f"  {node}"]
    )
    return "\n".join(parts)


def _policy_args(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        APP_ARG: ns.app,
        "min_amount": ns.min_amount,
        "max_per_request": ns.max_per_request,
        "user_daily_limit": ns.user_daily_limit,
        "app_daily_limit": ns.app_daily_limit,
        "cooldown_s": ns.cooldown_s,
        "allowed_assets": ns.allowed_assets,
    }


def add_cli(admin_subparsers: Any) -> None:
    group = admin_group(admin_subparsers, "withdrawals", help="withdrawals (payouts)")
    listing = admin_parser(
        group,
        "list",
        command="withdrawals.list",
        help="list withdrawals, newest first",
        args=lambda ns: {
            APP_ARG: ns.app,
            "state": ns.state,
            "user_id": ns.user,
            "limit": ns.limit,
        },
        render=lambda result, _ns: render_table(result, _LIST_COLUMNS),
    )
    listing.add_argument("--app", default=None)
    listing.add_argument("--state", default=None, choices=STATES)
    listing.add_argument("--user", default=None)
    listing.add_argument("--limit", type=int, default=50)
    for name, command, text, render in (
        (
            "show",
            "withdrawals.show",
            "one withdrawal, its timeline and node evidence",
            _render_show,
        ),
        ("cancel", "withdrawals.cancel", "cancel a withdrawal nothing was paid for", None),
        ("retry", "withdrawals.retry", "retry a FAILED withdrawal the node did not pay", None),
    ):
        leaf = admin_parser(
            group, name, command=command, help=text, args=lambda ns: {"id": ns.id}, render=render
        )
        leaf.add_argument("id")

    admin_parser(
        admin_subparsers,
        "wallet",
        command="wallet.show",
        help="the hot wallet: address, balance, what pending on-chain payouts hold",
    )

    policy = admin_group(admin_subparsers, "policy", help="per-app withdrawal policy")
    show = admin_parser(
        policy,
        "show",
        command="policy.show",
        help="show an app's policy",
        args=lambda ns: {APP_ARG: ns.app},
    )
    show.add_argument("app")
    setter = admin_parser(
        policy,
        "set",
        command="policy.set",
        help="change an app's policy (audited)",
        args=_policy_args,
    )
    setter.add_argument("app")
    setter.add_argument("--min-amount", default=None, help="decimal, asset units")
    setter.add_argument("--max-per-request", default=None)
    setter.add_argument("--user-daily-limit", default=None, help="rolling 24 h, per user")
    setter.add_argument("--app-daily-limit", default=None, help="rolling 24 h, whole app")
    setter.add_argument("--cooldown-s", type=int, default=None)
    setter.add_argument("--allowed-assets", default=None, help="comma list: CKB,USDI")
