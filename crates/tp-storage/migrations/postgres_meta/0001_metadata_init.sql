-- Metadata schema (tenants, users, devices, attributes, downlink log) on PostgreSQL.
-- Ids are native uuid; times are Unix milliseconds (bigint), as in ThingsPanel's
-- telemetry tables. Versions 1..999 belong to the metadata store, 1001.. to the
-- time-series store, so both can share one schema.
-- Unique constraints are named: the store maps a violation to the conflicting value
-- by constraint name.

CREATE TABLE tenants (
    id          uuid   NOT NULL CONSTRAINT tenants_pkey PRIMARY KEY,
    name        text   NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX tenants_by_created ON tenants (created_at, id);

CREATE TABLE users (
    id            uuid   NOT NULL CONSTRAINT users_pkey PRIMARY KEY,
    tenant_id     uuid   NOT NULL,
    email         text   NOT NULL CONSTRAINT users_email_key UNIQUE, -- stored lower-case
    name          text   NOT NULL,
    password_hash text   NOT NULL,
    role          text   NOT NULL,
    created_at    bigint NOT NULL
);
CREATE INDEX users_by_tenant ON users (tenant_id, created_at, id);

CREATE TABLE devices (
    id              uuid    NOT NULL CONSTRAINT devices_pkey PRIMARY KEY,
    tenant_id       uuid    NOT NULL,
    name            text    NOT NULL,
    device_number   text    NOT NULL CONSTRAINT devices_device_number_key UNIQUE,
    username        text    NOT NULL CONSTRAINT devices_username_key UNIQUE,
    password_hash   text    NOT NULL,
    profile_id      uuid,
    parent_id       uuid,
    sub_device_addr text,
    label           text,
    enabled         boolean NOT NULL,
    online          boolean NOT NULL,
    last_seen       bigint,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL
);
CREATE INDEX devices_by_tenant ON devices (tenant_id, created_at, id);
CREATE INDEX devices_by_parent ON devices (parent_id) WHERE parent_id IS NOT NULL;

-- Value columns follow tp_core::Value::type_tag: 0 bool / 1 integer in v_int,
-- 2 float in v_real, 3 string / 4 JSON text in v_text.
CREATE TABLE attributes (
    device_id uuid             NOT NULL,
    key       text COLLATE "C" NOT NULL,
    ts        bigint           NOT NULL,
    vtype     smallint         NOT NULL,
    v_int     bigint,
    v_real    double precision,
    v_text    text,
    PRIMARY KEY (device_id, key)
);

CREATE TABLE commands (
    id          uuid   NOT NULL CONSTRAINT commands_pkey PRIMARY KEY,
    tenant_id   uuid   NOT NULL,
    device_id   uuid   NOT NULL,
    message_id  text   NOT NULL,
    kind        text   NOT NULL,
    payload     jsonb  NOT NULL,
    status      text   NOT NULL,
    response    jsonb,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    expires_at  bigint
);
CREATE INDEX commands_by_device ON commands (device_id, created_at);
CREATE INDEX commands_by_message ON commands (device_id, message_id);
