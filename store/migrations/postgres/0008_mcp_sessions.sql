-- MCP agent sessions ended with DELETE /mcp, so every replica refuses them, until the sealed
-- session id would have expired anyway (until_ms).
CREATE TABLE mcp_ended_sessions (
    nonce    TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
CREATE INDEX mcp_ended_sessions_until ON mcp_ended_sessions (until_ms);
