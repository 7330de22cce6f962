-- Withdrawals (Fiber invoices and on-chain CKB addresses), their timeline and per-app policy.
CREATE TABLE withdrawals (
    id                TEXT PRIMARY KEY,
    app_id            TEXT NOT NULL REFERENCES apps(app_id),
    user_id           TEXT NOT NULL,
    asset             TEXT NOT NULL,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    destination_kind  TEXT NOT NULL CHECK (destination_kind IN ('PAYMENT_REQUEST', 'CKB_ADDRESS')),
    destination       TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('LIQUIDITY_PENDING', 'PENDING', 'PROCESSING',
                                                     'RETRY_PENDING', 'COMPLETED', 'FAILED')),
    payment_hash      TEXT UNIQUE,               -- Fiber payouts
    tx_hash           TEXT,                      -- on-chain payouts
    signed_tx         BLOB,                      -- committed before broadcast
    fee_reserved      INTEGER NOT NULL CHECK (fee_reserved >= 0),
    fee_paid          INTEGER CHECK (fee_paid >= 0),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,                   -- unix ms
    sent_at           INTEGER,                   -- unix ms of the first send attempt
    last_error        TEXT,
    failure_reason    TEXT,
    cancelled         INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    completed_at      INTEGER
);
CREATE INDEX withdrawals_due ON withdrawals (state, next_attempt_at);
CREATE INDEX withdrawals_user ON withdrawals (app_id, user_id, created_at);
CREATE INDEX withdrawals_app ON withdrawals (app_id, created_at);
CREATE INDEX withdrawals_tx ON withdrawals (tx_hash) WHERE tx_hash IS NOT NULL;

CREATE TABLE withdrawal_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    withdrawal_id  TEXT NOT NULL REFERENCES withdrawals(id),
    at             INTEGER NOT NULL,
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    detail         TEXT
);
CREATE INDEX withdrawal_events_w ON withdrawal_events (withdrawal_id, id);

CREATE TABLE withdrawal_policies (
    app_id       TEXT PRIMARY KEY REFERENCES apps(app_id),
    policy_json  TEXT NOT NULL,
    updated_at   INTEGER NOT NULL
);
