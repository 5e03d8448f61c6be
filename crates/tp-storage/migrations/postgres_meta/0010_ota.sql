-- OTA upgrades (tp_core::ota::OtaStore) on PostgreSQL: packages, tasks and each
-- task's devices. Ids are native uuid; times are Unix milliseconds (bigint). A
-- package's file lives in the node's data dir (ota/<package id>) when `stored`, else
-- `url` points at it. Details refer to devices without a foreign key: they are
-- history and outlive them. Constraints are named: the store maps violations by name.

CREATE TABLE ota_packages (
    id          uuid             NOT NULL CONSTRAINT ota_packages_pkey PRIMARY KEY,
    tenant_id   uuid             NOT NULL,
    name        text COLLATE "C" NOT NULL,
    version     text COLLATE "C" NOT NULL,
    module      text             NOT NULL,
    profile_id  uuid,
    description text,
    ext_data    jsonb,
    sign_method text,
    sign        text,
    url         text,
    stored      boolean          NOT NULL,
    size        bigint,
    sha256      text,
    md5         text,
    file_name   text,
    created_at  bigint           NOT NULL,
    updated_at  bigint           NOT NULL,
    CONSTRAINT ota_packages_tenant_name_version_key UNIQUE (tenant_id, name, version)
);
CREATE INDEX ota_packages_by_tenant ON ota_packages (tenant_id, created_at);

CREATE TABLE ota_tasks (
    id          uuid   NOT NULL CONSTRAINT ota_tasks_pkey PRIMARY KEY,
    tenant_id   uuid   NOT NULL,
    package_id  uuid   NOT NULL CONSTRAINT ota_tasks_package_fkey REFERENCES ota_packages (id),
    name        text   NOT NULL,
    description text,
    profile_id  uuid,
    created_at  bigint NOT NULL
);
CREATE INDEX ota_tasks_by_tenant ON ota_tasks (tenant_id, created_at);
CREATE INDEX ota_tasks_by_package ON ota_tasks (package_id);

CREATE TABLE ota_task_details (
    task_id     uuid     NOT NULL CONSTRAINT ota_task_details_task_fkey
                         REFERENCES ota_tasks (id) ON DELETE CASCADE,
    tenant_id   uuid     NOT NULL,
    package_id  uuid     NOT NULL,
    device_id   uuid     NOT NULL,
    state       text     NOT NULL,
    progress    smallint,
    step        integer,
    code        integer,
    description text,
    message_id  text,
    created_at  bigint   NOT NULL,
    updated_at  bigint   NOT NULL,
    CONSTRAINT ota_task_details_pkey PRIMARY KEY (task_id, device_id)
);
-- A device's progress report finds its active details; a download its package's.
CREATE INDEX ota_task_details_by_device ON ota_task_details (device_id, created_at);
