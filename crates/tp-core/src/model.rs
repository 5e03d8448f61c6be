//! The domain model: tenants, users, devices, profiles, typed values, telemetry,
//! attributes, events and the downlink (command) log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{Error, Result};

/// Milliseconds since the Unix epoch (UTC). Every timestamp in the platform uses this unit.
pub type Timestamp = i64;

/// The current wall-clock time in milliseconds.
pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $entity:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random identifier.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid(concat!($entity, "_id"), e.to_string()))
            }
        }
    };
}

id_type!(
    /// Identifies a tenant: the unit of isolation between customers.
    TenantId,
    "tenant"
);
id_type!(
    /// Identifies a user.
    UserId,
    "user"
);
id_type!(
    /// Internal device identifier (the public one is [`Device::device_number`]).
    DeviceId,
    "device"
);
id_type!(
    /// Identifies a device profile (ThingsPanel's "device configuration").
    ProfileId,
    "profile"
);
id_type!(
    /// Identifies a downlink log row.
    CommandId,
    "command"
);
id_type!(
    /// Identifies a custom role.
    RoleId,
    "role"
);
id_type!(
    /// Identifies an API key.
    ApiKeyId,
    "api_key"
);
id_type!(
    /// Identifies a device group.
    GroupId,
    "group"
);
id_type!(
    /// Identifies an audit log entry.
    AuditId,
    "audit"
);
id_type!(
    /// Identifies a dashboard (see [`crate::dashboard`]).
    DashboardId,
    "dashboard"
);
id_type!(
    /// Identifies a data script (ThingsPanel's `data_script`, see [`crate::script`]).
    ScriptId,
    "script"
);
id_type!(
    /// Identifies a rule (ThingsPanel's scene automation).
    RuleId,
    "rule"
);
id_type!(
    /// Identifies a manual scene (a named list of actions run from the API).
    SceneId,
    "scene"
);
id_type!(
    /// Identifies an alarm.
    AlarmId,
    "alarm"
);
id_type!(
    /// Identifies an OTA upgrade package.
    OtaPackageId,
    "ota_package"
);
id_type!(
    /// Identifies an OTA upgrade task.
    OtaTaskId,
    "ota_task"
);
id_type!(
    /// Identifies a notification channel.
    ChannelId,
    "channel"
);
id_type!(
    /// Identifies one notification delivery record.
    NotificationId,
    "notification"
);

/// A customer of the installation. Every resource belongs to exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Identifier.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Built-in authorities, named as in ThingsPanel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Operates the installation: tenants and their admins.
    SysAdmin,
    /// Manages one tenant: devices, users, rules.
    TenantAdmin,
    /// Uses one tenant's devices.
    TenantUser,
}

impl Role {
    /// The wire name (`"SYS_ADMIN"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SysAdmin => "SYS_ADMIN",
            Role::TenantAdmin => "TENANT_ADMIN",
            Role::TenantUser => "TENANT_USER",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "SYS_ADMIN" => Ok(Role::SysAdmin),
            "TENANT_ADMIN" => Ok(Role::TenantAdmin),
            "TENANT_USER" => Ok(Role::TenantUser),
            other => Err(Error::invalid("role", format!("unknown role {other:?}"))),
        }
    }
}

/// A person or integration that signs in to the API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Identifier.
    pub id: UserId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Login name; unique across the installation, stored lower-case.
    pub email: String,
    /// Display name.
    pub name: String,
    /// PHC string of the argon2 hash of the password.
    pub password_hash: String,
    /// Authority.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
}

