//! Conformance cases for [`AccessStore`].
//!
//! An access store shares its database with a [`MetadataStore`] (tenants, users and
//! devices live there), so every case takes both: `case(access, meta)`. Cases create
//! their own tenants, users and devices with fresh UUIDs and unique names, so all of
//! them can run in parallel against one shared database.
//!
//! Semantics pinned down here beyond the trait docs:
//! - `get_user_role` / `set_user_role` of a user that is not in the tenant are
//!   `NotFound` (a user without a custom role is `Ok(None)`).
//! - `create_api_key` refuses a custom role of another tenant (`NotFound`) and the
//!   built-in `SYS_ADMIN` authority (`Invalid`).
//! - `remove_group_device` and `list_group_devices` of a group that is not in the
//!   tenant are `NotFound`; removing a device that is not in the group is `Ok(false)`.
//! - Deleting a device (through the metadata store) takes it out of its groups.
//! - Audit entries with the same `at` are listed last-appended first.
//!
//! Run them all against a backend with [`crate::access_conformance!`].

use std::fmt::Debug;

use uuid::Uuid;

use crate::model::*;
use crate::{AccessStore, Error, MetadataStore, Result};

/// A short unique hex string.
fn unique() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A fixed base time for a case, in the past so ordering by it is deterministic.
fn base_ts() -> Timestamp {
    now_ms() - 1_000_000
}

