"""On-chain withdrawals: CKB addresses paid from a hot wallet, never twice.

    wallet.load_hot_wallet       the key (file or systemd credential), permission-checked
    service.OnchainService       rt.onchain: address checks, fees, the wallet's view,
                                 the CKB-node ↔ Fiber-node network check
    executor.OnchainExecutor     the actor: build + sign → COMMIT signed bytes (PROCESSING)
                                 → broadcast → follow get_transaction → COMPLETED
                                 (+ LIQUIDITY_PENDING → PENDING when the wallet is funded)

The CKB primitives live in :mod:`fiberlinkd.ckb`; SQL in :mod:`fiberlinkd.ledger.onchain`.
The one rule: a withdrawal has at most one signed transaction, committed before it is ever
broadcast, and only re-broadcast as the same bytes; a new one is built only after the node
proved the old one can never commit.
"""
