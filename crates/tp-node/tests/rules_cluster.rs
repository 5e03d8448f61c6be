//! Two rule engines as on two API/broker nodes: separate engine instances, each with
//! its own manual clock, its own store connection and its own cache connection, on
//! one shared database and one shared cache.
//!
//! - A cron rule every minute with a notify action: each minute's webhook call is
//!   made exactly once in total (the `rule:fire:{rule}:{fire_ts}` lock in the cache).
//! - Both nodes raise the same (rule, device) alarm at once: one alarm, every
//!   occurrence counted, cleared once.
//!
//! Runs on SQLite + the in-memory cache (one cache instance shared by both engines),
//! and on PostgreSQL + Redis (a schema and a key prefix of its own) when
//! `TP_TEST_POSTGRES_URL` and `TP_TEST_REDIS_URL` are set (`eval "$(scripts/services.sh)"`).

mod common;

use std::sync::Arc;

use common::cluster::SharedStores;
use common::rules::START;
use common::webhook::WebhookReceiver;
use common::*;
use serde_json::json;
use tp_core::rules::{
    Action, AlarmEventKind, AlarmSeverity, AlarmStatus, ChannelId, ChannelKind, Condition,
    DataKind, DeviceSource, NotificationChannel, Operator, Rule, RuleEngineControl, RuleId,
    RuleInput, RuleInputData, RuleStoreRef, Schedule, ScheduleKind, TriggerGroup, UplinkObserver,
};
use tp_core::{CacheRef, DeviceId, KeyValue, TenantId, Value};
use tp_node::config::NotifyConfig;
use tp_rules::notify::Notifications;
use tp_rules::{ManualClock, RuleEngine, RuleEngineConfig, RuleEngineDeps};

const SECRET: &str = "webhook-secret-of-the-cluster-test";
const WAIT: Duration = Duration::from_secs(30);

/// Where the shared data lives.
enum Backend {
    Sqlite {
        url: String,
        cache: CacheRef,
        _dir: tempfile::TempDir,
    },
    Services(SharedStores),
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::Sqlite {
            url: format!("sqlite://{}", dir.path().join("metadata.db").display()),
            cache: tp_storage::open_cache("memory://").await.unwrap(),
            _dir: dir,
        }
    }

    fn services() -> Option<Self> {
        SharedStores::new("rules").map(Self::Services)
    }

    fn store_url(&self) -> String {
        match self {
            Self::Sqlite { url, .. } => url.clone(),
            Self::Services(stores) => stores.pg_url.clone(),
        }
    }

    /// A cache connection of one node.
    async fn cache(&self) -> CacheRef {
        match self {
            Self::Sqlite { cache, .. } => cache.clone(),
            Self::Services(stores) => tp_storage::open_cache(&stores.redis_url).await.unwrap(),
        }
    }

    async fn cleanup(self) {
        if let Self::Services(stores) = self {
            stores.drop_schema().await;
        }
    }
}

struct Cluster {
    engines: [RuleEngine; 2],
    clocks: [Arc<ManualClock>; 2],
    /// Node 0's store handle, to define rules and read what happened.
    rules: RuleStoreRef,
    tenant: TenantId,
}

impl Cluster {
    async fn start(backend: &Backend) -> Self {
        let url = backend.store_url();
        let mut engines = Vec::new();
        let mut clocks = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..2 {
            let (metadata, _, rules) = tp_storage::open_rules(&url).await.unwrap();
            let clock = ManualClock::new(START);
            // The webhook receiver listens on loopback.
            let notify = NotifyConfig {
                allow_private_webhooks: true,
                ..NotifyConfig::default()
            };
            let notifier = Notifications::new(rules.clone(), &notify).unwrap();
            let engine = RuleEngine::start(
                RuleEngineDeps {
                    rules: rules.clone(),
                    metadata,
                    profiles: None,
                    cache: backend.cache().await,
                    notifier: Some(Arc::new(notifier)),
                    clock: clock.clone(),
                },
                RuleEngineConfig::default(),
            )
            .await
            .unwrap();
            engines.push(engine);
            clocks.push(clock);
            stores.push(rules);
        }
        Self {
            engines: engines.try_into().unwrap(),
            clocks: clocks.try_into().unwrap(),
            rules: stores.swap_remove(0),
            tenant: TenantId::new(),
        }
    }

    async fn add_rule(
        &self,
        name: &str,
        conditions: Vec<Condition>,
        actions: Vec<Action>,
    ) -> RuleId {
        let rule = Rule {
            id: RuleId::new(),
            tenant_id: self.tenant,
            name: name.to_owned(),
            description: None,
            enabled: true,
            trigger_groups: vec![TriggerGroup { conditions }],
            actions,
            created_at: START,
            updated_at: START,
        };
        self.rules.create_rule(&rule).await.unwrap();
        for e in &self.engines {
            e.rules_changed(self.tenant).await;
        }
        for e in &self.engines {
            assert_eq!(e.stats().rules, 1, "{:?}", e.stats());
        }
        rule.id
    }

    /// Moves both clocks together (the nodes' timers race for the same fire time).
    fn advance(&self, by: Duration) {
        for c in &self.clocks {
            c.advance(by);
        }
    }

    async fn flush(&self) {
        let [a, b] = &self.engines;
        tokio::join!(a.flush(), b.flush());
    }

    fn stop(&self) {
        for e in &self.engines {
            e.stop();
        }
    }
}