#[track_caller]
fn expect_already_exists<T: Debug>(r: Result<T>, entity: &str) {
    match r {
        Err(Error::AlreadyExists { entity: e, .. }) if e == entity => {}
        other => panic!("expected AlreadyExists {{ entity: {entity:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn expect_not_found<T: Debug>(r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn expect_conflict<T: Debug>(r: Result<T>) {
    match r {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
}

fn page(offset: u64, limit: u64) -> Page {
    Page { offset, limit }
}

async fn new_tenant(meta: &dyn MetadataStore, created_at: Timestamp) -> Tenant {
    let t = Tenant {
        id: TenantId::new(),
        name: format!("tenant-{}", unique()),
        created_at,
    };
    meta.create_tenant(&t).await.expect("create_tenant");
    t
}

async fn new_user(meta: &dyn MetadataStore, tenant: TenantId, created_at: Timestamp) -> User {
    let u = User {
        id: UserId::new(),
        tenant_id: tenant,
        email: format!("user-{}@example.com", unique()),
        name: "Test User".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: Role::TenantUser,
        created_at,
    };
    meta.create_user(&u).await.expect("create_user");
    u
}

async fn new_device(
    meta: &dyn MetadataStore,
    tenant: TenantId,
    name: &str,
    created_at: Timestamp,
) -> Device {
    let (mut d, _password) = Device::new(tenant, name.into(), Some(format!("dev{}", unique())));
    d.created_at = created_at;
    d.updated_at = created_at;
    meta.create_device(&d).await.expect("create_device");
    d
}

fn role(tenant: TenantId, name: &str, created_at: Timestamp) -> CustomRole {
    CustomRole {
        id: RoleId::new(),
        tenant_id: tenant,
        name: name.into(),
        permissions: vec!["device:read".into(), "device:write".into()],
        created_at,
    }
}

fn api_key(tenant: TenantId, created_by: UserId, created_at: Timestamp) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        tenant_id: tenant,
        name: format!("key-{}", unique()),
        key_hash: hash_secret(&random_token(16)),
        role: Role::TenantUser,
        role_id: None,
        created_by,
        created_at,
        expires_at: None,
    }
}

fn group(
    tenant: TenantId,
    parent: Option<GroupId>,
    name: &str,
    created_at: Timestamp,
) -> DeviceGroup {
    DeviceGroup {
        id: GroupId::new(),
        tenant_id: tenant,
        parent_id: parent,
        name: name.into(),
        description: None,
        created_at,
    }
}

fn profile(tenant: TenantId, name: &str, created_at: Timestamp) -> DeviceProfile {
    DeviceProfile {
        created_at,
        ..DeviceProfile::new(tenant, name)
    }
}

fn audit(tenant: TenantId, action: &str, at: Timestamp) -> AuditEntry {
    AuditEntry {
        id: AuditId::new(),
        tenant_id: tenant,
        user_id: None,
        actor: "system".into(),
        action: action.into(),
        resource_type: "device".into(),
        resource_id: unique(),
        detail: serde_json::json!({}),
        at,
    }
}

/// `backend()` is a non-empty name.
pub async fn backend_name(access: &dyn AccessStore, _meta: &dyn MetadataStore) {
    assert!(!access.backend().is_empty());
}

/// `update_tenant` renames (nothing else changes); an unknown tenant is `NotFound`.
pub async fn tenant_update(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await;
    let other = new_tenant(meta, base).await;

    let mut renamed = t.clone();
    renamed.name = format!("renamed-{}", unique());
    renamed.created_at = base + 999;
    access.update_tenant(&renamed).await.expect("update_tenant");
    let got = meta.get_tenant(t.id).await.expect("get").expect("exists");
    assert_eq!(got.name, renamed.name);
    assert_eq!(got.created_at, t.created_at);
    assert_eq!(meta.get_tenant(other.id).await.expect("get"), Some(other));

    let ghost = Tenant {
        id: TenantId::new(),
        name: "ghost".into(),
        created_at: base,
    };
    expect_not_found(access.update_tenant(&ghost).await);
    assert_eq!(meta.get_tenant(ghost.id).await.expect("get"), None);
}

/// Everything a tenant owns, for [`tenant_delete_cascades`].
struct Populated {
    tenant: Tenant,
    user: User,
    device: Device,
    role: CustomRole,
    key: ApiKey,
    groups: Vec<DeviceGroup>,
    profile: DeviceProfile,
    audit: AuditEntry,
}

async fn populate(
    access: &dyn AccessStore,
    meta: &dyn MetadataStore,
    base: Timestamp,
) -> Populated {
    let tenant = new_tenant(meta, base).await;
    let t = tenant.id;
    let user = new_user(meta, t, base).await;
    let profile = profile(t, "sensors", base);
    access.create_profile(&profile).await.expect("profile");
    let mut device = new_device(meta, t, "member", base).await;
    device.profile_id = Some(profile.id);
    meta.update_device(&device).await.expect("update_device");
    meta.upsert_attributes(
        device.id,
        &[KeyValue {
            key: "fw".into(),
            ts: base,
            value: Value::String("1.0".into()),
        }],
    )
    .await
    .expect("attributes");
    meta.create_command(&CommandLog {
        id: CommandId::new(),
        tenant_id: t,
        device_id: device.id,
        message_id: "m1".into(),
        kind: CommandKind::Command,
        payload: serde_json::json!({"method": "reboot"}),
        status: CommandStatus::Pending,
        response: None,
        created_at: base,
        updated_at: base,
        expires_at: None,
        published: None,
    })
    .await
    .expect("command");
    let role = role(t, "operator", base);
    access.create_role(&role).await.expect("role");
    access
        .set_user_role(t, user.id, Some(role.id))
        .await
        .expect("set_user_role");
    let mut key = api_key(t, user.id, base);
    key.role_id = Some(role.id);
    access.create_api_key(&key).await.expect("key");
    let root = group(t, None, "site", base);
    access.create_group(&root).await.expect("group");
    let child = group(t, Some(root.id), "floor", base);
    access.create_group(&child).await.expect("group");
    for g in [&root, &child] {
        access
            .add_group_device(t, g.id, device.id)
            .await
            .expect("add_group_device");
    }
    let audit = audit(t, "device.create", base);
    access.append_audit(&audit).await.expect("audit");
    Populated {
        tenant,
        user,
        device,
        role,
        key,
        groups: vec![child, root],
        profile,
        audit,
    }
}

/// `delete_tenant` removes the tenant and every row it owns (users, devices with
/// attributes and downlink log, roles, keys, groups and memberships, profiles, audit
/// entries) and leaves other tenants untouched; a second delete is `NotFound`.
pub async fn tenant_delete_cascades(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let doomed = populate(access, meta, base).await;
    let kept = populate(access, meta, base).await;
    let t = doomed.tenant.id;

    access.delete_tenant(t).await.expect("delete_tenant");

    // Metadata rows.
    assert_eq!(meta.get_tenant(t).await.expect("get"), None);
    assert_eq!(meta.get_user(doomed.user.id).await.expect("get"), None);
    assert_eq!(
        meta.get_user_by_email(&doomed.user.email)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        meta.list_users(t, Page::default()).await.expect("l").total,
        0
    );
    let d = &doomed.device;
    assert_eq!(meta.get_device_by_id(d.id).await.expect("get"), None);
    assert_eq!(
        meta.get_device_by_username(&d.credentials.username)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        meta.list_devices(t, &DeviceFilter::default())
            .await
            .expect("list")
            .total,
        0
    );
    assert!(meta.get_attributes(d.id, None).await.expect("a").is_empty());
    assert_eq!(
        meta.get_command_by_message_id(d.id, "m1")
            .await
            .expect("cmd"),
        None
    );
    assert_eq!(
        meta.list_commands(t, d.id, Page::default())
            .await
            .expect("cmds")
            .total,
        0
    );

    // Access rows.
    assert_eq!(access.get_role(t, doomed.role.id).await.expect("get"), None);
    assert_eq!(
        access
            .list_roles(t, Page::default())
            .await
            .expect("l")
            .total,
        0
    );
    assert_eq!(
        access
            .get_api_key_by_hash(&doomed.key.key_hash)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        access
            .list_api_keys(t, Page::default())
            .await
            .expect("l")
            .total,
        0
    );
    for g in &doomed.groups {
        assert_eq!(access.get_group(t, g.id).await.expect("get"), None);
    }
    assert!(access.list_groups(t).await.expect("groups").is_empty());
    assert_eq!(
        access.get_profile(t, doomed.profile.id).await.expect("get"),
        None
    );
    assert_eq!(
        access
            .list_profiles(t, Page::default())
            .await
            .expect("l")
            .total,
        0
    );
    assert_eq!(
        access
            .list_audit(t, Page::default())
            .await
            .expect("l")
            .total,
        0
    );

    expect_not_found(access.delete_tenant(t).await);
    expect_not_found(access.delete_tenant(TenantId::new()).await);

    // The freed unique values can be used again.
    let reborn = new_tenant(meta, base).await;
    let mut u = doomed.user.clone();
    u.tenant_id = reborn.id;
    meta.create_user(&u).await.expect("email is free again");
    let mut k = doomed.key.clone();
    k.tenant_id = reborn.id;
    k.role_id = None;
    access
        .create_api_key(&k)
        .await
        .expect("key hash is free again");

    // The other tenant is untouched.
    let k = &kept;
    let kt = k.tenant.id;
    assert_eq!(
        meta.get_tenant(kt).await.expect("get"),
        Some(k.tenant.clone())
    );
    assert_eq!(
        meta.get_user(k.user.id).await.expect("get"),
        Some(k.user.clone())
    );
    assert_eq!(
        meta.get_device(kt, k.device.id).await.expect("get"),
        Some(k.device.clone())
    );
    assert_eq!(
        meta.get_attributes(k.device.id, None)
            .await
            .expect("a")
            .len(),
        1
    );
    assert_eq!(
        meta.list_commands(kt, k.device.id, Page::default())
            .await
            .expect("cmds")
            .total,
        1
    );
    assert_eq!(
        access.get_user_role(kt, k.user.id).await.expect("role"),
        Some(k.role.id)
    );
    assert_eq!(
        access.get_role(kt, k.role.id).await.expect("get"),
        Some(k.role.clone())
    );
    assert_eq!(
        access
            .get_api_key_by_hash(&k.key.key_hash)
            .await
            .expect("get"),
        Some(k.key.clone())
    );
    assert_eq!(access.list_groups(kt).await.expect("groups"), k.groups);
    for g in &k.groups {
        let members = access
            .list_group_devices(kt, g.id, Page::default())
            .await
            .expect("members");
        assert_eq!(members.items, vec![k.device.clone()]);
    }
    assert_eq!(
        access.get_profile(kt, k.profile.id).await.expect("get"),
        Some(k.profile.clone())
    );
    assert_eq!(
        access
            .list_audit(kt, Page::default())
            .await
            .expect("audit")
            .items,
        vec![k.audit.clone()]
    );
}

/// Roles round-trip, list by name with paging, update name and permissions, and
/// delete; a missing role is `None` / `NotFound`.
pub async fn role_crud(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let mut c = role(t, "charlie", base);
    c.permissions = vec![];
    let a = role(t, "alpha", base + 1);
    let mut b = role(t, "bravo", base + 2);
    b.permissions = vec![
        "alarm:ack".into(),
        "device:command".into(),
        "user:manage".into(),
    ];
    for r in [&c, &a, &b] {
        access.create_role(r).await.expect("create_role");
    }
    assert_eq!(
        access.get_role(t, b.id).await.expect("get"),
        Some(b.clone())
    );
    assert_eq!(
        access.get_role(t, c.id).await.expect("get"),
        Some(c.clone())
    );
    assert_eq!(access.get_role(t, RoleId::new()).await.expect("get"), None);

    let all = access.list_roles(t, Page::default()).await.expect("list");
    assert_eq!(
        (all.total, all.items),
        (3, vec![a.clone(), b.clone(), c.clone()])
    );
    let p = access.list_roles(t, page(1, 1)).await.expect("list");
    assert_eq!((p.total, p.items), (3, vec![b.clone()]));
    let p = access.list_roles(t, page(5, 10)).await.expect("list");
    assert_eq!(p.total, 3);
    assert!(p.items.is_empty());

    let mut changed = b.clone();
    changed.name = "zulu".into();
    changed.permissions = vec!["device:read".into()];
    changed.created_at = base + 500;
    access.update_role(&changed).await.expect("update_role");
    let got = access
        .get_role(t, b.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.name, "zulu");
    assert_eq!(got.permissions, vec!["device:read".to_string()]);
    assert_eq!(got.created_at, b.created_at);
    let names: Vec<String> = access
        .list_roles(t, Page::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["alpha", "charlie", "zulu"]);
    expect_not_found(access.update_role(&role(t, "ghost", base)).await);

    access.delete_role(t, a.id).await.expect("delete_role");
    assert_eq!(access.get_role(t, a.id).await.expect("get"), None);
    expect_not_found(access.delete_role(t, a.id).await);
    assert_eq!(
        access
            .list_roles(t, Page::default())
            .await
            .expect("l")
            .total,
        2
    );
}

/// Role names are unique per tenant (on create and rename); the same name in
/// another tenant is fine; a duplicate id is `AlreadyExists`.
pub async fn role_name_unique_per_tenant(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let first = role(t, "viewer", base);
    access.create_role(&first).await.expect("create_role");
    expect_already_exists(access.create_role(&role(t, "viewer", base)).await, "role");
    let mut same_id = role(t, "another", base);
    same_id.id = first.id;
    expect_already_exists(access.create_role(&same_id).await, "role");
    access
        .create_role(&role(other, "viewer", base))
        .await
        .expect("same name in another tenant");

    let second = role(t, "editor", base);
    access.create_role(&second).await.expect("create_role");
    let mut clash = second.clone();
    clash.name = "viewer".into();
    expect_already_exists(access.update_role(&clash).await, "role");
    assert_eq!(
        access.get_role(t, second.id).await.expect("get"),
        Some(second.clone())
    );
    assert_eq!(
        access
            .list_roles(t, Page::default())
            .await
            .expect("l")
            .total,
        2
    );

    // Deleting frees the name.
    access.delete_role(t, first.id).await.expect("delete");
    access
        .update_role(&clash)
        .await
        .expect("name is free again");
}

/// Another tenant cannot get, list, update or delete a role.
pub async fn role_tenant_isolation(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let owner = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let r = role(owner, "private", base);
    access.create_role(&r).await.expect("create_role");

    assert_eq!(access.get_role(other, r.id).await.expect("get"), None);
    let listed = access
        .list_roles(other, Page::default())
        .await
        .expect("list");
    assert_eq!(listed.total, 0);
    assert!(listed.items.is_empty());
    let mut hijack = r.clone();
    hijack.tenant_id = other;
    hijack.name = "hijacked".into();
    hijack.permissions = vec!["user:manage".into()];
    expect_not_found(access.update_role(&hijack).await);
    expect_not_found(access.delete_role(other, r.id).await);
    assert_eq!(access.get_role(owner, r.id).await.expect("get"), Some(r));
}

/// A user's custom role: none at first, set, replaced, cleared; a role of another
/// tenant or a missing role is `NotFound` and changes nothing; a user outside the
/// tenant is `NotFound`; `MetadataStore::update_user` keeps the assignment.
pub async fn user_role_assignment(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let user = new_user(meta, t, base).await;
    let r1 = role(t, "one", base);
    let r2 = role(t, "two", base);
    let foreign = role(other, "one", base);
    for r in [&r1, &r2, &foreign] {
        access.create_role(r).await.expect("create_role");
    }

    assert_eq!(access.get_user_role(t, user.id).await.expect("get"), None);
    access
        .set_user_role(t, user.id, Some(r1.id))
        .await
        .expect("set");
    assert_eq!(
        access.get_user_role(t, user.id).await.expect("get"),
        Some(r1.id)
    );
    access
        .set_user_role(t, user.id, Some(r2.id))
        .await
        .expect("replace");
    assert_eq!(
        access.get_user_role(t, user.id).await.expect("get"),
        Some(r2.id)
    );

    // Another tenant's role, or no role at all, is refused.
    expect_not_found(access.set_user_role(t, user.id, Some(foreign.id)).await);
    expect_not_found(access.set_user_role(t, user.id, Some(RoleId::new())).await);
    assert_eq!(
        access.get_user_role(t, user.id).await.expect("get"),
        Some(r2.id)
    );

    // The user seen from another tenant, or a user that does not exist.
    expect_not_found(access.get_user_role(other, user.id).await);
    expect_not_found(access.set_user_role(other, user.id, Some(foreign.id)).await);
    expect_not_found(access.set_user_role(other, user.id, None).await);
    expect_not_found(access.get_user_role(t, UserId::new()).await);
    expect_not_found(access.set_user_role(t, UserId::new(), Some(r1.id)).await);
    assert_eq!(
        access.get_user_role(t, user.id).await.expect("get"),
        Some(r2.id)
    );

    // Updating the user's other fields keeps the custom role.
    let mut renamed = user.clone();
    renamed.name = "Renamed".into();
    renamed.role = Role::TenantAdmin;
    meta.update_user(&renamed).await.expect("update_user");
    assert_eq!(
        access.get_user_role(t, user.id).await.expect("get"),
        Some(r2.id)
    );

    access.set_user_role(t, user.id, None).await.expect("clear");
    assert_eq!(access.get_user_role(t, user.id).await.expect("get"), None);
    assert_eq!(meta.get_user(user.id).await.expect("get"), Some(renamed));
}

/// `delete_role` is `Conflict` while a user or an API key uses the role, and
/// succeeds once neither does (the user cleared or deleted, the key revoked).
pub async fn delete_role_conflicts_while_assigned(
    access: &dyn AccessStore,
    meta: &dyn MetadataStore,
) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let u1 = new_user(meta, t, base).await;
    let u2 = new_user(meta, t, base).await;

    let by_users = role(t, "by-users", base);
    access.create_role(&by_users).await.expect("create_role");
    access
        .set_user_role(t, u1.id, Some(by_users.id))
        .await
        .expect("set");
    access
        .set_user_role(t, u2.id, Some(by_users.id))
        .await
        .expect("set");
    expect_conflict(access.delete_role(t, by_users.id).await);
    assert!(
        access
            .get_role(t, by_users.id)
            .await
            .expect("get")
            .is_some()
    );
    access.set_user_role(t, u1.id, None).await.expect("clear");
    expect_conflict(access.delete_role(t, by_users.id).await);
    meta.delete_user(t, u2.id).await.expect("delete_user");
    access
        .delete_role(t, by_users.id)
        .await
        .expect("unused role deletes");

    let by_key = role(t, "by-key", base);
    access.create_role(&by_key).await.expect("create_role");
    let mut key = api_key(t, u1.id, base);
    key.role_id = Some(by_key.id);
    access.create_api_key(&key).await.expect("create_api_key");
    expect_conflict(access.delete_role(t, by_key.id).await);
    assert!(access.get_role(t, by_key.id).await.expect("get").is_some());
    access.delete_api_key(t, key.id).await.expect("revoke");
    access
        .delete_role(t, by_key.id)
        .await
        .expect("unused role deletes");
    assert_eq!(
        access
            .list_roles(t, Page::default())
            .await
            .expect("l")
            .total,
        0
    );
}

