//! Notification delivery over real sockets: signed webhooks to a local axum
//! receiver (retries on 5xx/429, no retry on other 4xx), email to a local SMTP sink
//! (plain, STARTTLS and implicit TLS, the sink's self-signed certificate trusted
//! through `notify.smtp.ca_file`), and the notification history each delivery
//! leaves behind.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::Duration;
use common::smtp::{SinkBehavior, SinkTls, SmtpSink};
use common::webhook::WebhookReceiver;
use serde_json::json;
use tp_core::model::{DeviceId, NotificationId, Page, Paged, TenantId, now_ms};
use tp_core::rules::*;
use tp_core::{Error, Result};
use tp_node::config::{NotifyConfig, SmtpConfig, SmtpTls};
use tp_rules::notify::{NO_SMTP_DETAIL, Notifications};

const SECRET: &str = "webhook-secret-do-not-log";
const WAIT: Duration = Duration::from_secs(20);

/// A RuleStore that keeps notification records in memory (and every update, to
/// check the progress a delivery reports); everything else is unsupported.
#[derive(Debug, Default)]
struct MemStore {
    records: Mutex<HashMap<NotificationId, NotificationRecord>>,
    updates: Mutex<Vec<NotificationRecord>>,
}

impl MemStore {
    fn get(&self, id: NotificationId) -> NotificationRecord {
        self.records.lock().unwrap()[&id].clone()
    }
    fn updates_of(&self, id: NotificationId) -> Vec<NotificationRecord> {
        self.updates
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.id == id)
            .cloned()
            .collect()
    }
}

fn unsupported<T>(operation: &'static str) -> Result<T> {
    Err(Error::NotSupported {
        backend: "memory-test",
        operation,
    })
}

#[async_trait]
impl RuleStore for MemStore {
    fn backend(&self) -> &'static str {
        "memory-test"
    }
    async fn create_rule(&self, _: &Rule) -> Result<()> {
        unsupported("create_rule")
    }
    async fn get_rule(&self, _: TenantId, _: RuleId) -> Result<Option<Rule>> {
        unsupported("get_rule")
    }
    async fn list_rules(&self, _: TenantId, _: Page) -> Result<Paged<Rule>> {
        unsupported("list_rules")
    }
    async fn list_enabled_rules(&self) -> Result<Vec<Rule>> {
        unsupported("list_enabled_rules")
    }
    async fn update_rule(&self, _: &Rule) -> Result<()> {
        unsupported("update_rule")
    }
    async fn delete_rule(&self, _: TenantId, _: RuleId) -> Result<()> {
        unsupported("delete_rule")
    }
    async fn create_scene(&self, _: &Scene) -> Result<()> {
        unsupported("create_scene")
    }
    async fn get_scene(&self, _: TenantId, _: SceneId) -> Result<Option<Scene>> {
        unsupported("get_scene")
    }
    async fn list_scenes(&self, _: TenantId, _: Page) -> Result<Paged<Scene>> {
        unsupported("list_scenes")
    }
    async fn update_scene(&self, _: &Scene) -> Result<()> {
        unsupported("update_scene")
    }
    async fn delete_scene(&self, _: TenantId, _: SceneId) -> Result<()> {
        unsupported("delete_scene")
    }
    async fn create_alarm(&self, _: &Alarm) -> Result<()> {
        unsupported("create_alarm")
    }
    async fn update_alarm(&self, _: &Alarm) -> Result<()> {
        unsupported("update_alarm")
    }
    async fn get_alarm(&self, _: TenantId, _: AlarmId) -> Result<Option<Alarm>> {
        unsupported("get_alarm")
    }
    async fn get_open_alarm(&self, _: RuleId, _: Option<DeviceId>) -> Result<Option<Alarm>> {
        unsupported("get_open_alarm")
    }
    async fn list_alarms(&self, _: TenantId, _: &AlarmFilter) -> Result<Paged<Alarm>> {
        unsupported("list_alarms")
    }
    async fn count_alarms(&self, _: TenantId, _: Option<DeviceId>) -> Result<AlarmCounts> {
        unsupported("count_alarms")
    }
    async fn append_alarm_event(&self, _: &AlarmEvent) -> Result<()> {
        unsupported("append_alarm_event")
    }
    async fn list_alarm_events(&self, _: TenantId, _: AlarmId) -> Result<Vec<AlarmEvent>> {
        unsupported("list_alarm_events")
    }
    async fn create_channel(&self, _: &NotificationChannel) -> Result<()> {
        unsupported("create_channel")
    }
    async fn get_channel(&self, _: TenantId, _: ChannelId) -> Result<Option<NotificationChannel>> {
        unsupported("get_channel")
    }
    async fn list_channels(&self, _: TenantId, _: Page) -> Result<Paged<NotificationChannel>> {
        unsupported("list_channels")
    }
    async fn update_channel(&self, _: &NotificationChannel) -> Result<()> {
        unsupported("update_channel")
    }
    async fn delete_channel(&self, _: TenantId, _: ChannelId) -> Result<()> {
        unsupported("delete_channel")
    }
    async fn create_notification(&self, record: &NotificationRecord) -> Result<()> {
        let mut records = self.records.lock().unwrap();
        if records.contains_key(&record.id) {
            return Err(Error::AlreadyExists {
                entity: "notification",
                id: record.id.to_string(),
            });
        }
        records.insert(record.id, record.clone());
        Ok(())
    }
    async fn update_notification(&self, record: &NotificationRecord) -> Result<()> {
        let mut records = self.records.lock().unwrap();
        let Some(row) = records.get_mut(&record.id) else {
            return Err(Error::NotFound {
                entity: "notification",
                id: record.id.to_string(),
            });
        };
        *row = record.clone();
        self.updates.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn list_notifications(
        &self,
        tenant: TenantId,
        _: Page,
    ) -> Result<Paged<NotificationRecord>> {
        let mut items: Vec<_> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.tenant_id == tenant)
            .cloned()
            .collect();
        items.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        let total = items.len() as u64;
        Ok(Paged { items, total })
    }
    async fn put_rule_state(&self, _: &RuleState) -> Result<()> {
        unsupported("put_rule_state")
    }
    async fn delete_rule_state(&self, _: RuleId, _: &str) -> Result<()> {
        unsupported("delete_rule_state")
    }
    async fn list_rule_states(&self, _: RuleId) -> Result<Vec<RuleState>> {
        unsupported("list_rule_states")
    }
}

