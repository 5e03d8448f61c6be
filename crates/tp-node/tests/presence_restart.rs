//! Online state after a run that could not record its devices leaving: a node that
//! is the only broker of its (SQLite) store marks the devices the store still shows
//! online offline at startup, with a status-history row, before accepting devices.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_left_online_by_a_killed_run_are_offline_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let d = node.create_device("pump-9").await;
    let device: tp_core::DeviceId = d.id.parse().unwrap();
    let tenant = node
        .platform
        .metadata()
        .get_device_by_id(device)
        .await
        .unwrap()
        .unwrap()
        .tenant_id;
    node.platform.shutdown().await.unwrap();

    // What a killed run leaves behind: the store still says online, and nothing
    // recorded the device leaving.
    let (metadata, _, _) = tp_storage::open_rules(&config(dir.path()).metadata_url())
        .await
        .unwrap();
    metadata
        .set_device_online(device, true, tp_core::now_ms())
        .await
        .unwrap();
    drop(metadata);

    let node = start(dir.path()).await;
    let store = node.platform.metadata();
    let dev = store.get_device_by_id(device).await.unwrap().unwrap();
    assert!(!dev.online, "offline until it connects again");
    let history = store
        .list_status_history(tenant, device, &tp_core::StatusHistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(history.total, 1, "{history:?}");
    assert!(!history.items[0].online);
    assert_eq!(
        history.items[0].reason,
        tp_core::StatusReason::ConnectionLost
    );
    // Connecting brings it back as usual.
    let client = node.connect(&d, "pump-9").await;
    node.wait_online(&d, true).await;
    client.disconnect().await;
    node.platform.shutdown().await.unwrap();
}

/// A node on `dir`, which outlives it.
async fn start(dir: &std::path::Path) -> Node {
    let platform = Platform::start(config(dir)).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", platform.http_addr());
    let token = login(&http, &base, ADMIN, PASSWORD).await;
    Node {
        platform,
        http,
        base,
        token,
        _dir: tempfile::tempdir().unwrap(),
    }
}