/// API keys: found by hash with every field, listed newest first with paging,
/// revoked; hashes and ids are unique installation-wide; a custom role of another
/// tenant is `NotFound`; `SYS_ADMIN` keys are `Invalid`; other tenants cannot list
/// or revoke them.
pub async fn api_key_lifecycle(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let user = new_user(meta, t, base).await;
    let r = role(t, "integration", base);
    access.create_role(&r).await.expect("create_role");

    let k1 = api_key(t, user.id, base);
    let mut k2 = api_key(t, user.id, base + 1);
    k2.role = Role::TenantAdmin;
    k2.role_id = Some(r.id);
    k2.expires_at = Some(base + 86_400_000);
    let k3 = api_key(t, user.id, base + 2);
    for k in [&k1, &k2, &k3] {
        access.create_api_key(k).await.expect("create_api_key");
    }
    let foreign_key = api_key(other, user.id, base + 3);
    access
        .create_api_key(&foreign_key)
        .await
        .expect("create_api_key");

    assert_eq!(
        access.get_api_key_by_hash(&k2.key_hash).await.expect("get"),
        Some(k2.clone())
    );
    assert_eq!(
        access.get_api_key_by_hash(&k1.key_hash).await.expect("get"),
        Some(k1.clone())
    );
    assert_eq!(
        access
            .get_api_key_by_hash(&hash_secret("never issued"))
            .await
            .expect("get"),
        None
    );

    let all = access
        .list_api_keys(t, Page::default())
        .await
        .expect("list");
    assert_eq!(
        (all.total, all.items),
        (3, vec![k3.clone(), k2.clone(), k1.clone()])
    );
    let p = access.list_api_keys(t, page(1, 1)).await.expect("list");
    assert_eq!((p.total, p.items), (3, vec![k2.clone()]));
    let p = access.list_api_keys(t, page(3, 5)).await.expect("list");
    assert_eq!(p.total, 3);
    assert!(p.items.is_empty());

    // Uniqueness and validation.
    let mut dup_hash = api_key(other, user.id, base);
    dup_hash.key_hash = k1.key_hash.clone();
    expect_already_exists(access.create_api_key(&dup_hash).await, "api_key");
    let mut dup_id = api_key(t, user.id, base);
    dup_id.id = k1.id;
    expect_already_exists(access.create_api_key(&dup_id).await, "api_key");
    let foreign_role = role(other, "integration", base);
    access
        .create_role(&foreign_role)
        .await
        .expect("create_role");
    let mut cross = api_key(t, user.id, base);
    cross.role_id = Some(foreign_role.id);
    expect_not_found(access.create_api_key(&cross).await);
    let mut ghost_role = api_key(t, user.id, base);
    ghost_role.role_id = Some(RoleId::new());
    expect_not_found(access.create_api_key(&ghost_role).await);
    let mut sys = api_key(t, user.id, base);
    sys.role = Role::SysAdmin;
    match access.create_api_key(&sys).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("expected Invalid for a SYS_ADMIN key, got {other:?}"),
    }
    for k in [&cross, &ghost_role, &sys] {
        assert_eq!(
            access.get_api_key_by_hash(&k.key_hash).await.expect("get"),
            None
        );
    }
    assert_eq!(
        access
            .list_api_keys(t, Page::default())
            .await
            .expect("l")
            .total,
        3
    );

    // Tenant scope.
    let theirs = access
        .list_api_keys(other, Page::default())
        .await
        .expect("l");
    assert_eq!((theirs.total, theirs.items), (1, vec![foreign_key]));
    expect_not_found(access.delete_api_key(other, k1.id).await);
    assert!(
        access
            .get_api_key_by_hash(&k1.key_hash)
            .await
            .expect("get")
            .is_some()
    );

    // Revocation.
    access.delete_api_key(t, k1.id).await.expect("delete");
    assert_eq!(
        access.get_api_key_by_hash(&k1.key_hash).await.expect("get"),
        None
    );
    expect_not_found(access.delete_api_key(t, k1.id).await);
    expect_not_found(access.delete_api_key(t, ApiKeyId::new()).await);
    let rest = access
        .list_api_keys(t, Page::default())
        .await
        .expect("list");
    assert_eq!((rest.total, rest.items), (2, vec![k3, k2]));
}

