"""The reconciler: proves the ledger against itself and against the node.

- :mod:`.checks`   pure internal checks over one chunk of rows (balances, entries and the
                   hash chain, tips, withdrawals), and :class:`~.checks.FindingSink`
- :mod:`.parity`   node parity (tips Paid, payouts Success, unknown outgoing payments) and
                   solvency, rate-limited and incremental
- :mod:`.onchain`  on-chain parity (COMPLETED CKB_ADDRESS withdrawals on the CKB node) and
                   the hot wallet's liquidity
- :mod:`.actor`    :class:`~.actor.Reconciler`: the schedule, one run, storing it, the freeze
- :mod:`.export`   streaming CSV/JSONL export of ledger, tips and withdrawals
- :mod:`.admin_commands`  ``admin reconcile [--json|--last]`` and ``admin export``

SQL lives in :mod:`fiberlinkd.ledger.reconcile`. Nothing is imported here, so the ledger
package can import the reconciler's value types without a cycle.
"""
