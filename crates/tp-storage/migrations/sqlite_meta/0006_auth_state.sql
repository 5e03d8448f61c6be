-- Authentication state that must outlive a restart and be seen by every API node
-- (revoked sessions, session generations, used refresh tokens); times are Unix ms.
CREATE TABLE auth_state (
    key        TEXT    NOT NULL PRIMARY KEY,
    value      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX auth_state_by_expiry ON auth_state (expires_at);
