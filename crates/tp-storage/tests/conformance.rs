//! Every backend of this crate against the conformance suites of `tp_core::testing`.

use std::sync::Arc;

use tp_core::{AccessStoreRef, CacheRef, MetadataStoreRef, TimeSeriesStoreRef};
use tp_storage::memory::MemoryCache;
use tp_storage::sqlite::{SqliteMetadataStore, SqliteTimeSeriesStore};

/// A database file in a fresh temporary directory, removed when the test ends.
struct TempDb {
    dir: tempfile::TempDir,
}

impl TempDb {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("db/tp.db")
    }
}

/// Keeps the temporary directory alive as long as the store.
struct Held<S: ?Sized> {
    store: Arc<S>,
    _dir: Option<TempDb>,
}

impl<S: ?Sized> std::ops::Deref for Held<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.store
    }
}

async fn sqlite_meta_file() -> Option<Held<dyn tp_core::MetadataStore>> {
    let db = TempDb::new();
    let store: MetadataStoreRef =
        Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
    Some(Held {
        store,
        _dir: Some(db),
    })
}

async fn sqlite_ts_file() -> Option<Held<dyn tp_core::TimeSeriesStore>> {
    let db = TempDb::new();
    let store: TimeSeriesStoreRef =
        Arc::new(SqliteTimeSeriesStore::open(&db.path()).await.expect("open"));
    Some(Held {
        store,
        _dir: Some(db),
    })
}

/// One SQLite metadata store as both the access store and the metadata store.
fn access_pair(store: SqliteMetadataStore) -> (AccessStoreRef, MetadataStoreRef) {
    let store = Arc::new(store);
    (store.clone(), store)
}

async fn sqlite_access_file() -> Option<(AccessStoreRef, MetadataStoreRef, TempDb)> {
    let db = TempDb::new();
    let store = SqliteMetadataStore::open(&db.path()).await.expect("open");
    let (access, meta) = access_pair(store);
    Some((access, meta, db))
}

mod sqlite_file_access {
    tp_core::access_conformance!(super::sqlite_access_file());
}

mod sqlite_memory_access {
    use super::*;
    tp_core::access_conformance!(async {
        Some(access_pair(
            SqliteMetadataStore::in_memory().await.expect("open"),
        ))
    });
}

/// Through URL dispatch: `open_access` on a file.
mod sqlite_url_access {
    use super::*;
    tp_core::access_conformance!(async {
        let db = TempDb::new();
        let url = format!("sqlite://{}", db.path().display());
        let (meta, access) = tp_storage::open_access(&url).await.expect("open_access");
        Some((access, meta, db))
    });
}

/// A SQLite rule store on a file (the metadata store's database).
async fn sqlite_rules_file() -> Option<Held<dyn tp_core::rules::RuleStore>> {
    let db = TempDb::new();
    let store: tp_core::rules::RuleStoreRef =
        Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
    Some(Held {
        store,
        _dir: Some(db),
    })
}

mod sqlite_file_rules {
    tp_core::rules_conformance!(super::sqlite_rules_file());
}

/// The data script suite on a SQLite file and in memory (the store is also the
/// access store its profiles live in).
mod sqlite_file_scripts {
    use super::*;
    tp_core::script_conformance!(async {
        let db = TempDb::new();
        let store = Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
        Some(Held {
            store,
            _dir: Some(db),
        })
    });
}

mod sqlite_memory_scripts {
    use super::*;
    tp_core::script_conformance!(async {
        Some(Arc::new(
            SqliteMetadataStore::in_memory().await.expect("open"),
        ))
    });
}

/// The dashboard suite on a SQLite file and in memory.
mod sqlite_file_dashboards {
    use super::*;
    tp_core::dashboard_conformance!(async {
        let db = TempDb::new();
        let store = Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
        Some(Held {
            store,
            _dir: Some(db),
        })
    });
}