impl fmt::Debug for User {
    // The hash stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A tenant-defined role: a name and a set of named permissions such as
/// `device:read`, `device:write`, `device:command`, `alarm:ack`, `user:manage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    /// Identifier.
    pub id: RoleId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Unique per tenant.
    pub name: String,
    /// Granted permissions, sorted and without duplicates.
    pub permissions: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A key for integrations (`X-API-Key`), scoped to a tenant and a role. Only a
/// hash of the key is stored; the key itself is shown once at creation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Identifier.
    pub id: ApiKeyId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// [`hash_secret`] of the key; unique.
    pub key_hash: String,
    /// Built-in authority the key acts with (never `SYS_ADMIN`).
    pub role: Role,
    /// Custom role narrowing the permissions, if any.
    pub role_id: Option<RoleId>,
    /// Who created it.
    pub created_by: UserId,
    /// Creation time.
    pub created_at: Timestamp,
    /// Refused after this time.
    pub expires_at: Option<Timestamp>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A node of a tenant's device-group tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroup {
    /// Identifier.
    pub id: GroupId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Parent group; `None` for a root.
    pub parent_id: Option<GroupId>,
    /// Display name, unique among siblings.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Who changed what: one entry of a tenant's audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Identifier.
    pub id: AuditId,
    /// Tenant whose resource changed.
    pub tenant_id: TenantId,
    /// Acting user (`None` for API keys and the system).
    pub user_id: Option<UserId>,
    /// Acting principal as shown to people: an email, `api-key:<name>`, `system`.
    pub actor: String,
    /// What was done, e.g. `device.create`, `user.delete`.
    pub action: String,
    /// Kind of resource, e.g. `device`.
    pub resource_type: String,
    /// Identifier of the resource.
    pub resource_id: String,
    /// Extra facts (never secrets).
    pub detail: serde_json::Value,
    /// When.
    pub at: Timestamp,
}

/// What a profile's devices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    /// Connects on its own.
    #[default]
    Direct,
    /// Connects on behalf of sub-devices.
    Gateway,
    /// Reached through a gateway.
    SubDevice,
}

/// Shared configuration of a class of devices (ThingsPanel's `device_configs`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Identifier.
    pub id: ProfileId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Direct device, gateway or sub-device.
    pub device_type: DeviceType,
    /// Heartbeat mode: offline after this many seconds without any message.
    pub heartbeat_secs: Option<u32>,
    /// Online-timeout mode: connection state honoured, plus offline after this silence.
    pub online_timeout_secs: Option<u32>,
    /// Whether devices may self-register with the profile secret.
    pub auto_register: bool,
    /// Hash of the one-type-one-secret provisioning secret.
    pub provision_secret_hash: Option<String>,
    /// How devices created in this profile authenticate unless told otherwise.
    pub voucher_type: VoucherType,
    /// The device template (thing model) of the profile's devices, if any.
    pub template_id: Option<crate::thing_model::TemplateId>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl DeviceProfile {
    /// A new profile of direct devices named `name` in `tenant_id`, created now: no
    /// heartbeat or online timeout (connection state decides), no self-registration,
    /// password vouchers, no template. Set the fields that differ.
    pub fn new(tenant_id: TenantId, name: impl Into<String>) -> Self {
        Self {
            id: ProfileId::new(),
            tenant_id,
            name: name.into(),
            device_type: DeviceType::Direct,
            heartbeat_secs: None,
            online_timeout_secs: None,
            auto_register: false,
            provision_secret_hash: None,
            voucher_type: VoucherType::default(),
            template_id: None,
            created_at: now_ms(),
        }
    }
}

impl fmt::Debug for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceProfile")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .finish_non_exhaustive()
    }
}

/// How a device authenticates: ThingsPanel's voucher types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VoucherType {
    /// A username and a password (ThingsPanel's `BASIC`).
    #[default]
    #[serde(rename = "BASIC")]
    Basic,
    /// A unique, high-entropy token sent as the username alone; the password is
    /// empty or ignored (ThingsPanel's `ACCESSTOKEN`, the default of its clients).
    #[serde(rename = "ACCESSTOKEN")]
    AccessToken,
}

impl VoucherType {
    /// The stored and API form (`BASIC`, `ACCESSTOKEN`).
    pub fn as_str(self) -> &'static str {
        match self {
            VoucherType::Basic => "BASIC",
            VoucherType::AccessToken => "ACCESSTOKEN",
        }
    }
}

impl FromStr for VoucherType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "BASIC" => Ok(VoucherType::Basic),
            "ACCESSTOKEN" => Ok(VoucherType::AccessToken),
            other => Err(Error::invalid(
                "voucher_type",
                format!("{other:?} is not BASIC or ACCESSTOKEN"),
            )),
        }
    }
}

