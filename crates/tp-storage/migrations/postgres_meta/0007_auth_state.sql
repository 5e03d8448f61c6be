-- Authentication state that must outlive a restart and be seen by every API node
-- (revoked sessions, session generations, used refresh tokens); times are Unix ms.
CREATE TABLE auth_state (
    key        text   NOT NULL CONSTRAINT auth_state_pkey PRIMARY KEY,
    value      text   NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX auth_state_by_expiry ON auth_state (expires_at);
