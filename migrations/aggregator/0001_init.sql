-- Per-minute metric windows of one aggregator shard (postcard-encoded Window).
CREATE TABLE windows (
    minute INTEGER PRIMARY KEY,
    window BLOB NOT NULL
);