/// Shortest access token a user may choose: ThingsPanel's are 22 characters.
pub const MIN_ACCESS_TOKEN_LEN: usize = 16;
/// Shortest device password a user may choose: ThingsPanel's are 7 characters.
pub const MIN_DEVICE_PASSWORD_LEN: usize = 6;
/// Longest device username, password or access token.
pub const MAX_DEVICE_SECRET_LEN: usize = 255;

/// A device's login ("voucher"). No secret is kept in the clear: a `BASIC` device's
/// password and an `ACCESSTOKEN` device's token are stored as SHA-256 digests.
/// Generated secrets are random 128-bit values, so a fast hash is enough and keeps
/// the connect path cheap, while a leaked database does not leak usable credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// `BASIC` or `ACCESSTOKEN`.
    #[serde(default)]
    pub voucher_type: VoucherType,
    /// The key a login is looked up by, unique across the installation: a `BASIC`
    /// device's username; for an `ACCESSTOKEN` device [`access_token_key`] of its token.
    pub username: String,
    /// Hex SHA-256 of a `BASIC` device's password; empty for an access token.
    pub password_hash: String,
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DeviceCredentials");
        d.field("voucher_type", &self.voucher_type);
        if self.voucher_type == VoucherType::Basic {
            d.field("username", &self.username);
        }
        d.finish_non_exhaustive()
    }
}

/// A device secret as shown once, at creation or rotation: what a device puts in
/// its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    /// `BASIC` or `ACCESSTOKEN`.
    pub voucher_type: VoucherType,
    /// MQTT username: a `BASIC` username, or the access token itself.
    pub username: String,
    /// MQTT password of a `BASIC` device; `None` for an access token.
    pub password: Option<String>,
}

/// The lookup key of an access token: its digest, marked so that it can never equal
/// a `BASIC` username (those cannot contain `:`).
pub fn access_token_key(token: &str) -> String {
    format!("token:{}", hash_secret(token))
}

impl DeviceCredentials {
    /// New random `BASIC` credentials; returns them with the plaintext password,
    /// which is shown to the caller once and never stored.
    pub fn generate() -> (Self, String) {
        let username = random_token(12);
        let password = random_token(16);
        (Self::from_plain(username, &password), password)
    }

    /// New random credentials of `voucher_type`, with what the device is to send.
    pub fn generate_for(voucher_type: VoucherType) -> (Self, IssuedCredentials) {
        match voucher_type {
            VoucherType::Basic => {
                let (credentials, password) = Self::generate();
                let issued = IssuedCredentials {
                    voucher_type,
                    username: credentials.username.clone(),
                    password: Some(password),
                };
                (credentials, issued)
            }
            VoucherType::AccessToken => {
                let token = random_token(16);
                let issued = IssuedCredentials {
                    voucher_type,
                    username: token.clone(),
                    password: None,
                };
                (Self::access_token(&token), issued)
            }
        }
    }

    /// `BASIC` credentials for a given username and plaintext password.
    pub fn from_plain(username: String, password: &str) -> Self {
        Self {
            voucher_type: VoucherType::Basic,
            username,
            password_hash: hash_secret(password),
        }
    }

    /// `ACCESSTOKEN` credentials for a given token.
    pub fn access_token(token: &str) -> Self {
        Self {
            voucher_type: VoucherType::AccessToken,
            username: access_token_key(token),
            password_hash: String::new(),
        }
    }

    /// Credentials a user chose (or imported from another platform), checked:
    /// a `BASIC` username of 1 to 255 printable characters without `:` and a password
    /// of at least [`MIN_DEVICE_PASSWORD_LEN`]; an access token of at least
    /// [`MIN_ACCESS_TOKEN_LEN`] printable characters without `:`. The error names the
    /// field (`username`, `password`, `access_token`).
    pub fn chosen(
        voucher_type: VoucherType,
        username: &str,
        password: Option<&str>,
    ) -> Result<(Self, IssuedCredentials)> {
        let field = match voucher_type {
            VoucherType::Basic => "username",
            VoucherType::AccessToken => "access_token",
        };
        let min = match voucher_type {
            VoucherType::Basic => 1,
            VoucherType::AccessToken => MIN_ACCESS_TOKEN_LEN,
        };
        check_secret(field, username, min)?;
        let issued = IssuedCredentials {
            voucher_type,
            username: username.to_owned(),
            password: password.map(str::to_owned),
        };
        match voucher_type {
            VoucherType::Basic => {
                let Some(password) = password else {
                    return Err(Error::invalid(
                        "password",
                        "a BASIC voucher needs a password",
                    ));
                };
                check_secret("password", password, MIN_DEVICE_PASSWORD_LEN)?;
                Ok((Self::from_plain(username.to_owned(), password), issued))
            }
            VoucherType::AccessToken => {
                if password.is_some_and(|p| !p.is_empty()) {
                    return Err(Error::invalid(
                        "password",
                        "an ACCESSTOKEN voucher has no password",
                    ));
                }
                Ok((
                    Self::access_token(username),
                    IssuedCredentials {
                        password: None,
                        ..issued
                    },
                ))
            }
        }
    }

