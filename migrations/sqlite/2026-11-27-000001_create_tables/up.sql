-- The contract tables of SPEC §3, plus internal sync state. Timestamps are UTC text
-- `YYYY-MM-DD HH:MM:SS.ffffff`; arrays and objects are JSON text.

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY NOT NULL,
    campaign BIGINT NOT NULL,
    reference TEXT,
    name TEXT,
    email TEXT,
    numbers TEXT,
    address_lines TEXT,
    postal_code TEXT,
    city TEXT,
    country TEXT,
    appointment TIMESTAMP,
    data TEXT,
    label TEXT,
    url TEXT,
    value DOUBLE,
    state INTEGER NOT NULL,
    created_at TIMESTAMP,
    first_seen_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL,
    remote_deleted_at TIMESTAMP
);
CREATE INDEX jobs_campaign_reference ON jobs (campaign, reference);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    op TEXT NOT NULL,
    campaign BIGINT,
    reference TEXT,
    job_id BIGINT,
    payload TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    http_status INTEGER,
    result_job_id BIGINT,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    next_attempt_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    -- internal: when a create was first sent, so an unknown outcome can be looked up from there
    first_sent_at TIMESTAMP
);
CREATE INDEX outbox_status_due ON outbox (status, next_attempt_at, id);

CREATE TABLE job_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    job_id BIGINT NOT NULL,
    campaign BIGINT NOT NULL,
    reference TEXT,
    kind TEXT NOT NULL,
    old_state INTEGER,
    new_state INTEGER,
    changed_fields TEXT NOT NULL,
    source TEXT NOT NULL,
    observed_at TIMESTAMP NOT NULL
);
CREATE INDEX job_changes_job ON job_changes (job_id);
CREATE INDEX job_changes_observed ON job_changes (observed_at);

CREATE TABLE sync_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "trigger" TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'incremental',
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status TEXT NOT NULL DEFAULT 'running',
    jobs_pulled BIGINT NOT NULL DEFAULT 0,
    jobs_changed BIGINT NOT NULL DEFAULT 0,
    pushed_ok BIGINT NOT NULL DEFAULT 0,
    pushed_failed BIGINT NOT NULL DEFAULT 0,
    api_calls BIGINT NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX sync_runs_started ON sync_runs (started_at);

-- internal: the watermark and other small facts the engine keeps between runs
CREATE TABLE sync_state (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- internal: campaigns re-listed in full, and when each was last listed completely
CREATE TABLE campaigns (
    campaign BIGINT PRIMARY KEY NOT NULL,
    added_at TIMESTAMP NOT NULL,
    last_full_listing_at TIMESTAMP
);
