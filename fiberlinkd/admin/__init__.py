"""The operator's side: a Unix-socket server in the daemon and ``fiberlinkd admin`` to talk
to it. Identity is the peer's uid (``SO_PEERCRED``); roles come from ``admin_grants``.

    server.AdminServer      the actor: socket, one task per connection, authorize, audit
    protocol                newline-delimited JSON requests/responses, error codes
    roles                   Caller (uid → SUPER_ADMIN / COMMUNITY_ADMIN apps / nothing)
    registry                @admin_command, CommandContext, register_status_section
    cli                     the blocking client, admin_parser(), renderers, `restore`
    commands/*              one module per command group (status, apps, grants, audit,
                            backup, freeze, and whatever others append)

Recipe: adding a command group (e.g. withdrawals)
-------------------------------------------------

1. Write ``fiberlinkd/admin/commands/withdrawals.py``; SQL stays in ``fiberlinkd/ledger/``::

       from fiberlinkd.admin.registry import Scope, admin_command, arg_str, APP_ARG

       @admin_command("withdrawals.list", mutates=False, scope=Scope.APP)
       async def withdrawals_list(ctx, args):
           # Scope.APP: if args has "app_id" the server already checked the caller's grant
           # for it; without it, filter by ctx.caller.visible_app_ids (None = all apps).
           rows = await ctx.rt.ledger.read(list_withdrawals, ctx.caller.visible_app_ids)
           return [row_json(r) for r in rows]      # JSON-able; times as iso_ms strings

       @admin_command("withdrawals.cancel", mutates=True, scope=Scope.APP)
       async def withdrawals_cancel(ctx, args): ...  # audited automatically

   - ``mutates=True``: the server writes an ``audit_log`` row (uid, command, app_id,
     arguments, outcome) after the handler, also when it fails or is denied. Arguments
     named in ``secret_args=(...)`` (and any name containing secret/token/password/
     private/preimage) are stored as ``<redacted>``.
   - ``Scope.SUPER``: SUPER_ADMIN only. ``Scope.APP``: any granted caller, scoped by
     ``app_id`` as above. Use ``ctx.caller.require_app(app_id)`` for any other app you
     touch (e.g. an app read from a row looked up by id).
   - Refuse with ``AdminError(code, message)`` from :mod:`.protocol` (``bad_request``,
     ``not_found``, ``CONFLICT``, ``FAILED``); anything else is a bug: the client gets
     ``internal`` and the exception propagates to the supervisor.
   - Long work: ``await ctx.progress({"done_pages": n, "total_pages": m})``.
   - A status section: ``register_status_section("withdrawals", async_fn(rt) -> dict)``
     at import time.

2. In the same module, the CLI side::

       from fiberlinkd.admin.cli import admin_group, admin_parser, render_table

       def add_cli(admin_subparsers):
           group = admin_group(admin_subparsers, "withdrawals", help="payouts")
           p = admin_parser(group, "list", command="withdrawals.list", help="list",
                            args=lambda ns: {"app_id": ns.app},
                            render=lambda result, ns: render_table(result, ["id", "state"]))
           p.add_argument("--app", default=None)

   ``admin_parser`` adds ``--json``, ``--socket`` and ``--config`` to the leaf; without
   ``render`` a generic table/mapping renderer is used; ``--json`` prints the exact result.

3. Append ``"fiberlinkd.admin.commands.withdrawals"`` to ``MODULES`` in
   ``fiberlinkd/admin/commands/__init__.py``. Nothing else changes.

Tests: ``tests/test_admin_*.py`` show how to run the server on a real socket with an
injected peer uid (``AdminServer(rt, peer_uid=lambda sock: 1001)``).
"""

from fiberlinkd.admin.server import AdminServer, AdminSocketError, AdminSocketInUse

__all__ = ["AdminServer", "AdminSocketError", "AdminSocketInUse"]
