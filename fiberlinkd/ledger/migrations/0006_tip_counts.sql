-- Tip counts by state, per user and per app, kept as rows so the dashboard's stats cost
-- the same for a creator with 50 tips or 500,000 (issue 6: per-call cost must not grow
-- with history). A tip counts once for its recipient and once for its sender, as the
-- dashboard reads them, and once for its app (the admin block's stage counts). Triggers
-- keep the rows exact on every path that inserts a tip or changes its state (tip.create,
-- the poller, backfill, restores), so no caller can forget them. They are display figures:
-- no constraint on them may ever fail a settlement, so a decrement stops at zero.
CREATE TABLE user_tip_counts (
    app_id   TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (app_id, user_id, state)
) WITHOUT ROWID;

INSERT INTO user_tip_counts (app_id, user_id, state, n)
SELECT app_id, user_id, state, sum(n) FROM (
    SELECT app_id, to_user_id AS user_id, state, count(*) AS n
    FROM tip_intents GROUP BY app_id, to_user_id, state
    UNION ALL
    SELECT app_id, from_user_id AS user_id, state, count(*) AS n
    FROM tip_intents GROUP BY app_id, from_user_id, state
) GROUP BY app_id, user_id, state;

CREATE TABLE app_tip_counts (
    app_id   TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (app_id, state)
) WITHOUT ROWID;

INSERT INTO app_tip_counts (app_id, state, n)
SELECT app_id, state, count(*) FROM tip_intents GROUP BY app_id, state;

CREATE TRIGGER tip_counts_insert AFTER INSERT ON tip_intents
BEGIN
    INSERT INTO user_tip_counts (app_id, user_id, state, n)
    VALUES (NEW.app_id, NEW.to_user_id, NEW.state, 1)
    ON CONFLICT (app_id, user_id, state) DO UPDATE SET n = n + 1;
    INSERT INTO user_tip_counts (app_id, user_id, state, n)
    VALUES (NEW.app_id, NEW.from_user_id, NEW.state, 1)
    ON CONFLICT (app_id, user_id, state) DO UPDATE SET n = n + 1;
    INSERT INTO app_tip_counts (app_id, state, n) VALUES (NEW.app_id, NEW.state, 1)
    ON CONFLICT (app_id, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tip_counts_state AFTER UPDATE OF state ON tip_intents
WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE user_tip_counts SET n = max(n - 1, 0)
    WHERE app_id = OLD.app_id AND user_id = OLD.to_user_id AND state = OLD.state;
    UPDATE user_tip_counts SET n = max(n - 1, 0)
    WHERE app_id = OLD.app_id AND user_id = OLD.from_user_id AND state = OLD.state;
    INSERT INTO user_tip_counts (app_id, user_id, state, n)
    VALUES (NEW.app_id, NEW.to_user_id, NEW.state, 1)
    ON CONFLICT (app_id, user_id, state) DO UPDATE SET n = n + 1;
    INSERT INTO user_tip_counts (app_id, user_id, state, n)
    VALUES (NEW.app_id, NEW.from_user_id, NEW.state, 1)
    ON CONFLICT (app_id, user_id, state) DO UPDATE SET n = n + 1;
    UPDATE app_tip_counts SET n = max(n - 1, 0) WHERE app_id = OLD.app_id AND state = OLD.state;
    INSERT INTO app_tip_counts (app_id, state, n) VALUES (NEW.app_id, NEW.state, 1)
    ON CONFLICT (app_id, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tip_counts_delete AFTER DELETE ON tip_intents
BEGIN
    UPDATE user_tip_counts SET n = max(n - 1, 0)
    WHERE app_id = OLD.app_id AND user_id = OLD.to_user_id AND state = OLD.state;
    UPDATE user_tip_counts SET n = max(n - 1, 0)
    WHERE app_id = OLD.app_id AND user_id = OLD.from_user_id AND state = OLD.state;
    UPDATE app_tip_counts SET n = max(n - 1, 0) WHERE app_id = OLD.app_id AND state = OLD.state;
END;
