-- Release 1: one row per accepted /music command.
--
-- Timestamps are ISO-8601 UTC text with a fixed width ('2025-01-31T23:59:59.123456Z'), so they
-- compare and sort as plain strings here and cast directly to TIMESTAMPTZ elsewhere.
-- Discord ids (snowflakes) fit in a signed 64-bit BIGINT.
-- INTEGER PRIMARY KEY AUTOINCREMENT is the one SQLite-specific spelling: ids are shown to users,
-- so they are never reused (elsewhere: BIGINT GENERATED ALWAYS AS IDENTITY).

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    guild_id         BIGINT,
    channel_id       BIGINT  NOT NULL,
    user_id          BIGINT  NOT NULL,
    interaction_id   BIGINT  NOT NULL,
    application_id   BIGINT  NOT NULL,
    token            TEXT    NOT NULL,
    token_expires_at TEXT    NOT NULL,
    message_id       BIGINT,
    request_json     TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'delivered', 'failed', 'cancelled')),
    prediction_id    TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    seed             BIGINT,
    started_at       TEXT,
    finished_at      TEXT,
    error            TEXT,
    error_detail     TEXT
);

-- The scheduler's start-up scan: running jobs to resume, queued jobs to re-queue in order.
CREATE INDEX jobs_status_id ON jobs (status, id);