async fn cron_runs_once_per_minute_across_two_nodes(backend: Backend) {
    let webhook = WebhookReceiver::start(SECRET).await;
    let cluster = Cluster::start(&backend).await;
    let channel = ChannelId::new();
    cluster
        .rules
        .create_channel(&NotificationChannel {
            id: channel,
            tenant_id: cluster.tenant,
            name: "ops".to_owned(),
            enabled: true,
            kind: ChannelKind::Webhook {
                url: webhook.url(),
                secret: SECRET.to_owned(),
            },
            created_at: START,
        })
        .await
        .unwrap();
    let rule = cluster
        .add_rule(
            "every minute",
            vec![Condition::Schedule(Schedule {
                kind: ScheduleKind::Cron {
                    expression: "0 * * * * *".to_owned(),
                },
                not_before: None,
                not_after: None,
            })],
            vec![Action::Notify {
                channel,
                subject: "tick".to_owned(),
                body: "a minute passed".to_owned(),
            }],
        )
        .await;

    // Minutes START + 30 s, + 90 s, + 150 s.
    cluster.advance(Duration::from_secs(30));
    for minute in 1..=3usize {
        let calls = webhook.wait_for_calls(minute, WAIT).await;
        assert!(calls.iter().all(|c| c.signature_ok));
        cluster.flush().await;
        if minute < 3 {
            cluster.advance(Duration::from_secs(60));
        }
    }
    // Both nodes saw every fire time; only the lock holder acted.
    for e in &cluster.engines {
        assert_eq!(e.stats().transitions, 3, "{:?}", e.stats());
    }
    // Give a duplicate (if any) every chance to arrive before counting.
    cluster.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = webhook.calls();
    assert_eq!(calls.len(), 3, "one call per minute in total: {calls:#?}");
    let history = cluster
        .rules
        .list_notifications(cluster.tenant, Default::default())
        .await
        .unwrap();
    assert_eq!(history.items.len(), 3, "{:?}", history.items);
    assert!(
        history.items.iter().all(|n| n.rule_id == Some(rule)),
        "{:?}",
        history.items
    );
    let cache = backend.cache().await;
    for fire_ts in [START + 30_000, START + 90_000, START + 150_000] {
        let key = format!("rule:fire:{rule}:{fire_ts}");
        assert!(!cache.set_nx(&key, b"1", None).await.unwrap(), "{key} held");
    }
    cluster.stop();
    backend.cleanup().await;
}

async fn both_nodes_raise_one_alarm(backend: Backend) {
    let cluster = Cluster::start(&backend).await;
    let device = DeviceId::new();
    let rule = cluster
        .add_rule(
            "too hot",
            vec![Condition::Device {
                source: DeviceSource::Device(device),
                data: DataKind::Telemetry,
                key: "temp".to_owned(),
                operator: Operator::Gt,
                value: json!(30),
                duration_secs: None,
            }],
            vec![Action::RaiseAlarm {
                severity: AlarmSeverity::Critical,
                title: "Too hot".to_owned(),
                description: None,
                channels: vec![],
            }],
        )
        .await;
    let input = |temp: i64| RuleInput {
        device_id: device,
        tenant_id: cluster.tenant,
        profile_id: None,
        ts: START,
        data: RuleInputData::Telemetry {
            values: vec![KeyValue {
                key: "temp".to_owned(),
                ts: START,
                value: Value::Integer(temp),
            }],
        },
    };
    let alarms = || common::rules::alarms(&cluster.rules, cluster.tenant, rule);

    // Both nodes see the device cross the threshold at once: each fires.
    const REPEATS: u32 = 5;
    for temp in std::iter::once(35).chain((0..REPEATS).map(|i| 36 + i64::from(i))) {
        for e in &cluster.engines {
            e.observe(input(temp));
        }
        cluster.flush().await;
    }
    let found = alarms().await;
    assert_eq!(
        found.len(),
        1,
        "one open alarm per (rule, device): {found:?}"
    );
    assert_eq!(found[0].status, AlarmStatus::Active);
    assert_eq!(
        found[0].occurrences,
        2 * (1 + REPEATS),
        "every firing and repeat of both nodes counted"
    );
    let events = cluster
        .rules
        .list_alarm_events(cluster.tenant, found[0].id)
        .await
        .unwrap();
    let count = |k: AlarmEventKind| events.iter().filter(|e| e.kind == k).count();
    assert_eq!(count(AlarmEventKind::Raised), 1, "{events:?}");
    assert_eq!(
        count(AlarmEventKind::Repeated),
        2 * (1 + REPEATS as usize) - 1
    );

    // Both see it return to normal: cleared, once.
    for e in &cluster.engines {
        e.observe(input(20));
    }
    cluster.flush().await;
    let found = alarms().await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].status, AlarmStatus::Cleared);
    let events = cluster
        .rules
        .list_alarm_events(cluster.tenant, found[0].id)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == AlarmEventKind::Cleared)
            .count(),
        1,
        "{events:?}"
    );
    cluster.stop();
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_once_per_minute_across_two_nodes_on_sqlite() {
    cron_runs_once_per_minute_across_two_nodes(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_once_per_minute_across_two_nodes_on_postgres_and_redis() {
    let Some(backend) = Backend::services() else {
        return;
    };
    cron_runs_once_per_minute_across_two_nodes(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_raising_the_same_alarm_make_one_on_sqlite() {
    both_nodes_raise_one_alarm(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_raising_the_same_alarm_make_one_on_postgres_and_redis() {
    let Some(backend) = Backend::services() else {
        return;
    };
    both_nodes_raise_one_alarm(backend).await;
}
