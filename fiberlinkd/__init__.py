"""fiberlinkd: the tipping backend a Discourse forum runs beside its Fiber Network Node.

One process, supervised trio tasks, one SQLite file::

    daemon.run_daemon                 opens the ledger and the FNN client, then supervises:
    ├── api.ApiServer                 POST /rpc for the Discourse plugin, health, metrics
    ├── settlement.SettlementPoller   finds paid tip invoices, credits each exactly once
    ├── withdrawals.WithdrawalExecutor pays creators out through the node, never twice
    ├── reconciler.Reconciler         proves the ledger against itself and the node
    └── admin.AdminServer             Unix socket for `fiberlinkd admin ...`

The ledger (SQLite) is the truth; memory channels between actors carry wake-ups only.
"""

__version__ = "0.1.0"
