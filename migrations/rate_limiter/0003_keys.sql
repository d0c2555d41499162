-- Virtual keys (issue 13): the record (postcard `KeyRecord`: definition, hash of the secret,
-- revocation) and the counters (postcard `Usage`: token windows with reservations, spend per day
-- and month, request-policy state), one row each per key id.
CREATE TABLE vkeys (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE vkey_usage (
    id TEXT PRIMARY KEY,
    usage BLOB NOT NULL
) WITHOUT ROWID;
