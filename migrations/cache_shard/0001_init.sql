-- Cache entries of one shard. last_access approximates LRU order across restarts: the in-memory
-- order is exact, and the expiry alarm writes back the access time of entries read since.
CREATE TABLE entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    content_type TEXT,
    stored_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_access INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX entries_by_expiry ON entries (expires_at);