/// Small backoff so retries do not slow the suite; no assertion depends on it.
fn fast_config() -> NotifyConfig {
    NotifyConfig {
        webhook_timeout_secs: 10,
        max_attempts: 4,
        backoff_base_ms: 5,
        max_concurrent: 4,
        max_concurrent_per_tenant: 4,
        max_queued_per_tenant: 1_000,
        // The test receivers listen on loopback.
        allow_private_webhooks: true,
        smtp: SmtpConfig::default(),
    }
}

fn notifier(config: &NotifyConfig) -> (Arc<MemStore>, Notifications) {
    let store = Arc::new(MemStore::default());
    let n = Notifications::new(store.clone(), config).unwrap();
    (store, n)
}

fn webhook_channel(tenant: TenantId, url: &str) -> NotificationChannel {
    NotificationChannel {
        id: ChannelId::new(),
        tenant_id: tenant,
        name: "hook".into(),
        enabled: true,
        kind: ChannelKind::Webhook {
            url: url.to_owned(),
            secret: SECRET.to_owned(),
        },
        created_at: now_ms(),
    }
}

fn email_channel(tenant: TenantId, to: &[&str]) -> NotificationChannel {
    NotificationChannel {
        id: ChannelId::new(),
        tenant_id: tenant,
        name: "mail".into(),
        enabled: true,
        kind: ChannelKind::Email {
            to: to.iter().map(|s| s.to_string()).collect(),
        },
        created_at: now_ms(),
    }
}

fn message(tenant: TenantId) -> Notification {
    Notification {
        tenant_id: tenant,
        alarm_id: Some(AlarmId::new()),
        rule_id: Some(RuleId::new()),
        subject: "Temperature high".into(),
        body: "Device boiler-1 reported 91.5 (limit 80).".into(),
        data: json!({"device": "boiler-1", "temperature": 91.5}),
    }
}