/// Groups form a tree: the parent must be a group of the same tenant (`NotFound`
/// otherwise), names are unique among siblings (roots included) but may repeat
/// elsewhere; `list_groups` returns the tenant's groups by name.
pub async fn group_tree_rules(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let mut root = group(t, None, "b-site", base);
    root.description = Some("main site".into());
    let child = group(t, Some(root.id), "floor-1", base + 1);
    let grandchild = group(t, Some(child.id), "room-1", base + 2);
    let second_root = group(t, None, "a-site", base + 3);
    for g in [&root, &child, &grandchild, &second_root] {
        access.create_group(g).await.expect("create_group");
    }
    assert_eq!(
        access.get_group(t, root.id).await.expect("get"),
        Some(root.clone())
    );
    assert_eq!(
        access.get_group(t, grandchild.id).await.expect("get"),
        Some(grandchild.clone())
    );
    assert_eq!(
        access.get_group(t, GroupId::new()).await.expect("get"),
        None
    );

    // Parents must exist in the same tenant.
    let foreign_root = group(other, None, "b-site", base);
    access
        .create_group(&foreign_root)
        .await
        .expect("same root name in another tenant");
    expect_not_found(
        access
            .create_group(&group(t, Some(foreign_root.id), "x", base))
            .await,
    );
    expect_not_found(
        access
            .create_group(&group(other, Some(root.id), "x", base))
            .await,
    );
    expect_not_found(
        access
            .create_group(&group(t, Some(GroupId::new()), "x", base))
            .await,
    );

    // Sibling names are unique, roots included.
    expect_already_exists(
        access.create_group(&group(t, None, "b-site", base)).await,
        "group",
    );
    expect_already_exists(
        access
            .create_group(&group(t, Some(root.id), "floor-1", base))
            .await,
        "group",
    );
    let mut same_id = group(t, None, "fresh", base);
    same_id.id = root.id;
    expect_already_exists(access.create_group(&same_id).await, "group");
    let cousin = group(t, Some(second_root.id), "floor-1", base + 4);
    access
        .create_group(&cousin)
        .await
        .expect("same name under another parent");
    let nested_same = group(t, Some(child.id), "floor-1", base + 5);
    access
        .create_group(&nested_same)
        .await
        .expect("same name one level down");

    let listed = access.list_groups(t).await.expect("list_groups");
    let names: Vec<&str> = listed.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a-site", "b-site", "floor-1", "floor-1", "floor-1", "room-1"
        ]
    );
    assert_eq!(listed.len(), 6);
    for g in [
        &root,
        &child,
        &grandchild,
        &second_root,
        &cousin,
        &nested_same,
    ] {
        assert!(listed.contains(g), "{g:?} missing");
    }
    assert_eq!(
        access.list_groups(other).await.expect("list"),
        vec![foreign_root]
    );
    assert!(
        access
            .list_groups(TenantId::new())
            .await
            .expect("l")
            .is_empty()
    );
}

