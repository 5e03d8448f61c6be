-- Device templates (the thing model): a tenant's typed telemetry, attribute, event
-- and command definitions, kept as one JSON document of tp-core's `Definitions`
-- (identifiers are unique per kind; the store checks that before writing). A
-- device profile refers to at most one template of its own tenant (the tenant
-- match is checked by the store, under the tenant's write lock).
CREATE TABLE device_templates (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    description TEXT,
    validation  TEXT    NOT NULL,
    strict_keys INTEGER NOT NULL,
    definitions TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

ALTER TABLE device_profiles ADD COLUMN template_id TEXT REFERENCES device_templates (id);
CREATE INDEX device_profiles_by_template ON device_profiles (template_id)
    WHERE template_id IS NOT NULL;