fn smtp_config(sink: &SmtpSink) -> NotifyConfig {
    NotifyConfig {
        smtp: SmtpConfig {
            host: "127.0.0.1".into(),
            port: sink.port(),
            tls: SmtpTls::None,
            from: "ThingsPanel <alerts@example.com>".into(),
            timeout_secs: 10,
            ..SmtpConfig::default()
        },
        ..fast_config()
    }
}

/// `[notify.smtp]` for a TLS sink: the default security (`starttls`) unless `tls`
/// says otherwise, trusting `ca_file` when given, with credentials (sent only once
/// the session is encrypted).
fn tls_config(sink: &SmtpSink, tls: Option<SmtpTls>, ca_file: Option<&Path>) -> NotifyConfig {
    let mut smtp = SmtpConfig {
        host: "127.0.0.1".into(),
        port: sink.port(),
        from: "ThingsPanel <alerts@example.com>".into(),
        timeout_secs: 10,
        username: Some("mailer".into()),
        password: Some("smtp-password-do-not-log".into()),
        ca_file: ca_file.map(Path::to_path_buf),
        ..SmtpConfig::default()
    };
    if let Some(tls) = tls {
        smtp.tls = tls;
    }
    NotifyConfig {
        smtp,
        ..fast_config()
    }
}

#[tokio::test]
async fn webhook_is_signed_and_recorded_as_sent() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let (store, n) = notifier(&fast_config());
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &receiver.url());
    let msg = message(tenant);

    let record = n.deliver_now(&channel, msg.clone()).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(record.attempts, 1);
    assert_eq!(record.detail.as_deref(), Some("HTTP 200 OK"));
    assert_eq!(
        store.get(record.id),
        record,
        "the store holds the final record"
    );

    let calls = receiver.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call.signature_ok, "signature must verify with the secret");
    assert!(call.timestamp.is_some_and(|t| t > 0));
    assert_eq!(
        call.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        call.headers["x-tp-notification-id"].to_str().unwrap(),
        record.id.to_string()
    );
    let body = &call.json;
    assert_eq!(body["subject"], "Temperature high");
    assert_eq!(body["body"], msg.body);
    assert_eq!(body["data"], msg.data);
    assert_eq!(body["tenant_id"], tenant.to_string());
    assert_eq!(body["alarm_id"], msg.alarm_id.unwrap().to_string());
    assert_eq!(body["rule_id"], msg.rule_id.unwrap().to_string());
    assert_eq!(body["notification_id"], record.id.to_string());
    assert_eq!(body["channel_id"], channel.id.to_string());
    assert_eq!(body["ts"], record.created_at);
    // The crate's own verifier agrees with the receiver's independent check.
    assert!(tp_rules::notify::verify_webhook_signature(
        SECRET.as_bytes(),
        call.headers["x-tp-timestamp"].to_str().unwrap(),
        &call.body,
        call.headers["x-tp-signature"].to_str().unwrap(),
    ));
}

