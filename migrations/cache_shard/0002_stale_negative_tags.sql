-- Stale windows, negative entries and tags. evict_at = when no window uses the entry any more
-- (the sweep deletes by it); tags are comma-separated names.
ALTER TABLE entries ADD COLUMN stale_while_revalidate_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE entries ADD COLUMN stale_if_error_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE entries ADD COLUMN negative INTEGER NOT NULL DEFAULT 0;
ALTER TABLE entries ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN evict_at INTEGER NOT NULL DEFAULT 0;
UPDATE entries SET evict_at = expires_at;
CREATE INDEX entries_by_evict_at ON entries (evict_at);
