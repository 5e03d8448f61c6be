//! Conformance cases for [`OtaStore`].
//!
//! Every case makes up fresh tenant, device and profile ids, so all run in parallel on
//! one shared database. Semantics pinned down here beyond the trait docs:
//! - `update_package` may rename a package onto another's `(name, version)`: that is
//!   `AlreadyExists { entity: "ota_package" }` and changes nothing.
//! - `create_task` with a detail repeated for one device fails as a whole.
//! - `active_details` and `package_detail` see only the device's own rows of its tenant.
//!
//! Run them all against a backend with [`crate::ota_conformance!`].

use std::fmt::Debug;

use uuid::Uuid;

use crate::model::{DeviceId, OtaPackageId, OtaTaskId, Page, ProfileId, TenantId, now_ms};
use crate::ota::*;
use crate::{Error, Result};

fn unique() -> String {
    Uuid::new_v4().simple().to_string()
}

fn all() -> Page {
    Page {
        offset: 0,
        limit: 1000,
    }
}

#[track_caller]
fn expect_not_found<T: Debug>(r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// A stored package of `tenant` named `name`, version 1.0.0.
pub fn sample_package(tenant: TenantId, name: &str) -> OtaPackage {
    let now = now_ms();
    OtaPackage {
        id: OtaPackageId::new(),
        tenant_id: tenant,
        name: name.into(),
        version: "1.0.0".into(),
        module: "MCU".into(),
        profile_id: Some(ProfileId::new()),
        description: Some("first".into()),
        ext_data: Some(serde_json::json!({"channel": "beta"})),
        sign_method: None,
        sign: None,
        url: None,
        stored: true,
        size: Some(5),
        sha256: Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into()),
        md5: Some("5d41402abc4b2a76b9719d911017c592".into()),
        file_name: Some("fw.bin".into()),
        created_at: now,
        updated_at: now,
    }
}

/// A task of `package` with a pending detail for each of `devices`.
pub fn sample_task(package: &OtaPackage, devices: &[DeviceId]) -> (OtaTask, Vec<OtaTaskDetail>) {
    let now = now_ms();
    let task = OtaTask {
        id: OtaTaskId::new(),
        tenant_id: package.tenant_id,
        package_id: package.id,
        name: format!("upgrade to {}", package.version),
        description: None,
        profile_id: None,
        created_at: now,
        counts: OtaCounts::default(),
    };
    let details = devices
        .iter()
        .map(|d| OtaTaskDetail::new(package.tenant_id, task.id, package.id, *d, now))
        .collect();
    (task, details)
}

/// Packages: create, read, list newest first, update, delete.
pub async fn package_crud(store: &dyn OtaStore) {
    let tenant = TenantId::new();
    let mut p = sample_package(tenant, &format!("fw-{}", unique()));
    store.create_package(&p).await.unwrap();
    assert_eq!(
        store.get_package(tenant, p.id).await.unwrap(),
        Some(p.clone())
    );
    let mut q = sample_package(tenant, &format!("fw-{}", unique()));
    q.created_at = p.created_at + 1;
    q.url = Some("https://cdn.example.com/fw.bin".into());
    q.stored = false;
    q.ext_data = None;
    q.profile_id = None;
    store.create_package(&q).await.unwrap();
    let list = store.list_packages(tenant, all()).await.unwrap();
    assert_eq!(list.total, 2);
    assert_eq!(list.items, vec![q.clone(), p.clone()]);
    p.version = "1.1.0".into();
    p.sign_method = Some("MD5".into());
    p.sign = Some("abc".into());
    p.size = Some(u64::from(u32::MAX) + 7);
    p.updated_at += 5;
    store.update_package(&p).await.unwrap();
    assert_eq!(
        store.get_package(tenant, p.id).await.unwrap(),
        Some(p.clone())
    );
    store.delete_package(tenant, p.id).await.unwrap();
    assert_eq!(store.get_package(tenant, p.id).await.unwrap(), None);
    expect_not_found(store.delete_package(tenant, p.id).await);
    expect_not_found(store.update_package(&p).await);
}

