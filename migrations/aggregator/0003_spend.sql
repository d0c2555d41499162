-- Spend per virtual key and per model (observe::spend::Spend, postcard). Shards keep one spend
-- window per fine bucket, sealed with the metric windows; the root keeps fine and hour spend
-- buckets, merged with the metric buckets and the shard's cursor in one step and pruned with
-- the same retention.
CREATE TABLE spend_windows (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
CREATE TABLE spend_fine (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
CREATE TABLE spend_hours (
    bucket INTEGER PRIMARY KEY,
    agg BLOB NOT NULL
);
