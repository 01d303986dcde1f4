-- The mass-delete guard: a complete listing that would mark more than `sync.mass_delete_ratio` of
-- a campaign's live jobs deleted (or a listing of no jobs where there were more than three) is
-- held, not applied, until a second complete listing agrees: when, and how many it would delete.
ALTER TABLE campaigns ADD COLUMN deletes_held_at TIMESTAMP;
ALTER TABLE campaigns ADD COLUMN deletes_held INTEGER;
