//! Device self-registration with a profile secret (ThingsPanel's
//! one-type-one-secret): one implementation for the REST endpoint and the MQTT
//! `devices/register` topic, so both accept exactly the same requests.

use crate::protocol::MAX_GATEWAY_DEPTH;
use crate::{
    AccessStore, Device, DeviceCredentials, DeviceId, Error, IssuedCredentials, MetadataStore,
    Result, TenantId, hash_secret, validate_device_number,
};

/// What a registering device (or a gateway registering one behind it) asks for.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The provisioning secret of a profile that allows self-registration.
    pub profile_secret: String,
    /// The new device's number, unique installation-wide.
    pub device_number: String,
    /// Display name; the device number when absent.
    pub name: Option<String>,
    /// Register the device behind this gateway, at `sub_device_addr`.
    pub parent: Option<DeviceId>,
    /// The new device's address under `parent`.
    pub sub_device_addr: Option<String>,
    /// Only a profile of this tenant (a device registering others over MQTT stays in
    /// its own tenant; the unauthenticated REST endpoint has no tenant).
    pub tenant: Option<TenantId>,
}

/// Creates the device a [`Registration`] asks for, in the profile its secret
/// belongs to and with that profile's voucher type, and returns it with the
/// credentials to show once.
///
/// An unknown secret, a profile without self-registration or one of another tenant
/// is [`Error::Unauthenticated`] (the same answer for all three, so the secret
/// cannot be probed); bad fields are [`Error::Invalid`] naming them; a taken number
/// or address is [`Error::AlreadyExists`].
pub async fn register_device(
    metadata: &dyn MetadataStore,
    profiles: &dyn AccessStore,
    registration: Registration,
) -> Result<(Device, IssuedCredentials)> {
    let refused = || Error::Unauthenticated("invalid provisioning secret".to_owned());
    if registration.profile_secret.is_empty() {
        return Err(refused());
    }
    let Some(profile) = profiles
        .get_profile_by_provision_secret(&hash_secret(&registration.profile_secret))
        .await?
    else {
        return Err(refused());
    };
    if !profile.auto_register
        || registration
            .tenant
            .is_some_and(|tenant| tenant != profile.tenant_id)
    {
        return Err(refused());
    }
    validate_device_number(&registration.device_number)?;
    let name = registration
        .name
        .as_deref()
        .unwrap_or(&registration.device_number)
        .trim()
        .to_owned();
    if name.is_empty() || name.chars().count() > 255 {
        return Err(Error::invalid("name", "must be 1 to 255 characters"));
    }
    let (mut device, _) = Device::new(
        profile.tenant_id,
        name,
        Some(registration.device_number.clone()),
    );
    let (credentials, issued) = DeviceCredentials::generate_for(profile.voucher_type);
    device.credentials = credentials;
    device.profile_id = Some(profile.id);
    match (registration.parent, registration.sub_device_addr) {
        (Some(parent), Some(addr)) => {
            if addr.is_empty() || addr.chars().count() > 255 {
                return Err(Error::invalid(
                    "sub_device_addr",
                    "must be 1 to 255 characters",
                ));
            }
            check_gateway_depth(metadata, profile.tenant_id, parent).await?;
            if metadata.get_sub_device(parent, &addr).await?.is_some() {
                return Err(Error::AlreadyExists {
                    entity: "sub_device_addr",
                    id: addr,
                });
            }
            device.parent_id = Some(parent);
            device.sub_device_addr = Some(addr);
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::invalid(
                "sub_device_addr",
                "a device registered behind a gateway needs an address",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "sub_device_addr",
                "only a device registered behind a gateway has an address",
            ));
        }
    }
    metadata.create_device(&device).await?;
    Ok((device, issued))
}

/// `parent` is a device of `tenant` with room for one more level below it.
async fn check_gateway_depth(
    metadata: &dyn MetadataStore,
    tenant: TenantId,
    parent: DeviceId,
) -> Result<()> {
    let mut cursor = Some(parent);
    let mut depth = 0;
    while let Some(id) = cursor {
        depth += 1;
        if depth > MAX_GATEWAY_DEPTH {
            return Err(Error::invalid(
                "parent_device_number",
                format!("gateways nest at most {MAX_GATEWAY_DEPTH} levels"),
            ));
        }
        let Some(device) = metadata.get_device_by_id(id).await? else {
            return Err(Error::not_found("device", id));
        };
        if device.tenant_id != tenant {
            return Err(Error::not_found("device", id));
        }
        cursor = device.parent_id;
    }
    Ok(())
}
