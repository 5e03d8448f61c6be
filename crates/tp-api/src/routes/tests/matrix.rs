//! The authorization matrix: every endpoint called as every kind of caller, with the
//! exact status expected, and checks that refused or foreign calls leak nothing and
//! change nothing. Adding an endpoint means adding a row (the OpenAPI document is
//! checked against the table).

use std::collections::BTreeSet;

use tp_core::rules::{
    Action, Alarm, AlarmFilter, AlarmId, AlarmSeverity, AlarmStatus, ChannelId, ChannelKind,
    Condition, DataKind, DeviceSource, NotificationChannel, Operator, Rule, Scene, SceneId,
    TriggerGroup,
};
use tp_core::{
    ApiKey, ApiKeyId, CustomRole, Device, DeviceGroup, DeviceProfile, GroupId, Page, RoleId,
    hash_secret,
};

use super::*;
use crate::auth::start_session;

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The bootstrap SYS_ADMIN (tenant "default").
    Sys,
    /// TENANT_ADMIN of tenant A.
    Admin,
    /// TENANT_USER of tenant A.
    User,
    /// TENANT_USER of tenant A with a custom role
    /// {device:write, device:command, group:write, audit:read, rule:read, alarm:read}.
    Custom,
    /// API key of tenant A: TENANT_USER with a custom role {device:write, profile:write}.
    Key,
    /// No credentials.
    Anon,
    /// TENANT_ADMIN of tenant B.
    Other,
}

const WHO: [Who; 7] = [
    Who::Sys,
    Who::Admin,
    Who::User,
    Who::Custom,
    Who::Key,
    Who::Anon,
    Who::Other,
];

const PW: &str = "matrix password 1";

/// Expected statuses in [`WHO`] order: Sys, Admin, User, Custom, Key, Anon, Other.
type Expect = [u16; 7];

const PUBLIC: Expect = [200; 7];
const READ_LIST: Expect = [200, 200, 200, 200, 200, 401, 200];
const READ_ONE: Expect = [404, 200, 200, 200, 200, 401, 404];
const DEV_CREATE: Expect = [201, 201, 403, 201, 201, 401, 201];
const DEV_IMPORT: Expect = [200, 200, 403, 200, 200, 401, 200];
const fn dev_write(ok: u16) -> Expect {
    [404, ok, 403, ok, ok, 401, 404]
}
const COMMAND: Expect = [404, 201, 403, 201, 403, 401, 404];
const GROUP_CREATE: Expect = [201, 201, 403, 201, 403, 401, 201];
const fn group_write(ok: u16) -> Expect {
    [404, ok, 403, ok, 403, 401, 404]
}
const PROFILE_CREATE: Expect = [201, 201, 403, 403, 201, 401, 201];
const fn profile_write(ok: u16) -> Expect {
    [404, ok, 403, 403, ok, 401, 404]
}
const MANAGE_CREATE: Expect = [201, 201, 403, 403, 403, 401, 201];
const MANAGE_LIST: Expect = [200, 200, 403, 403, 403, 401, 200];
const fn manage_one(ok: u16) -> Expect {
    [404, ok, 403, 403, 403, 401, 404]
}
const fn sys_only(ok: u16) -> Expect {
    [ok, 403, 403, 403, 403, 401, 403]
}
const AUDIT: Expect = [200, 200, 403, 200, 403, 401, 200];
const fn session(ok: u16) -> Expect {
    [ok, ok, ok, ok, 403, 401, ok]
}
/// rule:read / alarm:read lists: the custom role has them, plain users and the key not.
const RULE_LIST: Expect = [200, 200, 403, 200, 403, 401, 200];
const RULE_ONE: Expect = [404, 200, 403, 200, 403, 401, 404];

/// The resources of one call: fresh in tenant A (and a fresh tenant T for the tenant
/// routes), so a successful delete by one caller never affects another call.
struct Fx {
    uniq: String,
    device: Device,
    group: DeviceGroup,
    profile: DeviceProfile,
    rule: Rule,
    scene: Scene,
    alarm: Alarm,
    channel: NotificationChannel,
    ota_package: tp_core::ota::OtaPackage,
    ota_task: tp_core::ota::OtaTask,
    template: tp_core::thing_model::DeviceTemplate,
    script: tp_core::script::DataScript,
    dashboard: tp_core::dashboard::Dashboard,
    role: CustomRole,
    user: User,
    key: ApiKey,
    tenant: Tenant,
    refresh_token: String,
}

type BodyFn = fn(&Fx, &str) -> Json;

struct Row {
    method: &'static str,
    /// With `{device}`, `{group}`, `{profile}`, `{role}`, `{user}`, `{key}`, `{tenant}`,
    /// `{rule}`, `{scene}`, `{alarm}`, `{channel}`, `{package}`, `{task}`.
    path: &'static str,
    /// Body from the fixture and the caller's password.
    body: Option<BodyFn>,
    expect: Expect,
}

const fn row(method: &'static str, path: &'static str, expect: Expect) -> Row {
    Row {
        method,
        path,
        body: None,
        expect,
    }
}

const fn with(method: &'static str, path: &'static str, body: BodyFn, expect: Expect) -> Row {
    Row {
        method,
        path,
        body: Some(body),
        expect,
    }
}