    /// The username a `BASIC` device connects with; `None` for an access token,
    /// which is only shown when it is issued.
    pub fn visible_username(&self) -> Option<&str> {
        (self.voucher_type == VoucherType::Basic).then_some(self.username.as_str())
    }

    /// Constant-time check of a presented password; an access token's password is
    /// ignored.
    pub fn verify(&self, password: &str) -> bool {
        if self.voucher_type == VoucherType::AccessToken {
            return true;
        }
        let presented = hash_secret(password);
        presented
            .as_bytes()
            .ct_eq(self.password_hash.as_bytes())
            .into()
    }
}

fn check_secret(field: &'static str, value: &str, min: usize) -> Result<()> {
    let len = value.chars().count();
    if len < min || len > MAX_DEVICE_SECRET_LEN {
        return Err(Error::invalid(
            field,
            format!("must be {min} to {MAX_DEVICE_SECRET_LEN} characters"),
        ));
    }
    if field != "password" && value.contains(':') {
        // HTTP Basic authentication cannot carry a username with ':'.
        return Err(Error::invalid(field, "must not contain ':'"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Hex SHA-256 of a high-entropy secret (device passwords, API keys, profile secrets).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `n` random bytes as lower-case hex.
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// A device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Internal identifier.
    pub id: DeviceId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Public identity used in downlink topics; unique across the installation.
    pub device_number: String,
    /// MQTT login.
    pub credentials: DeviceCredentials,
    /// Profile, if any.
    pub profile_id: Option<ProfileId>,
    /// Gateway this sub-device sits behind.
    pub parent_id: Option<DeviceId>,
    /// Address of this sub-device under its gateway.
    pub sub_device_addr: Option<String>,
    /// Free-form label.
    pub label: Option<String>,
    /// Disabled devices cannot connect.
    pub enabled: bool,
    /// Last known connection state.
    pub online: bool,
    /// Time of the last message or state change.
    pub last_seen: Option<Timestamp>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last metadata change.
    pub updated_at: Timestamp,
}

impl Device {
    /// A new enabled, offline device with fresh credentials; returns the plaintext password too.
    pub fn new(tenant_id: TenantId, name: String, device_number: Option<String>) -> (Self, String) {
        let (credentials, password) = DeviceCredentials::generate();
        let now = now_ms();
        let id = DeviceId::new();
        let device_number = device_number.unwrap_or_else(|| id.0.simple().to_string());
        (
            Self {
                id,
                tenant_id,
                name,
                device_number,
                credentials,
                profile_id: None,
                parent_id: None,
                sub_device_addr: None,
                label: None,
                enabled: true,
                online: false,
                last_seen: None,
                created_at: now,
                updated_at: now,
            },
            password,
        )
    }
}

/// Checks that a device number can appear as one MQTT topic level.
pub fn validate_device_number(number: &str) -> Result<()> {
    if number.is_empty() || number.chars().count() > 100 {
        return Err(Error::invalid(
            "device_number",
            "must be 1 to 100 characters",
        ));
    }
    if number
        .chars()
        .any(|c| matches!(c, '/' | '+' | '#' | '$') || c.is_control() || c.is_whitespace())
    {
        return Err(Error::invalid(
            "device_number",
            "must not contain '/', '+', '#', '$', spaces or control characters",
        ));
    }
    Ok(())
}

/// A typed value of telemetry or an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `true` / `false`.
    Bool(bool),
    /// A JSON number without fraction that fits `i64`.
    Integer(i64),
    /// Any other JSON number.
    Float(f64),
    /// A JSON string.
    String(String),
    /// A JSON object or array, kept as is.
    Json(serde_json::Value),
}

impl Value {
    /// Classifies a JSON value. `null` is not a value and yields `None`.
    pub fn from_json(v: serde_json::Value) -> Option<Self> {
        Some(match v {
            serde_json::Value::Null => return None,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Float(n.as_f64()?),
            },
            serde_json::Value::String(s) => Value::String(s),
            other => Value::Json(other),
        })
    }

    /// The JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Json(j) => j.clone(),
        }
    }

    /// Numeric view used by aggregations: integers and floats, booleans as 0/1.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Integer(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Type tag used by SQL backends (`0` bool, `1` integer, `2` float, `3` string, `4` json).
    pub fn type_tag(&self) -> i64 {
        match self {
            Value::Bool(_) => 0,
            Value::Integer(_) => 1,
            Value::Float(_) => 2,
            Value::String(_) => 3,
            Value::Json(_) => 4,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Value::from_json(v).ok_or_else(|| serde::de::Error::custom("null is not a value"))
    }
}

