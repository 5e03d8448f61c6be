//! Conformance cases for [`ScriptStore`].
//!
//! A script belongs to a device profile, so the cases take a store that is also the
//! [`AccessStore`] the profile lives in (the SQL stores are both) and make a fresh
//! tenant and profile each. Cases run in parallel against one shared database.
//!
//! Semantics pinned down here beyond the trait docs:
//! - At most one *enabled* script per `(profile, type)`: a second one, by create or by
//!   update, is [`Error::Conflict`]; any number of disabled ones may exist.
//! - A script on a profile that does not exist is `Unprocessable { field: "profile_id" }`.
//! - Deleting the profile deletes its scripts.
//! - `update_script` / `delete_script` / `get_script` of another tenant's script are
//!   `NotFound` / `false` / `None` and change nothing; `update_script` leaves
//!   `created_at` and `profile_id` alone.
//! - `list_scripts` orders by profile id, type (`telemetry_up`, `telemetry_down`,
//!   `attribute_up`, `attribute_down`), name, then id.
//!
//! Run them all against a backend with [`crate::script_conformance!`].

use uuid::Uuid;

use crate::access::AccessStore;
use crate::model::{DeviceProfile, ProfileId, ScriptId, TenantId, now_ms};
use crate::script::{DataScript, ScriptFilter, ScriptStore, ScriptType};
use crate::{Error, Result};

/// A profile of a fresh tenant, stored.
async fn profile<S: AccessStore + ?Sized>(store: &S) -> DeviceProfile {
    profile_of(store, TenantId::new()).await
}

/// A new profile of `tenant`, stored.
async fn profile_of<S: AccessStore + ?Sized>(store: &S, tenant: TenantId) -> DeviceProfile {
    let profile = DeviceProfile::new(tenant, format!("scripted-{}", Uuid::new_v4().simple()));
    store
        .create_profile(&profile)
        .await
        .expect("create profile");
    profile
}

/// A script of `profile`'s tenant (not stored).
pub fn sample_script(
    profile: &DeviceProfile,
    script_type: ScriptType,
    name: &str,
    enabled: bool,
) -> DataScript {
    let at = now_ms() - 1_000;
    DataScript {
        id: ScriptId::new(),
        tenant_id: profile.tenant_id,
        profile_id: profile.id,
        script_type,
        name: name.into(),
        content: "function encodeInp(msg, topic)\n  return msg\nend\n".into(),
        enabled,
        description: Some("passes messages through".into()),
        created_at: at,
        updated_at: at,
    }
}

#[track_caller]
fn expect_conflict<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// Create, read, list, update, delete.
pub async fn script_crud<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    let p = profile(store).await;
    let mut s = sample_script(&p, ScriptType::TelemetryUp, "decode", true);
    s.content = "-- 中文注释\nfunction encodeInp(msg, topic) return msg end".into();
    store.create_script(&s).await.expect("create");
    assert_eq!(
        store.get_script(p.tenant_id, s.id).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store
            .list_scripts(p.tenant_id, ScriptFilter::default())
            .await
            .unwrap(),
        vec![s.clone()]
    );
    let mut changed = s.clone();
    changed.name = "decode v2".into();
    changed.content = "function encodeInp(msg) return '{}' end".into();
    changed.enabled = false;
    changed.description = None;
    changed.script_type = ScriptType::AttributeUp;
    changed.updated_at = s.updated_at + 5;
    changed.created_at = 1;
    changed.profile_id = ProfileId::new();
    store.update_script(&changed).await.expect("update");
    let got = store.get_script(p.tenant_id, s.id).await.unwrap().unwrap();
    assert_eq!(got.name, "decode v2");
    assert_eq!(got.content, changed.content);
    assert!(!got.enabled);
    assert_eq!(got.description, None);
    assert_eq!(got.script_type, ScriptType::AttributeUp);
    assert_eq!(got.updated_at, s.updated_at + 5);
    assert_eq!(got.created_at, s.created_at, "created_at stays");
    assert_eq!(got.profile_id, p.id, "the profile stays");
    assert!(store.delete_script(p.tenant_id, s.id).await.unwrap());
    assert!(!store.delete_script(p.tenant_id, s.id).await.unwrap());
    assert_eq!(store.get_script(p.tenant_id, s.id).await.unwrap(), None);
    let mut missing = sample_script(&p, ScriptType::TelemetryUp, "gone", false);
    missing.id = ScriptId::new();
    assert!(matches!(
        store.update_script(&missing).await,
        Err(Error::NotFound { .. })
    ));
}