mod sqlite_memory_trends {
    use super::*;
    tp_core::trends_conformance!(async {
        Some(Arc::new(
            SqliteMetadataStore::in_memory().await.expect("open"),
        ))
    });
}

mod sqlite_memory_dashboards {
    use super::*;
    tp_core::dashboard_conformance!(async {
        Some(Arc::new(
            SqliteMetadataStore::in_memory().await.expect("open"),
        ))
    });
}

mod sqlite_memory_rules {
    use super::*;
    tp_core::rules_conformance!(async {
        let store: tp_core::rules::RuleStoreRef =
            Arc::new(SqliteMetadataStore::in_memory().await.expect("open"));
        Some(store)
    });
}

/// Through URL dispatch: `open_rules` on a file.
mod sqlite_url_rules {
    use super::*;
    tp_core::rules_conformance!(async {
        let db = TempDb::new();
        let url = format!("sqlite://{}", db.path().display());
        let (_meta, _access, store) = tp_storage::open_rules(&url).await.expect("open_rules");
        Some(Held {
            store,
            _dir: Some(db),
        })
    });
}

mod sqlite_memory_ota {
    use super::*;
    tp_core::ota_conformance!(async {
        let store: tp_core::ota::OtaStoreRef =
            Arc::new(SqliteMetadataStore::in_memory().await.expect("open"));
        Some(store)
    });
}

mod sqlite_file_ota {
    use super::*;
    tp_core::ota_conformance!(async {
        let db = TempDb::new();
        let store: tp_core::ota::OtaStoreRef =
            Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
        Some(Held {
            store,
            _dir: Some(db),
        })
    });
}

mod sqlite_file_metadata {
    tp_core::metadata_conformance!(super::sqlite_meta_file());
}

mod sqlite_file_timeseries {
    tp_core::timeseries_conformance!(super::sqlite_ts_file());
}

mod sqlite_memory_metadata {
    use super::*;
    tp_core::metadata_conformance!(async {
        let store: MetadataStoreRef =
            Arc::new(SqliteMetadataStore::in_memory().await.expect("open"));
        Some(store)
    });
}

mod sqlite_memory_timeseries {
    use super::*;
    tp_core::timeseries_conformance!(async {
        let store: TimeSeriesStoreRef =
            Arc::new(SqliteTimeSeriesStore::in_memory().await.expect("open"));
        Some(store)
    });
}

/// Through URL dispatch, metadata and time series sharing one file.
mod sqlite_url_shared_file {
    use super::*;

    async fn shared() -> Option<Held<dyn tp_core::TimeSeriesStore>> {
        let db = TempDb::new();
        let url = format!("sqlite://{}", db.path().display());
        let _meta = tp_storage::open_metadata(&url).await.expect("metadata");
        let store = tp_storage::open_timeseries(&url).await.expect("timeseries");
        Some(Held {
            store,
            _dir: Some(db),
        })
    }

    tp_core::timeseries_conformance!(shared());
}

/// The embedded engine on a directory that is removed when the test ends.
async fn fjall_ts_dir() -> Option<Held<dyn tp_core::TimeSeriesStore>> {
    let db = TempDb::new();
    let store: TimeSeriesStoreRef = Arc::new(
        tp_storage::fjall::FjallTimeSeriesStore::open(
            &db.dir.path().join("ts"),
            tp_storage::fjall::FjallOptions::default(),
        )
        .await
        .expect("open"),
    );
    Some(Held {
        store,
        _dir: Some(db),
    })
}

mod fjall_file_timeseries {
    tp_core::timeseries_conformance!(super::fjall_ts_dir());
}

/// "Memory" mode: fjall's temporary mode, a fresh directory removed on drop.
mod fjall_memory_timeseries {
    use super::*;
    tp_core::timeseries_conformance!(async {
        let store: TimeSeriesStoreRef = tp_storage::open_timeseries("fjall::memory:")
            .await
            .expect("open");
        Some(store)
    });
}

