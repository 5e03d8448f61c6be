//! Conformance cases for [`MetadataStore`].
//!
//! Every case creates its own tenants, users and devices with fresh UUIDs and unique
//! emails / device numbers / usernames, so all cases can run in parallel against one
//! shared database. Installation-wide reads (`list_tenants`, `count_users`) are
//! asserted only on the rows the case created.
//!
//! Run them all against a backend with [`crate::metadata_conformance!`].

use std::fmt::Debug;

use uuid::Uuid;

use crate::model::*;
use crate::{Error, MetadataStore, Result};

/// A short unique hex string (no `_`, `%`, or letters beyond `a-f`).
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

async fn new_tenant(store: &dyn MetadataStore, created_at: Timestamp) -> Tenant {
    let t = Tenant {
        id: TenantId::new(),
        name: format!("tenant-{}", unique()),
        created_at,
    };
    store.create_tenant(&t).await.expect("create_tenant");
    t
}

fn new_user(tenant: TenantId, created_at: Timestamp) -> User {
    User {
        id: UserId::new(),
        tenant_id: tenant,
        email: format!("user-{}@example.com", unique()),
        name: "Test User".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: Role::TenantUser,
        created_at,
    }
}

fn new_device(tenant: TenantId, name: &str, created_at: Timestamp) -> Device {
    let (mut d, _password) = Device::new(tenant, name.into(), Some(format!("dev{}", unique())));
    d.created_at = created_at;
    d.updated_at = created_at;
    d
}

/// `backend()` is a non-empty name and `healthcheck()` succeeds.
pub async fn backend_and_healthcheck(store: &dyn MetadataStore) {
    assert!(!store.backend().is_empty());
    store.healthcheck().await.expect("healthcheck");
}

/// Tenants round-trip, a duplicate id is `AlreadyExists`, and `list_tenants` pages
/// in creation order.
pub async fn tenant_create_get_list(store: &dyn MetadataStore) {
    let base = base_ts();
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(new_tenant(store, base + i).await);
    }
    assert_eq!(
        store.get_tenant(mine[1].id).await.expect("get_tenant"),
        Some(mine[1].clone())
    );
    assert_eq!(store.get_tenant(TenantId::new()).await.expect("get"), None);
    expect_already_exists(store.create_tenant(&mine[0]).await, "tenant");

    let one = store
        .list_tenants(Page {
            offset: 0,
            limit: 1,
        })
        .await
        .expect("list_tenants");
    assert_eq!(one.items.len(), 1);
    assert!(one.total >= 3);

    // Page through everything with a small page size; ours appear in creation order.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = store
            .list_tenants(Page { offset, limit: 50 })
            .await
            .expect("list_tenants");
        assert!(page.items.len() <= 50);
        if page.items.is_empty() {
            break;
        }
        offset += page.items.len() as u64;
        seen.extend(page.items);
    }
    let ours: Vec<Tenant> = seen
        .into_iter()
        .filter(|t| mine.iter().any(|m| m.id == t.id))
        .collect();
    assert_eq!(ours, mine);
}

/// Authentication state round-trips until it expires, a put replaces value and
/// expiry, and a purge drops only what has expired.
pub async fn auth_state_round_trip(store: &dyn MetadataStore) {
    let key = format!("session:{}", unique());
    let now = 1_700_000_000_000;
    assert_eq!(store.get_auth_state(&key, now).await.expect("get"), None);
    store
        .put_auth_state(&key, "revoked", now + 1_000)
        .await
        .expect("put");
    assert_eq!(
        store
            .get_auth_state(&key, now)
            .await
            .expect("get")
            .as_deref(),
        Some("revoked")
    );
    // A later put replaces value and expiry.
    store
        .put_auth_state(&key, "again", now + 5_000)
        .await
        .expect("put again");
    assert_eq!(
        store
            .get_auth_state(&key, now + 2_000)
            .await
            .expect("get")
            .as_deref(),
        Some("again")
    );
    // Expired entries read as absent and are purged.
    assert_eq!(
        store.get_auth_state(&key, now + 5_000).await.expect("get"),
        None
    );
    let other = format!("session:{}", unique());
    store
        .put_auth_state(&other, "x", now + 10_000)
        .await
        .expect("put");
    assert!(store.purge_auth_state(now + 5_000).await.expect("purge") >= 1);
    assert_eq!(store.get_auth_state(&key, now).await.expect("get"), None);
    assert_eq!(
        store
            .get_auth_state(&other, now)
            .await
            .expect("get")
            .as_deref(),
        Some("x")
    );
}

