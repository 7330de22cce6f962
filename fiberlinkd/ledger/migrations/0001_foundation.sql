-- Foundation: apps (tenants and their HMAC secrets), operator grants, settings, audit log,
-- and the nonce store that makes replay protection survive restarts.
CREATE TABLE apps (
    app_id       TEXT PRIMARY KEY CHECK (length(app_id) BETWEEN 1 AND 64),
    hmac_secret  TEXT NOT NULL CHECK (length(hmac_secret) >= 16),
    created_at   INTEGER NOT NULL,              -- unix ms
    disabled_at  INTEGER                        -- unix ms; NULL while enabled
);

CREATE TABLE admin_grants (
    uid         INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('SUPER_ADMIN', 'COMMUNITY_ADMIN')),
    app_id      TEXT REFERENCES apps(app_id),
    created_at  INTEGER NOT NULL,
    CHECK ((role = 'SUPER_ADMIN' AND app_id IS NULL) OR (role = 'COMMUNITY_ADMIN' AND app_id IS NOT NULL))
);
CREATE UNIQUE INDEX admin_grants_unique ON admin_grants (uid, role, coalesce(app_id, ''));

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,               -- unix ms
    uid         INTEGER NOT NULL,
    command     TEXT NOT NULL,
    app_id      TEXT,
    args_json   TEXT NOT NULL,                  -- secrets are never written here
    outcome     TEXT NOT NULL
);

CREATE TABLE nonces (
    app_id      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,               -- unix s
    PRIMARY KEY (app_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_expiry ON nonces (expires_at);
