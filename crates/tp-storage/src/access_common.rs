//! Rules and encodings the SQL backends of [`tp_core::AccessStore`] share.

use tp_core::{ApiKey, DeviceType, Error, Result, Role};

/// Column value of a [`DeviceType`].
pub(crate) fn device_type_str(t: DeviceType) -> &'static str {
    match t {
        DeviceType::Direct => "direct",
        DeviceType::Gateway => "gateway",
        DeviceType::SubDevice => "sub_device",
    }
}

/// Parses a column value written by [`device_type_str`].
pub(crate) fn parse_device_type(s: &str) -> Result<DeviceType> {
    Ok(match s {
        "direct" => DeviceType::Direct,
        "gateway" => DeviceType::Gateway,
        "sub_device" => DeviceType::SubDevice,
        other => {
            return Err(Error::invalid(
                "device_type",
                format!("unknown device type {other:?}"),
            ));
        }
    })
}

/// Refuses keys that may never be stored: an API key never acts as `SYS_ADMIN`.
pub(crate) fn check_api_key(key: &ApiKey) -> Result<()> {
    if key.role == Role::SysAdmin {
        return Err(Error::invalid(
            "role",
            "an API key cannot act with the SYS_ADMIN authority",
        ));
    }
    Ok(())
}

/// The `AlreadyExists` value of an API key whose hash is taken (the hash is not echoed).
pub(crate) const KEY_HASH_TAKEN: &str = "with this key hash";

/// `Conflict` for deleting a role still in use.
pub(crate) fn role_in_use(role: impl std::fmt::Display, users: i64, keys: i64) -> Error {
    Error::Conflict(format!(
        "role {role} is assigned to {users} user(s) and {keys} API key(s)"
    ))
}

/// `Conflict` for deleting a profile still in use.
pub(crate) fn profile_in_use(profile: impl std::fmt::Display, devices: i64) -> Error {
    Error::Conflict(format!("profile {profile} is used by {devices} device(s)"))
}

/// `Conflict` for deleting a group that has children.
pub(crate) fn group_has_children(group: impl std::fmt::Display, children: i64) -> Error {
    Error::Conflict(format!("group {group} has {children} child group(s)"))
}

/// `Conflict` for moving a group under itself or one of its descendants.
pub(crate) fn group_cycle(group: impl std::fmt::Display) -> Error {
    Error::Conflict(format!(
        "group {group} cannot move under itself or one of its descendants"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_types_round_trip() {
        for t in [
            DeviceType::Direct,
            DeviceType::Gateway,
            DeviceType::SubDevice,
        ] {
            assert_eq!(parse_device_type(device_type_str(t)).expect("parse"), t);
        }
        assert!(parse_device_type("toaster").is_err());
    }
}
