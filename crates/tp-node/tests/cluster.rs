//! A cluster on loopback behind HAProxy (Debian's package): two broker-only nodes
//! and two API-only nodes in this process, on one PostgreSQL schema and one Redis key
//! prefix of their own, with HAProxy balancing MQTT (TCP, round robin) over the
//! broker nodes and HTTP over the API nodes, each server health-checked on its
//! `/readyz`.
//!
//! - Devices connected through the balancer land on both broker nodes.
//! - A command sent through either API node reaches a device on either broker node.
//! - Killing one broker node (its Tokio runtime dropped where it stands: no drain,
//!   no flush, as with SIGKILL) makes its devices reconnect through the balancer to
//!   the other node and go on publishing; every QoS 1 message a device got a PUBACK
//!   for is then stored exactly once.
//!
//! What the killed node acknowledged but had not committed is only in its
//! write-ahead log: as an operator would, the test starts the killed node again on
//! the same data dir (which replays the log) before counting.
//!
//! Skipped without the services (`TP_TEST_POSTGRES_URL`, `TP_TEST_REDIS_URL`) or
//! without `haproxy`, unless `TP_REQUIRE_SERVICES` is set.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::cluster::{SharedStores, cluster_config};
use common::*;
use serde_json::{Value, json};
use tp_core::testing::free_port;

const DEVICES: usize = 10;
/// Generous bound of every wait (a loaded CI machine).
const WAIT: Duration = Duration::from_secs(90);

/// A broker node on a Tokio runtime of its own, so that it can be killed like a
/// process: dropping the runtime drops every task of the node where it stands (its
/// listeners and connections close, nothing is drained or flushed).
struct BrokerNode {
    runtime: Option<tokio::runtime::Runtime>,
    platform: Option<Platform>,
}

impl BrokerNode {
    async fn start(config: PlatformConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let platform = runtime
            .spawn(Platform::start(config))
            .await
            .unwrap()
            .unwrap();
        Self {
            runtime: Some(runtime),
            platform: Some(platform),
        }
    }

    fn platform(&self) -> &Platform {
        self.platform.as_ref().expect("node is running")
    }

    fn connected(&self) -> usize {
        self.platform()
            .embedded_broker()
            .expect("broker role")
            .connected_devices()
    }

    /// The crash: every task of the node is dropped; then its handles (and with them
    /// the write-ahead log's lock) go.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        drop(self.platform.take());
    }

    /// Graceful stop: every acknowledged message committed.
    async fn shutdown(mut self) {
        let platform = self.platform.take().expect("node is running");
        let runtime = self.runtime.as_ref().expect("node is running");
        runtime.spawn(platform.shutdown()).await.unwrap().unwrap();
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        // A runtime may not be dropped in async context; stop it without waiting.
        self.kill();
    }
}