#[tokio::test]
async fn webhook_retries_server_errors_until_sent() {
    let receiver = WebhookReceiver::scripted(SECRET, &[500, 500, 200]).await;
    let (store, n) = notifier(&fast_config());
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &receiver.url());

    let record = n.deliver_now(&channel, message(tenant)).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(record.attempts, 3);

    let calls = receiver.calls();
    assert_eq!(
        calls.iter().map(|c| c.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    assert!(calls.iter().all(|c| c.signature_ok));
    // Every attempt is freshly signed but carries the same body.
    assert!(calls.iter().all(|c| c.body == calls[0].body));

    // The history showed progress while retrying: pending with the 500, then sent.
    let updates = store.updates_of(record.id);
    assert_eq!(
        updates
            .iter()
            .map(|r| (r.status, r.attempts))
            .collect::<Vec<_>>(),
        [
            (NotificationStatus::Pending, 1),
            (NotificationStatus::Pending, 2),
            (NotificationStatus::Sent, 3)
        ]
    );
    assert!(
        updates[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("HTTP 500"),
        "{:?}",
        updates[0].detail
    );
}

#[tokio::test]
async fn webhook_client_error_fails_without_retry() {
    let receiver = WebhookReceiver::scripted(SECRET, &[400]).await;
    let (store, n) = notifier(&fast_config());
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &receiver.url());

    let record = n.deliver_now(&channel, message(tenant)).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert_eq!(record.attempts, 1);
    assert!(record.detail.as_deref().unwrap().starts_with("HTTP 400"));
    assert_eq!(receiver.calls().len(), 1);
    assert_eq!(store.get(record.id).status, NotificationStatus::Failed);
}

#[tokio::test]
async fn webhook_gives_up_after_max_attempts() {
    // 429 and 503 are both worth retrying; with 3 attempts the third 503 is final.
    let receiver = WebhookReceiver::scripted(SECRET, &[429, 503, 503, 200]).await;
    let config = NotifyConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let (_, n) = notifier(&config);
    let tenant = TenantId::new();
    let record = n
        .deliver_now(&webhook_channel(tenant, &receiver.url()), message(tenant))
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert_eq!(record.attempts, 3);
    assert!(record.detail.as_deref().unwrap().starts_with("HTTP 503"));
    assert_eq!(receiver.calls().len(), 3);
}

#[tokio::test]
async fn unreachable_webhook_is_retried_then_failed() {
    // A port bound but not listening: connections to it are refused. The socket is
    // held until the end of the test (a port only probed free and released could be
    // taken, and listened on, by something else under load).
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = refusing.local_addr().unwrap().port();
    let config = NotifyConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let (_, n) = notifier(&config);
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &format!("http://127.0.0.1:{port}/hook"));
    let record = n.deliver_now(&channel, message(tenant)).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert_eq!(record.attempts, 2);
    let detail = record.detail.unwrap();
    assert!(
        !detail.contains(&port.to_string()),
        "no URL in details: {detail}"
    );
    assert!(!detail.contains(SECRET));
    assert!(detail.to_lowercase().contains("connect"), "{detail}");
    drop(refusing);
}

#[tokio::test]
async fn invalid_webhook_url_fails_without_attempt() {
    let (_, n) = notifier(&fast_config());
    let tenant = TenantId::new();
    for url in ["not a url", "ftp://example.com/x"] {
        let record = n
            .deliver_now(&webhook_channel(tenant, url), message(tenant))
            .await
            .unwrap();
        assert_eq!(record.status, NotificationStatus::Failed, "{url}");
        assert_eq!(record.attempts, 0);
        assert!(record.detail.unwrap().starts_with("invalid URL"));
    }
}

#[tokio::test]
async fn webhooks_to_non_public_addresses_are_refused_by_default() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let config = NotifyConfig {
        allow_private_webhooks: false,
        ..fast_config()
    };
    let (_, n) = notifier(&config);
    let tenant = TenantId::new();
    // "http://127.0.0.1:<port>/hook" -> "<port>/hook"
    let port = receiver.url().rsplit(':').next().unwrap().to_owned();
    for url in [
        receiver.url(),                                        // 127.0.0.1 literal
        format!("http://localhost:{port}"),                    // a name resolving to loopback
        format!("http://[::ffff:127.0.0.1]:{port}"),           // mapped IPv6 literal
        "http://169.254.169.254/latest/meta-data/".to_owned(), // cloud metadata
        "http://10.0.0.1/hook".to_owned(),
    ] {
        let record = n
            .deliver_now(&webhook_channel(tenant, &url), message(tenant))
            .await
            .unwrap();
        assert_eq!(
            record.status,
            NotificationStatus::Failed,
            "{url}: {record:?}"
        );
        let detail = record.detail.unwrap_or_default();
        assert!(
            detail.contains("is not a public address"),
            "{url}: {detail}"
        );
        assert!(record.attempts <= 1, "not retried: {url}");
    }
    assert!(receiver.calls().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn disabled_channel_is_skipped_without_a_call() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let (store, n) = notifier(&fast_config());
    let tenant = TenantId::new();
    let mut channel = webhook_channel(tenant, &receiver.url());
    channel.enabled = false;

    let via_trait = n.notify(&channel, message(tenant)).await.unwrap();
    let now = n.deliver_now(&channel, message(tenant)).await.unwrap();
    n.wait_idle().await;
    for record in [via_trait, now] {
        assert_eq!(record.status, NotificationStatus::Skipped);
        assert_eq!(record.attempts, 0);
        assert_eq!(store.get(record.id).status, NotificationStatus::Skipped);
    }
    assert!(receiver.calls().is_empty());
}

