//! Conformance cases for [`DashboardStore`].
//!
//! Each case makes fresh tenants (random ids; the store needs no tenant row), so the
//! cases run in parallel against one shared database.
//!
//! Semantics pinned down here beyond the trait docs:
//! - Widgets round-trip exactly (every widget type, unicode text, float thresholds).
//! - At most one home dashboard per tenant: creating or updating one with `home`
//!   unsets the previous one; other tenants' home dashboards stay.
//! - `update_dashboard` / `delete_dashboard` / `get_dashboard` of another tenant's
//!   dashboard are `NotFound` / `false` / `None` and change nothing; `update_dashboard`
//!   leaves `created_at` alone.
//! - `list_dashboards` orders by name, then id, and counts the tenant's dashboards.
//!
//! Run them all against a backend with [`crate::dashboard_conformance!`].

use crate::dashboard::{
    ChartStyle, ControlTarget, ControlValue, Dashboard, DashboardStore, Threshold, Widget,
    WidgetConfig,
};
use crate::model::{DashboardId, DeviceId, Page, ProfileId, TenantId, now_ms};
use crate::{Aggregation, Error};

/// One widget of every type, bound to `device`.
pub fn every_widget(device: DeviceId) -> Vec<Widget> {
    let configs = vec![
        WidgetConfig::Chart {
            device_id: device,
            keys: vec!["temperature".into(), "湿度".into()],
            range_secs: 3_600,
            aggregation: Some(Aggregation::Avg),
            style: ChartStyle::Area,
        },
        WidgetConfig::Value {
            device_id: device,
            key: "temperature".into(),
            unit: Some("°C".into()),
            thresholds: vec![
                Threshold {
                    from: 30.5,
                    color: "#f0ad4e".into(),
                },
                Threshold {
                    from: 40.0,
                    color: "#d9534f".into(),
                },
            ],
        },
        WidgetConfig::Gauge {
            device_id: device,
            key: "pressure".into(),
            unit: Some("bar".into()),
            min: 0.0,
            max: 16.0,
            thresholds: vec![],
        },
        WidgetConfig::Switch {
            device_id: device,
            key: "switch".into(),
            target: ControlTarget::Command,
            method: Some("SetPower".into()),
        },
        WidgetConfig::Button {
            device_id: device,
            label: "Reset".into(),
            key: "reset".into(),
            value: ControlValue::Bool(true),
            target: ControlTarget::AttributeSet,
            method: None,
        },
        WidgetConfig::Alarms {
            device_id: None,
            limit: 10,
        },
        WidgetConfig::DeviceStatus {
            device_ids: vec![device],
            profile_id: None,
        },
        WidgetConfig::Map {
            device_ids: vec![],
            profile_id: Some(ProfileId::new()),
            lat_key: "lat".into(),
            lon_key: "lng".into(),
        },
        WidgetConfig::Markdown {
            text: "# Plant\n*Boilers* of hall 2 — 中文".into(),
        },
    ];
    configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| Widget {
            id: format!("w{i}"),
            title: Some(format!("{} {i}", config.kind())),
            x: (i as u32 % 2) * 6,
            y: (i as u32 / 2) * 4,
            w: 6,
            h: 4,
            config,
        })
        .collect()
}

/// A valid dashboard of `tenant` with every widget type (not stored).
pub fn sample_dashboard(tenant: TenantId, name: &str, home: bool) -> Dashboard {
    let at = now_ms() - 1_000;
    Dashboard {
        id: DashboardId::new(),
        tenant_id: tenant,
        name: name.into(),
        description: Some("hall 2".into()),
        home,
        widgets: every_widget(DeviceId::new()),
        created_at: at,
        updated_at: at,
    }
}

/// Create, read, list, update, delete; widgets round-trip.
pub async fn dashboard_crud<S: DashboardStore + ?Sized>(store: &S) {
    let tenant = TenantId::new();
    let d = sample_dashboard(tenant, "plant", false);
    d.validate().expect("the sample is valid");
    store.create_dashboard(&d).await.expect("create");
    assert_eq!(
        store.get_dashboard(tenant, d.id).await.unwrap(),
        Some(d.clone())
    );
    assert!(matches!(
        store.create_dashboard(&d).await,
        Err(Error::AlreadyExists { .. })
    ));
    let listed = store
        .list_dashboards(tenant, Page::default())
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.items, vec![d.clone()]);
    let mut changed = d.clone();
    changed.name = "plant v2".into();
    changed.description = None;
    changed.widgets.truncate(2);
    changed.widgets[0].x = 6;
    changed.updated_at = d.updated_at + 5;
    changed.created_at = 1;
    store.update_dashboard(&changed).await.expect("update");
    let got = store.get_dashboard(tenant, d.id).await.unwrap().unwrap();
    assert_eq!(got.name, "plant v2");
    assert_eq!(got.description, None);
    assert_eq!(got.widgets, changed.widgets);
    assert_eq!(got.updated_at, d.updated_at + 5);
    assert_eq!(got.created_at, d.created_at, "created_at stays");
    assert!(store.delete_dashboard(tenant, d.id).await.unwrap());
    assert!(!store.delete_dashboard(tenant, d.id).await.unwrap());
    assert_eq!(store.get_dashboard(tenant, d.id).await.unwrap(), None);
    assert!(matches!(
        store.update_dashboard(&changed).await,
        Err(Error::NotFound { .. })
    ));
}

