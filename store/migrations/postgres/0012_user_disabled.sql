-- A disabled user keeps their record, roles and tokens for the audit trail, but no token of
-- theirs authenticates until an admin enables them again (NULL: enabled).
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
