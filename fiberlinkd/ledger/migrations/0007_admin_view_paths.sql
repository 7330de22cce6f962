-- Index paths for the dashboard's admin block (newest withdrawals and settlements of one
-- app, optionally of one state): without them each admin view sorted the app's whole
-- history (issue 6: index every query's path).
CREATE INDEX withdrawals_app_updated ON withdrawals (app_id, updated_at, id);
CREATE INDEX withdrawals_app_state_updated ON withdrawals (app_id, state, updated_at, id);
CREATE INDEX tips_app_created ON tip_intents (app_id, created_at, id);
CREATE INDEX tips_app_state_created ON tip_intents (app_id, state, created_at, id);
