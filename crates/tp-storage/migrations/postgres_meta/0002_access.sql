-- Access control (tp_core::AccessStore) on PostgreSQL: custom roles and their
-- assignment to users, API keys, device groups and their members, device profiles,
-- the audit log. Ids are native uuid; times are Unix milliseconds (bigint).
-- Constraints are named: the store maps violations by constraint name. Composite
-- foreign keys on (tenant_id, ..) make the database itself refuse a role or parent
-- group of another tenant, and refuse deleting a role in use or a group with children.
-- Names sort bytewise (COLLATE "C"), as on SQLite.

CREATE TABLE roles (
    id          uuid               NOT NULL CONSTRAINT roles_pkey PRIMARY KEY,
    tenant_id   uuid               NOT NULL,
    name        text COLLATE "C"   NOT NULL,
    permissions text[]             NOT NULL,
    created_at  bigint             NOT NULL,
    CONSTRAINT roles_tenant_name_key UNIQUE (tenant_id, name),
    CONSTRAINT roles_tenant_id_key UNIQUE (tenant_id, id)
);

-- The custom role of a user, if any (NULL: the built-in role alone).
ALTER TABLE users ADD COLUMN role_id uuid;
ALTER TABLE users ADD CONSTRAINT users_role_fkey
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id);
CREATE INDEX users_by_role ON users (role_id) WHERE role_id IS NOT NULL;

CREATE TABLE api_keys (
    id          uuid   NOT NULL CONSTRAINT api_keys_pkey PRIMARY KEY,
    tenant_id   uuid   NOT NULL,
    name        text   NOT NULL,
    key_hash    text   NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    role        text   NOT NULL,
    role_id     uuid,
    created_by  uuid   NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint,
    CONSTRAINT api_keys_role_fkey
        FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id)
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, id);
CREATE INDEX api_keys_by_role ON api_keys (role_id) WHERE role_id IS NOT NULL;

CREATE TABLE device_groups (
    id          uuid             NOT NULL CONSTRAINT device_groups_pkey PRIMARY KEY,
    tenant_id   uuid             NOT NULL,
    parent_id   uuid,
    name        text COLLATE "C" NOT NULL,
    description text,
    created_at  bigint           NOT NULL,
    CONSTRAINT device_groups_tenant_id_key UNIQUE (tenant_id, id),
    CONSTRAINT device_groups_parent_fkey
        FOREIGN KEY (tenant_id, parent_id) REFERENCES device_groups (tenant_id, id)
);
-- Names are unique among siblings; roots (parent_id NULL) are siblings too.
CREATE UNIQUE INDEX device_groups_sibling_name ON device_groups (tenant_id, parent_id, name)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX device_groups_root_name ON device_groups (tenant_id, name)
    WHERE parent_id IS NULL;
CREATE INDEX device_groups_by_parent ON device_groups (parent_id) WHERE parent_id IS NOT NULL;

-- Deleting a device or a group removes its memberships.
CREATE TABLE group_devices (
    group_id  uuid NOT NULL CONSTRAINT group_devices_group_fkey
        REFERENCES device_groups (id) ON DELETE CASCADE,
    device_id uuid NOT NULL CONSTRAINT group_devices_device_fkey
        REFERENCES devices (id) ON DELETE CASCADE,
    CONSTRAINT group_devices_pkey PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_devices_by_device ON group_devices (device_id);

CREATE TABLE device_profiles (
    id                    uuid             NOT NULL CONSTRAINT device_profiles_pkey PRIMARY KEY,
    tenant_id             uuid             NOT NULL,
    name                  text COLLATE "C" NOT NULL,
    device_type           text             NOT NULL,
    heartbeat_secs        bigint,
    online_timeout_secs   bigint,
    auto_register         boolean          NOT NULL,
    provision_secret_hash text,
    created_at            bigint           NOT NULL,
    CONSTRAINT device_profiles_tenant_name_key UNIQUE (tenant_id, name)
);
CREATE INDEX devices_by_profile ON devices (profile_id) WHERE profile_id IS NOT NULL;

-- seq orders entries of the same millisecond by append order.
CREATE TABLE audit_log (
    seq           bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT audit_log_pkey PRIMARY KEY,
    id            uuid   NOT NULL CONSTRAINT audit_log_id_key UNIQUE,
    tenant_id     uuid   NOT NULL,
    user_id       uuid,
    actor         text   NOT NULL,
    action        text   NOT NULL,
    resource_type text   NOT NULL,
    resource_id   text   NOT NULL,
    detail        jsonb  NOT NULL,
    at            bigint NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, at, seq);