/// Every write flushed into chunks at once (in the background, racing the reads that
/// follow): the chunk path and the head/chunk hand-over.
mod fjall_chunks_timeseries {
    use super::*;
    tp_core::timeseries_conformance!(async {
        let store: TimeSeriesStoreRef =
            tp_storage::open_timeseries("fjall::memory:?flush_points=1")
                .await
                .expect("open");
        Some(store)
    });
}

/// Small partitions (10 s): queries, deletes and aggregates cross partition borders.
mod fjall_small_partitions_timeseries {
    use super::*;
    tp_core::timeseries_conformance!(async {
        let db = TempDb::new();
        let url = format!(
            "fjall://{}?partition_ms=10000&fsync=true&flush_points=7",
            db.dir.path().join("ts").display()
        );
        let store = tp_storage::open_timeseries(&url).await.expect("open");
        Some(Held {
            store,
            _dir: Some(db),
        })
    });
}

/// All cases at once on one store (one database directory), as the node uses it.
mod fjall_one_shared_store {
    use super::*;

    static SHARED: tokio::sync::OnceCell<(tempfile::TempDir, TimeSeriesStoreRef)> =
        tokio::sync::OnceCell::const_new();

    tp_core::timeseries_conformance!(async {
        let (_, store) = SHARED
            .get_or_init(|| async {
                let dir = tempfile::Builder::new()
                    .prefix("tp-storage-fjall-shared")
                    .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                    .expect("tempdir");
                let url = format!("fjall://{}", dir.path().join("ts").display());
                let store = tp_storage::open_timeseries(&url).await.expect("open");
                (dir, store)
            })
            .await;
        Some(store.clone())
    });
}

mod memory_cache {
    use super::*;
    tp_core::cache_conformance!(async {
        let cache: CacheRef = Arc::new(MemoryCache::new(10_000));
        Some(cache)
    });
}

mod memory_cache_by_url {
    tp_core::cache_conformance!(async {
        Some(
            tp_storage::open_cache("memory://?capacity=1000")
                .await
                .expect("open"),
        )
    });
}

/// All cases on one database file, each case with its own store (and so its own
/// writer connection): the parallel, shared-database setting the suites are written
/// for, including write-lock contention between stores.
mod sqlite_one_shared_file {
    use super::*;

    static SHARED: tokio::sync::OnceCell<(tempfile::TempDir, std::path::PathBuf)> =
        tokio::sync::OnceCell::const_new();

    async fn shared_path() -> std::path::PathBuf {
        let (_, path) = SHARED
            .get_or_init(|| async {
                let dir = tempfile::Builder::new()
                    .prefix("tp-storage-shared")
                    .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                    .expect("tempdir");
                let path = dir.path().join("shared.db");
                // Apply both schemas once, before cases open the file concurrently.
                SqliteMetadataStore::open(&path).await.expect("metadata");
                SqliteTimeSeriesStore::open(&path)
                    .await
                    .expect("timeseries");
                (dir, path)
            })
            .await;
        path.clone()
    }

    mod metadata {
        use super::*;
        tp_core::metadata_conformance!(async {
            let store: MetadataStoreRef = Arc::new(
                SqliteMetadataStore::open(&shared_path().await)
                    .await
                    .expect("open"),
            );
            Some(store)
        });
    }

    mod access {
        use super::*;
        tp_core::access_conformance!(async {
            Some(access_pair(
                SqliteMetadataStore::open(&shared_path().await)
                    .await
                    .expect("open"),
            ))
        });
    }

    mod rules {
        use super::*;
        tp_core::rules_conformance!(async {
            let store: tp_core::rules::RuleStoreRef = Arc::new(
                SqliteMetadataStore::open(&shared_path().await)
                    .await
                    .expect("open"),
            );
            Some(store)
        });
    }

    mod timeseries {
        use super::*;
        tp_core::timeseries_conformance!(async {
            let store: TimeSeriesStoreRef = Arc::new(
                SqliteTimeSeriesStore::open(&shared_path().await)
                    .await
                    .expect("open"),
            );
            Some(store)
        });
    }
}

