-- Palisade store, PostgreSQL. Times are unix milliseconds (UTC). Agent and user JSON columns are
-- JSONB; the audit log keeps `chain` and `verdicts` as TEXT so the hashed bytes are the stored bytes.

CREATE TABLE agents (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    owner               TEXT NOT NULL DEFAULT '',
    team                TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    purpose             TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    labels              JSONB NOT NULL DEFAULT '{}',
    models              JSONB NOT NULL DEFAULT '[]',
    tools               JSONB NOT NULL DEFAULT '[]',
    budgets             JSONB NOT NULL DEFAULT '{}',
    source              TEXT NOT NULL CHECK (source IN ('config', 'api')),
    removed_from_config BOOLEAN NOT NULL DEFAULT FALSE,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    last_seen_at        BIGINT
);

CREATE TABLE agent_keys (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX agent_keys_agent ON agent_keys (agent_id);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    email      TEXT NOT NULL DEFAULT '',
    roles      JSONB NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

CREATE TABLE user_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    token_hash   TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX user_tokens_user ON user_tokens (user_id);

-- One row per call or admin action. `seq` is dense (1, 2, 3, ...) and `hash` chains each row to
-- the one before; see the crate's `audit` module for the canonical form.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY,
    time_ms        BIGINT NOT NULL,
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
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    latency_us     BIGINT NOT NULL,
    status         BIGINT NOT NULL,
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
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
