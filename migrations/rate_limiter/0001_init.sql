-- Token buckets: one row per (policy, key) that is not full. A bucket whose theoretical arrival
-- time (tat_us) is not after now is full and carries no information: the alarm deletes it.
CREATE TABLE buckets (
    policy TEXT NOT NULL,
    key TEXT NOT NULL,
    tat_us INTEGER NOT NULL,
    PRIMARY KEY (policy, key)
) WITHOUT ROWID;
CREATE INDEX buckets_by_tat ON buckets (tat_us);
