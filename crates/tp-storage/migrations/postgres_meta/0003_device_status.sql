-- Device status history (online/offline transitions with their reason) and indexes
-- for two lookups that scanned tables: provisioning by profile secret and gateway
-- envelope routing by (parent, sub-device address).

-- seq orders transitions of the same millisecond by append order. tenant_id is
-- copied from the device at append time, so tenant-scoped reads need no join.
-- Deleting a device (or its tenant's devices) deletes its history.
CREATE TABLE device_status_history (
    seq       bigserial NOT NULL CONSTRAINT device_status_history_pkey PRIMARY KEY,
    device_id uuid      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tenant_id uuid      NOT NULL,
    online    boolean   NOT NULL,
    reason    text      NOT NULL,
    at        bigint    NOT NULL
);
CREATE INDEX device_status_history_by_device ON device_status_history (device_id, at, seq);

CREATE INDEX device_profiles_by_provision_secret ON device_profiles (provision_secret_hash)
    WHERE provision_secret_hash IS NOT NULL;
-- Replaces devices_by_parent (a prefix of it).
CREATE INDEX devices_by_parent_addr ON devices (parent_id, sub_device_addr)
    WHERE parent_id IS NOT NULL;
DROP INDEX devices_by_parent;
