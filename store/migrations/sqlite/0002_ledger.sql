-- The spend ledger: counters per (scope, unit, window, window start), reservations and their holds.

CREATE TABLE ledger_counters (
    scope        TEXT NOT NULL,
    unit         TEXT NOT NULL,
    window_kind  TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    spent        INTEGER NOT NULL DEFAULT 0,
    reserved     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, unit, window_kind, window_start)
);

CREATE TABLE ledger_reservations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ledger_reservations_expiry ON ledger_reservations (expires_at);

CREATE TABLE ledger_holds (
    reservation_id INTEGER NOT NULL REFERENCES ledger_reservations (id) ON DELETE CASCADE,
    scope          TEXT NOT NULL,
    unit           TEXT NOT NULL,
    window_kind    TEXT NOT NULL,
    window_start   INTEGER NOT NULL,
    amount         INTEGER NOT NULL
);
CREATE INDEX ledger_holds_reservation ON ledger_holds (reservation_id);
