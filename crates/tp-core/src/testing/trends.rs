//! Conformance cases for [`TrendStore`]: its aggregates agree with the status
//! history and the alarms written through the metadata and rule stores (the SQL
//! stores are all three). Each case makes its own tenant.
//!
//! Run them against a backend with [`crate::trends_conformance!`].

use serde_json::json;

use crate::MetadataStore;
use crate::model::{Device, DeviceStatusEvent, StatusReason, Tenant, TenantId, now_ms};
use crate::rules::{Alarm, AlarmId, AlarmSeverity, AlarmStatus, RuleStore};
use crate::trends::{AlarmBucket, TrendStore};

const HOUR: i64 = 3_600_000;

/// Online transitions per bucket and the count now; alarms raised and cleared per
/// bucket; nothing of another tenant.
pub async fn trend_aggregates<S: TrendStore + MetadataStore + RuleStore + ?Sized>(store: &S) {
    let tenant = Tenant {
        id: TenantId::new(),
        name: format!("trends-{}", uuid::Uuid::new_v4().simple()),
        created_at: now_ms(),
    };
    store.create_tenant(&tenant).await.unwrap();
    let since = 1_700_000_000_000 - 24 * HOUR;
    let mut devices = Vec::new();
    for i in 0..3 {
        let (d, _) = Device::new(tenant.id, format!("t{i}"), None);
        store.create_device(&d).await.unwrap();
        devices.push(d.id);
    }
    // d0: online in bucket 1; d1: online in bucket 1, offline in bucket 2; d2 never.
    for (device, online, at) in [
        (devices[0], true, since + HOUR + 5),
        (devices[1], true, since + HOUR + 6),
        (devices[1], false, since + 2 * HOUR),
        // before the window: not a change in it
        (devices[2], true, since - 10),
        (devices[2], false, since - 5),
    ] {
        store
            .append_status(&DeviceStatusEvent {
                device_id: device,
                online,
                reason: StatusReason::Connect,
                at,
            })
            .await
            .unwrap();
    }
    assert_eq!(store.online_now(tenant.id).await.unwrap(), 1);
    assert_eq!(
        store.online_changes(tenant.id, since, HOUR).await.unwrap(),
        vec![(1, 2), (2, -1)]
    );
    assert_eq!(store.online_now(TenantId::new()).await.unwrap(), 0);
    for (at, cleared) in [
        (since + 10, Some(since + HOUR)),
        (since + 11, None),
        (since - 1, Some(since + 1)),
    ] {
        store
            .create_alarm(&Alarm {
                id: AlarmId::new(),
                tenant_id: tenant.id,
                rule_id: None,
                device_id: Some(devices[0]),
                severity: AlarmSeverity::Minor,
                status: if cleared.is_some() {
                    AlarmStatus::Cleared
                } else {
                    AlarmStatus::Active
                },
                title: "t".into(),
                description: None,
                occurrences: 1,
                details: json!({}),
                created_at: at,
                updated_at: at,
                acknowledged_at: None,
                acknowledged_by: None,
                cleared_at: cleared,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.alarm_buckets(tenant.id, since, HOUR).await.unwrap(),
        vec![
            AlarmBucket {
                bucket: 0,
                raised: 2,
                cleared: 1
            },
            AlarmBucket {
                bucket: 1,
                raised: 0,
                cleared: 1
            },
        ]
    );
    assert!(
        store
            .alarm_buckets(TenantId::new(), since, HOUR)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Stamps out one `#[tokio::test]` per trend conformance case; `$make` as for
/// [`crate::dashboard_conformance!`].
#[macro_export]
macro_rules! trends_conformance {
    ($make:expr $(,)?) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn trend_aggregates() {
            let Some(store) = ($make).await else {
                return;
            };
            $crate::testing::trends::trend_aggregates(&*store).await;
        }
    };
}
