-- Shards now keep one mergeable aggregate (observe::Agg) per fine bucket; the per-minute
-- counters of 0001 are dropped (their layout cannot carry sketches and top keys). Retried batch
-- deliveries are recognised by id. The root keeps fine and hour buckets, per-shard cursors and
-- its alert state (in `_meta` blobs).
DROP TABLE windows;
CREATE TABLE windows (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE fine (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
CREATE TABLE hours (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
CREATE TABLE cursors (
    shard INTEGER PRIMARY KEY,
    sealed_before INTEGER NOT NULL
);
CREATE TABLE blobs (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
