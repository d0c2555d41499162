-- Sliding-window counters (idle_at = start + 2 windows: after that the row decides nothing),
-- run-time policy overrides (spec NULL = deleted; version orders updates from the admin fan-out),
-- and per-policy decision counters.
CREATE TABLE windows (
    policy TEXT NOT NULL,
    key TEXT NOT NULL,
    start INTEGER NOT NULL,
    prev INTEGER NOT NULL,
    curr INTEGER NOT NULL,
    idle_at INTEGER NOT NULL,
    PRIMARY KEY (policy, key)
) WITHOUT ROWID;
CREATE INDEX windows_by_idle ON windows (idle_at);
CREATE TABLE policies (
    name TEXT PRIMARY KEY,
    spec BLOB,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE policy_counters (
    policy TEXT PRIMARY KEY,
    allowed INTEGER NOT NULL DEFAULT 0,
    denied INTEGER NOT NULL DEFAULT 0,
    shadow_denied INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