#[tokio::test]
async fn notify_returns_pending_and_delivers_in_the_background() {
    let receiver = WebhookReceiver::scripted(SECRET, &[503, 200]).await;
    let (store, n) = notifier(&fast_config());
    let notifier: NotifierRef = Arc::new(n.clone());
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &receiver.url());

    let record = notifier.notify(&channel, message(tenant)).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Pending);
    assert_eq!(record.attempts, 0);
    assert_eq!(
        store
            .list_notifications(tenant, Page::default())
            .await
            .unwrap()
            .total,
        1
    );

    tokio::time::timeout(WAIT, n.wait_idle()).await.unwrap();
    assert_eq!(n.in_flight(), 0);
    let done = store.get(record.id);
    assert_eq!(done.status, NotificationStatus::Sent, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(receiver.calls().len(), 2);
}

#[tokio::test]
async fn concurrent_deliveries_are_bounded() {
    let receiver = WebhookReceiver::with_delay(SECRET, &[], Duration::from_millis(30)).await;
    let config = NotifyConfig {
        max_concurrent: 2,
        ..fast_config()
    };
    let (store, n) = notifier(&config);
    let tenant = TenantId::new();
    let channel = webhook_channel(tenant, &receiver.url());
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(n.notify(&channel, message(tenant)).await.unwrap().id);
    }
    tokio::time::timeout(WAIT, n.wait_idle()).await.unwrap();
    assert_eq!(receiver.calls().len(), 8);
    assert!(
        receiver.max_concurrent() <= 2,
        "at most 2 deliveries at once, saw {}",
        receiver.max_concurrent()
    );
    for id in ids {
        assert_eq!(store.get(id).status, NotificationStatus::Sent);
    }
}

/// A tenant notifying a receiver that hangs keeps at most its share of the delivery
/// slots: another tenant's notification goes out meanwhile (it used to queue behind
/// every one of the first tenant's).
#[tokio::test]
async fn one_tenants_slow_receiver_does_not_hold_up_another_tenant() {
    let stuck = WebhookReceiver::with_delay(SECRET, &[], Duration::from_secs(30)).await;
    let fine = WebhookReceiver::start(SECRET).await;
    let config = NotifyConfig {
        webhook_timeout_secs: 30,
        max_attempts: 1,
        max_concurrent: 4,
        max_concurrent_per_tenant: 2,
        ..fast_config()
    };
    let (_store, n) = notifier(&config);
    let noisy = TenantId::new();
    let noisy_channel = webhook_channel(noisy, &stuck.url());
    for _ in 0..20 {
        n.notify(&noisy_channel, message(noisy)).await.unwrap();
    }
    tp_core::testing::eventually("the noisy tenant's deliveries hang", || {
        let stuck = &stuck;
        async move { stuck.max_concurrent() >= 2 }
    })
    .await;
    let quiet = TenantId::new();
    let record = n
        .notify(&webhook_channel(quiet, &fine.url()), message(quiet))
        .await
        .unwrap();
    let calls = fine.wait_for_calls(1, WAIT).await;
    assert_eq!(
        calls.len(),
        1,
        "the quiet tenant's notification {} never went out",
        record.id
    );
    assert!(
        stuck.max_concurrent() <= 2,
        "the noisy tenant held {} slots",
        stuck.max_concurrent()
    );
}

/// One tenant cannot fill the node's queue: past its own share its notifications
/// fail at once, and other tenants still queue.
#[tokio::test]
async fn a_tenants_queue_share_is_bounded() {
    let stuck = WebhookReceiver::with_delay(SECRET, &[], Duration::from_secs(30)).await;
    let config = NotifyConfig {
        webhook_timeout_secs: 30,
        max_attempts: 1,
        max_concurrent_per_tenant: 1,
        max_queued_per_tenant: 3,
        ..fast_config()
    };
    let (_store, n) = notifier(&config);
    let noisy = TenantId::new();
    let channel = webhook_channel(noisy, &stuck.url());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(n.notify(&channel, message(noisy)).await.unwrap());
    }
    let refused: Vec<_> = statuses
        .iter()
        .filter(|r| r.status == NotificationStatus::Failed)
        .collect();
    assert_eq!(refused.len(), 2, "{statuses:?}");
    assert!(
        refused[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("max_queued_per_tenant"),
        "{refused:?}"
    );
    let other = TenantId::new();
    let record = n
        .notify(&webhook_channel(other, &stuck.url()), message(other))
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Pending, "{record:?}");
}

