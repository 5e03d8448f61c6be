-- Device templates (the thing model): a tenant's typed telemetry, attribute, event
-- and command definitions, kept as one jsonb document of tp-core's `Definitions`
-- (identifiers are unique per kind; the store checks that before writing). A
-- device profile refers to at most one template of its own tenant.
CREATE TABLE device_templates (
    id          uuid             NOT NULL CONSTRAINT device_templates_pkey PRIMARY KEY,
    tenant_id   uuid             NOT NULL,
    name        text COLLATE "C" NOT NULL,
    description text,
    validation  text             NOT NULL,
    strict_keys boolean          NOT NULL,
    definitions jsonb            NOT NULL,
    created_at  bigint           NOT NULL,
    updated_at  bigint           NOT NULL,
    CONSTRAINT device_templates_tenant_name_key UNIQUE (tenant_id, name),
    CONSTRAINT device_templates_tenant_id_key UNIQUE (tenant_id, id)
);

ALTER TABLE device_profiles ADD COLUMN template_id uuid;
ALTER TABLE device_profiles ADD CONSTRAINT device_profiles_template_fkey
    FOREIGN KEY (tenant_id, template_id) REFERENCES device_templates (tenant_id, id);
CREATE INDEX device_profiles_by_template ON device_profiles (template_id)
    WHERE template_id IS NOT NULL;