/// Deleting a tenant (AccessStore) deletes its rules, scenes, alarms with their
/// history, channels and notification history, and keeps other tenants' rows.
#[tokio::test]
async fn tenant_delete_removes_rule_data() {
    use tp_core::rules::*;
    use tp_core::{AccessStore, MetadataStore, Page, Tenant, TenantId, now_ms};

    let store = Arc::new(SqliteMetadataStore::in_memory().await.expect("open"));
    let (gone, kept) = (TenantId::new(), TenantId::new());
    for id in [gone, kept] {
        let t = Tenant {
            id,
            name: format!("t-{id}"),
            created_at: now_ms(),
        };
        MetadataStore::create_tenant(&*store, &t)
            .await
            .expect("tenant");
    }
    let rules: &dyn RuleStore = &*store;
    let mut alarms = Vec::new();
    for tenant in [gone, kept] {
        let rule = tp_core::testing::rules::sample_rule(tenant, "r", now_ms());
        rules.create_rule(&rule).await.expect("rule");
        rules
            .put_rule_state(&RuleState {
                rule_id: rule.id,
                scope: "s".into(),
                state: serde_json::json!(1),
                updated_at: 0,
            })
            .await
            .expect("state");
        let alarm = Alarm {
            id: AlarmId::new(),
            tenant_id: tenant,
            rule_id: Some(rule.id),
            device_id: None,
            severity: AlarmSeverity::Info,
            status: AlarmStatus::Active,
            title: "t".into(),
            description: None,
            occurrences: 1,
            details: serde_json::json!({}),
            created_at: 0,
            updated_at: 0,
            acknowledged_at: None,
            acknowledged_by: None,
            cleared_at: None,
        };
        rules.create_alarm(&alarm).await.expect("alarm");
        rules
            .append_alarm_event(&AlarmEvent {
                alarm_id: alarm.id,
                tenant_id: tenant,
                ts: 0,
                kind: AlarmEventKind::Raised,
                user_id: None,
                text: None,
            })
            .await
            .expect("event");
        alarms.push((tenant, rule.id, alarm.id));
    }
    AccessStore::delete_tenant(&*store, gone)
        .await
        .expect("delete");
    let (_, gone_rule, gone_alarm) = alarms[0];
    let (_, kept_rule, kept_alarm) = alarms[1];
    assert_eq!(
        rules.list_rules(gone, Page::default()).await.unwrap().total,
        0
    );
    assert!(rules.list_rule_states(gone_rule).await.unwrap().is_empty());
    assert_eq!(rules.get_alarm(gone, gone_alarm).await.unwrap(), None);
    assert!(
        rules
            .list_alarm_events(gone, gone_alarm)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        rules.list_rules(kept, Page::default()).await.unwrap().total,
        1
    );
    assert_eq!(rules.list_rule_states(kept_rule).await.unwrap().len(), 1);
    assert!(rules.get_alarm(kept, kept_alarm).await.unwrap().is_some());
    assert_eq!(
        rules
            .list_alarm_events(kept, kept_alarm)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// One SQLite metadata store as the thing-model store and the access store.
async fn sqlite_thing_models_file() -> Option<(tp_core::ThingModelStoreRef, AccessStoreRef, TempDb)>
{
    let db = TempDb::new();
    let store = Arc::new(SqliteMetadataStore::open(&db.path()).await.expect("open"));
    Some((store.clone(), store, db))
}

mod sqlite_file_thing_model {
    tp_core::thing_model_conformance!(super::sqlite_thing_models_file());
}

/// Through URL dispatch: `open_meta_stores` on a file.
mod sqlite_url_thing_model {
    use super::*;
    tp_core::thing_model_conformance!(async {
        let db = TempDb::new();
        let url = format!("sqlite://{}", db.path().display());
        let stores = tp_storage::open_meta_stores(&url)
            .await
            .expect("open_meta_stores");
        Some((stores.thing_models, stores.access, db))
    });
}