/// `update_group` renames, re-describes and moves (to another parent or to the
/// root); moving under itself or a descendant is `Conflict`; a new parent of another
/// tenant is `NotFound`; sibling names stay unique; another tenant cannot update.
pub async fn group_update_and_move(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let a = group(t, None, "a", base);
    let b = group(t, None, "b", base);
    let a1 = group(t, Some(a.id), "a1", base);
    let a11 = group(t, Some(a1.id), "a11", base);
    let foreign = group(other, None, "f", base);
    for g in [&a, &b, &a1, &a11, &foreign] {
        access.create_group(g).await.expect("create_group");
    }

    // Rename and describe.
    let mut changed = a1.clone();
    changed.name = "a1-renamed".into();
    changed.description = Some("first floor".into());
    changed.created_at = base + 77;
    access.update_group(&changed).await.expect("update_group");
    let got = access
        .get_group(t, a1.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.name, "a1-renamed");
    assert_eq!(got.description.as_deref(), Some("first floor"));
    assert_eq!(got.created_at, a1.created_at);
    assert_eq!(got.parent_id, Some(a.id));

    // Cycles are refused.
    let mut onto_self = got.clone();
    onto_self.parent_id = Some(a1.id);
    expect_conflict(access.update_group(&onto_self).await);
    let mut under_child = a.clone();
    under_child.parent_id = Some(a1.id);
    expect_conflict(access.update_group(&under_child).await);
    let mut under_grandchild = a.clone();
    under_grandchild.parent_id = Some(a11.id);
    expect_conflict(access.update_group(&under_grandchild).await);
    assert_eq!(
        access.get_group(t, a.id).await.expect("get"),
        Some(a.clone())
    );

    // A parent of another tenant, or none at all.
    let mut cross = got.clone();
    cross.parent_id = Some(foreign.id);
    expect_not_found(access.update_group(&cross).await);
    let mut ghost_parent = got.clone();
    ghost_parent.parent_id = Some(GroupId::new());
    expect_not_found(access.update_group(&ghost_parent).await);
    assert_eq!(
        access.get_group(t, a1.id).await.expect("get"),
        Some(got.clone())
    );

    // Move the subtree under b, then to the root.
    let mut moved = got.clone();
    moved.parent_id = Some(b.id);
    access.update_group(&moved).await.expect("move");
    assert_eq!(
        access.get_group(t, a1.id).await.expect("get"),
        Some(moved.clone())
    );
    assert_eq!(
        access.get_group(t, a11.id).await.expect("get"),
        Some(a11.clone())
    );
    let mut a_under_a11 = a.clone();
    a_under_a11.parent_id = Some(a11.id);
    access
        .update_group(&a_under_a11)
        .await
        .expect("a is no longer an ancestor of a11");
    let mut rooted = moved.clone();
    rooted.parent_id = None;
    access.update_group(&rooted).await.expect("to root");
    assert_eq!(
        access.get_group(t, a1.id).await.expect("get"),
        Some(rooted.clone())
    );

    // Sibling names stay unique when renaming or moving.
    let mut clash = rooted.clone();
    clash.name = "b".into();
    expect_already_exists(access.update_group(&clash).await, "group");
    let b_child = group(t, Some(b.id), "a1-renamed", base);
    access.create_group(&b_child).await.expect("create_group");
    let mut move_clash = rooted.clone();
    move_clash.parent_id = Some(b.id);
    expect_already_exists(access.update_group(&move_clash).await, "group");
    assert_eq!(
        access.get_group(t, a1.id).await.expect("get"),
        Some(rooted.clone())
    );

    // Another tenant's view.
    let mut hijack = rooted.clone();
    hijack.tenant_id = other;
    hijack.name = "hijacked".into();
    expect_not_found(access.update_group(&hijack).await);
    let mut hijack_move = rooted.clone();
    hijack_move.tenant_id = other;
    hijack_move.parent_id = Some(foreign.id);
    expect_not_found(access.update_group(&hijack_move).await);
    assert_eq!(access.get_group(other, a1.id).await.expect("get"), None);
    assert_eq!(access.get_group(t, a1.id).await.expect("get"), Some(rooted));
    expect_not_found(access.update_group(&group(t, None, "ghost", base)).await);
}

