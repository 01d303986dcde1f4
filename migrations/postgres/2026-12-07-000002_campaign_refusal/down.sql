ALTER TABLE campaigns DROP COLUMN refused_reason;
ALTER TABLE campaigns DROP COLUMN refused_status;
ALTER TABLE campaigns DROP COLUMN refused_at;
