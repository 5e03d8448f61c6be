-- Metadata schema (tenants, users, devices, attributes, downlink log).
-- Ids are hyphenated UUID text; times are Unix milliseconds.
-- Versions 1..999 belong to the metadata store, 1001.. to the time-series store,
-- so both can share one database file.

CREATE TABLE tenants (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX tenants_by_created ON tenants (created_at, id);

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    email         TEXT    NOT NULL UNIQUE, -- stored lower-case
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX users_by_tenant ON users (tenant_id, created_at, id);

CREATE TABLE devices (
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    device_number   TEXT    NOT NULL UNIQUE,
    username        TEXT    NOT NULL UNIQUE,
    password_hash   TEXT    NOT NULL,
    profile_id      TEXT,
    parent_id       TEXT,
    sub_device_addr TEXT,
    label           TEXT,
    enabled         INTEGER NOT NULL,
    online          INTEGER NOT NULL,
    last_seen       INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX devices_by_tenant ON devices (tenant_id, created_at, id);
CREATE INDEX devices_by_parent ON devices (parent_id) WHERE parent_id IS NOT NULL;

-- Value columns follow tp_core::Value::type_tag: 0 bool / 1 integer in v_int,
-- 2 float in v_real, 3 string / 4 JSON text in v_text.
CREATE TABLE attributes (
    device_id TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    vtype     INTEGER NOT NULL,
    v_int     INTEGER,
    v_real    REAL,
    v_text    TEXT,
    PRIMARY KEY (device_id, key)
) WITHOUT ROWID;

CREATE TABLE commands (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    response    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX commands_by_device ON commands (device_id, created_at);
CREATE INDEX commands_by_message ON commands (device_id, message_id);
