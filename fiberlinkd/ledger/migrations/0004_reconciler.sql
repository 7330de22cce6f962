-- Reconciler runs and their findings.
CREATE TABLE reconcile_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('RUNNING', 'CLEAN', 'PROBLEMS', 'ERROR')),
    trigger      TEXT NOT NULL,
    summary      TEXT
);

CREATE TABLE reconcile_findings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     INTEGER NOT NULL REFERENCES reconcile_runs(id),
    severity   TEXT NOT NULL CHECK (severity IN ('INFO', 'WARNING', 'CRITICAL')),
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    refs_json  TEXT NOT NULL
);
CREATE INDEX reconcile_findings_run ON reconcile_findings (run_id);
