-- A tracked campaign whose full listing the API refuses (404, 403, 400, …: archived, deleted, not
-- visible to the token) is set aside instead of failing every cycle: when, the status and the
-- API's answer. Cleared when a listing of the campaign succeeds again.
ALTER TABLE campaigns ADD COLUMN refused_at TIMESTAMP;
ALTER TABLE campaigns ADD COLUMN refused_status INTEGER;
ALTER TABLE campaigns ADD COLUMN refused_reason TEXT;
