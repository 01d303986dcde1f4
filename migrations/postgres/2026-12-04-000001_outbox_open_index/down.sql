DROP INDEX outbox_open;
CREATE INDEX outbox_status_due ON outbox (status, next_attempt_at, id);