#[tokio::test]
async fn email_reaches_the_smtp_server() {
    let sink = SmtpSink::start().await;
    let (store, n) = notifier(&smtp_config(&sink));
    let tenant = TenantId::new();
    let channel = email_channel(tenant, &["ops@example.com", "Oncall <oncall@example.com>"]);
    let msg = message(tenant);

    let record = n.deliver_now(&channel, msg.clone()).await.unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(record.attempts, 1);
    let detail = record.detail.clone().unwrap();
    assert!(
        detail.starts_with("250") && detail.contains("queued as 1"),
        "{detail}"
    );
    assert_eq!(store.get(record.id), record);

    let mails = sink.wait_for_mails(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "alerts@example.com");
    assert_eq!(mail.to, ["ops@example.com", "oncall@example.com"]);
    assert_eq!(mail.subject().as_deref(), Some("Temperature high"));
    assert_eq!(mail.body(), msg.body);
    assert!(mail.header("From").unwrap().contains("alerts@example.com"));
    let to = mail.header("To").unwrap();
    assert!(
        to.contains("ops@example.com") && to.contains("oncall@example.com"),
        "{to}"
    );
    assert_eq!(mail.auth, None, "no credentials configured");
}

#[tokio::test]
async fn email_through_the_background_path_with_credentials() {
    let sink = SmtpSink::start().await;
    let mut config = smtp_config(&sink);
    config.smtp.username = Some("mailer".into());
    config.smtp.password = Some("smtp-password-do-not-log".into());
    let (store, n) = notifier(&config);
    let debug = format!("{n:?}");
    assert!(!debug.contains("smtp-password-do-not-log"), "{debug}");
    let tenant = TenantId::new();
    let mut msg = message(tenant);
    msg.subject = "Line one\r\nBcc: evil@example.com".into();
    let record = n
        .notify(&email_channel(tenant, &["ops@example.com"]), msg)
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Pending);
    tokio::time::timeout(WAIT, n.wait_idle()).await.unwrap();
    assert_eq!(store.get(record.id).status, NotificationStatus::Sent);

    let mail = &sink.wait_for_mails(1, WAIT).await[0];
    assert_eq!(
        mail.auth,
        Some(("mailer".into(), "smtp-password-do-not-log".into()))
    );
    // A newline in the subject cannot inject a header.
    assert_eq!(mail.header("Bcc"), None);
    assert_eq!(mail.to, ["ops@example.com"]);
}

