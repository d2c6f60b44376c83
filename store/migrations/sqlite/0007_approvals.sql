-- Human approvals (issue 7): held calls bound to their exact operation, the humans' votes, and
-- the approver groups users belong to. Numbered 0007 (the issue) so parallel branches adding
-- their own migrations do not collide on a version.

CREATE TABLE approvals (
    id               TEXT PRIMARY KEY NOT NULL,
    -- SHA-256 of agent, kind, target and canonical arguments: what an identical retry matches.
    fingerprint      TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    owner            TEXT NOT NULL DEFAULT '',
    team             TEXT NOT NULL DEFAULT '',
    kind             TEXT NOT NULL,
    target           TEXT NOT NULL,
    arguments        TEXT NOT NULL,
    arguments_sha256 TEXT NOT NULL,
    plugin           TEXT NOT NULL DEFAULT '',
    rule             TEXT NOT NULL,
    summary          TEXT NOT NULL DEFAULT '',
    group_name       TEXT NOT NULL,
    approvals_needed INTEGER NOT NULL,
    request_id       TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    reason           TEXT,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    decided_at       INTEGER,
    -- Whether an agent's retry has been told of the expiry; the next identical call opens anew.
    expiry_told      BOOLEAN NOT NULL DEFAULT 0,
    -- Execution, apart from approval: none, running (claimed by one call), done (with outcome).
    execution        TEXT NOT NULL DEFAULT 'none' CHECK (execution IN ('none', 'running', 'done')),
    claimed_at       INTEGER,
    executed_at      INTEGER,
    outcome          TEXT
);
CREATE INDEX approvals_fingerprint ON approvals (fingerprint, created_at);
CREATE INDEX approvals_state ON approvals (state, created_at);
-- At most one open request per operation, whatever the race.
CREATE UNIQUE INDEX approvals_one_pending ON approvals (fingerprint) WHERE state = 'pending';

CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals (id),
    voter_id    TEXT NOT NULL,
    voter_name  TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason      TEXT NOT NULL DEFAULT '',
    time_ms     INTEGER NOT NULL,
    PRIMARY KEY (approval_id, voter_id)
);

CREATE TABLE user_groups (
    user_id    TEXT NOT NULL REFERENCES users (id),
    group_name TEXT NOT NULL,
    PRIMARY KEY (user_id, group_name)
);
CREATE INDEX user_groups_group ON user_groups (group_name);
