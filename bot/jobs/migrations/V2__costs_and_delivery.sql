-- Release 2: what a prediction cost, where the track was delivered, and indexes for the
-- per-user queries behind cooldowns, quotas, queue caps and the history command.

ALTER TABLE jobs ADD COLUMN predict_time REAL;
ALTER TABLE jobs ADD COLUMN cost_estimate REAL;
ALTER TABLE jobs ADD COLUMN delivered_message_id BIGINT;
ALTER TABLE jobs ADD COLUMN delivered_channel_id BIGINT;
ALTER TABLE jobs ADD COLUMN delivered_at TEXT;

-- Release 1 delivered a track by editing the placeholder message, in the command's channel,
-- when the job finished: record that for the jobs it already delivered.
UPDATE jobs
SET delivered_message_id = message_id,
    delivered_channel_id = channel_id,
    delivered_at = finished_at
WHERE status = 'delivered';

-- Quota and cooldown (jobs a user submitted since a time), history (a user's newest jobs).
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
-- Queue cap (a user's queued and running jobs).
CREATE INDEX jobs_user_status ON jobs (user_id, status);
