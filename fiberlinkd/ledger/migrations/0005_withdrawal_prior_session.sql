-- The node's Failed payment session that existed when this attempt was about to send
-- ("<created_at>:<last_updated_at>" in ms), committed before send_payment. After a crash
-- mid-resend it tells the earlier attempt's Failed session from this attempt's outcome,
-- so a resend that may still land is never taken as failed (and its reservation released).
ALTER TABLE withdrawals ADD COLUMN prior_session TEXT;
