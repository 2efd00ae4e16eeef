-- Release 6: several bot processes sharing one queue.
--
-- A running job is held by one process under a lease: lease_owner names the process
-- (host:pid:random), lease_expires_at is when another process may take the job over (and
-- resume its prediction) unless the owner renews the lease first; the owner renews all its
-- leases every few seconds while it lives. turn numbers every start of a job, in all
-- processes together: the line is served round-robin, first to the user whose last turn is
-- the oldest.

ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at TEXT;
ALTER TABLE jobs ADD COLUMN turn BIGINT;

-- A user's last turn, for the fair order of the line.
CREATE INDEX jobs_user_turn ON jobs (user_id, turn);
-- Leases to renew (one owner's) and to take over (expired ones).
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
-- Jobs started in the last minute: creates stay within Replicate's per-minute limit.
CREATE INDEX jobs_started ON jobs (started_at);
