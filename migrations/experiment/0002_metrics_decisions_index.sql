-- Named metrics per arm (moments n, Σx, Σx²), the decisions log, the stored layout of the
-- definition, and the experiment index (used by the `experiment-index` object only).
ALTER TABLE definition ADD COLUMN layout INTEGER NOT NULL DEFAULT 1;
CREATE TABLE metric_tallies (
    variant TEXT NOT NULL,
    metric TEXT NOT NULL,
    n INTEGER NOT NULL DEFAULT 0,
    sum REAL NOT NULL DEFAULT 0,
    sum_sq REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (variant, metric)
) WITHOUT ROWID;
-- Outcomes recorded before metrics were named become the legacy `success` metric.
INSERT INTO metric_tallies (variant, metric, n, sum, sum_sq)
    SELECT variant, 'success', events, successes, successes FROM tallies WHERE events > 0;
CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    arm TEXT,
    at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE experiment_index (
    name TEXT PRIMARY KEY,
    target BLOB,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