/// Another tenant neither sees nor changes a script.
pub async fn script_tenant_isolation<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    let p = profile(store).await;
    let s = sample_script(&p, ScriptType::TelemetryUp, "mine", false);
    store.create_script(&s).await.unwrap();
    let other = TenantId::new();
    assert_eq!(store.get_script(other, s.id).await.unwrap(), None);
    assert!(
        store
            .list_scripts(other, ScriptFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let mut foreign = s.clone();
    foreign.tenant_id = other;
    foreign.name = "stolen".into();
    assert!(matches!(
        store.update_script(&foreign).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!store.delete_script(other, s.id).await.unwrap());
    assert_eq!(
        store
            .get_script(p.tenant_id, s.id)
            .await
            .unwrap()
            .unwrap()
            .name,
        "mine"
    );
}

/// One enabled script per profile and type; disabled ones are drafts.
pub async fn one_enabled_script_per_type<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    let p = profile(store).await;
    let first = sample_script(&p, ScriptType::TelemetryUp, "first", true);
    store.create_script(&first).await.unwrap();
    expect_conflict(
        store
            .create_script(&sample_script(&p, ScriptType::TelemetryUp, "second", true))
            .await,
    );
    let draft = sample_script(&p, ScriptType::TelemetryUp, "draft", false);
    store.create_script(&draft).await.unwrap();
    store
        .create_script(&sample_script(
            &p,
            ScriptType::TelemetryUp,
            "draft 2",
            false,
        ))
        .await
        .unwrap();
    // another type, and another profile, are free
    store
        .create_script(&sample_script(&p, ScriptType::AttributeUp, "attrs", true))
        .await
        .unwrap();
    let q = profile(store).await;
    store
        .create_script(&sample_script(&q, ScriptType::TelemetryUp, "other", true))
        .await
        .unwrap();
    // enabling the draft while `first` is enabled conflicts
    let mut enable = draft.clone();
    enable.enabled = true;
    expect_conflict(store.update_script(&enable).await);
    assert_eq!(
        store
            .enabled_script(p.id, ScriptType::TelemetryUp)
            .await
            .unwrap()
            .map(|s| s.id),
        Some(first.id)
    );
    let mut disable = first.clone();
    disable.enabled = false;
    store.update_script(&disable).await.unwrap();
    store.update_script(&enable).await.unwrap();
    assert_eq!(
        store
            .enabled_script(p.id, ScriptType::TelemetryUp)
            .await
            .unwrap()
            .map(|s| s.id),
        Some(draft.id)
    );
    assert_eq!(
        store
            .enabled_script(p.id, ScriptType::TelemetryDown)
            .await
            .unwrap(),
        None
    );
    // the ingest index: enabled scripts only (the store may hold other tests' rows)
    let keys = store.enabled_script_keys().await.unwrap();
    for key in [
        (p.id, ScriptType::TelemetryUp),
        (p.id, ScriptType::AttributeUp),
        (q.id, ScriptType::TelemetryUp),
    ] {
        assert!(keys.contains(&key), "{key:?} missing from {keys:?}");
    }
    assert!(!keys.contains(&(p.id, ScriptType::TelemetryDown)));
    assert_eq!(
        keys.iter()
            .filter(|k| **k == (p.id, ScriptType::TelemetryUp))
            .count(),
        1,
        "one entry per enabled script"
    );
    let mut off = enable.clone();
    off.enabled = false;
    store.update_script(&off).await.unwrap();
    let keys = store.enabled_script_keys().await.unwrap();
    assert!(!keys.contains(&(p.id, ScriptType::TelemetryUp)));
}

/// Filters and order of `list_scripts`.
pub async fn script_list_filters<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    let p = profile(store).await;
    let b = sample_script(&p, ScriptType::AttributeDown, "b", false);
    let a = sample_script(&p, ScriptType::AttributeDown, "a", false);
    let up = sample_script(&p, ScriptType::TelemetryUp, "z", false);
    for s in [&b, &a, &up] {
        store.create_script(s).await.unwrap();
    }
    let q = profile_of(store, p.tenant_id).await;
    let other = sample_script(&q, ScriptType::TelemetryDown, "x", false);
    store.create_script(&other).await.unwrap();

    let ids = |v: Vec<DataScript>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let of_p = ScriptFilter {
        profile_id: Some(p.id),
        script_type: None,
    };
    assert_eq!(
        ids(store.list_scripts(p.tenant_id, of_p).await.unwrap()),
        vec![up.id, a.id, b.id]
    );
    let attr_down = ScriptFilter {
        profile_id: Some(p.id),
        script_type: Some(ScriptType::AttributeDown),
    };
    assert_eq!(
        ids(store.list_scripts(p.tenant_id, attr_down).await.unwrap()),
        vec![a.id, b.id]
    );
    let all = store
        .list_scripts(p.tenant_id, ScriptFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let down = ScriptFilter {
        profile_id: None,
        script_type: Some(ScriptType::TelemetryDown),
    };
    assert_eq!(
        ids(store.list_scripts(p.tenant_id, down).await.unwrap()),
        vec![other.id]
    );
}

/// A script needs its profile; deleting the profile deletes its scripts.
pub async fn scripts_follow_their_profile<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    let p = profile(store).await;
    let mut orphan = sample_script(&p, ScriptType::TelemetryUp, "orphan", false);
    orphan.profile_id = ProfileId::new();
    match store.create_script(&orphan).await {
        Err(Error::Unprocessable { field, .. }) => assert_eq!(field, "profile_id"),
        other => panic!("expected Unprocessable profile_id, got {other:?}"),
    }
    let s = sample_script(&p, ScriptType::TelemetryUp, "kept", true);
    store.create_script(&s).await.unwrap();
    store.delete_profile(p.tenant_id, p.id).await.unwrap();
    assert_eq!(store.get_script(p.tenant_id, s.id).await.unwrap(), None);
    assert_eq!(
        store
            .enabled_script(p.id, ScriptType::TelemetryUp)
            .await
            .unwrap(),
        None
    );
}

/// Runs every case against `store` (for backends outside a test harness).
pub async fn run_all<S: ScriptStore + AccessStore + ?Sized>(store: &S) {
    script_crud(store).await;
    script_tenant_isolation(store).await;
    one_enabled_script_per_type(store).await;
    script_list_filters(store).await;
    scripts_follow_their_profile(store).await;
}

/// Generates one `#[tokio::test]` per [`ScriptStore`] case. `$make` is an async
/// expression giving `Option<impl Deref<Target = S>>` where `S` is both the script
/// and the access store (`None` skips: the backend's service is absent).
#[macro_export]
macro_rules! script_conformance {
    ($make:expr $(,)?) => {
        $crate::__script_conformance_tests!($make;
            script_crud,
            script_tenant_isolation,
            one_enabled_script_per_type,
            script_list_filters,
            scripts_follow_their_profile,
        );
    };
}

/// Body of [`script_conformance!`]: one test per listed case.
#[doc(hidden)]
#[macro_export]
macro_rules! __script_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = ($make).await else {
                    return;
                };
                $crate::testing::script::$case(&*store).await;
            }
        )+
    };
}