/// One telemetry sample of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryPoint {
    /// Device.
    pub device_id: DeviceId,
    /// Key, e.g. `"temperature"`.
    pub key: String,
    /// Sample time (device time when the device sent one, else server time).
    pub ts: Timestamp,
    /// Value.
    pub value: Value,
}

/// A keyed value at a time: the row shape of latest values, history, aggregates and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Time (for aggregates: the start of the bucket).
    pub ts: Timestamp,
    /// Value.
    pub value: Value,
}

/// An event reported by a device (`devices/event/{message_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Device.
    pub device_id: DeviceId,
    /// Server receive time.
    pub ts: Timestamp,
    /// The message id from the topic.
    pub message_id: String,
    /// Event identifier (`method`).
    pub method: String,
    /// Event parameters.
    pub params: serde_json::Value,
}

/// What a downlink log row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// `devices/command/{device_number}/{message_id}`.
    Command,
    /// `devices/attributes/set/{device_number}/{message_id}`.
    AttributeSet,
    /// `devices/attributes/get/{device_number}`.
    AttributeGet,
    /// `devices/telemetry/control/{device_number}`.
    TelemetryControl,
    /// `ota/devices/inform/{device_number}`: an OTA task's inform ([`crate::ota`]).
    OtaInform,
}

/// Lifecycle of a downlink: pending -> sent -> replied, or failed / expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Logged, not yet handed to the device.
    Pending,
    /// Published to the device.
    Sent,
    /// The device answered with success.
    Replied,
    /// Delivery failed or the device answered with an error.
    Failed,
    /// Not delivered before its expiry.
    Expired,
}

impl CommandStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::Sent => "sent",
            CommandStatus::Replied => "replied",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
        }
    }
}

impl FromStr for CommandStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => CommandStatus::Pending,
            "sent" => CommandStatus::Sent,
            "replied" => CommandStatus::Replied,
            "failed" => CommandStatus::Failed,
            "expired" => CommandStatus::Expired,
            other => return Err(Error::invalid("status", format!("unknown {other:?}"))),
        })
    }
}

impl CommandKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Command => "command",
            CommandKind::AttributeSet => "attribute_set",
            CommandKind::AttributeGet => "attribute_get",
            CommandKind::TelemetryControl => "telemetry_control",
            CommandKind::OtaInform => "ota_inform",
        }
    }
}

impl FromStr for CommandKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "command" => CommandKind::Command,
            "attribute_set" => CommandKind::AttributeSet,
            "attribute_get" => CommandKind::AttributeGet,
            "telemetry_control" => CommandKind::TelemetryControl,
            "ota_inform" => CommandKind::OtaInform,
            other => return Err(Error::invalid("kind", format!("unknown {other:?}"))),
        })
    }
}

