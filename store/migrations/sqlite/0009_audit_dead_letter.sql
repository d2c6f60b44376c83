-- Audit events the database refused (issue 14): the writer splits a failing batch, writes what
-- it can and keeps here, outside the hash chain, each event it cannot write, so nothing is lost
-- silently and one bad row cannot stop the log. `event` is the event as JSON text (NULs
-- replaced, see the store's `safe` module), `event_sha256` the SHA-256 of that text, `reason`
-- the database's refusal.
CREATE TABLE audit_dead_letter (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms      INTEGER NOT NULL,
    request_id   TEXT NOT NULL,
    event        TEXT NOT NULL,
    event_sha256 TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX audit_dead_letter_time ON audit_dead_letter (time_ms);