/// `(name, version)` is unique per tenant; the same pair in another tenant is fine.
pub async fn package_versions_unique_per_tenant(store: &dyn OtaStore) {
    let tenant = TenantId::new();
    let name = format!("fw-{}", unique());
    let p = sample_package(tenant, &name);
    store.create_package(&p).await.unwrap();
    let mut dup = sample_package(tenant, &name);
    match store.create_package(&dup).await {
        Err(Error::AlreadyExists { entity, .. }) => assert_eq!(entity, "ota_package"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    dup.version = "2.0.0".into();
    store.create_package(&dup).await.unwrap();
    dup.version = "1.0.0".into();
    assert!(matches!(
        store.update_package(&dup).await,
        Err(Error::AlreadyExists { .. })
    ));
    let other = sample_package(TenantId::new(), &name);
    store.create_package(&other).await.unwrap();
}

/// Tasks with details: counts follow the details; a used package cannot be deleted;
/// deleting the task takes its details along.
pub async fn task_lifecycle(store: &dyn OtaStore) {
    let tenant = TenantId::new();
    let p = sample_package(tenant, &format!("fw-{}", unique()));
    store.create_package(&p).await.unwrap();
    let devices = [DeviceId::new(), DeviceId::new(), DeviceId::new()];
    let (task, details) = sample_task(&p, &devices);
    store.create_task(&task, &details).await.unwrap();
    let got = store.get_task(tenant, task.id).await.unwrap().unwrap();
    assert_eq!(got.counts.pending, 3);
    assert_eq!(got.counts.status(), OtaTaskStatus::InProgress);
    assert_eq!(got.name, task.name);

    let mut d = store
        .get_detail(tenant, task.id, devices[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d, details[0]);
    let report = parse_progress(br#"{"step":"50","desc":"half"}"#).unwrap();
    let at = d.updated_at + 1;
    assert!(apply_progress(&mut d, &report, at));
    d.message_id = Some("ab12cd34".into());
    store.update_detail(&d).await.unwrap();
    assert_eq!(
        store.get_detail(tenant, task.id, devices[0]).await.unwrap(),
        Some(d.clone())
    );
    let mut failed = details[1].clone();
    apply_progress(
        &mut failed,
        &parse_progress(br#"{"step":-3}"#).unwrap(),
        now_ms(),
    );
    store.update_detail(&failed).await.unwrap();
    let got = store.get_task(tenant, task.id).await.unwrap().unwrap();
    assert_eq!(
        (got.counts.upgrading, got.counts.failed, got.counts.pending),
        (1, 1, 1)
    );
    let listed = store.list_details(tenant, task.id, all()).await.unwrap();
    assert_eq!(listed.total, 3);
    assert!(listed.items.contains(&failed));

    // The device's active details, and what lets it download.
    assert_eq!(
        store.active_details(tenant, devices[0]).await.unwrap(),
        vec![d.clone()]
    );
    assert!(
        store
            .active_details(tenant, devices[1])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .package_detail(tenant, devices[1], p.id)
            .await
            .unwrap()
            .map(|d| d.state),
        Some(OtaState::Failed)
    );
    let mut cancelled = details[2].clone();
    cancelled.state = OtaState::Cancelled;
    store.update_detail(&cancelled).await.unwrap();
    assert_eq!(
        store
            .package_detail(tenant, devices[2], p.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .package_detail(tenant, DeviceId::new(), p.id)
            .await
            .unwrap(),
        None
    );

    let tasks = store.list_tasks(tenant, Some(p.id), all()).await.unwrap();
    assert_eq!(tasks.total, 1);
    assert_eq!(tasks.items[0].counts.total(), 3);
    assert_eq!(
        store
            .list_tasks(tenant, Some(OtaPackageId::new()), all())
            .await
            .unwrap()
            .total,
        0
    );
    assert_eq!(
        store.list_tasks(tenant, None, all()).await.unwrap().total,
        1
    );

    match store.delete_package(tenant, p.id).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
    store.delete_task(tenant, task.id).await.unwrap();
    assert_eq!(store.get_task(tenant, task.id).await.unwrap(), None);
    assert_eq!(
        store.get_detail(tenant, task.id, devices[0]).await.unwrap(),
        None
    );
    expect_not_found(store.delete_task(tenant, task.id).await);
    expect_not_found(store.update_detail(&d).await);
    store.delete_package(tenant, p.id).await.unwrap();
}

/// A task of a package outside the tenant, or with a device twice, stores nothing.
pub async fn task_creation_is_atomic(store: &dyn OtaStore) {
    let tenant = TenantId::new();
    let foreign = sample_package(TenantId::new(), &format!("fw-{}", unique()));
    store.create_package(&foreign).await.unwrap();
    let (mut task, details) = sample_task(&foreign, &[DeviceId::new()]);
    task.tenant_id = tenant;
    expect_not_found(store.create_task(&task, &details).await);
    assert_eq!(
        store.list_tasks(tenant, None, all()).await.unwrap().total,
        0
    );

    let p = sample_package(tenant, &format!("fw-{}", unique()));
    store.create_package(&p).await.unwrap();
    let device = DeviceId::new();
    let (task, details) = sample_task(&p, &[device, device]);
    assert!(store.create_task(&task, &details).await.is_err());
    assert_eq!(store.get_task(tenant, task.id).await.unwrap(), None);
    assert!(
        store
            .active_details(tenant, device)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Nothing of one tenant is visible to or changeable by another.
pub async fn tenant_isolation(store: &dyn OtaStore) {
    let a = TenantId::new();
    let b = TenantId::new();
    let p = sample_package(a, &format!("fw-{}", unique()));
    store.create_package(&p).await.unwrap();
    let device = DeviceId::new();
    let (task, details) = sample_task(&p, &[device]);
    store.create_task(&task, &details).await.unwrap();

    assert_eq!(store.get_package(b, p.id).await.unwrap(), None);
    assert_eq!(store.list_packages(b, all()).await.unwrap().total, 0);
    let mut moved = p.clone();
    moved.tenant_id = b;
    expect_not_found(store.update_package(&moved).await);
    expect_not_found(store.delete_package(b, p.id).await);
    assert_eq!(store.get_task(b, task.id).await.unwrap(), None);
    assert_eq!(store.list_tasks(b, None, all()).await.unwrap().total, 0);
    expect_not_found(store.delete_task(b, task.id).await);
    assert_eq!(
        store.list_details(b, task.id, all()).await.unwrap().total,
        0
    );
    assert_eq!(store.get_detail(b, task.id, device).await.unwrap(), None);
    let mut foreign = details[0].clone();
    foreign.tenant_id = b;
    foreign.state = OtaState::Cancelled;
    expect_not_found(store.update_detail(&foreign).await);
    assert!(store.active_details(b, device).await.unwrap().is_empty());
    assert_eq!(store.package_detail(b, device, p.id).await.unwrap(), None);
    // still there for A
    assert_eq!(store.active_details(a, device).await.unwrap(), details);
}

/// Stamps out one `#[tokio::test]` per case of this suite for a backend:
/// `tp_core::ota_conformance!(async { Some(store) })`, where the future yields
/// `Option<impl Deref<Target = dyn OtaStore>>` (`None` skips).
#[macro_export]
macro_rules! ota_conformance {
    ($make:expr $(,)?) => {
        $crate::__ota_conformance_tests!($make;
            package_crud,
            package_versions_unique_per_tenant,
            task_lifecycle,
            task_creation_is_atomic,
            tenant_isolation,
        );
    };
}

/// Body of [`ota_conformance!`]: one test per listed case.
#[doc(hidden)]
#[macro_export]
macro_rules! __ota_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = ($make).await else {
                    return;
                };
                $crate::testing::ota::$case(&*store).await;
            }
        )+
    };
}
