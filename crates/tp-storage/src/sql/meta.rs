//! Placeholder until the metadata store moves here: the device row shared with the
//! access store.

use tp_core::{Device, DeviceCredentials, DeviceId, ProfileId, Result, TenantId};

use super::SqlRow;

macro_rules! device_cols {
    () => {
        "id, tenant_id, name, device_number, username, password_hash, profile_id, parent_id, \
         sub_device_addr, label, enabled, online, last_seen, created_at, updated_at, voucher_type"
    };
}
pub(super) use device_cols;

pub(super) fn device_from_row(row: &impl SqlRow) -> Result<Device> {
    Ok(Device {
        id: DeviceId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        device_number: row.text("device_number")?,
        credentials: DeviceCredentials {
            voucher_type: row.parsed("voucher_type", str::parse)?,
            username: row.text("username")?,
            password_hash: row.text("password_hash")?,
        },
        profile_id: row.opt_uuid("profile_id")?.map(ProfileId),
        parent_id: row.opt_uuid("parent_id")?.map(DeviceId),
        sub_device_addr: row.opt_text("sub_device_addr")?,
        label: row.opt_text("label")?,
        enabled: row.bool("enabled")?,
        online: row.bool("online")?,
        last_seen: row.opt_int("last_seen")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}
