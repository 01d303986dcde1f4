-- The push rewrites every outbox row twice (in flight, then settled). An index on
-- (status, next_attempt_at, id) took a new entry at each rewrite and made those updates twice as
-- costly on PostgreSQL; the push only ever asks for the open rows, by id. This partial index
-- holds only them: a row that settles leaves it. Queries name the same predicate literally (a
-- bound parameter would not let the planner prove it).
DROP INDEX outbox_status_due;
CREATE INDEX outbox_open ON outbox (id) WHERE status IN ('pending', 'in_flight');
