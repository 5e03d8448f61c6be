-- Data scripts (tp_core::script::ScriptStore): ThingsPanel's data_scripts, Lua run on a
-- profile's uplink before decoding and on its downlink after encoding. script_type is
-- TP's letter (A telemetry up, B telemetry down, C attributes up, D attributes down),
-- so rows sort in TP's order. Deleting a profile deletes its scripts.

CREATE TABLE data_scripts (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    profile_id  TEXT    NOT NULL REFERENCES device_profiles (id) ON DELETE CASCADE,
    script_type TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    enabled     INTEGER NOT NULL,
    description TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX data_scripts_by_tenant ON data_scripts (tenant_id, profile_id, script_type);
-- At most one enabled script of a type per profile (what ingest looks up).
CREATE UNIQUE INDEX data_scripts_one_enabled ON data_scripts (profile_id, script_type)
    WHERE enabled <> 0;
