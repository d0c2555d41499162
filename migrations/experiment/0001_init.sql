-- One experiment: its definition, sticky assignments, per-arm tallies and the last analysis.
CREATE TABLE definition (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    def BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE assignments (
    unit TEXT PRIMARY KEY,
    variant TEXT NOT NULL,
    assigned_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE tallies (
    variant TEXT PRIMARY KEY,
    assigned INTEGER NOT NULL DEFAULT 0,
    events INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE analysis (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot BLOB NOT NULL,
    at INTEGER NOT NULL
);
