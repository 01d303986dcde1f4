-- Readers of the changefeed that jobsync remembers (contract §8): `jobsync changes --consumer
-- NAME` and the webhook sink (consumer `webhook`). `last_seq` is the last `seq` the consumer has
-- committed: it resumes after it. The webhook sink also records the batch it is delivering
-- (`pending_last_seq`: the batch is the rows in (last_seq, pending_last_seq], so its
-- `webhook-id` is the same across retries and restarts) and a pause (`paused_until`,
-- `paused_reason`: the receiver's answer, scrubbed), which `jobsync webhook resume` clears.
CREATE TABLE changefeed_consumers (
    name TEXT PRIMARY KEY NOT NULL,
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    pending_last_seq BIGINT,
    paused_until TIMESTAMP,
    paused_reason TEXT
);
