-- The fence of the sync lock (contract §8, Fencing): every process that takes the sync lock
-- raises `epoch` and remembers the value; every write of the push (the outbox's send state, the
-- outcomes, the run's counts) checks in the same transaction that the epoch is still its own.
-- A process that lost its lock (its PostgreSQL session ended, its lock file taken over) is so
-- refused by the database itself, at its next write.
CREATE TABLE sync_fence (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT,
    taken_at TIMESTAMP
);
INSERT INTO sync_fence (id, epoch) VALUES (1, 0);
