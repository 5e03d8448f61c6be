//! The fixed spellings some string fields accept, as schemas of the OpenAPI document
//! (`value_type = ...` on those fields), so generated clients and property-based
//! testers see the same set the handlers parse. Documentation only: the handlers
//! keep parsing the strings themselves and name the field when one is unknown.

use serde::Serialize;
use utoipa::ToSchema;

/// An alarm severity.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum SeverityName {
    Critical,
    Major,
    Minor,
    Warning,
    Info,
}

/// How devices of a profile connect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum DeviceTypeName {
    Direct,
    Gateway,
    SubDevice,
}

/// How a device logs in: username and password, or an access token alone.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub(crate) enum VoucherTypeName {
    BASIC,
    ACCESSTOKEN,
}

/// A permission a custom role or API key can carry.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) enum PermissionName {
    #[serde(rename = "device:read")]
    DeviceRead,
    #[serde(rename = "device:write")]
    DeviceWrite,
    #[serde(rename = "device:command")]
    DeviceCommand,
    #[serde(rename = "alarm:ack")]
    AlarmAck,
    #[serde(rename = "user:manage")]
    UserManage,
    #[serde(rename = "role:manage")]
    RoleManage,
    #[serde(rename = "apikey:manage")]
    ApiKeyManage,
    #[serde(rename = "group:write")]
    GroupWrite,
    #[serde(rename = "profile:write")]
    ProfileWrite,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "rule:read")]
    RuleRead,
    #[serde(rename = "rule:write")]
    RuleWrite,
    #[serde(rename = "alarm:read")]
    AlarmRead,
    #[serde(rename = "ota:read")]
    OtaRead,
    #[serde(rename = "ota:write")]
    OtaWrite,
    #[serde(rename = "template:read")]
    TemplateRead,
    #[serde(rename = "template:write")]
    TemplateWrite,
    #[serde(rename = "script:read")]
    ScriptRead,
    #[serde(rename = "script:write")]
    ScriptWrite,
    #[serde(rename = "dashboard:read")]
    DashboardRead,
    #[serde(rename = "dashboard:write")]
    DashboardWrite,
}

/// An aggregation of a history query.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AggregationName {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

/// The order of a history or event query.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum OrderName {
    Asc,
    Desc,
}

/// The built-in role of a tenant's user or API key.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code, clippy::enum_variant_names)]
pub(crate) enum TenantRoleName {
    #[serde(rename = "TENANT_ADMIN")]
    TenantAdmin,
    #[serde(rename = "TENANT_USER")]
    TenantUser,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelling(v: impl Serialize) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The documented aggregations, orders and roles are the ones the API parses.
    #[test]
    fn query_and_role_names_match_the_parsers() {
        for agg in [
            AggregationName::Avg,
            AggregationName::Min,
            AggregationName::Max,
            AggregationName::Sum,
            AggregationName::Count,
        ] {
            spelling(agg).parse::<tp_core::Aggregation>().unwrap();
        }
        for role in [TenantRoleName::TenantAdmin, TenantRoleName::TenantUser] {
            spelling(role).parse::<tp_core::Role>().unwrap();
        }
        assert_eq!(
            [OrderName::Asc, OrderName::Desc].map(spelling),
            ["asc", "desc"]
        );
    }

    /// The documented permission names are exactly the ones the API parses.
    #[test]
    fn permission_names_match_the_parser() {
        let documented: Vec<String> = [
            PermissionName::DeviceRead,
            PermissionName::DeviceWrite,
            PermissionName::DeviceCommand,
            PermissionName::AlarmAck,
            PermissionName::UserManage,
            PermissionName::RoleManage,
            PermissionName::ApiKeyManage,
            PermissionName::GroupWrite,
            PermissionName::ProfileWrite,
            PermissionName::AuditRead,
            PermissionName::RuleRead,
            PermissionName::RuleWrite,
            PermissionName::AlarmRead,
            PermissionName::OtaRead,
            PermissionName::OtaWrite,
            PermissionName::TemplateRead,
            PermissionName::TemplateWrite,
            PermissionName::ScriptRead,
            PermissionName::ScriptWrite,
            PermissionName::DashboardRead,
            PermissionName::DashboardWrite,
        ]
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        let parsed = crate::authz::Permissions::parse(&documented).unwrap();
        assert_eq!(parsed, crate::authz::Permissions::all());
    }
}
