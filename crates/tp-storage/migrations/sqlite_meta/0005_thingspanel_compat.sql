-- ThingsPanel compatibility: voucher types (BASIC: username + password; ACCESSTOKEN:
-- the username alone, stored as `token:` + its SHA-256), a profile's default voucher
-- type, and what a downlink was published as (a sub-device's gateway topic and
-- envelope).

ALTER TABLE devices ADD COLUMN voucher_type TEXT NOT NULL DEFAULT 'BASIC';
ALTER TABLE device_profiles ADD COLUMN voucher_type TEXT NOT NULL DEFAULT 'BASIC';
ALTER TABLE commands ADD COLUMN published_topic TEXT;
ALTER TABLE commands ADD COLUMN published_payload TEXT;
CREATE INDEX commands_published_topic ON commands (published_topic) WHERE published_topic IS NOT NULL;