/// `delete_group` is `Conflict` while the group has children, removes the group's
/// memberships (not the devices), and is `NotFound` for another tenant or twice.
pub async fn group_delete(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let parent = group(t, None, "parent", base);
    let child = group(t, Some(parent.id), "child", base);
    for g in [&parent, &child] {
        access.create_group(g).await.expect("create_group");
    }
    let d = new_device(meta, t, "member", base).await;
    access
        .add_group_device(t, child.id, d.id)
        .await
        .expect("add");
    access
        .add_group_device(t, parent.id, d.id)
        .await
        .expect("add");

    expect_conflict(access.delete_group(t, parent.id).await);
    assert!(access.get_group(t, parent.id).await.expect("get").is_some());
    expect_not_found(access.delete_group(other, child.id).await);
    assert!(access.get_group(t, child.id).await.expect("get").is_some());

    access.delete_group(t, child.id).await.expect("delete leaf");
    assert_eq!(access.get_group(t, child.id).await.expect("get"), None);
    expect_not_found(access.delete_group(t, child.id).await);
    expect_not_found(
        access
            .list_group_devices(t, child.id, Page::default())
            .await,
    );
    // The device itself stays, and so does its other membership.
    assert_eq!(
        meta.get_device(t, d.id).await.expect("get"),
        Some(d.clone())
    );
    assert_eq!(
        access
            .list_group_devices(t, parent.id, Page::default())
            .await
            .expect("members")
            .items,
        vec![d.clone()]
    );

    // A group of the same name can be created again; a parent without children deletes.
    access
        .create_group(&group(t, Some(parent.id), "child", base))
        .await
        .expect("name is free again");
    let leftover = access.list_groups(t).await.expect("list");
    assert_eq!(leftover.len(), 2);
    access
        .delete_group(
            t,
            leftover
                .iter()
                .find(|g| g.name == "child")
                .expect("child")
                .id,
        )
        .await
        .expect("delete");
    access
        .delete_group(t, parent.id)
        .await
        .expect("delete parent");
    assert!(access.list_groups(t).await.expect("list").is_empty());
    assert_eq!(meta.get_device(t, d.id).await.expect("get"), Some(d));
}

/// Membership: adding is idempotent, listing pages the group's direct devices by
/// creation time, removing reports whether the device was in the group; devices or
/// groups of another tenant are `NotFound`; deleted devices leave their groups.
pub async fn group_membership(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let g = group(t, None, "g", base);
    let sub = group(t, Some(g.id), "sub", base);
    let foreign_group = group(other, None, "g", base);
    for x in [&g, &sub, &foreign_group] {
        access.create_group(x).await.expect("create_group");
    }
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(new_device(meta, t, &format!("d{i}"), base + i).await);
    }
    let outsider = new_device(meta, t, "not-a-member", base).await;
    let foreign_device = new_device(meta, other, "foreign", base).await;
    let in_sub = new_device(meta, t, "in-sub", base).await;
    access
        .add_group_device(t, sub.id, in_sub.id)
        .await
        .expect("add");

    // Added out of creation order, one twice.
    for d in [&devices[2], &devices[0], &devices[1], &devices[0]] {
        access.add_group_device(t, g.id, d.id).await.expect("add");
    }
    let all = access
        .list_group_devices(t, g.id, Page::default())
        .await
        .expect("list");
    assert_eq!((all.total, all.items), (3, devices.clone()));
    let p = access
        .list_group_devices(t, g.id, page(1, 1))
        .await
        .expect("list");
    assert_eq!((p.total, p.items), (3, vec![devices[1].clone()]));
    let p = access
        .list_group_devices(t, g.id, page(2, 5))
        .await
        .expect("list");
    assert_eq!((p.total, p.items), (3, vec![devices[2].clone()]));
    let p = access
        .list_group_devices(t, g.id, page(9, 5))
        .await
        .expect("list");
    assert_eq!(p.total, 3);
    assert!(p.items.is_empty());

    // Cross-tenant devices and groups.
    expect_not_found(access.add_group_device(t, g.id, foreign_device.id).await);
    expect_not_found(access.add_group_device(t, g.id, DeviceId::new()).await);
    expect_not_found(
        access
            .add_group_device(t, foreign_group.id, devices[0].id)
            .await,
    );
    expect_not_found(access.add_group_device(other, g.id, devices[0].id).await);
    expect_not_found(
        access
            .add_group_device(other, g.id, foreign_device.id)
            .await,
    );
    expect_not_found(
        access
            .add_group_device(t, GroupId::new(), devices[0].id)
            .await,
    );
    expect_not_found(access.remove_group_device(other, g.id, devices[0].id).await);
    expect_not_found(
        access
            .list_group_devices(other, g.id, Page::default())
            .await,
    );
    expect_not_found(
        access
            .list_group_devices(t, GroupId::new(), Page::default())
            .await,
    );
    let theirs = access
        .list_group_devices(other, foreign_group.id, Page::default())
        .await
        .expect("list");
    assert_eq!(theirs.total, 0);
    assert!(theirs.items.is_empty());

    // Removal.
    assert!(
        access
            .remove_group_device(t, g.id, devices[1].id)
            .await
            .expect("remove")
    );
    assert!(
        !access
            .remove_group_device(t, g.id, devices[1].id)
            .await
            .expect("remove again")
    );
    assert!(
        !access
            .remove_group_device(t, g.id, outsider.id)
            .await
            .expect("never a member")
    );
    assert!(
        !access
            .remove_group_device(t, g.id, foreign_device.id)
            .await
            .expect("another tenant's device is in no group of ours")
    );
    let rest = access
        .list_group_devices(t, g.id, Page::default())
        .await
        .expect("list");
    assert_eq!(
        (rest.total, rest.items),
        (2, vec![devices[0].clone(), devices[2].clone()])
    );

    // Direct members only.
    let direct = access
        .list_group_devices(t, sub.id, Page::default())
        .await
        .expect("list");
    assert_eq!((direct.total, direct.items), (1, vec![in_sub.clone()]));

    // A deleted device leaves its groups.
    meta.delete_device(t, devices[0].id)
        .await
        .expect("delete_device");
    let rest = access
        .list_group_devices(t, g.id, Page::default())
        .await
        .expect("list");
    assert_eq!((rest.total, rest.items), (1, vec![devices[2].clone()]));
    assert!(
        !access
            .remove_group_device(t, g.id, devices[0].id)
            .await
            .expect("gone")
    );
}

