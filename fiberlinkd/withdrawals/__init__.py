"""Withdrawals: creators take their balance out through the Fiber node, paid exactly once.

    service.quote / service.request   the API side (withdrawal.quote / withdrawal.request)
    destinations                      PAYMENT_REQUEST checks; the on-chain seam (issue 11)
    policy                            per-app limits (pure); checked in the create transaction
    executor.WithdrawalExecutor       the actor: claim → send_payment → get_payment → record
    admin_commands                    `fiberlinkd admin withdrawals …` and `… policy …`

SQL lives in :mod:`fiberlinkd.ledger.withdrawals`. Money moves in two transactions with a
durable PROCESSING state between them; the node's get_payment resolves that state, never a
guess. Import the submodules directly (this package imports nothing at load time).
"""
