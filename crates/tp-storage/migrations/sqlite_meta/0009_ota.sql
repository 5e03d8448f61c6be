-- OTA upgrades (tp_core::ota::OtaStore): packages, tasks and each task's devices.
-- Ids are hyphenated UUID text; times are Unix milliseconds. A package's file lives
-- in the node's data dir (ota/<package id>) when `stored`, else `url` points at it.
-- Details refer to devices without a foreign key: they are history and outlive them.

CREATE TABLE ota_packages (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    module      TEXT    NOT NULL,
    profile_id  TEXT,
    description TEXT,
    ext_data    TEXT, -- JSON
    sign_method TEXT,
    sign        TEXT,
    url         TEXT,
    stored      INTEGER NOT NULL,
    size        INTEGER,
    sha256      TEXT,
    md5         TEXT,
    file_name   TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name, version)
);
CREATE INDEX ota_packages_by_tenant ON ota_packages (tenant_id, created_at);

CREATE TABLE ota_tasks (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    package_id  TEXT    NOT NULL REFERENCES ota_packages (id),
    name        TEXT    NOT NULL,
    description TEXT,
    profile_id  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX ota_tasks_by_tenant ON ota_tasks (tenant_id, created_at);
CREATE INDEX ota_tasks_by_package ON ota_tasks (package_id);

CREATE TABLE ota_task_details (
    task_id     TEXT    NOT NULL REFERENCES ota_tasks (id) ON DELETE CASCADE,
    tenant_id   TEXT    NOT NULL,
    package_id  TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    progress    INTEGER,
    step        INTEGER,
    code        INTEGER,
    description TEXT,
    message_id  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (task_id, device_id)
);
-- A device's progress report finds its active details; a download its package's.
CREATE INDEX ota_task_details_by_device ON ota_task_details (device_id, created_at);
