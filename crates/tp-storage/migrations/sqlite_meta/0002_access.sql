-- Access control (tp_core::AccessStore): custom roles and their assignment to users,
-- API keys, device groups and their members, device profiles, the audit log.
-- Ids are hyphenated UUID text; times are Unix milliseconds. Tenant scoping and the
-- cross-table rules (a role or parent group of the same tenant, no deleting a role
-- or profile in use, no cycles) are checked by the store inside write transactions,
-- which SQLite serialises.

CREATE TABLE roles (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    permissions TEXT    NOT NULL, -- JSON array of strings
    created_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

-- The custom role of a user, if any (NULL: the built-in role alone).
ALTER TABLE users ADD COLUMN role_id TEXT;
CREATE INDEX users_by_role ON users (role_id) WHERE role_id IS NOT NULL;

CREATE TABLE api_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    key_hash    TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    role_id     TEXT,
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, id);
CREATE INDEX api_keys_by_role ON api_keys (role_id) WHERE role_id IS NOT NULL;

CREATE TABLE device_groups (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    parent_id   TEXT,
    name        TEXT    NOT NULL,
    description TEXT,
    created_at  INTEGER NOT NULL
);
-- Names are unique among siblings; roots (parent_id NULL) are siblings too.
CREATE UNIQUE INDEX device_groups_sibling_name ON device_groups (tenant_id, parent_id, name)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX device_groups_root_name ON device_groups (tenant_id, name)
    WHERE parent_id IS NULL;
CREATE INDEX device_groups_by_parent ON device_groups (parent_id) WHERE parent_id IS NOT NULL;

-- Deleting a device or a group removes its memberships.
CREATE TABLE group_devices (
    group_id  TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
) WITHOUT ROWID;
CREATE INDEX group_devices_by_device ON group_devices (device_id);

CREATE TABLE device_profiles (
    id                    TEXT    NOT NULL PRIMARY KEY,
    tenant_id             TEXT    NOT NULL,
    name                  TEXT    NOT NULL,
    device_type           TEXT    NOT NULL,
    heartbeat_secs        INTEGER,
    online_timeout_secs   INTEGER,
    auto_register         INTEGER NOT NULL,
    provision_secret_hash TEXT,
    created_at            INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX devices_by_profile ON devices (profile_id) WHERE profile_id IS NOT NULL;

-- seq orders entries of the same millisecond by append order.
CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    tenant_id     TEXT    NOT NULL,
    user_id       TEXT,
    actor         TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    detail        TEXT    NOT NULL, -- JSON
    at            INTEGER NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, at, seq);
