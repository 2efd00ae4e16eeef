-- Release 3: what supervision needs to remember across crashes, and no tokens at rest.
--
-- unfinished_runs counts the processes that started working on a job and stopped without
-- finishing it or shutting down cleanly (a crash, a SIGKILL, a power cut). A job that keeps
-- taking the process down is failed instead of being resumed into the same crash again.
-- delivering_at is the intent to post the finished track, recorded before the post: from then
-- on a cancel is answered "already delivered", and a restart knows a post may have happened.

ALTER TABLE jobs ADD COLUMN unfinished_runs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN delivering_at TEXT;

-- Interaction tokens are only needed while a job can still edit its reply.
UPDATE jobs SET token = '' WHERE status IN ('delivered', 'failed', 'cancelled');
