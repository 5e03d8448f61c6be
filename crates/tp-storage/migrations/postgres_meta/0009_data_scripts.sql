-- Data scripts (tp_core::script::ScriptStore): ThingsPanel's data_scripts, Lua run on a
-- profile's uplink before decoding and on its downlink after encoding. script_type is
-- TP's letter (A telemetry up, B telemetry down, C attributes up, D attributes down),
-- so rows sort in TP's order. Deleting a profile deletes its scripts.

CREATE TABLE data_scripts (
    id          uuid    NOT NULL CONSTRAINT data_scripts_pkey PRIMARY KEY,
    tenant_id   uuid    NOT NULL,
    profile_id  uuid    NOT NULL CONSTRAINT data_scripts_profile_fkey
                        REFERENCES device_profiles (id) ON DELETE CASCADE,
    script_type text    NOT NULL,
    name        text    NOT NULL,
    content     text    NOT NULL,
    enabled     boolean NOT NULL,
    description text,
    created_at  bigint  NOT NULL,
    updated_at  bigint  NOT NULL
);
CREATE INDEX data_scripts_by_tenant ON data_scripts (tenant_id, profile_id, script_type);
-- At most one enabled script of a type per profile (what ingest looks up).
CREATE UNIQUE INDEX data_scripts_one_enabled ON data_scripts (profile_id, script_type)
    WHERE enabled;