/// Users round-trip by id and email; update replaces name, hash and role only;
/// delete is tenant-scoped and `NotFound` when missing.
pub async fn user_crud(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let other = new_tenant(store, base).await;
    let user = new_user(tenant.id, base);
    store.create_user(&user).await.expect("create_user");
    assert!(store.count_users().await.expect("count_users") >= 1);

    assert_eq!(
        store.get_user(user.id).await.expect("get"),
        Some(user.clone())
    );
    assert_eq!(
        store
            .get_user_by_email(&user.email)
            .await
            .expect("by email"),
        Some(user.clone())
    );
    assert_eq!(store.get_user(UserId::new()).await.expect("get"), None);
    assert_eq!(
        store
            .get_user_by_email(&format!("nobody-{}@example.com", unique()))
            .await
            .expect("by email"),
        None
    );

    // Update: mutable fields change, identity fields do not.
    let mut changed = user.clone();
    changed.name = "Renamed".into();
    changed.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3".into();
    changed.role = Role::TenantAdmin;
    store.update_user(&changed).await.expect("update_user");
    let got = store.get_user(user.id).await.expect("get").expect("exists");
    assert_eq!(got.name, "Renamed");
    assert_eq!(got.password_hash, changed.password_hash);
    assert_eq!(got.role, Role::TenantAdmin);
    assert_eq!(got.email, user.email);
    assert_eq!(got.tenant_id, user.tenant_id);
    assert_eq!(got.created_at, user.created_at);

    expect_not_found(store.update_user(&new_user(tenant.id, base)).await);

    // Delete is scoped by tenant.
    expect_not_found(store.delete_user(other.id, user.id).await);
    assert!(store.get_user(user.id).await.expect("get").is_some());
    store.delete_user(tenant.id, user.id).await.expect("delete");
    assert_eq!(store.get_user(user.id).await.expect("get"), None);
    assert_eq!(
        store
            .get_user_by_email(&user.email)
            .await
            .expect("by email"),
        None
    );
    expect_not_found(store.delete_user(tenant.id, user.id).await);
}

/// A second user with an existing email (any tenant) is `AlreadyExists`; after the
/// first user is deleted the email is free again.
pub async fn user_email_unique(store: &dyn MetadataStore) {
    let base = base_ts();
    let t1 = new_tenant(store, base).await;
    let t2 = new_tenant(store, base).await;
    let first = new_user(t1.id, base);
    store.create_user(&first).await.expect("create_user");

    let mut dup = new_user(t2.id, base);
    dup.email = first.email.clone();
    expect_already_exists(store.create_user(&dup).await, "user");
    // The same id again is a conflict too.
    let mut same_id = new_user(t1.id, base);
    same_id.id = first.id;
    expect_already_exists(store.create_user(&same_id).await, "user");
    assert_eq!(store.get_user(dup.id).await.expect("get"), None);

    store.delete_user(t1.id, first.id).await.expect("delete");
    store.create_user(&dup).await.expect("email is free again");
}

