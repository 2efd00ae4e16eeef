-- Release 5: what a job is expected to cost, and each server's own settings.
--
-- expected_cost is the estimate made when the job was accepted (dollars): until its real cost
-- is recorded, a queued or running job counts against the daily budgets with it.
-- model_version and duration_seconds copy two fields of request_json into columns, so the
-- estimate can learn GPU seconds per second of audio for each model from the finished jobs.

ALTER TABLE jobs ADD COLUMN expected_cost REAL;
ALTER TABLE jobs ADD COLUMN model_version TEXT;
ALTER TABLE jobs ADD COLUMN duration_seconds REAL;

-- The jobs made before this release are history the estimate can learn from. (A PostgreSQL
-- store starts at this schema or later, with no such history: SQLite only.)
-- [sqlite]
UPDATE jobs
SET model_version = json_extract(request_json, '$.model_version'),
    duration_seconds = json_extract(request_json, '$.duration')
WHERE json_valid(request_json);
-- [all]

-- The estimate: the newest finished jobs of one model.
CREATE INDEX jobs_model_id ON jobs (model_version, id);
-- A server's spend and stats (jobs finished since a time), and the whole bot's.
CREATE INDEX jobs_guild_finished ON jobs (guild_id, finished_at);
CREATE INDEX jobs_finished ON jobs (finished_at);

-- What a server's admins changed with /jamadmin config; a NULL (or a missing row) means the
-- bot's default from the environment. allowed_models and blocked_words are comma-separated
-- lists ('' for blocked_words: none); the words are stored lower-case.
CREATE TABLE guild_settings (
    guild_id         BIGINT PRIMARY KEY,
    daily_budget_usd REAL,
    daily_quota      INTEGER,
    cooldown_seconds REAL,
    max_duration     INTEGER,
    allowed_models   TEXT,
    blocked_words    TEXT   NOT NULL DEFAULT '',
    updated_at       TEXT   NOT NULL,
    updated_by       BIGINT
);