fn table() -> Vec<Row> {
    vec![
        // auth
        with(
            "POST",
            "/api/v1/auth/login",
            |fx, _| json!({"email": fx.user.email, "password": PW}),
            PUBLIC,
        ),
        with(
            "POST",
            "/api/v1/auth/refresh",
            |fx, _| json!({"refresh_token": fx.refresh_token}),
            PUBLIC,
        ),
        row("POST", "/api/v1/auth/logout", session(204)),
        // device self-registration: public; a wrong secret is refused for everyone
        // (the happy path is tested end to end in tests/provision.rs)
        with(
            "POST",
            "/api/v1/device/provision",
            |fx, _| json!({"profile_secret": "not a profile secret", "device_number": format!("prov{}", fx.uniq)}),
            [401; 7],
        ),
        with(
            "PUT",
            "/api/v1/auth/password",
            |_, pw| json!({"current_password": pw, "new_password": pw}),
            session(200),
        ),
        row("GET", "/api/v1/auth/me", session(200)),
        // tenants
        with(
            "POST",
            "/api/v1/tenants",
            |fx, _| json!({"name": format!("new-{}", fx.uniq)}),
            sys_only(201),
        ),
        row("GET", "/api/v1/tenants", sys_only(200)),
        row("GET", "/api/v1/tenants/{tenant}", sys_only(200)),
        with(
            "PATCH",
            "/api/v1/tenants/{tenant}",
            |fx, _| json!({"name": format!("renamed-{}", fx.uniq)}),
            sys_only(200),
        ),
        row("DELETE", "/api/v1/tenants/{tenant}", sys_only(204)),
        with(
            "POST",
            "/api/v1/tenants/{tenant}/admins",
            |fx, _| json!({"email": format!("adm-{}@t.example", fx.uniq), "name": "adm", "password": PW}),
            sys_only(201),
        ),
        // users
        with(
            "POST",
            "/api/v1/users",
            |fx, _| json!({"email": format!("new-{}@x.example", fx.uniq), "name": "n", "password": PW}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/users", MANAGE_LIST),
        row("GET", "/api/v1/users/{user}", manage_one(200)),
        with(
            "PATCH",
            "/api/v1/users/{user}",
            |_, _| json!({"name": "renamed"}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/users/{user}", manage_one(204)),
        // roles
        with(
            "POST",
            "/api/v1/roles",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "permissions": ["device:read"]}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/roles", MANAGE_LIST),
        row("GET", "/api/v1/roles/{role}", manage_one(200)),
        with(
            "PATCH",
            "/api/v1/roles/{role}",
            |_, _| json!({"permissions": ["device:read", "alarm:ack"]}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/roles/{role}", manage_one(204)),
        // api keys
        with(
            "POST",
            "/api/v1/api-keys",
            |fx, _| json!({"name": format!("new-{}", fx.uniq)}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/api-keys", MANAGE_LIST),
        row("DELETE", "/api/v1/api-keys/{key}", manage_one(204)),
        // groups
        with(
            "POST",
            "/api/v1/groups",
            |fx, _| json!({"name": format!("new-{}", fx.uniq)}),
            GROUP_CREATE,
        ),
        row("GET", "/api/v1/groups", READ_LIST),
        row("GET", "/api/v1/groups/tree", READ_LIST),
        row("GET", "/api/v1/groups/{group}", READ_ONE),
        with(
            "PATCH",
            "/api/v1/groups/{group}",
            |_, _| json!({"description": "changed"}),
            group_write(200),
        ),
        row("DELETE", "/api/v1/groups/{group}", group_write(204)),
        row(
            "PUT",
            "/api/v1/groups/{group}/devices/{device}",
            group_write(204),
        ),
        row(
            "DELETE",
            "/api/v1/groups/{group}/devices/{device}",
            group_write(204),
        ),
        row("GET", "/api/v1/groups/{group}/devices", READ_ONE),
        // profiles
        with(
            "POST",
            "/api/v1/profiles",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "auto_register": true}),
            PROFILE_CREATE,
        ),
        row("GET", "/api/v1/profiles", READ_LIST),
        row("GET", "/api/v1/profiles/{profile}", READ_ONE),
        with(
            "PATCH",
            "/api/v1/profiles/{profile}",
            |_, _| json!({"heartbeat_secs": 60}),
            profile_write(200),
        ),
        row("DELETE", "/api/v1/profiles/{profile}", profile_write(204)),
        // audit
        row("GET", "/api/v1/audit?page=1&page_size=5", AUDIT),
        // devices
        with(
            "POST",
            "/api/v1/devices",
            |fx, _| json!({"name": format!("new-{}", fx.uniq)}),
            DEV_CREATE,
        ),
        row("GET", "/api/v1/devices", READ_LIST),
        with(
            "POST",
            "/api/v1/devices/import",
            |fx, _| json!({"devices": [{"name": format!("imported-{}", fx.uniq)}]}),
            DEV_IMPORT,
        ),
        row("GET", "/api/v1/devices/{device}", READ_ONE),
        with(
            "PATCH",
            "/api/v1/devices/{device}",
            |_, _| json!({"label": "changed"}),
            dev_write(200),
        ),
        row("DELETE", "/api/v1/devices/{device}", dev_write(204)),
        row(
            "POST",
            "/api/v1/devices/{device}/credentials",
            dev_write(200),
        ),
        // telemetry
        row("GET", "/api/v1/devices/{device}/telemetry/latest", READ_ONE),
        // No live telemetry hub in this harness: an allowed call is 503 (streams:
        // tests/console.rs).
        row(
            "GET",
            "/api/v1/devices/{device}/telemetry/stream",
            [404, 503, 503, 503, 503, 401, 404],
        ),
        row(
            "GET",
            "/api/v1/devices/{device}/telemetry?start=0&end=10",
            READ_ONE,
        ),
        row(
            "DELETE",
            "/api/v1/devices/{device}/telemetry?start=0&end=10",
            dev_write(200),
        ),
        row("GET", "/api/v1/devices/{device}/attributes", READ_ONE),
        row("GET", "/api/v1/devices/{device}/events", READ_ONE),
        row("GET", "/api/v1/devices/{device}/status-history", READ_ONE),
        // downlink
        with(
            "POST",
            "/api/v1/devices/{device}/commands",
            |_, _| json!({"method": "reboot"}),
            COMMAND,
        ),
        row("GET", "/api/v1/devices/{device}/commands", READ_ONE),
        with(
            "PUT",
            "/api/v1/devices/{device}/attributes",
            |_, _| json!({"values": {"a": 1}}),
            COMMAND,
        ),
        with(
            "POST",
            "/api/v1/devices/{device}/attributes/get",
            |_, _| json!({"keys": ["a"]}),
            COMMAND,
        ),
        with(
            "POST",
            "/api/v1/devices/{device}/telemetry/control",
            |_, _| json!({"values": {"a": 1}}),
            COMMAND,
        ),
        // rules
        with(
            "POST",
            "/api/v1/rules",
            |fx, _| {
                json!({
                    "name": format!("new-{}", fx.uniq),
                    "trigger_groups": [{"conditions": [
                        {"type": "schedule", "kind": {"type": "periodic", "interval_secs": 60}}
                    ]}],
                    "actions": [{"type": "raise_alarm", "severity": "major", "title": "t"}],
                })
            },
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/rules", RULE_LIST),
        row("GET", "/api/v1/rules/{rule}", RULE_ONE),
        with(
            "PUT",
            "/api/v1/rules/{rule}",
            |_, _| json!({"enabled": false}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/rules/{rule}", manage_one(204)),
        // scenes
        with(
            "POST",
            "/api/v1/scenes",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "actions": [{"type": "clear_alarm"}]}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/scenes", RULE_LIST),
        row("GET", "/api/v1/scenes/{scene}", RULE_ONE),
        with(
            "PUT",
            "/api/v1/scenes/{scene}",
            |_, _| json!({"description": "changed"}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/scenes/{scene}", manage_one(204)),
        // No rule engine in this harness: an allowed run is 503 (runs: tests/rules.rs).
        row("POST", "/api/v1/scenes/{scene}/run", manage_one(503)),
        // alarms
        row("GET", "/api/v1/alarms?status=active&page_size=5", RULE_LIST),
        row("GET", "/api/v1/alarms/counts", RULE_LIST),
        row("GET", "/api/v1/alarms/{alarm}", RULE_ONE),
        row("GET", "/api/v1/alarms/{alarm}/history", RULE_ONE),
        row(
            "POST",
            "/api/v1/alarms/{alarm}/acknowledge",
            manage_one(200),
        ),
        row("POST", "/api/v1/alarms/{alarm}/clear", manage_one(200)),
        with(
            "POST",
            "/api/v1/alarms/{alarm}/comments",
            |_, _| json!({"text": "looking"}),
            manage_one(201),
        ),
        // notification channels and history
        with(
            "POST",
            "/api/v1/notification-channels",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "type": "email", "to": ["ops@example.com"]}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/notification-channels", RULE_LIST),
        row("GET", "/api/v1/notification-channels/{channel}", RULE_ONE),
        with(
            "PUT",
            "/api/v1/notification-channels/{channel}",
            |_, _| json!({"enabled": false}),
            manage_one(200),
        ),
        row(
            "DELETE",
            "/api/v1/notification-channels/{channel}",
            manage_one(204),
        ),
        row("GET", "/api/v1/notifications", RULE_LIST),
        // OTA: only the admins have ota:read / ota:write
        with(
            "POST",
            "/api/v1/ota/packages",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "version": "1.0.0"}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/ota/packages", MANAGE_LIST),
        row("GET", "/api/v1/ota/packages/{package}", manage_one(200)),
        with(
            "PATCH",
            "/api/v1/ota/packages/{package}",
            |_, _| json!({"description": "changed"}),
            manage_one(200),
        ),
        // The fixture's package is sent by its task.
        row("DELETE", "/api/v1/ota/packages/{package}", manage_one(409)),
        // The fixture's package is sent by its task, so its content cannot change
        // (uploads themselves: tp-node tests/ota.rs).
        row(
            "PUT",
            "/api/v1/ota/packages/{package}/file",
            manage_one(409),
        ),
        with(
            "POST",
            "/api/v1/ota/tasks",
            |fx, _| json!({"package_id": fx.ota_package.id, "device_ids": [fx.device.id]}),
            [422, 201, 403, 403, 403, 401, 422],
        ),
        row("GET", "/api/v1/ota/tasks", MANAGE_LIST),
        row("GET", "/api/v1/ota/tasks/{task}", manage_one(200)),
        row("DELETE", "/api/v1/ota/tasks/{task}", manage_one(204)),
        row("POST", "/api/v1/ota/tasks/{task}/cancel", manage_one(200)),
        row("POST", "/api/v1/ota/tasks/{task}/retry", manage_one(200)),
        row("GET", "/api/v1/ota/tasks/{task}/devices", manage_one(200)),
        row(
            "POST",
            "/api/v1/ota/tasks/{task}/devices/{device}/cancel",
            manage_one(200),
        ),
        // The fixture's device is still under way: only failed or cancelled ones retry
        // (the retry itself: tp-node tests/ota.rs).
        row(
            "POST",
            "/api/v1/ota/tasks/{task}/devices/{device}/retry",
            manage_one(409),
        ),
        // device templates (thing model)
        with(
            "POST",
            "/api/v1/templates",
            |fx, _| json!({"name": format!("new-{}", fx.uniq), "telemetry": [{"identifier": "t", "name": "T", "data_type": "int", "unit": "K"}]}),
            MANAGE_CREATE,
        ),
        row("GET", "/api/v1/templates", MANAGE_LIST),
        row("GET", "/api/v1/templates/{template}", manage_one(200)),
        with(
            "PUT",
            "/api/v1/templates/{template}",
            |fx, _| json!({"name": format!("fxtemplate-{}", fx.uniq), "validation": "record"}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/templates/{template}", manage_one(204)),
        with(
            "POST",
            "/api/v1/templates/{template}/copy",
            |_, _| json!({}),
            manage_one(201),
        ),
        row("GET", "/api/v1/devices/{device}/thing-model", READ_ONE),
        // data scripts (script:read / script:write: admins only here)
        with(
            "POST",
            "/api/v1/scripts",
            |fx, _| {
                json!({
                    "profile_id": fx.profile.id, "script_type": "attribute_up",
                    "name": format!("new-{}", fx.uniq),
                    "content": "function encodeInp(msg, topic) return msg end",
                })
            },
            // tenant A's profile is not one of another tenant's
            [422, 201, 403, 403, 403, 401, 422],
        ),
        row("GET", "/api/v1/scripts", MANAGE_LIST),
        row("GET", "/api/v1/scripts/{script}", manage_one(200)),
        with(
            "PATCH",
            "/api/v1/scripts/{script}",
            |_, _| json!({"enabled": false}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/scripts/{script}", manage_one(204)),
        // No script engine in this harness: an allowed run is 503 (runs:
        // tp-node/tests/data_scripts.rs).
        with(
            "POST",
            "/api/v1/scripts/{script}/test",
            |_, _| json!({"payload": "{}"}),
            manage_one(503),
        ),
        // dashboards (dashboard:read / dashboard:write: admins only here)
        with(
            "POST",
            "/api/v1/dashboards",
            |fx, _| {
                json!({
                    "name": format!("new-{}", fx.uniq),
                    "widgets": [{"id": "v", "x": 0, "y": 0, "w": 4, "h": 2,
                        "config": {"type": "value", "device_id": fx.device.id, "key": "t"}}],
                })
            },
            // tenant A's device is not one of another tenant's
            [422, 201, 403, 403, 403, 401, 422],
        ),
        row("GET", "/api/v1/dashboards", MANAGE_LIST),
        // The fixture's dashboard is tenant A's home dashboard.
        row("GET", "/api/v1/dashboards/home", manage_one(200)),
        row("GET", "/api/v1/dashboards/{dashboard}", manage_one(200)),
        with(
            "PUT",
            "/api/v1/dashboards/{dashboard}",
            |fx, _| json!({"name": format!("fxdashboard-{}", fx.uniq), "home": true, "widgets": []}),
            manage_one(200),
        ),
        row("DELETE", "/api/v1/dashboards/{dashboard}", manage_one(204)),
        // No live telemetry in this harness: an allowed stream is 503 (streams:
        // tp-node/tests/console_dashboards.rs).
        row(
            "GET",
            "/api/v1/dashboards/{dashboard}/stream",
            manage_one(503),
        ),
        row(
            "GET",
            "/api/v1/devices/{device}/telemetry/export?start=0&end=10&format=ndjson",
            READ_ONE,
        ),
        // home page trends (device:read)
        row("GET", "/api/v1/stats/messages", READ_LIST),
        row("GET", "/api/v1/stats/online", READ_LIST),
        row("GET", "/api/v1/stats/alarms", READ_LIST),
        row("GET", "/api/v1/stats/top-devices?limit=5", READ_LIST),
        // system (public)
        row("GET", "/healthz", PUBLIC),
        row("GET", "/readyz", PUBLIC),
        row("GET", "/metrics", PUBLIC),
        row("GET", "/api/v1/openapi.json", PUBLIC),
        row("GET", "/docs", [303; 7]),
    ]
}

/// `{anything}` -> `{}` and no query string, for comparing with OpenAPI paths.
fn normalize(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let mut out = String::new();
    let mut skipping = false;
    for c in path.chars() {
        match c {
            '{' => {
                skipping = true;
                out.push_str("{}");
            }
            '}' => skipping = false,
            _ if skipping => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn the_table_covers_every_documented_operation() {
    let doc = crate::openapi();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), normalize(path)))
        })
        .collect();
    let tested: BTreeSet<(String, String)> = table()
        .iter()
        .map(|r| (r.method.to_owned(), normalize(r.path)))
        .collect();
    let missing: Vec<_> = documented.difference(&tested).collect();
    let undocumented: Vec<_> = tested.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "endpoints without a matrix row: {missing:?}"
    );
    assert!(
        undocumented.is_empty(),
        "rows without a documented endpoint: {undocumented:?}"
    );
    assert_eq!(table().len(), documented.len());
}

struct Principals {
    tenant_a: TenantId,
    tenant_b: TenantId,
    sys: User,
    admin: User,
    user: User,
    custom: User,
    other: User,
    key_secret: String,
    key_name: String,
    hash: String,
}

impl Principals {
    fn user(&self, who: Who) -> Option<&User> {
        match who {
            Who::Sys => Some(&self.sys),
            Who::Admin => Some(&self.admin),
            Who::User => Some(&self.user),
            Who::Custom => Some(&self.custom),
            Who::Other => Some(&self.other),
            Who::Key | Who::Anon => None,
        }
    }

    fn password(&self, who: Who) -> &'static str {
        if who == Who::Sys { ADMIN_PASSWORD } else { PW }
    }

    fn tenant(&self, who: Who) -> Option<TenantId> {
        match who {
            Who::Key => Some(self.tenant_a),
            Who::Anon => None,
            w => self.user(w).map(|u| u.tenant_id),
        }
    }

    fn actor(&self, who: Who) -> Option<String> {
        match who {
            Who::Key => Some(format!("api-key:{}", self.key_name)),
            w => self.user(w).map(|u| u.email.clone()),
        }
    }
}

async fn new_tenant(h: &Harness, name: &str) -> Result<Tenant> {
    let t = Tenant {
        id: TenantId::new(),
        name: name.into(),
        created_at: now_ms(),
    };
    h.meta.create_tenant(&t).await?;
    Ok(t)
}

async fn new_user(
    h: &Harness,
    tenant: TenantId,
    email: &str,
    role: Role,
    hash: &str,
) -> Result<User> {
    let user = User {
        id: UserId::new(),
        tenant_id: tenant,
        email: email.into(),
        name: email.into(),
        password_hash: hash.into(),
        role,
        created_at: now_ms(),
    };
    h.meta.create_user(&user).await?;
    Ok(user)
}

async fn new_role(h: &Harness, tenant: TenantId, name: &str, perms: &[&str]) -> Result<CustomRole> {
    let role = CustomRole {
        id: RoleId::new(),
        tenant_id: tenant,
        name: name.into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        created_at: now_ms(),
    };
    h.access.create_role(&role).await?;
    Ok(role)
}

async fn principals(h: &Harness) -> Result<Principals> {
    let hash = hash_password(PW.into()).await?;
    let a = new_tenant(h, "tenant-a").await?;
    let b = new_tenant(h, "tenant-b").await?;
    let sys = h
        .meta
        .get_user_by_email(ADMIN_EMAIL)
        .await?
        .context("sys")?;
    let admin = new_user(h, a.id, "admin@a.example", Role::TenantAdmin, &hash).await?;
    let user = new_user(h, a.id, "user@a.example", Role::TenantUser, &hash).await?;
    let custom = new_user(h, a.id, "custom@a.example", Role::TenantUser, &hash).await?;
    let role = new_role(
        h,
        a.id,
        "operators",
        &[
            "device:write",
            "device:command",
            "group:write",
            "audit:read",
            "rule:read",
            "alarm:read",
        ],
    )
    .await?;
    h.access
        .set_user_role(a.id, custom.id, Some(role.id))
        .await?;
    let key_role = new_role(h, a.id, "integration", &["device:write", "profile:write"]).await?;
    let key_secret = format!("tpk_{}", tp_core::random_token(24));
    let key = ApiKey {
        id: ApiKeyId::new(),
        tenant_id: a.id,
        name: "erp".into(),
        key_hash: hash_secret(&key_secret),
        role: Role::TenantUser,
        role_id: Some(key_role.id),
        created_by: admin.id,
        created_at: now_ms(),
        expires_at: None,
    };
    h.access.create_api_key(&key).await?;
    let other = new_user(h, b.id, "admin@b.example", Role::TenantAdmin, &hash).await?;
    Ok(Principals {
        tenant_a: a.id,
        tenant_b: b.id,
        sys,
        admin,
        user,
        custom,
        other,
        key_secret,
        key_name: key.name,
        hash,
    })
}

async fn fixture(h: &Harness, p: &Principals, n: usize) -> Result<Fx> {
    let uniq = format!("{n}-{}", tp_core::random_token(4));
    let a = p.tenant_a;
    let (mut device, _) = Device::new(a, format!("fxdev-{uniq}"), Some(format!("fxnum-{uniq}")));
    device.label = Some(format!("fxlabel-{uniq}"));
    h.meta.create_device(&device).await?;
    h.ts.write(&[TelemetryPoint {
        device_id: device.id,
        key: "t".into(),
        ts: 1,
        value: Value::Integer(1),
    }])
    .await?;
    let group = DeviceGroup {
        id: GroupId::new(),
        tenant_id: a,
        parent_id: None,
        name: format!("fxgroup-{uniq}"),
        description: None,
        created_at: now_ms(),
    };
    h.access.create_group(&group).await?;
    h.access.add_group_device(a, group.id, device.id).await?;
    let profile = DeviceProfile::new(a, format!("fxprofile-{uniq}"));
    h.access.create_profile(&profile).await?;
    let role = new_role(h, a, &format!("fxrole-{uniq}"), &["device:read"]).await?;
    let user = new_user(
        h,
        a,
        &format!("fxuser-{uniq}@a.example"),
        Role::TenantUser,
        &p.hash,
    )
    .await?;
    let key = ApiKey {
        id: ApiKeyId::new(),
        tenant_id: a,
        name: format!("fxkey-{uniq}"),
        key_hash: hash_secret(&tp_core::random_token(16)),
        role: Role::TenantUser,
        role_id: None,
        created_by: p.admin.id,
        created_at: now_ms(),
        expires_at: None,
    };
    h.access.create_api_key(&key).await?;
    let rules = h.state.rules().context("rule store")?;
    let mut rule = tp_core::testing::rules::sample_rule(a, &format!("fxrule-{uniq}"), now_ms());
    rule.trigger_groups = vec![TriggerGroup {
        conditions: vec![Condition::Device {
            source: DeviceSource::Device(device.id),
            data: DataKind::Telemetry,
            key: "t".into(),
            operator: Operator::Gt,
            value: json!(40),
            duration_secs: None,
        }],
    }];
    rules.create_rule(&rule).await?;
    let scene = Scene {
        id: SceneId::new(),
        tenant_id: a,
        name: format!("fxscene-{uniq}"),
        description: None,
        actions: vec![Action::ClearAlarm],
        created_at: now_ms(),
        updated_at: now_ms(),
    };
    rules.create_scene(&scene).await?;
    let alarm = Alarm {
        id: AlarmId::new(),
        tenant_id: a,
        rule_id: Some(rule.id),
        device_id: Some(device.id),
        severity: AlarmSeverity::Major,
        status: AlarmStatus::Active,
        title: format!("fxalarm-{uniq}"),
        description: None,
        occurrences: 1,
        details: json!({"t": 41}),
        created_at: now_ms(),
        updated_at: now_ms(),
        acknowledged_at: None,
        acknowledged_by: None,
        cleared_at: None,
    };
    rules.create_alarm(&alarm).await?;
    let channel = NotificationChannel {
        id: ChannelId::new(),
        tenant_id: a,
        name: format!("fxchannel-{uniq}"),
        enabled: true,
        kind: ChannelKind::Webhook {
            url: "https://hooks.example.com/x".into(),
            secret: format!("fxsecret-{uniq}-0123456789"),
        },
        created_at: now_ms(),
    };
    rules.create_channel(&channel).await?;
    let ota = &h.state.ota.as_ref().context("ota")?.store;
    let mut ota_package = tp_core::testing::ota::sample_package(a, &format!("fxpackage-{uniq}"));
    ota_package.profile_id = None;
    ota_package.stored = false;
    ota_package.url = Some(format!("https://cdn.example.com/fx-{uniq}.bin"));
    ota.create_package(&ota_package).await?;
    let (ota_task, mut details) = tp_core::testing::ota::sample_task(&ota_package, &[device.id]);
    details[0].state = tp_core::ota::OtaState::Notified;
    ota.create_task(&ota_task, &details).await?;
    let template = tp_core::testing::thing_model::sample_template(a, &format!("fxtemplate-{uniq}"));
    h.state
        .thing_models()
        .context("template store")?
        .store()
        .create_template(&template)
        .await?;
    let mut script = tp_core::testing::script::sample_script(
        &profile,
        tp_core::script::ScriptType::TelemetryUp,
        &format!("fxscript-{uniq}"),
        true,
    );
    script.content = format!("-- fxsource-{uniq}\nfunction encodeInp(msg) return msg end");
    h.state
        .scripts
        .as_ref()
        .context("script store")?
        .create_script(&script)
        .await?;
    let mut dashboard =
        tp_core::testing::dashboard::sample_dashboard(a, &format!("fxdashboard-{uniq}"), true);
    dashboard.widgets = tp_core::testing::dashboard::every_widget(device.id);
    h.state
        .dashboards
        .as_ref()
        .context("dashboard store")?
        .create_dashboard(&dashboard)
        .await?;
    let tenant = new_tenant(h, &format!("fxtenant-{uniq}")).await?;
    let refresh_token = start_session(&h.state, &user).await?.refresh_token;
    Ok(Fx {
        uniq,
        device,
        group,
        profile,
        rule,
        scene,
        alarm,
        channel,
        ota_package,
        ota_task,
        template,
        script,
        dashboard,
        role,
        user,
        key,
        tenant,
        refresh_token,
    })
}

/// Strings of tenant A's fixture that no foreign or refused response may contain.
fn markers(fx: &Fx) -> Vec<String> {
    vec![
        fx.device.id.to_string(),
        fx.device.device_number.clone(),
        fx.device.name.clone(),
        fx.device.credentials.username.clone(),
        fx.group.id.to_string(),
        fx.group.name.clone(),
        fx.profile.id.to_string(),
        fx.profile.name.clone(),
        fx.role.id.to_string(),
        fx.role.name.clone(),
        fx.user.id.to_string(),
        fx.user.email.clone(),
        fx.key.id.to_string(),
        fx.key.name.clone(),
        fx.rule.id.to_string(),
        fx.rule.name.clone(),
        fx.scene.id.to_string(),
        fx.scene.name.clone(),
        fx.alarm.id.to_string(),
        fx.alarm.title.clone(),
        fx.channel.id.to_string(),
        fx.channel.name.clone(),
        fx.ota_package.id.to_string(),
        fx.ota_package.name.clone(),
        fx.ota_task.id.to_string(),
        fx.template.id.to_string(),
        fx.template.name.clone(),
        fx.script.id.to_string(),
        fx.script.name.clone(),
        format!("fxsource-{}", fx.uniq),
        fx.dashboard.id.to_string(),
        fx.dashboard.name.clone(),
        // Never returned to anyone, not even tenant A.
        match &fx.channel.kind {
            ChannelKind::Webhook { secret, .. } => secret.clone(),
            ChannelKind::Email { .. } => String::new(),
        },
    ]
}

/// Everything of tenant A (and of tenant T) a call could change.
async fn snapshot(h: &Harness, p: &Principals, fx: &Fx) -> Result<(Json, Json)> {
    let a = p.tenant_a;
    let all = Page {
        offset: 0,
        limit: 10_000,
    };
    let devices = h
        .meta
        .list_devices(
            a,
            &tp_core::DeviceFilter {
                search: None,
                online: None,
                page: all,
            },
        )
        .await?;
    let users = h.meta.list_users(a, all).await?;
    let rules = h.state.rules().context("rule store")?;
    let ota = &h.state.ota.as_ref().context("ota")?.store;
    // The roles of the users a call can name (this cell's fixture user and the
    // principals): reading every user's role made the test quadratic, since each
    // cell adds a user.
    let mut user_roles = Vec::new();
    for u in [&fx.user, &p.admin, &p.user, &p.custom] {
        if users.items.iter().any(|listed| listed.id == u.id) {
            user_roles.push(Some(h.access.get_user_role(a, u.id).await?));
        } else {
            user_roles.push(None);
        }
    }
    let state_a = json!({
        "tenant": h.meta.get_tenant(a).await?,
        "devices": devices,
        "users": users,
        "user_roles": user_roles,
        "roles": h.access.list_roles(a, all).await?,
        "keys": h.access.list_api_keys(a, all).await?,
        "groups": h.access.list_groups(a).await?,
        "members": h.access.list_group_devices(a, fx.group.id, all).await.ok(),
        "profiles": h.access.list_profiles(a, all).await?,
        "audit": h.access.list_audit(a, all).await?.total,
        "latest": rows_json(&h.ts.latest(fx.device.id, None).await?),
        "commands": h.meta.list_commands(a, fx.device.id, all).await?.total,
        "rules": rules.list_rules(a, all).await?,
        "scenes": rules.list_scenes(a, all).await?,
        "channels": rules.list_channels(a, all).await?,
        "alarms": rules.list_alarms(a, &AlarmFilter { page: all, ..Default::default() }).await?,
        "alarm_events": rules.list_alarm_events(a, fx.alarm.id).await?,
        "notifications": rules.list_notifications(a, all).await?.total,
        "ota_packages": ota.list_packages(a, all).await?,
        "ota_tasks": ota.list_tasks(a, None, all).await?,
        "ota_details": ota.list_details(a, fx.ota_task.id, all).await?,
        "templates": h.state.thing_models().context("template store")?.store().list_templates(a, all).await?,
        "scripts": h.state.scripts.as_ref().context("script store")?
            .list_scripts(a, Default::default()).await?,
        "dashboards": h.state.dashboards.as_ref().context("dashboard store")?
            .list_dashboards(a, all).await?,
    });
    let state_t = json!({
        "tenant": h.meta.get_tenant(fx.tenant.id).await?,
        "users": h.meta.list_users(fx.tenant.id, all).await?.total,
    });
    Ok((state_a, state_t))
}

fn substitute(path: &str, fx: &Fx) -> String {
    path.replace("{device}", &fx.device.id.to_string())
        .replace("{group}", &fx.group.id.to_string())
        .replace("{profile}", &fx.profile.id.to_string())
        .replace("{role}", &fx.role.id.to_string())
        .replace("{user}", &fx.user.id.to_string())
        .replace("{key}", &fx.key.id.to_string())
        .replace("{tenant}", &fx.tenant.id.to_string())
        .replace("{rule}", &fx.rule.id.to_string())
        .replace("{scene}", &fx.scene.id.to_string())
        .replace("{alarm}", &fx.alarm.id.to_string())
        .replace("{channel}", &fx.channel.id.to_string())
        .replace("{package}", &fx.ota_package.id.to_string())
        .replace("{task}", &fx.ota_task.id.to_string())
        .replace("{template}", &fx.template.id.to_string())
        .replace("{script}", &fx.script.id.to_string())
        .replace("{dashboard}", &fx.dashboard.id.to_string())
}

async fn call_as(
    h: &Harness,
    p: &Principals,
    who: Who,
    method: &str,
    uri: &str,
    body: Option<Json>,
) -> Result<(StatusCode, String)> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(user) = p.user(who) {
        // A fresh session per call: logout and password change end the old one.
        let token = start_session(&h.state, user).await?.token;
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if who == Who::Key {
        req = req.header("x-api-key", &p.key_secret);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&b)?))?,
        None => req.body(Body::empty())?,
    };
    let resp = h.app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Shards of the matrix: rows `n` with `n % MATRIX_SHARDS == shard` run in one test
/// with its own harness. Every cell adds a fixture and every snapshot lists the
/// tenant, so one harness for all cells made the test quadratic (13 of the gate's
/// 37 minutes); shards divide that by their number and run in parallel.
const MATRIX_SHARDS: usize = 8;

macro_rules! matrix_shards {
    ($($name:ident = $shard:expr),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> Result<()> {
                every_endpoint_as_every_caller($shard).await
            }
        )+
        /// The shards above are all of them, so every row runs.
        #[test]
        fn matrix_shards_cover_every_row() {
            let shards: Vec<usize> = vec![$($shard),+];
            assert_eq!(shards, (0..MATRIX_SHARDS).collect::<Vec<_>>());
        }
    };
}

matrix_shards! {
    every_endpoint_as_every_caller_0 = 0,
    every_endpoint_as_every_caller_1 = 1,
    every_endpoint_as_every_caller_2 = 2,
    every_endpoint_as_every_caller_3 = 3,
    every_endpoint_as_every_caller_4 = 4,
    every_endpoint_as_every_caller_5 = 5,
    every_endpoint_as_every_caller_6 = 6,
    every_endpoint_as_every_caller_7 = 7,
}

/// Every row of [`table`] in `shard` as every caller of [`WHO`].
async fn every_endpoint_as_every_caller(shard: usize) -> Result<()> {
    let h = Harness::new().await?;
    let p = principals(&h).await?;
    let table = table();
    let rows: Vec<(usize, &Row)> = table
        .iter()
        .enumerate()
        .filter(|(n, _)| n % MATRIX_SHARDS == shard)
        .collect();
    assert!(!rows.is_empty(), "shard {shard} has rows");
    let mut calls = 0;
    let mut failures = Vec::new();
    for &(n, row) in &rows {
        for (i, who) in WHO.iter().copied().enumerate() {
            let fx = fixture(&h, &p, n * 10 + i).await?;
            let uri = substitute(row.path, &fx);
            let body = row.body.map(|b| b(&fx, p.password(who)));
            let before = snapshot(&h, &p, &fx).await?;
            let audit_before = match p.tenant(who) {
                Some(t) => h.access.list_audit(t, Page::default()).await?.total,
                None => 0,
            };
            let (status, text) = call_as(&h, &p, who, row.method, &uri, body).await?;
            calls += 1;
            let what = format!("{who:?} {} {}", row.method, row.path);
            let expected = row.expect[i];
            if status.as_u16() != expected {
                failures.push(format!("{what}: expected {expected}, got {status}: {text}"));
                continue;
            }
            // Errors use the JSON envelope.
            if status.as_u16() >= 400 {
                let v: Json = serde_json::from_str(&text).with_context(|| what.clone())?;
                assert!(v["error"]["code"].is_string(), "{what}: {text}");
                assert!(v["error"]["message"].is_string(), "{what}: {text}");
            }
            // Nothing of tenant A leaks to refused callers or to other tenants.
            let tenant_row = row.path.starts_with("/api/v1/tenants");
            let foreign = matches!(who, Who::Sys | Who::Other) && !tenant_row;
            if status.as_u16() >= 400 || foreign {
                for m in markers(&fx) {
                    assert!(!text.contains(&m), "{what} leaked {m}: {text}");
                }
                if foreign {
                    assert!(
                        !text.contains(&p.tenant_a.to_string()),
                        "{what} leaked tenant A's id: {text}"
                    );
                }
            }
            // Nothing changed after a refused call; foreign callers never change A.
            let after = snapshot(&h, &p, &fx).await?;
            if status.as_u16() >= 400 {
                assert_eq!(before, after, "{what} changed state");
            } else if matches!(who, Who::Sys | Who::Other) {
                assert_eq!(before.0, after.0, "{what} changed tenant A");
            }
            // Every successful change is audited with the caller as actor.
            let session_only = matches!(
                row.path,
                "/api/v1/auth/login" | "/api/v1/auth/refresh" | "/api/v1/auth/logout"
            );
            if row.method != "GET" && !session_only && status.is_success() {
                let tenant = p.tenant(who).context("tenant")?;
                let log = h.access.list_audit(tenant, Page::default()).await?;
                assert!(log.total > audit_before, "{what} was not audited");
                assert_eq!(
                    Some(log.items[0].actor.clone()),
                    p.actor(who),
                    "{what}: {:?}",
                    log.items[0]
                );
                let entry = serde_json::to_string(&log.items[0])?;
                assert!(!entry.contains("password\":\""), "{what}: {entry}");
                assert!(!entry.contains(&p.key_secret), "{what}: {entry}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(calls, rows.len() * WHO.len());
    eprintln!(
        "authorization matrix shard {shard}: {} of {} rows x {} callers = {calls} calls",
        rows.len(),
        table.len(),
        WHO.len()
    );
    // The principals of other tenants are untouched.
    assert!(h.meta.get_tenant(p.tenant_b).await?.is_some());
    Ok(())
}
