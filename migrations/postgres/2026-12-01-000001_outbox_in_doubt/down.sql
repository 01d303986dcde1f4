ALTER TABLE outbox DROP COLUMN merged_into;
ALTER TABLE outbox DROP COLUMN sent_payload;
ALTER TABLE outbox DROP COLUMN in_doubt;
