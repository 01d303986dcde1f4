-- Internal columns of the push's exactly-once bookkeeping (the CRM never writes them):
-- in_doubt: a create was sent and its outcome is not known; it is looked up before any re-send.
-- sent_payload: the create exactly as last sent (merged fields, campaign and reference), so the
--   lookup searches for the reference actually sent.
-- merged_into: the outbox row a row was merged into when their operation was sent.
-- first_sent_at now holds the server's clock (the API's Date header) just before the first send.
ALTER TABLE outbox ADD COLUMN in_doubt BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN sent_payload TEXT;
ALTER TABLE outbox ADD COLUMN merged_into BIGINT;