/// A profile is found by its provisioning secret's hash across tenants; an unknown
/// hash finds nothing, and a rotated secret no longer finds it.
pub async fn profile_by_provision_secret(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let secret = format!("secret-{}", ProfileId::new());
    let mut p = profile(t, "provisioned", base);
    p.auto_register = true;
    p.provision_secret_hash = Some(hash_secret(&secret));
    access.create_profile(&p).await.expect("create_profile");
    assert_eq!(
        access
            .get_profile_by_provision_secret(&hash_secret(&secret))
            .await
            .expect("lookup"),
        Some(p.clone())
    );
    assert_eq!(
        access
            .get_profile_by_provision_secret(&hash_secret("no such secret"))
            .await
            .expect("lookup"),
        None
    );
    p.provision_secret_hash = Some(hash_secret(&format!("{secret}-rotated")));
    access.update_profile(&p).await.expect("update_profile");
    assert_eq!(
        access
            .get_profile_by_provision_secret(&hash_secret(&secret))
            .await
            .expect("lookup"),
        None
    );
}

/// Profiles round-trip with every field, list by name with paging, update their
/// mutable fields and delete; names are unique per tenant (create and rename).
pub async fn profile_crud(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let mut gw = profile(t, "gateways", base);
    gw.device_type = DeviceType::Gateway;
    gw.heartbeat_secs = Some(60);
    gw.auto_register = true;
    gw.provision_secret_hash = Some(hash_secret("provision"));
    gw.voucher_type = crate::VoucherType::AccessToken;
    let mut sub = profile(t, "children", base + 1);
    sub.device_type = DeviceType::SubDevice;
    sub.online_timeout_secs = Some(u32::MAX);
    let plain = profile(t, "plain", base + 2);
    for p in [&gw, &sub, &plain] {
        access.create_profile(p).await.expect("create_profile");
    }
    assert_eq!(
        access.get_profile(t, gw.id).await.expect("get"),
        Some(gw.clone())
    );
    assert_eq!(
        access.get_profile(t, sub.id).await.expect("get"),
        Some(sub.clone())
    );
    assert_eq!(
        access.get_profile(t, ProfileId::new()).await.expect("get"),
        None
    );

    let all = access
        .list_profiles(t, Page::default())
        .await
        .expect("list");
    assert_eq!(
        (all.total, all.items),
        (3, vec![sub.clone(), gw.clone(), plain.clone()])
    );
    let p = access.list_profiles(t, page(1, 1)).await.expect("list");
    assert_eq!((p.total, p.items), (3, vec![gw.clone()]));
    let p = access.list_profiles(t, page(4, 1)).await.expect("list");
    assert_eq!(p.total, 3);
    assert!(p.items.is_empty());

    // Unique names.
    expect_already_exists(
        access.create_profile(&profile(t, "plain", base)).await,
        "profile",
    );
    let mut same_id = profile(t, "other-name", base);
    same_id.id = gw.id;
    expect_already_exists(access.create_profile(&same_id).await, "profile");
    access
        .create_profile(&profile(other, "plain", base))
        .await
        .expect("same name in another tenant");
    let mut clash = plain.clone();
    clash.name = "gateways".into();
    expect_already_exists(access.update_profile(&clash).await, "profile");

    // Update replaces the mutable fields.
    let mut changed = gw.clone();
    changed.name = "gateways-v2".into();
    changed.device_type = DeviceType::Direct;
    changed.heartbeat_secs = None;
    changed.online_timeout_secs = Some(300);
    changed.auto_register = false;
    changed.provision_secret_hash = None;
    access
        .update_profile(&changed)
        .await
        .expect("update_profile");
    assert_eq!(
        access.get_profile(t, gw.id).await.expect("get"),
        Some(changed.clone())
    );
    expect_not_found(access.update_profile(&profile(t, "ghost", base)).await);

    access.delete_profile(t, plain.id).await.expect("delete");
    assert_eq!(access.get_profile(t, plain.id).await.expect("get"), None);
    expect_not_found(access.delete_profile(t, plain.id).await);
    let rest = access
        .list_profiles(t, Page::default())
        .await
        .expect("list");
    assert_eq!((rest.total, rest.items), (2, vec![sub, changed]));
}

/// Another tenant cannot get, list, update or delete a profile.
pub async fn profile_tenant_isolation(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let owner = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let p = profile(owner, "private", base);
    access.create_profile(&p).await.expect("create_profile");

    assert_eq!(access.get_profile(other, p.id).await.expect("get"), None);
    let listed = access
        .list_profiles(other, Page::default())
        .await
        .expect("l");
    assert_eq!(listed.total, 0);
    assert!(listed.items.is_empty());
    let mut hijack = p.clone();
    hijack.tenant_id = other;
    hijack.name = "hijacked".into();
    hijack.auto_register = true;
    expect_not_found(access.update_profile(&hijack).await);
    expect_not_found(access.delete_profile(other, p.id).await);
    assert_eq!(access.get_profile(owner, p.id).await.expect("get"), Some(p));
}

/// `delete_profile` is `Conflict` while a device uses the profile
/// (`Device::profile_id`), and succeeds once none does.
pub async fn profile_delete_conflicts_while_used(
    access: &dyn AccessStore,
    meta: &dyn MetadataStore,
) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let p = profile(t, "in-use", base);
    access.create_profile(&p).await.expect("create_profile");
    let mut d1 = new_device(meta, t, "d1", base).await;
    d1.profile_id = Some(p.id);
    meta.update_device(&d1).await.expect("update_device");
    let (mut d2, _) = Device::new(t, "d2".into(), Some(format!("dev{}", unique())));
    d2.profile_id = Some(p.id);
    meta.create_device(&d2).await.expect("create_device");

    expect_conflict(access.delete_profile(t, p.id).await);
    d1.profile_id = None;
    meta.update_device(&d1).await.expect("update_device");
    expect_conflict(access.delete_profile(t, p.id).await);
    assert_eq!(
        access.get_profile(t, p.id).await.expect("get"),
        Some(p.clone())
    );
    meta.delete_device(t, d2.id).await.expect("delete_device");
    access
        .delete_profile(t, p.id)
        .await
        .expect("unused profile deletes");
    assert_eq!(access.get_profile(t, p.id).await.expect("get"), None);
}

