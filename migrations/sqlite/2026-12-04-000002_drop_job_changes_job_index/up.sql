-- No query of jobsync reads the changefeed by job: readers poll `seq > last` (the primary key)
-- and retention deletes by `observed_at`. The `(job_id)` index only made every append dearer:
-- on PostgreSQL a third of the cost of writing a changefeed row, which a backfill writes once
-- per job. A CRM that looks a job's history up by id can create it again (see the README).
DROP INDEX job_changes_job;
