//! Conformance cases for [`ThingModelStore`].
//!
//! Each case takes the thing-model store and the access store of the same database
//! (a profile refers to a template), makes up fresh tenant ids, and can run in
//! parallel with every other case on one shared database.
//!
//! Semantics pinned down here beyond the trait docs:
//! - `update_template` and `delete_template` of a template that is not in the tenant
//!   are `NotFound` and change nothing.
//! - A profile naming a template of another tenant (or none at all) is `NotFound`
//!   on create and update.
//! - `template_of_profile` is `None` for a profile without a template and for an
//!   unknown profile.
//!
//! Run them all against a backend with [`crate::thing_model_conformance!`].

use std::fmt::Debug;

use crate::model::{DeviceProfile, Page, ProfileId, TenantId};
use crate::thing_model::*;
use crate::{AccessStore, Error, Result, Value};

#[track_caller]
fn expect_not_found<T: Debug>(r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn page() -> Page {
    Page {
        offset: 0,
        limit: 100,
    }
}

/// A template with one definition of every kind, enum values and a range.
pub fn sample_template(tenant: TenantId, name: &str) -> DeviceTemplate {
    let mut t = DeviceTemplate::new(tenant, name);
    t.description = Some("a thermostat".into());
    t.validation = ValidationMode::Reject;
    let mut temp = Property::new("temp", "Temperature", DataType::Float);
    temp.unit = Some("°C".into());
    (temp.min, temp.max, temp.step) = (Some(-40.0), Some(125.0), Some(0.5));
    let mut mode = Property::new("mode", "Mode", DataType::Enum);
    mode.enum_values = vec![
        EnumValue {
            value: "auto".into(),
            description: Some("Automatic".into()),
        },
        EnumValue {
            value: "off".into(),
            description: None,
        },
    ];
    mode.access = Access::ReadWrite;
    t.telemetry = vec![temp, Property::new("on", "Heating", DataType::Bool)];
    t.attributes = vec![mode];
    let mut target = Param::new("target", "Target", DataType::Int);
    (target.min, target.max) = (Some(5.0), Some(30.0));
    t.events = vec![EventDef {
        identifier: "overheat".into(),
        name: "Overheated".into(),
        description: None,
        params: vec![Param::new("temp", "Temperature", DataType::Float)],
    }];
    t.commands = vec![CommandDef {
        identifier: "set_target".into(),
        name: "Set target".into(),
        description: Some("changes the set point".into()),
        params: vec![target],
    }];
    t
}

fn profile(tenant: TenantId, name: &str, template: Option<TemplateId>) -> DeviceProfile {
    DeviceProfile {
        template_id: template,
        ..DeviceProfile::new(tenant, name)
    }
}

/// Create, read back exactly, list by name, update, delete.
pub async fn template_crud(store: &dyn ThingModelStore, _access: &dyn AccessStore) {
    let tenant = TenantId::new();
    let t = sample_template(tenant, "b-thermostat");
    store.create_template(&t).await.unwrap();
    let got = store.get_template(tenant, t.id).await.unwrap().unwrap();
    assert_eq!(got, t, "definitions round-trip exactly");
    let other = sample_template(tenant, "a-meter");
    store.create_template(&other).await.unwrap();
    let listed = store.list_templates(tenant, page()).await.unwrap();
    assert_eq!(listed.total, 2);
    let names: Vec<_> = listed.items.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a-meter", "b-thermostat"]);
    let one = store
        .list_templates(
            tenant,
            Page {
                offset: 1,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!((one.total, one.items[0].id), (2, t.id));

    let mut changed = got.clone();
    changed.name = "c-thermostat".into();
    changed.validation = ValidationMode::Record;
    changed.strict_keys = true;
    changed.telemetry.pop();
    changed.commands.clear();
    changed.updated_at = t.updated_at + 5;
    store.update_template(&changed).await.unwrap();
    let got = store.get_template(tenant, t.id).await.unwrap().unwrap();
    assert_eq!(got, changed);
    assert_eq!(got.created_at, t.created_at);

    store.delete_template(tenant, t.id).await.unwrap();
    assert!(store.get_template(tenant, t.id).await.unwrap().is_none());
    expect_not_found(store.delete_template(tenant, t.id).await);
    expect_not_found(store.update_template(&changed).await);
}

/// Another tenant's template is invisible and unchangeable.
pub async fn template_tenant_isolation(store: &dyn ThingModelStore, _access: &dyn AccessStore) {
    let (mine, theirs) = (TenantId::new(), TenantId::new());
    let t = sample_template(mine, "thermostat");
    store.create_template(&t).await.unwrap();
    assert!(store.get_template(theirs, t.id).await.unwrap().is_none());
    assert_eq!(store.list_templates(theirs, page()).await.unwrap().total, 0);
    let mut stolen = t.clone();
    stolen.tenant_id = theirs;
    stolen.name = "stolen".into();
    expect_not_found(store.update_template(&stolen).await);
    expect_not_found(store.delete_template(theirs, t.id).await);
    let still = store.get_template(mine, t.id).await.unwrap().unwrap();
    assert_eq!(still.name, "thermostat");
    // the same name in another tenant is fine
    store
        .create_template(&sample_template(theirs, "thermostat"))
        .await
        .unwrap();
}

/// Names are unique per tenant, on create and on rename.
pub async fn template_names_unique_per_tenant(
    store: &dyn ThingModelStore,
    _access: &dyn AccessStore,
) {
    let tenant = TenantId::new();
    let a = sample_template(tenant, "a");
    store.create_template(&a).await.unwrap();
    match store.create_template(&sample_template(tenant, "a")).await {
        Err(Error::AlreadyExists { entity, id }) => {
            assert_eq!((entity, id.as_str()), ("template", "a"))
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let mut b = sample_template(tenant, "b");
    store.create_template(&b).await.unwrap();
    b.name = "a".into();
    assert!(matches!(
        store.update_template(&b).await,
        Err(Error::AlreadyExists {
            entity: "template",
            ..
        })
    ));
}

/// A profile refers to a template of its own tenant; the template cannot be
/// deleted while it does; `template_of_profile` follows the reference.
pub async fn profiles_refer_to_templates(store: &dyn ThingModelStore, access: &dyn AccessStore) {
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let t = sample_template(tenant, "thermostat");
    store.create_template(&t).await.unwrap();
    let foreign = sample_template(other, "foreign");
    store.create_template(&foreign).await.unwrap();

    expect_not_found(
        access
            .create_profile(&profile(tenant, "x", Some(foreign.id)))
            .await,
    );
    expect_not_found(
        access
            .create_profile(&profile(tenant, "y", Some(TemplateId::new())))
            .await,
    );

    let mut p = profile(tenant, "thermostats", Some(t.id));
    access.create_profile(&p).await.unwrap();
    let got = access.get_profile(tenant, p.id).await.unwrap().unwrap();
    assert_eq!(got.template_id, Some(t.id));
    let via = store
        .template_of_profile(tenant, p.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(via, t);
    assert!(
        store
            .template_of_profile(other, p.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .template_of_profile(tenant, ProfileId::new())
            .await
            .unwrap()
            .is_none()
    );

    match store.delete_template(tenant, t.id).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
    p.template_id = Some(foreign.id);
    expect_not_found(access.update_profile(&p).await);
    assert_eq!(
        access
            .get_profile(tenant, p.id)
            .await
            .unwrap()
            .unwrap()
            .template_id,
        Some(t.id),
        "a refused update changes nothing"
    );
    p.template_id = None;
    access.update_profile(&p).await.unwrap();
    assert!(
        store
            .template_of_profile(tenant, p.id)
            .await
            .unwrap()
            .is_none()
    );
    store.delete_template(tenant, t.id).await.unwrap();
}

/// `template_of_profile` reads the template as last updated.
pub async fn profile_lookup_sees_updates(store: &dyn ThingModelStore, access: &dyn AccessStore) {
    let tenant = TenantId::new();
    let mut t = sample_template(tenant, "cached");
    store.create_template(&t).await.unwrap();
    let p = profile(tenant, "cached", Some(t.id));
    access.create_profile(&p).await.unwrap();
    let got = store
        .template_of_profile(tenant, p.id)
        .await
        .unwrap()
        .unwrap();
    let v = Value::Float(500.0);
    assert_eq!(got.check_telemetry([("temp", &v)]).len(), 1);
    t.telemetry[0].max = None;
    t.updated_at += 1;
    store.update_template(&t).await.unwrap();
    let got = store
        .template_of_profile(tenant, p.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.check_telemetry([("temp", &v)]).is_empty(),
        "reads see the update"
    );
}

/// Runs every case against one store pair.
pub async fn run_all(store: &dyn ThingModelStore, access: &dyn AccessStore) {
    template_crud(store, access).await;
    template_tenant_isolation(store, access).await;
    template_names_unique_per_tenant(store, access).await;
    profiles_refer_to_templates(store, access).await;
    profile_lookup_sees_updates(store, access).await;
}

/// One `#[tokio::test]` per case of this suite, for a backend: `$make` is an async
/// expression yielding `Option<(M, A, ..)>` where `*M` is a [`ThingModelStore`] and
/// `*A` the [`AccessStore`] of the same database (`None` skips).
#[macro_export]
macro_rules! thing_model_conformance {
    ($make:expr $(,)?) => {
        $crate::__thing_model_conformance_tests!($make;
            template_crud,
            template_tenant_isolation,
            template_names_unique_per_tenant,
            profiles_refer_to_templates,
            profile_lookup_sees_updates,
        );
    };
}

/// Body of [`thing_model_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __thing_model_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(stores) = ($make).await else {
                    return;
                };
                $crate::testing::thing_model::$case(&*stores.0, &*stores.1).await;
            }
        )+
    };
}
