-- Tips, their timeline, the append-only ledger with its hash chain, and balance rows.
CREATE TABLE tip_intents (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps(app_id),
    post_id         TEXT NOT NULL,
    from_user_id    TEXT NOT NULL,
    to_user_id      TEXT NOT NULL,
    asset           TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),          -- base units
    invoice         TEXT NOT NULL UNIQUE,
    payment_hash    TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('UNPAID', 'SETTLED', 'FAILED')),
    message         TEXT,
    created_at      INTEGER NOT NULL,                             -- unix ms
    expires_at      INTEGER NOT NULL,                             -- unix ms (invoice expiry)
    settled_at      INTEGER,                                      -- unix ms
    next_check_at   INTEGER,                                      -- unix ms; NULL when final
    check_count     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    failure_reason  TEXT,
    CHECK ((state = 'SETTLED') = (settled_at IS NOT NULL))
);
CREATE INDEX tips_due ON tip_intents (next_check_at) WHERE state = 'UNPAID';
-- Candidates for a rise in what the node's channels received (newest first per amount).
CREATE INDEX tips_unpaid_amount ON tip_intents (asset, amount, created_at) WHERE state = 'UNPAID';
CREATE INDEX tips_feed ON tip_intents (app_id, settled_at, id) WHERE state = 'SETTLED';
CREATE INDEX tips_to_user ON tip_intents (app_id, to_user_id, created_at);
CREATE INDEX tips_from_user ON tip_intents (app_id, from_user_id, created_at);
-- Covering indexes for dashboard counts and pending sums: cost follows one user's tips.
CREATE INDEX tips_to_user_state ON tip_intents (app_id, to_user_id, state, asset, amount);
CREATE INDEX tips_from_user_state ON tip_intents (app_id, from_user_id, state);
CREATE INDEX tips_created ON tip_intents (created_at);

CREATE TABLE tip_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tip_id      TEXT NOT NULL REFERENCES tip_intents(id),
    at          INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    source      TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX tip_events_tip ON tip_events (tip_id, id);

-- Each entry moves `amount` on the owner's settled balance and `reserved_delta` on its
-- reservation; a balance row always equals the sums of its entries. entry_hash chains
-- every entry to the one before it (blake2b over a canonical encoding), so a hand edit of
-- this file is detectable.
CREATE TABLE ledger_entries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id           TEXT NOT NULL REFERENCES apps(app_id),
    user_id          TEXT NOT NULL,
    asset            TEXT NOT NULL,
    amount           INTEGER NOT NULL,
    reserved_delta   INTEGER NOT NULL DEFAULT 0,
    kind             TEXT NOT NULL,
    ref              TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    prev_hash        TEXT NOT NULL,
    entry_hash       TEXT NOT NULL UNIQUE
);
CREATE INDEX ledger_owner ON ledger_entries (app_id, user_id, asset);
CREATE INDEX ledger_ref ON ledger_entries (ref);

CREATE TABLE balances (
    app_id      TEXT NOT NULL REFERENCES apps(app_id),
    user_id     TEXT NOT NULL,
    asset       TEXT NOT NULL,
    settled     INTEGER NOT NULL DEFAULT 0 CHECK (settled >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  INTEGER NOT NULL,
    CHECK (reserved <= settled),
    PRIMARY KEY (app_id, user_id, asset)
) WITHOUT ROWID;
