//! Webhook deliveries never go through `HTTP(S)_PROXY`: a proxy resolves the target
//! itself, past the guard that only lets public addresses be dialled (SSRF).
//!
//! The delivery runs in a child process (this binary again, one ignored test) whose
//! environment names a proxy: the variables are read when the HTTP client is built.

use std::sync::Arc;

use serde_json::json;
use tp_core::rules::{
    ChannelId, ChannelKind, Notification, NotificationChannel, NotificationStatus, RuleStore,
    RuleStoreRef,
};
use tp_core::{TenantId, now_ms};
use tp_node::config::NotifyConfig;
use tp_rules::notify::Notifications;
use tp_storage::sqlite::SqliteMetadataStore;

#[test]
fn webhooks_ignore_proxy_settings() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([
        "--ignored",
        "--exact",
        "delivery_behind_a_proxy",
        "--nocapture",
    ]);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        child.env(var, &proxy_url);
    }
    child.env_remove("NO_PROXY").env_remove("no_proxy");
    proxy.set_nonblocking(true).unwrap();
    let status = child.status().unwrap();
    let reached = proxy.accept().is_ok();
    assert!(!reached, "the webhook delivery connected to the proxy");
    assert!(
        status.success(),
        "the delivery in the child process failed its checks"
    );
}

/// Not a test on its own: run by [`webhooks_ignore_proxy_settings`] with the proxy
/// variables set.
#[tokio::test]
#[ignore = "run by webhooks_ignore_proxy_settings"]
async fn delivery_behind_a_proxy() {
    let store = Arc::new(SqliteMetadataStore::in_memory().await.unwrap());
    let tenant = TenantId::new();
    let channel = NotificationChannel {
        id: ChannelId::new(),
        tenant_id: tenant,
        name: "hook".into(),
        enabled: true,
        // Resolvable by no one but a proxy (`.invalid` never resolves).
        kind: ChannelKind::Webhook {
            url: "http://hooks.example.invalid/alarm".into(),
            secret: "a-secret-of-sixteen+".into(),
        },
        created_at: now_ms(),
    };
    store.create_channel(&channel).await.unwrap();
    let rules: RuleStoreRef = store;
    let config = NotifyConfig {
        max_attempts: 1,
        allow_private_webhooks: false,
        ..NotifyConfig::default()
    };
    let notifications = Notifications::new(rules, &config).unwrap();
    let message = Notification {
        tenant_id: tenant,
        alarm_id: None,
        rule_id: None,
        subject: "s".into(),
        body: "b".into(),
        data: json!({}),
    };
    let record = notifications.deliver_now(&channel, message).await.unwrap();
    // `.invalid` resolves nowhere: only a proxy could have taken it further.
    assert_eq!(record.status, NotificationStatus::Failed, "{record:?}");
}
