ALTER TABLE sync_runs DROP COLUMN jobs_quarantined;
DROP TABLE quarantine;