/// Another tenant neither sees nor changes a dashboard.
pub async fn dashboard_tenant_isolation<S: DashboardStore + ?Sized>(store: &S) {
    let tenant = TenantId::new();
    let d = sample_dashboard(tenant, "mine", true);
    store.create_dashboard(&d).await.unwrap();
    let other = TenantId::new();
    assert_eq!(store.get_dashboard(other, d.id).await.unwrap(), None);
    assert_eq!(store.home_dashboard(other).await.unwrap(), None);
    assert_eq!(
        store
            .list_dashboards(other, Page::default())
            .await
            .unwrap()
            .total,
        0
    );
    let mut foreign = d.clone();
    foreign.tenant_id = other;
    foreign.name = "stolen".into();
    assert!(matches!(
        store.update_dashboard(&foreign).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!store.delete_dashboard(other, d.id).await.unwrap());
    // another tenant's home dashboard leaves this one's alone
    store
        .create_dashboard(&sample_dashboard(other, "theirs", true))
        .await
        .unwrap();
    let got = store.get_dashboard(tenant, d.id).await.unwrap().unwrap();
    assert_eq!(got.name, "mine");
    assert!(got.home);
}

/// One home dashboard per tenant: a new home unsets the previous one.
pub async fn one_home_dashboard<S: DashboardStore + ?Sized>(store: &S) {
    let tenant = TenantId::new();
    assert_eq!(store.home_dashboard(tenant).await.unwrap(), None);
    let first = sample_dashboard(tenant, "first", true);
    store.create_dashboard(&first).await.unwrap();
    assert_eq!(
        store.home_dashboard(tenant).await.unwrap().map(|d| d.id),
        Some(first.id)
    );
    let second = sample_dashboard(tenant, "second", true);
    store.create_dashboard(&second).await.unwrap();
    assert_eq!(
        store.home_dashboard(tenant).await.unwrap().map(|d| d.id),
        Some(second.id)
    );
    assert!(
        !store
            .get_dashboard(tenant, first.id)
            .await
            .unwrap()
            .unwrap()
            .home
    );
    // back to the first by update
    let mut first_home = first.clone();
    first_home.home = true;
    store.update_dashboard(&first_home).await.unwrap();
    let homes: Vec<_> = store
        .list_dashboards(tenant, Page::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|d| d.home)
        .map(|d| d.id)
        .collect();
    assert_eq!(homes, vec![first.id]);
    // unsetting leaves the tenant without one
    first_home.home = false;
    store.update_dashboard(&first_home).await.unwrap();
    assert_eq!(store.home_dashboard(tenant).await.unwrap(), None);
    // a failed update (unknown id) does not unset the current home
    store.update_dashboard(&second).await.unwrap();
    let mut ghost = sample_dashboard(tenant, "ghost", true);
    ghost.id = DashboardId::new();
    assert!(matches!(
        store.update_dashboard(&ghost).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        store.home_dashboard(tenant).await.unwrap().map(|d| d.id),
        Some(second.id)
    );
}

/// Lists by name then id, paged, with the tenant's total.
pub async fn dashboard_list_order_and_pages<S: DashboardStore + ?Sized>(store: &S) {
    let tenant = TenantId::new();
    for name in ["b", "a", "c"] {
        store
            .create_dashboard(&sample_dashboard(tenant, name, false))
            .await
            .unwrap();
    }
    let all = store
        .list_dashboards(tenant, Page::default())
        .await
        .unwrap();
    let names: Vec<_> = all.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let page = store
        .list_dashboards(
            tenant,
            Page {
                offset: 1,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].name, "b");
}

/// Stamps out one `#[tokio::test]` per dashboard conformance case for a backend:
/// `$make` is an async expression yielding `Option<impl Deref<Target = S>>` (`None`
/// skips, e.g. without a database).
#[macro_export]
macro_rules! dashboard_conformance {
    ($make:expr $(,)?) => {
        $crate::__dashboard_conformance_tests!($make;
            dashboard_crud,
            dashboard_tenant_isolation,
            one_home_dashboard,
            dashboard_list_order_and_pages,
        );
    };
}

/// Body of [`dashboard_conformance!`]: one test per listed case.
#[doc(hidden)]
#[macro_export]
macro_rules! __dashboard_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = ($make).await else {
                    return;
                };
                $crate::testing::dashboard::$case(&*store).await;
            }
        )+
    };
}
