-- Jobs of a listing that could not be decoded are set aside here instead of failing the cycle:
-- keyed by `job <id>` when the id can be read (released when a later answer decodes), else by
-- `item <hash of its text>`. `raw` is the item's text, capped, phone numbers and secrets masked.
CREATE TABLE quarantine (
    item_key TEXT PRIMARY KEY NOT NULL,
    job_id BIGINT,
    campaign BIGINT,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    first_seen_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL
);
CREATE INDEX quarantine_job_id ON quarantine (job_id);
ALTER TABLE sync_runs ADD COLUMN jobs_quarantined BIGINT NOT NULL DEFAULT 0;