#[tokio::test]
async fn email_without_smtp_server_fails_cleanly() {
    let (store, n) = notifier(&fast_config());
    assert!(!n.smtp_configured());
    let tenant = TenantId::new();
    let record = n
        .deliver_now(
            &email_channel(tenant, &["ops@example.com"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Failed);
    assert_eq!(record.detail.as_deref(), Some(NO_SMTP_DETAIL));
    assert_eq!(record.attempts, 0);
    assert_eq!(store.get(record.id).status, NotificationStatus::Failed);
}

#[tokio::test]
async fn email_rejections_permanent_and_transient() {
    // 550: permanent, one attempt.
    let sink = SmtpSink::start_with(SinkBehavior {
        rcpt_reply: Some("550 5.1.1 no such user".into()),
    })
    .await;
    let (_, n) = notifier(&smtp_config(&sink));
    let tenant = TenantId::new();
    let record = n
        .deliver_now(
            &email_channel(tenant, &["nobody@example.com"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert_eq!(record.attempts, 1);
    assert!(record.detail.unwrap().contains("no such user"));
    assert_eq!(sink.sessions(), 1);

    // 451: transient, retried up to max_attempts.
    let sink = SmtpSink::start_with(SinkBehavior {
        rcpt_reply: Some("451 4.3.0 try again later".into()),
    })
    .await;
    let mut config = smtp_config(&sink);
    config.max_attempts = 2;
    let (_, n) = notifier(&config);
    let record = n
        .deliver_now(
            &email_channel(tenant, &["ops@example.com"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert_eq!(record.attempts, 2);
    assert!(record.detail.unwrap().contains("try again later"));
    assert_eq!(sink.sessions(), 2);
    assert!(sink.mails().is_empty());
}

#[tokio::test]
async fn invalid_recipients_fail_without_attempt() {
    let sink = SmtpSink::start().await;
    let (_, n) = notifier(&smtp_config(&sink));
    let tenant = TenantId::new();
    for to in [&[][..], &["not an address"][..]] {
        let record = n
            .deliver_now(&email_channel(tenant, to), message(tenant))
            .await
            .unwrap();
        assert_eq!(record.status, NotificationStatus::Failed, "{to:?}");
        assert_eq!(record.attempts, 0);
    }
    assert_eq!(sink.sessions(), 0);
}

#[tokio::test]
async fn required_starttls_never_falls_back_to_plain_text() {
    // The sink does not offer STARTTLS: with `tls = "starttls"` nothing may be sent.
    let sink = SmtpSink::start().await;
    let mut config = smtp_config(&sink);
    config.smtp.tls = SmtpTls::Starttls;
    config.max_attempts = 1;
    let (_, n) = notifier(&config);
    let tenant = TenantId::new();
    let record = n
        .deliver_now(
            &email_channel(tenant, &["ops@example.com"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
    assert!(sink.mails().is_empty());
    assert!(record.detail.unwrap().contains("STARTTLS"));
    assert_eq!(record.attempts, 1);
}

#[tokio::test]
async fn sink_overrides_configure_a_node() {
    let sink = SmtpSink::start().await;
    let overrides = sink.config_overrides();
    let refs: Vec<(&str, String)> = overrides.iter().map(|(k, v)| (*k, v.clone())).collect();
    let config = tp_node::config::PlatformConfig::load(None, &refs).unwrap();
    assert_eq!(config.notify.smtp.tls, SmtpTls::None);
    assert_eq!(config.notify.smtp.port, sink.port());
    let (_, n) = notifier(&config.notify);
    let tenant = TenantId::new();
    let record = n
        .deliver_now(
            &email_channel(tenant, &["ops@example.com"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(sink.wait_for_mails(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn email_is_delivered_over_starttls_to_a_server_trusted_by_ca_file() {
    let sink = SmtpSink::start_tls(SinkTls::Starttls).await;
    // No `tls` set: STARTTLS is the default.
    assert_eq!(SmtpConfig::default().tls, SmtpTls::Starttls);
    let config = tls_config(&sink, None, Some(sink.ca_file()));
    assert_eq!(config.smtp.tls, SmtpTls::Starttls);
    let (store, n) = notifier(&config);
    let tenant = TenantId::new();
    let msg = message(tenant);

    let record = n
        .deliver_now(&email_channel(tenant, &["ops@example.com"]), msg.clone())
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(record.attempts, 1);
    assert!(
        record.detail.as_deref().unwrap().starts_with("250"),
        "{record:?}"
    );
    assert_eq!(store.get(record.id), record);

    let mails = sink.wait_for_mails(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.tls, "the message came over the upgraded session");
    assert_eq!(sink.starttls_upgrades(), 1);
    assert_eq!(sink.sessions(), 1);
    assert!(sink.tls_failures().is_empty(), "{:?}", sink.tls_failures());
    assert_eq!(mail.from, "alerts@example.com");
    assert_eq!(mail.to, ["ops@example.com"]);
    assert_eq!(mail.subject().as_deref(), Some("Temperature high"));
    assert_eq!(mail.body(), msg.body);
    assert_eq!(
        mail.auth,
        Some(("mailer".into(), "smtp-password-do-not-log".into())),
        "credentials were sent, over TLS"
    );
}

#[tokio::test]
async fn email_is_delivered_over_implicit_tls_to_a_server_trusted_by_ca_file() {
    let sink = SmtpSink::start_tls(SinkTls::Implicit).await;
    let (_, n) = notifier(&tls_config(&sink, Some(SmtpTls::Tls), Some(sink.ca_file())));
    let tenant = TenantId::new();

    let record = n
        .deliver_now(
            &email_channel(tenant, &["Oncall <oncall@example.com>"]),
            message(tenant),
        )
        .await
        .unwrap();
    assert_eq!(record.status, NotificationStatus::Sent, "{record:?}");
    assert_eq!(record.attempts, 1);

    let mails = sink.wait_for_mails(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.tls, "the message came over TLS");
    assert_eq!(sink.starttls_upgrades(), 0, "TLS from the first byte");
    assert!(sink.tls_failures().is_empty(), "{:?}", sink.tls_failures());
    assert_eq!(mail.to, ["oncall@example.com"]);
    assert_eq!(mail.subject().as_deref(), Some("Temperature high"));
    assert!(mail.header("To").unwrap().contains("oncall@example.com"));
    assert!(mail.auth.is_some());
}

#[tokio::test]
async fn untrusted_smtp_certificates_are_refused_and_nothing_is_sent() {
    // Another self-signed certificate: trusting it does not make the sink's trusted.
    let other = SmtpSink::start_tls(SinkTls::Implicit).await;
    for (kind, tls, ca_file) in [
        (SinkTls::Starttls, SmtpTls::Starttls, None),
        (SinkTls::Starttls, SmtpTls::Starttls, Some(other.ca_file())),
        (SinkTls::Implicit, SmtpTls::Tls, None),
    ] {
        let case = format!("{kind:?} sink, ca_file {ca_file:?}");
        let sink = SmtpSink::start_tls(kind).await;
        let mut config = tls_config(&sink, Some(tls), ca_file);
        config.max_attempts = 1;
        let (store, n) = notifier(&config);
        let tenant = TenantId::new();
        let record = n
            .deliver_now(
                &email_channel(tenant, &["ops@example.com"]),
                message(tenant),
            )
            .await
            .unwrap();
        assert_eq!(
            record.status,
            NotificationStatus::Failed,
            "{case}: {record:?}"
        );
        assert_eq!(record.attempts, 1, "{case}");
        assert_eq!(store.get(record.id).status, NotificationStatus::Failed);
        let detail = record.detail.unwrap_or_default();
        assert!(
            detail.contains("invalid peer certificate"),
            "{case}: verification failed: {detail}"
        );
        assert!(!detail.contains("smtp-password-do-not-log"), "{detail}");
        // The sink saw the client abort the handshake (it may learn of it just after
        // the client reported the failure).
        let failures = sink.wait_for_tls_failures(1, WAIT).await;
        assert_eq!(failures.len(), 1, "{case}: {failures:?}");
        assert!(
            failures[0].contains("received fatal alert"),
            "{case}: {failures:?}"
        );
        assert!(sink.mails().is_empty(), "{case}: nothing received");
        assert_eq!(sink.sessions(), 1, "{case}");
        assert_eq!(sink.starttls_upgrades(), 0, "{case}");
    }
    assert_eq!(other.sessions(), 0);
}

#[tokio::test]
async fn tls_sink_overrides_configure_a_node() {
    // The node's configuration path: `notify.smtp.ca_file` is loaded and checked by
    // `PlatformConfig::load`, and the notifier built from it trusts the sink.
    for kind in [SinkTls::Starttls, SinkTls::Implicit] {
        let sink = SmtpSink::start_tls(kind).await;
        let overrides = sink.config_overrides();
        let refs: Vec<(&str, String)> = overrides.iter().map(|(k, v)| (*k, v.clone())).collect();
        let config = tp_node::config::PlatformConfig::load(None, &refs).unwrap();
        assert_eq!(config.notify.smtp.ca_file.as_deref(), Some(sink.ca_file()));
        let (_, n) = notifier(&config.notify);
        let tenant = TenantId::new();
        let record = n
            .deliver_now(
                &email_channel(tenant, &["ops@example.com"]),
                message(tenant),
            )
            .await
            .unwrap();
        assert_eq!(
            record.status,
            NotificationStatus::Sent,
            "{kind:?}: {record:?}"
        );
        let mails = sink.wait_for_mails(1, WAIT).await;
        assert!(mails[0].tls, "{kind:?}");
    }
}