/// `haproxy -db` as a child process, killed on drop.
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The haproxy binary (Debian puts it in /usr/sbin, not always on a user's PATH), or
/// `None` to skip the test; missing under `TP_REQUIRE_SERVICES` it panics instead.
fn haproxy_binary() -> Option<String> {
    let found = ["haproxy", "/usr/sbin/haproxy"]
        .into_iter()
        .find(|bin| {
            std::process::Command::new(bin)
                .arg("-v")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned);
    if found.is_none() {
        assert!(
            std::env::var_os("TP_REQUIRE_SERVICES").is_none(),
            "haproxy is not installed but TP_REQUIRE_SERVICES is set"
        );
        eprintln!("skipping: haproxy is not installed");
    }
    found
}

/// Sets of free ports tried before giving up on starting HAProxy.
const START_ATTEMPTS: usize = 5;

impl Haproxy {
    /// MQTT (TCP) round robin over `brokers` (MQTT address, HTTP address for the
    /// health check), HTTP round robin over `apis`, a stats page; checks every 200 ms,
    /// one failure marks a server down, one success up again.
    fn spawn(
        bin: &str,
        brokers: &[(SocketAddr, SocketAddr)],
        apis: &[SocketAddr],
        (mqtt, http, stats): (u16, u16, u16),
    ) -> Self {
        // noreuseport: a port already bound with SO_REUSEPORT by someone else fails
        // the start instead of being shared with it.
        let mut cfg = format!(
            "global\n    maxconn 1000\n    noreuseport\n\n\
             defaults\n    timeout connect 2s\n    timeout client 10m\n    \
             timeout server 10m\n    retries 3\n    option redispatch\n\n\
             listen stats\n    bind 127.0.0.1:{stats}\n    mode http\n    \
             stats enable\n    stats uri /stats\n\n\
             frontend mqtt\n    bind 127.0.0.1:{mqtt}\n    mode tcp\n    \
             default_backend brokers\n\n\
             backend brokers\n    mode tcp\n    balance roundrobin\n    \
             option httpchk GET /readyz\n    http-check expect status 200\n    \
             default-server inter 200ms fall 1 rise 1\n"
        );
        for (i, (mqtt_addr, http_addr)) in brokers.iter().enumerate() {
            cfg += &format!(
                "    server broker{} {mqtt_addr} check port {}\n",
                i + 1,
                http_addr.port()
            );
        }
        cfg += &format!(
            "\nfrontend api\n    bind 127.0.0.1:{http}\n    mode http\n    \
             default_backend apis\n\n\
             backend apis\n    mode http\n    balance roundrobin\n    \
             option httpchk GET /readyz\n    http-check expect status 200\n    \
             default-server inter 200ms fall 1 rise 1\n"
        );
        for (i, addr) in apis.iter().enumerate() {
            cfg += &format!("    server api{} {addr} check\n", i + 1);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { child, _dir: dir }
    }

    /// Starts HAProxy on free ports: `(proxy, mqtt, http, stats)`. The ports are found
    /// free, released, then bound by HAProxy: under load something else can take one
    /// in between, so a failed start is retried on other ports.
    async fn start(
        bin: &str,
        brokers: &[(SocketAddr, SocketAddr)],
        apis: &[SocketAddr],
    ) -> (Self, u16, u16, u16) {
        for _ in 0..START_ATTEMPTS {
            let (mqtt, http, stats) = (free_port(), free_port(), free_port());
            let mut proxy = Self::spawn(bin, brokers, apis, (mqtt, http, stats));
            if proxy.serving(stats).await {
                return (proxy, mqtt, http, stats);
            }
            eprintln!("haproxy did not start on ports {mqtt}, {http}, {stats}, trying others");
        }
        panic!("haproxy did not start on any of {START_ATTEMPTS} sets of free ports");
    }

    /// Whether HAProxy serves its stats page (at most [`WAIT`]). It binds every
    /// listener before serving any and exits if one bind fails, so its own stats page
    /// means all of its ports are its own (a connect alone would not tell: whoever
    /// took a port may be listening on it).
    async fn serving(&mut self, stats: u16) -> bool {
        let url = format!("http://127.0.0.1:{stats}/stats;csv");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            // With a timeout: whoever took the port may accept and never answer.
            if let Ok(res) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && let Ok(csv) = res.text().await
                && csv.lines().any(|l| l.starts_with("mqtt,FRONTEND,"))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Polls `check` until it holds, at most [`WAIT`].
async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until HAProxy's stats page shows every server UP.
async fn wait_all_up(http: &reqwest::Client, stats_port: u16, servers: usize) {
    let url = format!("http://127.0.0.1:{stats_port}/stats;csv");
    wait_until("every server UP in HAProxy", async || {
        let Ok(res) = http.get(&url).send().await else {
            return false;
        };
        let Ok(csv) = res.text().await else {
            return false;
        };
        // pxname,svname,...,status (18th column)
        let up = csv
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 17 && f[1] != "FRONTEND" && f[1] != "BACKEND")
            .filter(|f| f[0] != "stats")
            .filter(|f| f[17] == "UP")
            .count();
        up == servers
    })
    .await;
}

/// A device created through the balanced REST API.
async fn create_device(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    number: &str,
) -> TestDevice {
    let res = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .json(&json!({"name": number, "device_number": number}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let d: Value = res.json().await.unwrap();
    TestDevice {
        id: d["id"].as_str().unwrap().to_owned(),
        number: number.to_owned(),
        username: d["credentials"]["username"].as_str().unwrap().to_owned(),
        password: d["credentials"]["password"].as_str().unwrap().to_owned(),
    }
}

/// Connects through the balancer, retrying while no node takes the connection
/// (right after a node died, before the health check marks it down).
async fn connect_retrying(addr: SocketAddr, d: &TestDevice) -> MqttTestClient {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match MqttTestClient::connect(addr, &d.number, &d.username, &d.password).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} cannot connect through the balancer: {e}",
                    d.number
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What one publishing device did.
#[derive(Default)]
struct Progress {
    /// Sequence numbers whose PUBACK arrived (the message's device timestamp is
    /// `base + seq`).
    acked: Mutex<Vec<i64>>,
    /// Connections made (the first one included).
    connections: AtomicUsize,
}

impl Progress {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Publishes QoS 1 telemetry with device timestamps, one message in flight at a
/// time, until `stop`; a lost connection is made again through the balancer (a
/// message whose PUBACK did not arrive on it counts as not acknowledged).
async fn publish_loop(
    addr: SocketAddr,
    d: Arc<TestDevice>,
    mut client: MqttTestClient,
    base: i64,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) {
    progress.connections.fetch_add(1, Ordering::AcqRel);
    let mut seq = 0i64;
    loop {
        loop {
            if stop.load(Ordering::Acquire) {
                client.disconnect().await;
                return;
            }
            let payload = json!({"ts": base + seq, "values": {"seq": seq}}).to_string();
            let sent = client.publish("devices/telemetry", payload).await;
            if sent.is_ok() {
                progress.acked.lock().unwrap().push(seq);
            }
            seq += 1;
            if sent.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client = connect_retrying(addr, &d).await;
        progress.connections.fetch_add(1, Ordering::AcqRel);
    }
}

/// The device's `seq` points from `base` on, by sequence number (`ts - base`).
async fn stored(
    ts: &tp_core::TimeSeriesStoreRef,
    d: &TestDevice,
    base: i64,
    acked: &[i64],
) -> HashMap<i64, Vec<tp_core::Value>> {
    let last = *acked
        .last()
        .unwrap_or_else(|| panic!("{} got no acknowledgement", d.number));
    let rows = ts
        .query(&tp_core::TsQuery {
            device_id: d.id.parse().unwrap(),
            keys: vec!["seq".to_owned()],
            start: base,
            end: base + last + 1_000,
            aggregation: None,
            limit: None,
            order: tp_core::Order::Asc,
        })
        .await
        .unwrap();
    let mut stored: HashMap<i64, Vec<tp_core::Value>> = HashMap::new();
    for kv in rows {
        stored.entry(kv.ts - base).or_default().push(kv.value);
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_spread_commands_cross_and_failover_loses_no_acknowledged_message() {
    let Some(stores) = SharedStores::new("cl") else {
        return;
    };
    let Some(haproxy) = haproxy_binary() else {
        return;
    };

    // Four nodes, started one after the other (the first creates the schema and the
    // admin); each broker node has a data dir (write-ahead log) of its own.
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let broker_cfg = |i: usize| {
        cluster_config(
            dirs[i].path(),
            r#"["broker"]"#,
            &format!("broker{}", i + 1),
            &stores,
        )
    };
    let b1 = BrokerNode::start(broker_cfg(0)).await;
    let mut b2 = BrokerNode::start(broker_cfg(1)).await;
    let mut apis = Vec::new();
    for i in 1..=2 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cluster_config(dir.path(), r#"["api"]"#, &format!("api{i}"), &stores);
        let platform = Platform::start(cfg).await.unwrap();
        assert!(platform.embedded_broker().is_none());
        apis.push(Node::of(platform, dir));
    }

    let brokers = [&b1, &b2].map(|b| (b.platform().mqtt_addr(), b.platform().http_addr()));
    let api_addrs: Vec<SocketAddr> = apis.iter().map(|n| n.platform.http_addr()).collect();
    let (proxy, mqtt_port, http_port, stats_port) =
        Haproxy::start(&haproxy, &brokers, &api_addrs).await;
    let lb_mqtt: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
    let lb_http = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    wait_all_up(&http, stats_port, 4).await;

    // One session through the balanced API is valid on both API nodes (one secret).
    let token = login(&http, &lb_http, ADMIN, PASSWORD).await;
    for n in &mut apis {
        n.token = token.clone();
    }

    // Devices connect through the balancer one by one; which node took each one is
    // seen on the nodes' session counts.
    let mut devices: Vec<(Arc<TestDevice>, MqttTestClient, usize)> = Vec::new();
    for i in 0..DEVICES {
        let d = create_device(&http, &lb_http, &token, &format!("cl-dev-{i}")).await;
        let before = [b1.connected(), b2.connected()];
        let mut client = connect_retrying(lb_mqtt, &d).await;
        client
            .subscribe(&[&format!("devices/command/{}/+", d.number)])
            .await
            .unwrap();
        wait_until("the device's session on a node", async || {
            b1.connected() + b2.connected() == i + 1
        })
        .await;
        let node = if b1.connected() > before[0] { 0 } else { 1 };
        assert_eq!([b1.connected(), b2.connected()][1 - node], before[1 - node]);
        devices.push((Arc::new(d), client, node));
    }
    let on = |node: usize| devices.iter().filter(|(_, _, n)| *n == node).count();
    eprintln!("devices per broker node: {} / {}", on(0), on(1));
    assert!(
        on(0) > 0 && on(1) > 0,
        "devices land on both broker nodes: {} / {}",
        on(0),
        on(1)
    );
    assert_eq!((b1.connected(), b2.connected()), (on(0), on(1)));

    // A command through each API node reaches a device on each broker node.
    for api in &apis {
        for node in 0..2 {
            let (d, client, _) = devices.iter_mut().find(|(_, _, n)| *n == node).unwrap();
            api.wait_online(d, true).await;
            let row = api
                .downlink(
                    post(),
                    &format!("/api/v1/devices/{}/commands", d.id),
                    json!({"method": "Ping", "params": {"via": api.base, "node": node}}),
                )
                .await;
            let m = mid(&row);
            let (topic, payload) = client
                .recv_publish(RECV)
                .await
                .unwrap_or_else(|| panic!("command via {} to broker node {node}", api.base));
            assert_eq!(topic, format!("devices/command/{}/{m}", d.number));
            assert_eq!(json_of(&payload)["params"]["via"], json!(api.base));
            client
                .publish(
                    &format!("devices/command/response/{m}"),
                    r#"{"result":0,"message":"success"}"#,
                )
                .await
                .unwrap();
            api.wait_status(d, &m, "replied").await;
        }
    }

    // Failover: every device publishes; broker node 2 dies; its devices come back
    // through the balancer on node 1 and go on publishing.
    let base = tp_core::now_ms() - 3_600_000;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    let mut victims = Vec::new();
    for (d, client, node) in devices {
        let p = Arc::new(Progress::default());
        progress.push((d.clone(), p.clone()));
        victims.push(node == 1);
        tasks.push(tokio::spawn(publish_loop(
            lb_mqtt,
            d,
            client,
            base,
            stop.clone(),
            p,
        )));
    }
    wait_until("every device has some messages acknowledged", async || {
        progress.iter().all(|(_, p)| p.acked() >= 5)
    })
    .await;
    b2.kill();
    let at_kill: Vec<usize> = progress.iter().map(|(_, p)| p.acked()).collect();
    wait_until(
        "every device on the surviving node, acknowledged again",
        async || {
            b1.connected() == DEVICES
                && progress
                    .iter()
                    .zip(&at_kill)
                    .all(|((_, p), n)| p.acked() >= n + 10)
        },
    )
    .await;
    for ((d, p), victim) in progress.iter().zip(&victims) {
        let connections = p.connections.load(Ordering::Acquire);
        if *victim {
            assert!(connections >= 2, "{} reconnected", d.number);
        }
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    drop(proxy);

    // Node 1 stops gracefully (everything it acknowledged committed). Then the
    // killed node starts again on its data dir, which replays what it acknowledged
    // but had not committed, and stops gracefully too.
    b1.shutdown().await;
    drop(b2);
    let ts = tp_storage::open_timeseries(&stores.pg_url).await.unwrap();
    let acked: Vec<Vec<i64>> = progress
        .iter()
        .map(|(_, p)| p.acked.lock().unwrap().clone())
        .collect();
    let mut before_replay = 0;
    for ((d, _), acked) in progress.iter().zip(&acked) {
        let stored = stored(&ts, d, base, acked).await;
        before_replay += acked.iter().filter(|s| stored.contains_key(s)).count();
    }
    let b2 = BrokerNode::start(broker_cfg(1)).await;
    b2.shutdown().await;

    let mut total = 0;
    for ((d, _), acked) in progress.iter().zip(&acked) {
        let stored = stored(&ts, d, base, acked).await;
        for seq in acked {
            assert_eq!(
                stored.get(seq),
                Some(&vec![tp_core::Value::Integer(*seq)]),
                "{}: acknowledged message {seq} stored exactly once",
                d.number
            );
        }
        total += acked.len();
    }
    eprintln!(
        "{total} acknowledged messages, each stored exactly once \
         ({before_replay} before the killed node's log was replayed)"
    );

    for n in apis {
        n.platform.shutdown().await.unwrap();
    }
    stores.drop_schema().await;
}

/// The status history of a device, oldest first.
async fn history(
    metadata: &tp_core::MetadataStoreRef,
    tenant: tp_core::TenantId,
    device: tp_core::DeviceId,
) -> Vec<tp_core::DeviceStatusEvent> {
    let mut items = metadata
        .list_status_history(tenant, device, &tp_core::StatusHistoryQuery::default())
        .await
        .unwrap()
        .items;
    items.sort_by_key(|e| e.at);
    items
}

/// A broker killed without drain: within its lease time another node marks its
/// devices offline (reason `node_lost`), once each (status history; a rule on
/// "offline" raises one alarm per device, with one occurrence); the survivor's
/// devices stay online; the lost devices come back online through HAProxy on the
/// surviving node, and the killed node restarting under its id marks nothing
/// offline again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_s_devices_go_offline_once_with_reason_node_lost() {
    use tp_core::StatusReason;
    use tp_core::rules::{
        Action, AlarmSeverity, Condition, DataKind, DeviceSource, Operator, RuleEngineControl,
    };

    let Some(stores) = SharedStores::new("lease") else {
        return;
    };
    let Some(haproxy) = haproxy_binary() else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let broker_cfg = |i: usize| {
        let mut c = cluster_config(
            dirs[i].path(),
            r#"["broker"]"#,
            &format!("broker{}", i + 1),
            &stores,
        );
        // A short lease: the test waits for its effects, never for a fixed time.
        c.cluster.lease_secs = 1;
        c
    };
    let b1 = BrokerNode::start(broker_cfg(0)).await;
    let mut b2 = BrokerNode::start(broker_cfg(1)).await;
    let api_dir = tempfile::tempdir().unwrap();
    let api = Node::signed_in(
        Platform::start(cluster_config(
            api_dir.path(),
            r#"["api"]"#,
            "api1",
            &stores,
        ))
        .await
        .unwrap(),
        api_dir,
    )
    .await;
    let brokers = [&b1, &b2].map(|b| (b.platform().mqtt_addr(), b.platform().http_addr()));
    let (proxy, mqtt_port, _, stats_port) =
        Haproxy::start(&haproxy, &brokers, &[api.platform.http_addr()]).await;
    let lb_mqtt: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
    let http = reqwest::Client::new();
    wait_all_up(&http, stats_port, 3).await;

    // Devices, each with a rule "offline -> alarm" (on both brokers' engines).
    let metadata = api.platform.metadata().clone();
    let (_, _, rules) = tp_storage::open_rules(&stores.pg_url).await.unwrap();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let d = api.create_device(&format!("lease-dev-{i}")).await;
        let id: tp_core::DeviceId = d.id.parse().unwrap();
        let tenant = metadata
            .get_device_by_id(id)
            .await
            .unwrap()
            .unwrap()
            .tenant_id;
        let rule = tp_core::rules::Rule {
            id: tp_core::rules::RuleId::new(),
            tenant_id: tenant,
            name: format!("{} offline", d.number),
            description: None,
            enabled: true,
            trigger_groups: vec![tp_core::rules::TriggerGroup {
                conditions: vec![Condition::Device {
                    source: DeviceSource::Device(id),
                    data: DataKind::Status,
                    key: String::new(),
                    operator: Operator::Eq,
                    value: json!("offline"),
                    duration_secs: None,
                }],
            }],
            actions: vec![Action::RaiseAlarm {
                severity: AlarmSeverity::Warning,
                title: "offline".to_owned(),
                description: None,
                channels: vec![],
            }],
            created_at: tp_core::now_ms(),
            updated_at: tp_core::now_ms(),
        };
        rules.create_rule(&rule).await.unwrap();
        for b in [&b1, &b2] {
            b.platform().rule_engine().rules_changed(tenant).await;
        }
        let before = [b1.connected(), b2.connected()];
        let client = connect_retrying(lb_mqtt, &d).await;
        wait_until("the device's session on a node", async || {
            b1.connected() + b2.connected() == i + 1
        })
        .await;
        let node = if b1.connected() > before[0] { 0 } else { 1 };
        api.wait_online(&d, true).await;
        devices.push((d, id, tenant, rule.id, client, node));
    }
    let victims = devices.iter().filter(|d| d.5 == 1).count();
    assert!(
        victims > 0 && victims < DEVICES,
        "devices on both nodes: {victims} of {DEVICES} on broker2"
    );

    // broker2 dies where it stands; its devices stay away (so nothing but its lost
    // lease can mark them offline).
    b2.kill();
    let mut survivors_clients = Vec::new();
    let mut lost = Vec::new();
    for (d, id, tenant, rule, client, node) in devices {
        if node == 1 {
            drop(client);
            lost.push((d, id, tenant, rule));
        } else {
            survivors_clients.push((client, id, tenant, rule));
        }
    }
    for (d, id, tenant, _) in &lost {
        tp_core::testing::eventually_ok("the lost node's device offline (node_lost)", || async {
            let h = history(&metadata, *tenant, *id).await;
            match h.last() {
                Some(e) if !e.online && e.reason == StatusReason::NodeLost => Ok(()),
                _ => Err(format!("{}: {h:?}", d.number)),
            }
        })
        .await;
    }
    // Exactly once each, and a rule on "offline" fired once per device.
    let engine = b1.platform().rule_engine();
    for (d, id, tenant, rule) in &lost {
        let h = history(&metadata, *tenant, *id).await;
        let node_lost = h.iter().filter(|e| e.reason == StatusReason::NodeLost);
        assert_eq!(node_lost.count(), 1, "{}: {h:?}", d.number);
        let alarms = tp_core::testing::eventually_ok("the offline rule's alarm", || async {
            engine.flush().await;
            let alarms = common::rules::alarms(&rules, *tenant, *rule).await;
            if alarms.is_empty() {
                Err(d.number.clone())
            } else {
                Ok(alarms)
            }
        })
        .await;
        assert_eq!(alarms.len(), 1, "{}: {alarms:?}", d.number);
        assert_eq!(alarms[0].occurrences, 1, "{}: {alarms:?}", d.number);
    }
    // The survivor's devices never went offline.
    for (_, id, tenant, rule) in &survivors_clients {
        let h = history(&metadata, *tenant, *id).await;
        assert!(h.iter().all(|e| e.online), "{h:?}");
        assert!(
            common::rules::alarms(&rules, *tenant, *rule)
                .await
                .is_empty()
        );
    }

    // The lost devices reconnect through HAProxy, to broker1: online again.
    let mut back = Vec::new();
    for (d, _, _, _) in &lost {
        back.push(connect_retrying(lb_mqtt, d).await);
        api.wait_online(d, true).await;
    }
    wait_until("every device on broker1", async || {
        b1.connected() == DEVICES
    })
    .await;
    // broker2 restarted under its id takes back what its previous run held: nothing
    // (broker1 reaped it), so no device goes offline again.
    let b2 = BrokerNode::start(broker_cfg(1)).await;
    for (d, id, tenant, _) in &lost {
        let h = history(&metadata, *tenant, *id).await;
        assert!(h.last().is_some_and(|e| e.online), "{}: {h:?}", d.number);
        let offline = h.iter().filter(|e| !e.online).count();
        assert_eq!(offline, 1, "{}: {h:?}", d.number);
    }

    for c in back {
        c.disconnect().await;
    }
    for (c, _, _, _) in survivors_clients {
        c.disconnect().await;
    }
    drop(proxy);
    b2.shutdown().await;
    b1.shutdown().await;
    api.platform.shutdown().await.unwrap();
    stores.drop_schema().await;
}
