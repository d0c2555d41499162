-- A provider group: its providers (postcard-encoded ProviderSpec, in order) and their live health
-- (postcard-encoded ProviderHealth) so ejections and counters survive restarts.
CREATE TABLE providers (
    position INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec BLOB NOT NULL
);
CREATE TABLE health (
    name TEXT PRIMARY KEY,
    state BLOB NOT NULL
) WITHOUT ROWID;