/// `list_users` pages a tenant's users in creation order with the tenant's total.
pub async fn user_list_paging(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let other = new_tenant(store, base).await;
    let mut users = Vec::new();
    for i in 0..3 {
        let u = new_user(tenant.id, base + i);
        store.create_user(&u).await.expect("create_user");
        users.push(u);
    }
    store
        .create_user(&new_user(other.id, base))
        .await
        .expect("create_user");
    assert!(store.count_users().await.expect("count") >= 4);

    let all = store
        .list_users(tenant.id, Page::default())
        .await
        .expect("list");
    assert_eq!(all.total, 3);
    assert_eq!(all.items, users);

    let p1 = store
        .list_users(
            tenant.id,
            Page {
                offset: 0,
                limit: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(p1.total, 3);
    assert_eq!(p1.items, users[..2].to_vec());
    let p2 = store
        .list_users(
            tenant.id,
            Page {
                offset: 2,
                limit: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(p2.total, 3);
    assert_eq!(p2.items, users[2..].to_vec());
    let past = store
        .list_users(
            tenant.id,
            Page {
                offset: 10,
                limit: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(past.total, 3);
    assert!(past.items.is_empty());

    let empty = store
        .list_users(TenantId::new(), Page::default())
        .await
        .expect("list");
    assert_eq!(empty.total, 0);
    assert!(empty.items.is_empty());
}

/// Every device field round-trips and the device is found by id, username and number.
pub async fn device_round_trip_and_lookups(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let gateway = new_device(tenant.id, "gateway", base);
    store.create_device(&gateway).await.expect("create gateway");

    let mut d = new_device(tenant.id, "sensor", base + 1);
    d.profile_id = Some(ProfileId::new());
    d.parent_id = Some(gateway.id);
    d.sub_device_addr = Some("addr-7".into());
    d.label = Some("roof".into());
    d.enabled = false;
    d.online = true;
    d.last_seen = Some(base + 5);
    d.updated_at = base + 9;
    store.create_device(&d).await.expect("create_device");

    assert_eq!(
        store.get_device(tenant.id, d.id).await.expect("get"),
        Some(d.clone())
    );
    assert_eq!(
        store.get_device_by_id(d.id).await.expect("by id"),
        Some(d.clone())
    );
    assert_eq!(
        store
            .get_device_by_username(&d.credentials.username)
            .await
            .expect("by username"),
        Some(d.clone())
    );
    assert_eq!(
        store
            .get_device_by_number(&d.device_number)
            .await
            .expect("by number"),
        Some(d.clone())
    );
    assert_eq!(
        store.get_device(tenant.id, gateway.id).await.expect("get"),
        Some(gateway.clone())
    );
    // An access-token device is found by its token's key and keeps its voucher type.
    let mut token_device = new_device(tenant.id, "token", base + 2);
    let token = format!("token-{}", unique());
    token_device.credentials = crate::DeviceCredentials::access_token(&token);
    store
        .create_device(&token_device)
        .await
        .expect("create token device");
    assert_eq!(
        store
            .get_device_by_username(&crate::access_token_key(&token))
            .await
            .expect("by token key"),
        Some(token_device.clone())
    );
    assert_eq!(
        store
            .get_device_by_username(&token)
            .await
            .expect("by token"),
        None,
        "the token itself is not stored"
    );
    assert_eq!(
        store.get_device_by_id(DeviceId::new()).await.expect("get"),
        None
    );
    assert_eq!(
        store
            .get_device_by_username(&format!("nobody{}", unique()))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_device_by_number(&format!("nothing{}", unique()))
            .await
            .expect("get"),
        None
    );
}

/// Another tenant cannot read, list, update or delete a device.
pub async fn device_tenant_scoping(store: &dyn MetadataStore) {
    let base = base_ts();
    let owner = new_tenant(store, base).await;
    let other = new_tenant(store, base).await;
    let d = new_device(owner.id, "scoped", base);
    store.create_device(&d).await.expect("create_device");

    assert_eq!(store.get_device(other.id, d.id).await.expect("get"), None);
    let listed = store
        .list_devices(other.id, &DeviceFilter::default())
        .await
        .expect("list");
    assert_eq!(listed.total, 0);
    assert!(listed.items.is_empty());

    let mut hijack = d.clone();
    hijack.tenant_id = other.id;
    hijack.name = "hijacked".into();
    expect_not_found(store.update_device(&hijack).await);
    expect_not_found(store.delete_device(other.id, d.id).await);
    assert_eq!(
        store.get_device(owner.id, d.id).await.expect("get"),
        Some(d.clone())
    );
}

/// Device id, number and username are each unique installation-wide.
pub async fn device_uniqueness(store: &dyn MetadataStore) {
    let base = base_ts();
    let t1 = new_tenant(store, base).await;
    let t2 = new_tenant(store, base).await;
    let first = new_device(t1.id, "first", base);
    store.create_device(&first).await.expect("create_device");

    let mut same_number = new_device(t2.id, "second", base);
    same_number.device_number = first.device_number.clone();
    expect_already_exists(store.create_device(&same_number).await, "device");

    let mut same_username = new_device(t2.id, "third", base);
    same_username.credentials.username = first.credentials.username.clone();
    expect_already_exists(store.create_device(&same_username).await, "device");

    let mut same_id = new_device(t1.id, "fourth", base);
    same_id.id = first.id;
    expect_already_exists(store.create_device(&same_id).await, "device");

    // None of the rejected rows exist.
    assert_eq!(
        store.get_device_by_id(same_number.id).await.expect("get"),
        None
    );
    assert_eq!(
        store.get_device_by_id(same_username.id).await.expect("get"),
        None
    );
    assert_eq!(
        store
            .get_device_by_username(&same_number.credentials.username)
            .await
            .expect("get"),
        None
    );

    // Updating into a taken number or username is a conflict too.
    let second = new_device(t1.id, "second", base + 1);
    store.create_device(&second).await.expect("create_device");
    let mut clash = second.clone();
    clash.device_number = first.device_number.clone();
    expect_already_exists(store.update_device(&clash).await, "device");
    let mut clash = second.clone();
    clash.credentials.username = first.credentials.username.clone();
    expect_already_exists(store.update_device(&clash).await, "device");
    assert_eq!(
        store.get_device(t1.id, second.id).await.expect("get"),
        Some(second)
    );
}

/// `list_devices` pages in creation order with a total, and `search` is a
/// case-insensitive literal substring of name or device number.
pub async fn device_list_paging_and_search(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let other = new_tenant(store, base).await;
    let names = ["alpha-1", "Alpha-2", "beta-3", "gamma_4", "100%"];
    let mut devices = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut d = new_device(tenant.id, name, base + i as i64);
        d.device_number = format!("dev{}-n{i}", unique());
        store.create_device(&d).await.expect("create_device");
        devices.push(d);
    }
    store
        .create_device(&new_device(other.id, "alpha-other", base))
        .await
        .expect("create_device");

    let list = |search: Option<&str>, offset: u64, limit: u64| DeviceFilter {
        search: search.map(str::to_owned),
        online: None,
        page: Page { offset, limit },
    };

    let all = store
        .list_devices(tenant.id, &list(None, 0, 100))
        .await
        .expect("list");
    assert_eq!(all.total, 5);
    assert_eq!(all.items, devices);

    let p = store
        .list_devices(tenant.id, &list(None, 0, 2))
        .await
        .expect("list");
    assert_eq!((p.total, p.items), (5, devices[0..2].to_vec()));
    let p = store
        .list_devices(tenant.id, &list(None, 2, 2))
        .await
        .expect("list");
    assert_eq!((p.total, p.items), (5, devices[2..4].to_vec()));
    let p = store
        .list_devices(tenant.id, &list(None, 4, 2))
        .await
        .expect("list");
    assert_eq!((p.total, p.items), (5, devices[4..].to_vec()));
    let p = store
        .list_devices(tenant.id, &list(None, 9, 2))
        .await
        .expect("list");
    assert_eq!(p.total, 5);
    assert!(p.items.is_empty());

    // Name, case-insensitive; the other tenant's "alpha-other" is not included.
    let s = store
        .list_devices(tenant.id, &list(Some("ALPHA"), 0, 100))
        .await
        .expect("search");
    assert_eq!((s.total, s.items), (2, devices[0..2].to_vec()));
    // Search and paging combine.
    let s = store
        .list_devices(tenant.id, &list(Some("alpha"), 1, 1))
        .await
        .expect("search");
    assert_eq!((s.total, s.items), (2, devices[1..2].to_vec()));
    // Device number.
    let s = store
        .list_devices(tenant.id, &list(Some("-N3"), 0, 100))
        .await
        .expect("search");
    assert_eq!((s.total, s.items), (1, vec![devices[3].clone()]));
    // LIKE wildcards are literals.
    let s = store
        .list_devices(tenant.id, &list(Some("%"), 0, 100))
        .await
        .expect("search");
    assert_eq!((s.total, s.items), (1, vec![devices[4].clone()]));
    let s = store
        .list_devices(tenant.id, &list(Some("_"), 0, 100))
        .await
        .expect("search");
    assert_eq!((s.total, s.items), (1, vec![devices[3].clone()]));
    let s = store
        .list_devices(tenant.id, &list(Some("zzz"), 0, 100))
        .await
        .expect("search");
    assert_eq!(s.total, 0);
    assert!(s.items.is_empty());

    // Online filter: totals count only the matching state (dashboards use it).
    store
        .set_device_online(devices[1].id, true, base + 1)
        .await
        .expect("set_device_online");
    store
        .set_device_online(devices[3].id, true, base + 1)
        .await
        .expect("set_device_online");
    let by_state = |online: bool| DeviceFilter {
        online: Some(online),
        ..list(None, 0, 100)
    };
    let on = store
        .list_devices(tenant.id, &by_state(true))
        .await
        .expect("list online");
    assert_eq!(on.total, 2);
    assert_eq!(
        on.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![devices[1].id, devices[3].id]
    );
    let off = store
        .list_devices(tenant.id, &by_state(false))
        .await
        .expect("list offline");
    assert_eq!(off.total, 3);
    assert!(off.items.iter().all(|d| !d.online));
    store
        .set_device_online(devices[1].id, false, base + 2)
        .await
        .expect("set_device_online");
    store
        .set_device_online(devices[3].id, false, base + 2)
        .await
        .expect("set_device_online");
}

/// `update_device` replaces the mutable fields; lookups follow a new username and
/// number; a missing device is `NotFound`.
pub async fn device_update(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "before", base);
    store.create_device(&d).await.expect("create_device");

    let mut changed = d.clone();
    changed.name = "after".into();
    changed.device_number = format!("dev{}", unique());
    changed.credentials = DeviceCredentials::from_plain(format!("u{}", unique()), "secret");
    changed.profile_id = Some(ProfileId::new());
    changed.sub_device_addr = Some("9".into());
    changed.label = Some("moved".into());
    changed.enabled = false;
    changed.updated_at = base + 100;
    store.update_device(&changed).await.expect("update_device");

    assert_eq!(
        store.get_device(tenant.id, d.id).await.expect("get"),
        Some(changed.clone())
    );
    assert_eq!(
        store
            .get_device_by_username(&d.credentials.username)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_device_by_username(&changed.credentials.username)
            .await
            .expect("get"),
        Some(changed.clone())
    );
    assert_eq!(
        store
            .get_device_by_number(&d.device_number)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_device_by_number(&changed.device_number)
            .await
            .expect("get"),
        Some(changed.clone())
    );
    // The old number and username are free again.
    let mut reuse = new_device(tenant.id, "reuse", base + 1);
    reuse.device_number = d.device_number.clone();
    reuse.credentials.username = d.credentials.username.clone();
    store.create_device(&reuse).await.expect("reuse old values");

    expect_not_found(
        store
            .update_device(&new_device(tenant.id, "ghost", base))
            .await,
    );
}

/// `delete_device` removes the device, its attributes and its downlink log; a second
/// delete is `NotFound`.
pub async fn device_delete_cascades(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "doomed", base);
    let keep = new_device(tenant.id, "kept", base + 1);
    store.create_device(&d).await.expect("create_device");
    store.create_device(&keep).await.expect("create_device");
    let attr = KeyValue {
        key: "fw".into(),
        ts: base,
        value: Value::String("1.0".into()),
    };
    for dev in [&d, &keep] {
        store
            .upsert_attributes(dev.id, std::slice::from_ref(&attr))
            .await
            .expect("upsert");
        store
            .create_command(&command(tenant.id, dev.id, "m1", base))
            .await
            .expect("create_command");
    }

    store.delete_device(tenant.id, d.id).await.expect("delete");
    assert_eq!(store.get_device(tenant.id, d.id).await.expect("get"), None);
    assert_eq!(store.get_device_by_id(d.id).await.expect("get"), None);
    assert_eq!(
        store
            .get_device_by_username(&d.credentials.username)
            .await
            .expect("get"),
        None
    );
    assert!(
        store
            .get_attributes(d.id, None)
            .await
            .expect("attrs")
            .is_empty()
    );
    assert_eq!(
        store
            .get_command_by_message_id(d.id, "m1")
            .await
            .expect("cmd"),
        None
    );
    let cmds = store
        .list_commands(tenant.id, d.id, Page::default())
        .await
        .expect("list");
    assert_eq!(cmds.total, 0);
    expect_not_found(store.delete_device(tenant.id, d.id).await);

    // The other device is untouched.
    assert_eq!(
        store.get_attributes(keep.id, None).await.expect("attrs"),
        vec![attr]
    );
    assert!(
        store
            .get_command_by_message_id(keep.id, "m1")
            .await
            .expect("cmd")
            .is_some()
    );
    let listed = store
        .list_devices(tenant.id, &DeviceFilter::default())
        .await
        .expect("list");
    assert_eq!((listed.total, listed.items), (1, vec![keep]));
}

/// `set_device_online` records state and `last_seen`; a missing device is `NotFound`.
pub async fn device_online_state(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "pinger", base);
    store.create_device(&d).await.expect("create_device");

    store
        .set_device_online(d.id, true, base + 10)
        .await
        .expect("online");
    let got = store
        .get_device(tenant.id, d.id)
        .await
        .expect("get")
        .expect("exists");
    assert!(got.online);
    assert_eq!(got.last_seen, Some(base + 10));
    assert_eq!(got.name, d.name);

    store
        .set_device_online(d.id, false, base + 20)
        .await
        .expect("offline");
    let got = store
        .get_device_by_id(d.id)
        .await
        .expect("get")
        .expect("exists");
    assert!(!got.online);
    assert_eq!(got.last_seen, Some(base + 20));

    expect_not_found(store.set_device_online(DeviceId::new(), true, base).await);
}

/// `touch_devices` moves `last_seen` forward only, leaves `online` alone, skips
/// unknown devices and handles many devices in one call.
pub async fn device_touch_last_seen(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let mut devices = Vec::new();
    for i in 0..3 {
        let d = new_device(tenant.id, &format!("toucher-{i}"), base);
        store.create_device(&d).await.expect("create_device");
        devices.push(d);
    }
    let last_seen = |id| async move {
        store
            .get_device_by_id(id)
            .await
            .expect("get")
            .expect("exists")
            .last_seen
    };
    store.touch_devices(&[]).await.expect("nothing to do");
    store
        .touch_devices(&[
            (devices[0].id, base + 100),
            (DeviceId::new(), base + 100),
            (devices[1].id, base + 50),
        ])
        .await
        .expect("touch");
    assert_eq!(last_seen(devices[0].id).await, Some(base + 100));
    assert_eq!(last_seen(devices[1].id).await, Some(base + 50));
    assert_eq!(last_seen(devices[2].id).await, None, "not listed");
    store
        .touch_devices(&[(devices[0].id, base + 10), (devices[1].id, base + 60)])
        .await
        .expect("touch again");
    assert_eq!(
        last_seen(devices[0].id).await,
        Some(base + 100),
        "never moves back"
    );
    assert_eq!(last_seen(devices[1].id).await, Some(base + 60));
    let got = store
        .get_device_by_id(devices[0].id)
        .await
        .expect("get")
        .expect("exists");
    assert!(!got.online, "online is not touched");
}

/// `append_status` sets `online`/`last_seen` and appends history; the history is
/// newest first (same-millisecond events in reverse append order), filtered by
/// `[start, end)`, paged with a total, tenant-scoped, and deleted with the device;
/// a missing device is `NotFound`; `append_statuses` records a batch in order and
/// skips missing devices.
pub async fn device_status_history(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let other_tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "flappy", base);
    let quiet = new_device(tenant.id, "quiet", base);
    store.create_device(&d).await.expect("create_device");
    store.create_device(&quiet).await.expect("create_device");
    let ev = |online, reason, at| DeviceStatusEvent {
        device_id: d.id,
        online,
        reason,
        at,
    };
    let events = [
        ev(true, StatusReason::Connect, base + 10),
        ev(false, StatusReason::ConnectionLost, base + 20),
        ev(true, StatusReason::Activity, base + 30),
        // Same millisecond: append order decides.
        ev(false, StatusReason::HeartbeatTimeout, base + 40),
        ev(true, StatusReason::Connect, base + 40),
    ];
    for e in &events {
        store.append_status(e).await.expect("append_status");
    }
    let got = store
        .get_device(tenant.id, d.id)
        .await
        .expect("get")
        .expect("exists");
    assert!(got.online);
    assert_eq!(got.last_seen, Some(base + 40));

    let all = store
        .list_status_history(tenant.id, d.id, &StatusHistoryQuery::default())
        .await
        .expect("list");
    let newest_first: Vec<DeviceStatusEvent> = events.iter().rev().cloned().collect();
    assert_eq!(all.total, 5);
    assert_eq!(all.items, newest_first);

    let page = store
        .list_status_history(
            tenant.id,
            d.id,
            &StatusHistoryQuery {
                page: Page {
                    offset: 1,
                    limit: 2,
                },
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page.total, 5);
    assert_eq!(page.items, newest_first[1..3].to_vec());

    let range = store
        .list_status_history(
            tenant.id,
            d.id,
            &StatusHistoryQuery {
                start: Some(base + 20),
                end: Some(base + 40),
                page: Page::default(),
            },
        )
        .await
        .expect("range");
    assert_eq!(range.total, 2);
    assert_eq!(range.items, vec![events[2].clone(), events[1].clone()]);

    for (t, dev) in [(other_tenant.id, d.id), (tenant.id, quiet.id)] {
        let none = store
            .list_status_history(t, dev, &StatusHistoryQuery::default())
            .await
            .expect("list");
        assert_eq!((none.total, none.items), (0, vec![]));
    }

    expect_not_found(
        store
            .append_status(&DeviceStatusEvent {
                device_id: DeviceId::new(),
                ..events[0].clone()
            })
            .await,
    );

    // A batch: in order, missing devices skipped, the others recorded.
    let batch = [
        DeviceStatusEvent {
            device_id: quiet.id,
            ..ev(true, StatusReason::Connect, base + 50)
        },
        DeviceStatusEvent {
            device_id: DeviceId::new(),
            ..ev(true, StatusReason::Connect, base + 50)
        },
        DeviceStatusEvent {
            device_id: quiet.id,
            ..ev(false, StatusReason::ConnectionLost, base + 60)
        },
    ];
    assert_eq!(store.append_statuses(&batch).await.expect("batch"), 2);
    let quiet_history = store
        .list_status_history(tenant.id, quiet.id, &StatusHistoryQuery::default())
        .await
        .expect("list");
    assert_eq!(
        quiet_history.items,
        vec![batch[2].clone(), batch[0].clone()]
    );
    let got = store
        .get_device(tenant.id, quiet.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((got.online, got.last_seen), (false, Some(base + 60)));

    store
        .delete_device(tenant.id, d.id)
        .await
        .expect("delete_device");
    let gone = store
        .list_status_history(tenant.id, d.id, &StatusHistoryQuery::default())
        .await
        .expect("list");
    assert_eq!((gone.total, gone.items), (0, vec![]));
}

/// Attributes upsert per key keeping the newest `ts`, every value type round-trips,
/// reads are ordered by key and `keys` filters.
pub async fn attributes_upsert_newest_wins(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "attrs", base);
    let other = new_device(tenant.id, "attrs-other", base);
    store.create_device(&d).await.expect("create_device");
    store.create_device(&other).await.expect("create_device");
    let kv = |key: &str, ts: Timestamp, value: Value| KeyValue {
        key: key.into(),
        ts,
        value,
    };

    store
        .upsert_attributes(
            d.id,
            &[
                kv("e", base, Value::Float(2.5)),
                kv("a", base, Value::Integer(1)),
                kv("b", base, Value::String("x".into())),
                kv("c", base, Value::Bool(true)),
                kv("d", base, Value::Json(serde_json::json!({"k": [1, "two"]}))),
            ],
        )
        .await
        .expect("upsert");
    store
        .upsert_attributes(other.id, &[kv("a", base, Value::Integer(99))])
        .await
        .expect("upsert");
    // An older value is ignored, a newer one wins.
    store
        .upsert_attributes(
            d.id,
            &[
                kv("a", base - 50, Value::Integer(0)),
                kv("b", base + 100, Value::String("y".into())),
            ],
        )
        .await
        .expect("upsert");

    let expected = vec![
        kv("a", base, Value::Integer(1)),
        kv("b", base + 100, Value::String("y".into())),
        kv("c", base, Value::Bool(true)),
        kv("d", base, Value::Json(serde_json::json!({"k": [1, "two"]}))),
        kv("e", base, Value::Float(2.5)),
    ];
    assert_eq!(
        store.get_attributes(d.id, None).await.expect("get"),
        expected
    );
    let keys = vec!["e".to_string(), "b".to_string(), "missing".to_string()];
    assert_eq!(
        store.get_attributes(d.id, Some(&keys)).await.expect("get"),
        vec![expected[1].clone(), expected[4].clone()]
    );
    assert_eq!(
        store.get_attributes(other.id, None).await.expect("get"),
        vec![kv("a", base, Value::Integer(99))]
    );
    assert!(
        store
            .get_attributes(DeviceId::new(), None)
            .await
            .expect("get")
            .is_empty()
    );
}

/// Sub-devices are found by (gateway, address), and only under their own gateway;
/// `list_sub_devices` lists a gateway's direct sub-devices by creation time.
pub async fn device_sub_device_lookup(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let gw = new_device(tenant.id, "gw", base);
    let other_gw = new_device(tenant.id, "gw2", base + 1);
    store.create_device(&gw).await.expect("create gateway");
    store
        .create_device(&other_gw)
        .await
        .expect("create gateway");
    let mut sub = new_device(tenant.id, "sub", base + 2);
    sub.parent_id = Some(gw.id);
    sub.sub_device_addr = Some("addr-1".to_owned());
    store.create_device(&sub).await.expect("create sub-device");
    assert_eq!(
        store.get_sub_device(gw.id, "addr-1").await.expect("lookup"),
        Some(sub.clone())
    );
    assert_eq!(
        store.get_sub_device(gw.id, "addr-2").await.expect("lookup"),
        None
    );
    assert_eq!(
        store
            .get_sub_device(other_gw.id, "addr-1")
            .await
            .expect("lookup"),
        None
    );
    let mut second = new_device(tenant.id, "sub2", base + 3);
    second.parent_id = Some(gw.id);
    second.sub_device_addr = Some("addr-0".to_owned());
    store
        .create_device(&second)
        .await
        .expect("create sub-device");
    assert_eq!(
        store.list_sub_devices(gw.id).await.expect("list"),
        vec![sub, second]
    );
    assert_eq!(
        store.list_sub_devices(other_gw.id).await.expect("list"),
        vec![]
    );
}

fn command(tenant: TenantId, device: DeviceId, message_id: &str, at: Timestamp) -> CommandLog {
    CommandLog {
        id: CommandId::new(),
        tenant_id: tenant,
        device_id: device,
        message_id: message_id.into(),
        kind: CommandKind::Command,
        payload: serde_json::json!({"method": "reboot", "params": {"delay": 5}}),
        status: CommandStatus::Pending,
        response: None,
        created_at: at,
        updated_at: at,
        expires_at: None,
        published: None,
    }
}

/// The downlink log: create, find by message id (per device) and by published
/// topic (per tenant), update status, response and what was published (`NotFound`
/// when missing), list newest first with paging and tenant scope.
pub async fn commands_log(store: &dyn MetadataStore) {
    let base = base_ts();
    let tenant = new_tenant(store, base).await;
    let other_tenant = new_tenant(store, base).await;
    let d = new_device(tenant.id, "cmd", base);
    let d2 = new_device(tenant.id, "cmd2", base);
    store.create_device(&d).await.expect("create_device");
    store.create_device(&d2).await.expect("create_device");

    let c1 = command(tenant.id, d.id, "m1", base);
    let mut c2 = command(tenant.id, d.id, "m2", base + 1);
    c2.kind = CommandKind::AttributeSet;
    c2.status = CommandStatus::Sent;
    c2.published = Some(crate::PublishedDownlink {
        topic: "gateway/attributes/set/gw1/m2".to_owned(),
        payload: serde_json::json!({"sub_device_data": {"a1": {"k": 1}}}),
    });
    let mut c3 = command(tenant.id, d.id, "m3", base + 2);
    c3.kind = CommandKind::TelemetryControl;
    c3.expires_at = Some(base + 60_000);
    for c in [&c1, &c2, &c3] {
        store.create_command(c).await.expect("create_command");
    }
    store
        .create_command(&command(tenant.id, d2.id, "other", base))
        .await
        .expect("create_command");

    assert_eq!(
        store
            .get_command_by_message_id(d.id, "m2")
            .await
            .expect("get"),
        Some(c2.clone())
    );
    assert_eq!(
        store
            .get_command_by_message_id(d2.id, "m2")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_command_by_message_id(d.id, "nope")
            .await
            .expect("get"),
        None
    );

    assert_eq!(
        store
            .get_command_by_published_topic(tenant.id, "gateway/attributes/set/gw1/m2")
            .await
            .expect("by topic"),
        Some(c2.clone())
    );
    assert_eq!(
        store
            .get_command_by_published_topic(other_tenant.id, "gateway/attributes/set/gw1/m2")
            .await
            .expect("by topic"),
        None,
        "tenant-scoped"
    );

    let mut replied = c1.clone();
    replied.published = Some(crate::PublishedDownlink {
        topic: "devices/command/cmd/m1".to_owned(),
        payload: serde_json::json!({"method": "reboot"}),
    });
    replied.status = CommandStatus::Replied;
    replied.response = Some(serde_json::json!({"result": 0, "message": "ok"}));
    replied.updated_at = base + 10;
    store
        .update_command(&replied)
        .await
        .expect("update_command");
    assert_eq!(
        store
            .get_command_by_message_id(d.id, "m1")
            .await
            .expect("get"),
        Some(replied.clone())
    );
    expect_not_found(
        store
            .update_command(&command(tenant.id, d.id, "ghost", base))
            .await,
    );

    let all = store
        .list_commands(tenant.id, d.id, Page::default())
        .await
        .expect("list");
    assert_eq!(all.total, 3);
    assert_eq!(all.items, vec![c3.clone(), c2.clone(), replied.clone()]);
    let page = store
        .list_commands(
            tenant.id,
            d.id,
            Page {
                offset: 1,
                limit: 1,
            },
        )
        .await
        .expect("list");
    assert_eq!((page.total, page.items), (3, vec![c2]));
    let foreign = store
        .list_commands(other_tenant.id, d.id, Page::default())
        .await
        .expect("list");
    assert_eq!(foreign.total, 0);
    assert!(foreign.items.is_empty());
}

/// Stamps out one `#[tokio::test]` per [`crate::testing::metadata`] case.
///
/// The argument is an expression evaluating to a future whose output is
/// `Option<S>`, where `&*s` is a `&dyn MetadataStore` (for example
/// `Option<Arc<dyn MetadataStore>>`); `None` skips the test (an unconfigured external
/// service, see [`crate::testing::service_url`]). It is evaluated once per test.
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`); invoke the
/// macro inside its own module, as the tests are named after the cases.
///
/// ```ignore
/// mod sqlite_memory {
///     tp_core::metadata_conformance!(async {
///         Some(std::sync::Arc::new(MyStore::in_memory().await.unwrap()))
///     });
/// }
/// ```
#[macro_export]
macro_rules! metadata_conformance {
    ($make:expr $(,)?) => {
        $crate::__conformance_tests!(metadata, $make;
            backend_and_healthcheck,
            tenant_create_get_list,
            user_crud,
            auth_state_round_trip,
            user_email_unique,
            user_list_paging,
            device_round_trip_and_lookups,
            device_tenant_scoping,
            device_uniqueness,
            device_list_paging_and_search,
            device_update,
            device_delete_cascades,
            device_online_state,
            device_touch_last_seen,
            device_status_history,
            device_sub_device_lookup,
            attributes_upsert_newest_wins,
            commands_log,
        );
    };
}

/// Shared body of the `*_conformance!` macros: one test per listed case of `$suite`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($suite:ident, $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = ($make).await else {
                    return;
                };
                $crate::testing::$suite::$case(&*store).await;
            }
        )+
    };
}
