//! Authorization: the named permissions and the one function that maps a caller's
//! built-in role and custom-role permissions to what it may do.
//!
//! - `SYS_ADMIN` manages tenants and their admins (the `/tenants` routes) and has
//!   every permission inside its own tenant; it reaches another tenant's resources
//!   only through the explicit tenant routes.
//! - `TENANT_ADMIN` has every permission inside its tenant.
//! - `TENANT_USER` has `device:read`; a custom role adds its permissions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tp_core::{Error, Role};

/// A named right inside a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read devices, their data, groups, profiles and the downlink log.
    DeviceRead,
    /// Create, change and delete devices, rotate credentials, delete telemetry.
    DeviceWrite,
    /// Send downlink (commands, attribute set/get, telemetry control).
    DeviceCommand,
    /// Acknowledge, clear and comment on alarms.
    AlarmAck,
    /// Manage the tenant's users.
    UserManage,
    /// Manage the tenant's custom roles.
    RoleManage,
    /// Manage the tenant's API keys.
    ApiKeyManage,
    /// Change device groups and their membership.
    GroupWrite,
    /// Change device profiles.
    ProfileWrite,
    /// Read the audit log.
    AuditRead,
    /// Read rules, scenes, notification channels and the notification history.
    RuleRead,
    /// Create, change and delete rules, scenes and notification channels; run scenes.
    RuleWrite,
    /// Read alarms, their history and counts (changing them needs `alarm:ack`).
    AlarmRead,
    /// Read OTA packages, tasks and each device's progress.
    OtaRead,
    /// Upload and change OTA packages; create, cancel and retry OTA tasks.
    OtaWrite,
    /// Read device templates (the thing model).
    TemplateRead,
    /// Create, change, copy and delete device templates.
    TemplateWrite,
    /// Read data scripts.
    ScriptRead,
    /// Create, change, enable, delete and test-run data scripts.
    ScriptWrite,
    /// View dashboards (and the home dashboard).
    DashboardRead,
    /// Create, change and delete dashboards; set the home dashboard.
    DashboardWrite,
}

impl Permission {
    /// Every permission, in wire-name order of declaration.
    pub const ALL: [Permission; 21] = [
        Permission::DeviceRead,
        Permission::DeviceWrite,
        Permission::DeviceCommand,
        Permission::AlarmAck,
        Permission::UserManage,
        Permission::RoleManage,
        Permission::ApiKeyManage,
        Permission::GroupWrite,
        Permission::ProfileWrite,
        Permission::AuditRead,
        Permission::RuleRead,
        Permission::RuleWrite,
        Permission::AlarmRead,
        Permission::OtaRead,
        Permission::OtaWrite,
        Permission::TemplateRead,
        Permission::TemplateWrite,
        Permission::ScriptRead,
        Permission::ScriptWrite,
        Permission::DashboardRead,
        Permission::DashboardWrite,
    ];

    /// The wire name, e.g. `device:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::DeviceRead => "device:read",
            Permission::DeviceWrite => "device:write",
            Permission::DeviceCommand => "device:command",
            Permission::AlarmAck => "alarm:ack",
            Permission::UserManage => "user:manage",
            Permission::RoleManage => "role:manage",
            Permission::ApiKeyManage => "apikey:manage",
            Permission::GroupWrite => "group:write",
            Permission::ProfileWrite => "profile:write",
            Permission::AuditRead => "audit:read",
            Permission::RuleRead => "rule:read",
            Permission::RuleWrite => "rule:write",
            Permission::AlarmRead => "alarm:read",
            Permission::OtaRead => "ota:read",
            Permission::OtaWrite => "ota:write",
            Permission::TemplateRead => "template:read",
            Permission::TemplateWrite => "template:write",
            Permission::ScriptRead => "script:read",
            Permission::ScriptWrite => "script:write",
            Permission::DashboardRead => "dashboard:read",
            Permission::DashboardWrite => "dashboard:write",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "permissions",
                    format!(
                        "unknown permission {s:?}; known: {}",
                        Permission::ALL.map(|p| p.as_str()).join(", ")
                    ),
                )
            })
    }
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Permissions(u32);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);

    /// Every permission.
    pub fn all() -> Self {
        Permission::ALL.into_iter().collect()
    }

    /// Whether `p` is in the set.
    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Whether every permission of `other` is in the set.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets' permissions.
    pub fn intersection(self, other: Permissions) -> Self {
        Self(self.0 & other.0)
    }

    /// The union.
    pub fn union(self, other: Permissions) -> Self {
        Permissions(self.0 | other.0)
    }

    /// The members in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.has(*p))
    }

    /// The wire names of the members.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_owned()).collect()
    }

    /// Parses wire names; unknown names are [`Error::Invalid`] naming `permissions`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, Error> {
        names
            .iter()
            .map(|n| n.as_ref().parse::<Permission>())
            .collect()
    }

    /// Parses stored names, ignoring unknown ones (a newer node may know more).
    pub fn parse_lenient<S: AsRef<str>>(names: &[S]) -> Self {
        names
            .iter()
            .filter_map(|n| n.as_ref().parse::<Permission>().ok())
            .collect()
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Permissions(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|p| p.as_str()))
            .finish()
    }
}

/// What a principal with built-in `role` and the permissions of its custom role
/// (if any) may do inside its own tenant. The one place that decides.
pub fn effective_permissions(role: Role, custom: Permissions) -> Permissions {
    match role {
        Role::SysAdmin | Role::TenantAdmin => Permissions::all(),
        Role::TenantUser => Permissions::from_iter([Permission::DeviceRead]).union(custom),
    }
}

/// Whether a principal with `role` and `custom` permissions may do `needed`.
pub fn allowed(role: Role, custom: Permissions, needed: Permission) -> bool {
    effective_permissions(role, custom).has(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
        }
        let err = Permissions::parse(&["device:read", "root"]).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let set = Permissions::parse(&["audit:read", "device:write"]).unwrap();
        assert_eq!(set.names(), ["device:write", "audit:read"]);
        assert_eq!(
            Permissions::parse_lenient(&["audit:read", "future:thing"]).names(),
            ["audit:read"]
        );
    }

    #[test]
    fn roles_map_to_permissions() {
        let none = Permissions::NONE;
        for p in Permission::ALL {
            assert!(allowed(Role::TenantAdmin, none, p));
            assert!(allowed(Role::SysAdmin, none, p));
            assert_eq!(
                allowed(Role::TenantUser, none, p),
                p == Permission::DeviceRead
            );
        }
        let custom = Permissions::from_iter([Permission::GroupWrite]);
        assert!(allowed(Role::TenantUser, custom, Permission::GroupWrite));
        assert!(!allowed(Role::TenantUser, custom, Permission::UserManage));
        assert!(Permissions::all().contains(custom));
        assert!(!custom.contains(Permissions::all()));
    }
}
