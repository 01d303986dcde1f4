CREATE INDEX job_changes_job ON job_changes (job_id);