/// The audit log: entries round-trip, list newest first (ties: last appended
/// first) with paging and the tenant's total; other tenants see none of them; a
/// duplicate id is `AlreadyExists`.
pub async fn audit_log(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    let base = base_ts();
    let t = new_tenant(meta, base).await.id;
    let other = new_tenant(meta, base).await.id;
    let user = new_user(meta, t, base).await;

    let mut first = audit(t, "device.create", base);
    first.user_id = Some(user.id);
    first.actor = user.email.clone();
    first.detail = serde_json::json!({"name": "pump", "fields": ["a", 1, null, {"n": 2.5}]});
    let mut late = audit(t, "device.delete", base + 20);
    late.actor = "api-key:ci".into();
    let tie_a = audit(t, "user.create", base + 10);
    let tie_b = audit(t, "user.update", base + 10);
    // Appended out of time order.
    for e in [&first, &late, &tie_a, &tie_b] {
        access.append_audit(e).await.expect("append_audit");
    }
    let theirs = audit(other, "device.create", base + 30);
    access.append_audit(&theirs).await.expect("append_audit");

    let expected = vec![late.clone(), tie_b.clone(), tie_a.clone(), first.clone()];
    let all = access.list_audit(t, Page::default()).await.expect("list");
    assert_eq!((all.total, all.items), (4, expected.clone()));
    let p = access.list_audit(t, page(1, 2)).await.expect("list");
    assert_eq!((p.total, p.items), (4, expected[1..3].to_vec()));
    let p = access.list_audit(t, page(3, 2)).await.expect("list");
    assert_eq!((p.total, p.items), (4, expected[3..].to_vec()));
    let p = access.list_audit(t, page(4, 2)).await.expect("list");
    assert_eq!(p.total, 4);
    assert!(p.items.is_empty());

    let seen = access
        .list_audit(other, Page::default())
        .await
        .expect("list");
    assert_eq!((seen.total, seen.items), (1, vec![theirs]));
    let none = access
        .list_audit(TenantId::new(), Page::default())
        .await
        .expect("list");
    assert_eq!(none.total, 0);
    assert!(none.items.is_empty());

    let mut dup = audit(t, "again", base);
    dup.id = first.id;
    expect_already_exists(access.append_audit(&dup).await, "audit");
    assert_eq!(
        access
            .list_audit(t, Page::default())
            .await
            .expect("l")
            .total,
        4
    );
}

/// Stamps out one `#[tokio::test]` per [`crate::testing::access`] case.
///
/// The argument is an expression evaluating to a future whose output is
/// `Option<S>`, where `S` is a tuple: `&*s.0` is a `&dyn AccessStore` and `&*s.1` a
/// `&dyn MetadataStore` over the same database (for example
/// `(Arc<dyn AccessStore>, Arc<dyn MetadataStore>)`); further tuple fields (a temporary
/// directory, a schema guard) live as long as the test. `None` skips the test. It is
/// evaluated once per test. The calling crate needs `tokio`; invoke the macro inside
/// its own module.
///
/// ```ignore
/// mod sqlite_memory {
///     tp_core::access_conformance!(async {
///         let store = std::sync::Arc::new(MyStore::in_memory().await.unwrap());
///         let access: tp_core::AccessStoreRef = store.clone();
///         let meta: tp_core::MetadataStoreRef = store;
///         Some((access, meta))
///     });
/// }
/// ```
#[macro_export]
macro_rules! access_conformance {
    ($make:expr $(,)?) => {
        $crate::__access_conformance_tests!($make;
            backend_name,
            tenant_update,
            tenant_delete_cascades,
            role_crud,
            role_name_unique_per_tenant,
            role_tenant_isolation,
            user_role_assignment,
            delete_role_conflicts_while_assigned,
            api_key_lifecycle,
            group_tree_rules,
            group_update_and_move,
            group_delete,
            group_membership,
            profile_crud,
            profile_by_provision_secret,
            profile_tenant_isolation,
            profile_delete_conflicts_while_used,
            audit_log,
        );
    };
}

/// Body of [`access_conformance!`]: one test per listed case, each given both stores.
#[doc(hidden)]
#[macro_export]
macro_rules! __access_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(stores) = ($make).await else {
                    return;
                };
                $crate::testing::access::$case(&*stores.0, &*stores.1).await;
            }
        )+
    };
}

/// Runs every case in turn against one pair of stores: for backends outside a test
/// harness. Keep the list in step with [`access_conformance!`];
/// `every_case_is_in_run_all` below checks it.
pub async fn run_all(access: &dyn AccessStore, meta: &dyn MetadataStore) {
    backend_name(access, meta).await;
    tenant_update(access, meta).await;
    tenant_delete_cascades(access, meta).await;
    role_crud(access, meta).await;
    role_name_unique_per_tenant(access, meta).await;
    role_tenant_isolation(access, meta).await;
    user_role_assignment(access, meta).await;
    delete_role_conflicts_while_assigned(access, meta).await;
    api_key_lifecycle(access, meta).await;
    group_tree_rules(access, meta).await;
    group_update_and_move(access, meta).await;
    group_delete(access, meta).await;
    group_membership(access, meta).await;
    profile_crud(access, meta).await;
    profile_by_provision_secret(access, meta).await;
    profile_tenant_isolation(access, meta).await;
    profile_delete_conflicts_while_used(access, meta).await;
    audit_log(access, meta).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_case_is_in_run_all() {
        let src = include_str!("access.rs");
        let (macro_part, run_all_part) = (
            &src[src.find("macro_rules! access_conformance").unwrap()..],
            &src[src.find("pub async fn run_all").unwrap()..],
        );
        let macro_part = &macro_part[..macro_part.find(");").unwrap()];
        let run_all_part = &run_all_part[..run_all_part.find("\n}").unwrap()];
        let mut cases = 0;
        for case in src
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|l| l.split('(').next())
        {
            if case == "run_all" {
                continue;
            }
            cases += 1;
            assert!(
                macro_part.contains(&format!("{case},")),
                "{case} missing from the macro"
            );
            assert!(
                run_all_part.contains(&format!("{case}(access, meta)")),
                "{case} missing from run_all"
            );
        }
        assert!(cases > 10);
    }
}
