"""CKB on-chain primitives for hot-wallet withdrawals.

Modules:

- ``hashing``  — ckbhash (blake2b-256, person ``ckb-default-hash``) and blake160.
- ``bech32m``  — bech32 / bech32m without a length limit (CKB addresses, Fiber invoices).
- ``address``  — RFC 0021 addresses <-> lock ``Script``; network check; minimum capacity.
- ``molecule`` — molecule serialisation of the transaction structures.
- ``tx``       — transaction model, tx hash, sighash-all signing, fees, payout building,
  CKB RPC JSON conversion.
- ``client``   — CKB node + indexer JSON-RPC client over an injected ``httpx.AsyncClient``.
- ``devchain`` — a loopback CKB dev-chain simulator that validates what it is sent.
"""
