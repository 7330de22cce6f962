"""All SQL lives in this package, as named sync functions run through ``Ledger.transact``.

- :mod:`.store`    connections, pragmas, migrations, :func:`open_ledger`, :class:`Ledger`
- :mod:`.entries`  append-only ledger entries with their hash chain, and balance rows
- one module per capability (apps, tips, withdrawals, reconcile, ...) with its queries
"""

from fiberlinkd.ledger.store import Ledger, LedgerError, open_ledger

__all__ = ["Ledger", "LedgerError", "open_ledger"]
