DROP TABLE campaigns;
DROP TABLE sync_state;
DROP TABLE sync_runs;
DROP TABLE job_changes;
DROP TABLE outbox;
DROP TABLE jobs;
