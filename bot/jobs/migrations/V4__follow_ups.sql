-- Release 4: jobs made from another job's track, by its buttons.
--
-- action is how the job came to be: 'music' (a /music command), 'regenerate' (same options,
-- new seed), 'variation' (same seed, nudged temperature) or 'extend' (a continuation of the
-- parent's track). parent_job_id is the job whose message carried the button. For 'extend',
-- extend_json holds what delivery needs to put the original in front of the continuation:
-- where the original can be read again and how many seconds of it the model was given.

ALTER TABLE jobs ADD COLUMN action TEXT NOT NULL DEFAULT 'music';
ALTER TABLE jobs ADD COLUMN parent_job_id BIGINT;
ALTER TABLE jobs ADD COLUMN extend_json TEXT;

-- A double click on a button must not make two jobs: the check looks here.
CREATE INDEX jobs_user_parent ON jobs (user_id, parent_job_id);
