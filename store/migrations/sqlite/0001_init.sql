-- Palisade store, SQLite. Times are unix milliseconds (UTC); JSON columns are TEXT.

CREATE TABLE agents (
    id                  TEXT PRIMARY KEY NOT NULL,
    name                TEXT NOT NULL,
    owner               TEXT NOT NULL DEFAULT '',
    team                TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    purpose             TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    labels              TEXT NOT NULL DEFAULT '{}',
    models              TEXT NOT NULL DEFAULT '[]',
    tools               TEXT NOT NULL DEFAULT '[]',
    budgets             TEXT NOT NULL DEFAULT '{}',
    source              TEXT NOT NULL CHECK (source IN ('config', 'api')),
    removed_from_config BOOLEAN NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_seen_at        INTEGER
);

CREATE TABLE agent_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX agent_keys_agent ON agent_keys (agent_id);

CREATE TABLE users (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    email      TEXT NOT NULL DEFAULT '',
    roles      TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL
);

CREATE TABLE user_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id),
    token_hash   TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX user_tokens_user ON user_tokens (user_id);

-- One row per call or admin action. `seq` is dense (1, 2, 3, ...) and `hash` chains each row to
-- the one before; see the crate's `audit` module for the canonical form.
CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY NOT NULL,
    time_ms        INTEGER NOT NULL,
    request_id     TEXT NOT NULL,
    run_id         TEXT NOT NULL,
    chain          TEXT NOT NULL,
    agent          TEXT,
    owner          TEXT,
    team           TEXT,
    kind           TEXT NOT NULL,
    target         TEXT NOT NULL,
    provider       TEXT,
    decided_by     TEXT,
    verdicts       TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_micro_usd INTEGER NOT NULL,
    latency_us     INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    error_code     TEXT,
    truncated      BOOLEAN NOT NULL,
    body           TEXT,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_events_agent_time ON audit_events (agent, time_ms);
CREATE INDEX audit_events_time ON audit_events (time_ms);
CREATE INDEX audit_events_run ON audit_events (run_id);

-- The chain's head: the last appended seq and its hash. Appenders lock and advance it in the
-- same transaction as their inserts, so concurrent writers form one chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
