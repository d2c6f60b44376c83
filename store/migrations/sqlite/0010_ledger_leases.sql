-- Leases: headroom a replica takes from a ledger counter to reserve and settle against in memory.
-- A lease's amount is counted in its counter's `reserved`; the replica renews `expires_at` while
-- it lives, and the expiry sweep returns a dead replica's leases.

CREATE TABLE ledger_leases (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    replica      TEXT NOT NULL,
    scope        TEXT NOT NULL,
    unit         TEXT NOT NULL,
    window_kind  TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX ledger_leases_replica ON ledger_leases (replica);
CREATE INDEX ledger_leases_expiry ON ledger_leases (expires_at);