/// One downlink and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandLog {
    /// Identifier.
    pub id: CommandId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Target device.
    pub device_id: DeviceId,
    /// Correlates the device's response.
    pub message_id: String,
    /// What was sent.
    pub kind: CommandKind,
    /// The payload sent to the device.
    pub payload: serde_json::Value,
    /// Where it stands.
    pub status: CommandStatus,
    /// The device's response object, once it replied.
    pub response: Option<serde_json::Value>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last status change.
    pub updated_at: Timestamp,
    /// Give up delivering after this time.
    pub expires_at: Option<Timestamp>,
    /// What went out on the wire the last time it was sent: for a device behind a
    /// gateway, the gateway's topic and the envelope, so the log shows which
    /// gateways and addresses the message passed through.
    pub published: Option<PublishedDownlink>,
}

/// A downlink as it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedDownlink {
    /// Full MQTT topic.
    pub topic: String,
    /// Payload as published (for a sub-device, the gateway envelope).
    pub payload: serde_json::Value,
}

/// Offset/limit paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return at most.
    pub limit: u64,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: 100,
        }
    }
}

/// One page of results and the total count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paged<T> {
    /// The page.
    pub items: Vec<T>,
    /// All matching rows.
    pub total: u64,
}

/// Filter for listing devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Case-insensitive substring of name or device number.
    pub search: Option<String>,
    /// Only devices currently online (`Some(true)`) or offline (`Some(false)`).
    pub online: Option<bool>,
    /// Paging.
    pub page: Page,
}

/// Why a device went online or offline (ThingsPanel keeps the same history in
/// `device_status_history`; the reason tells a dropped connection from a silent one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    /// An MQTT connection was accepted.
    Connect,
    /// The device sent MQTT DISCONNECT.
    Disconnect,
    /// The connection ended without DISCONNECT (socket error, keepalive expired).
    ConnectionLost,
    /// A message arrived while the device was offline (HTTP, CoAP, gateway data, or
    /// MQTT after a silence timeout).
    Activity,
    /// Heartbeat mode: no message within the profile's `heartbeat_secs`.
    HeartbeatTimeout,
    /// Online-timeout mode: no message within the profile's `online_timeout_secs`.
    OnlineTimeout,
    /// No profile window: no message within the broker's default window for
    /// devices without an MQTT connection (HTTP, CoAP, sub-devices).
    InactivityTimeout,
    /// The broker node holding the device's connection stopped renewing its lease
    /// (killed, crashed, cut off): another node marked its devices offline.
    NodeLost,
}

impl StatusReason {
    /// Every reason, in declaration order (for documentation and exhaustive tests).
    pub const ALL: [StatusReason; 8] = [
        StatusReason::Connect,
        StatusReason::Disconnect,
        StatusReason::ConnectionLost,
        StatusReason::Activity,
        StatusReason::HeartbeatTimeout,
        StatusReason::OnlineTimeout,
        StatusReason::InactivityTimeout,
        StatusReason::NodeLost,
    ];

    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::Connect => "connect",
            StatusReason::Disconnect => "disconnect",
            StatusReason::ConnectionLost => "connection_lost",
            StatusReason::Activity => "activity",
            StatusReason::HeartbeatTimeout => "heartbeat_timeout",
            StatusReason::OnlineTimeout => "online_timeout",
            StatusReason::InactivityTimeout => "inactivity_timeout",
            StatusReason::NodeLost => "node_lost",
        }
    }
}

impl FromStr for StatusReason {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "connect" => StatusReason::Connect,
            "disconnect" => StatusReason::Disconnect,
            "connection_lost" => StatusReason::ConnectionLost,
            "activity" => StatusReason::Activity,
            "heartbeat_timeout" => StatusReason::HeartbeatTimeout,
            "online_timeout" => StatusReason::OnlineTimeout,
            "inactivity_timeout" => StatusReason::InactivityTimeout,
            "node_lost" => StatusReason::NodeLost,
            other => return Err(Error::invalid("reason", format!("unknown {other:?}"))),
        })
    }
}

impl fmt::Display for StatusReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One online/offline transition of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatusEvent {
    /// The device.
    pub device_id: DeviceId,
    /// The state it went to.
    pub online: bool,
    /// Why.
    pub reason: StatusReason,
    /// When (ms).
    pub at: Timestamp,
}

/// Which part of a device's status history to read: `[start, end)` (either bound
/// optional), newest first, paged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusHistoryQuery {
    /// Inclusive lower bound of `at` (ms).
    pub start: Option<Timestamp>,
    /// Exclusive upper bound of `at` (ms).
    pub end: Option<Timestamp>,
    /// Paging.
    pub page: Page,
}

