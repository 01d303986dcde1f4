ALTER TABLE campaigns DROP COLUMN deletes_held;
ALTER TABLE campaigns DROP COLUMN deletes_held_at;