/// Cache key under which a device row is cached for the MQTT connect path. Whoever
/// deletes, disables or re-keys a device deletes this key for its old username.
pub fn credential_cache_key(username: &str) -> String {
    format!("device:cred:{username}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voucher_types_issue_and_check_their_secrets() {
        let (c, issued) = DeviceCredentials::generate_for(VoucherType::AccessToken);
        assert_eq!(c.voucher_type, VoucherType::AccessToken);
        assert_eq!(issued.password, None);
        assert_eq!(c.username, access_token_key(&issued.username));
        assert!(
            !format!("{c:?}").contains(&c.username),
            "digest kept out of Debug"
        );
        assert!(c.verify("") && c.verify("ignored"));
        assert_eq!(c.visible_username(), None);
        let (b, issued) = DeviceCredentials::generate_for(VoucherType::Basic);
        assert_eq!(b.visible_username(), Some(issued.username.as_str()));
        assert!(b.verify(issued.password.as_deref().unwrap()) && !b.verify(""));

        let (kept, _) =
            DeviceCredentials::chosen(VoucherType::AccessToken, "5a3c9e0f-7b21-4d6e-8", None)
                .unwrap();
        assert_eq!(
            kept,
            DeviceCredentials::access_token("5a3c9e0f-7b21-4d6e-8")
        );
        for (t, user, pass, field) in [
            (VoucherType::AccessToken, "short", None, "access_token"),
            (
                VoucherType::AccessToken,
                "0123456789abcdef:x",
                None,
                "access_token",
            ),
            (
                VoucherType::AccessToken,
                "0123456789abcdefgh",
                Some("pw"),
                "password",
            ),
            (VoucherType::Basic, "", Some("secret-1"), "username"),
            (VoucherType::Basic, "a:b", Some("secret-1"), "username"),
            (VoucherType::Basic, "user", None, "password"),
            (VoucherType::Basic, "user", Some("12345"), "password"),
            (
                VoucherType::Basic,
                "us\u{7}er",
                Some("secret-1"),
                "username",
            ),
        ] {
            match DeviceCredentials::chosen(t, user, pass) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{user:?}"),
                other => panic!("{user:?}/{pass:?}: {other:?}"),
            }
        }
        assert_eq!(
            "ACCESSTOKEN".parse::<VoucherType>().unwrap(),
            VoucherType::AccessToken
        );
        assert!("token".parse::<VoucherType>().is_err());
    }

    #[test]
    fn credentials_verify_only_the_right_password() {
        let (c, pw) = DeviceCredentials::generate();
        assert!(c.verify(&pw));
        assert!(!c.verify("wrong"));
        assert!(!format!("{c:?}").contains(&c.password_hash));
    }

    #[test]
    fn values_classify_json() {
        assert_eq!(
            Value::from_json(serde_json::json!(3)),
            Some(Value::Integer(3))
        );
        assert_eq!(
            Value::from_json(serde_json::json!(3.5)),
            Some(Value::Float(3.5))
        );
        assert_eq!(Value::from_json(serde_json::json!(null)), None);
        assert_eq!(
            Value::from_json(serde_json::json!({"a":1})),
            Some(Value::Json(serde_json::json!({"a":1})))
        );
    }

    #[test]
    fn device_numbers_must_be_one_topic_level() {
        assert!(validate_device_number("dev-1").is_ok());
        for bad in ["", "a/b", "a+", "#", "$sys", "a b"] {
            assert!(validate_device_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_status_reason_round_trips_through_its_name() {
        for reason in StatusReason::ALL {
            assert_eq!(reason.as_str().parse::<StatusReason>().ok(), Some(reason));
        }
        // A new variant stops this match compiling: the reminder to add it to ALL.
        match StatusReason::Connect {
            StatusReason::Connect
            | StatusReason::Disconnect
            | StatusReason::ConnectionLost
            | StatusReason::Activity
            | StatusReason::HeartbeatTimeout
            | StatusReason::OnlineTimeout
            | StatusReason::InactivityTimeout
            | StatusReason::NodeLost => {}
        }
    }
}
