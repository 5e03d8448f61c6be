//! Hostile clients against a whole node over real sockets: password guessing from one
//! or many addresses, and a flood of anonymous sign-ins.
//!
//! Several source addresses come from binding the client to other loopback addresses
//! (127.0.0.2 ..): Linux routes all of 127/8 to the loopback interface.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use serde_json::json;
use tp_core::testing::eventually;

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .unwrap()
}

async fn sign_in(http: &reqwest::Client, base: &str, email: &str, password: &str) -> (u16, String) {
    let res = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

async fn start(
    customize: impl FnOnce(&mut PlatformConfig),
) -> (Platform, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    customize(&mut config);
    let platform = Platform::start(config).await.unwrap();
    let base = format!("http://{}", platform.http_addr());
    (platform, base, dir)
}

#[tokio::test]
async fn the_admin_signs_in_while_another_address_guesses_its_password() {
    let (_node, base, _dir) = start(|_| {}).await;
    let guesser = client_from(2);
    for _ in 0..5 {
        let (status, body) = sign_in(&guesser, &base, ADMIN, "not the password").await;
        assert_eq!(status, 401, "{body}");
    }
    // The guessing address is locked out of the account ...
    let (status, body) = sign_in(&guesser, &base, ADMIN, PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("from this address"), "{body}");
    // ... the admin, from its own address, is not.
    let (status, body) = sign_in(&client_from(1), &base, ADMIN, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn guesses_from_many_addresses_slow_the_account_down_without_locking_it() {
    let (_node, base, _dir) = start(|c| {
        c.auth.global_failed_logins = 3;
        c.auth.backoff_max_secs = 8;
    })
    .await;
    for last in 2..5 {
        let (status, body) = sign_in(&client_from(last), &base, ADMIN, "guess").await;
        assert_eq!(status, 401, "{body}");
    }
    // From now on every address waits before its next attempt. The first wait is 1 s
    // and a slow machine may outlast it, but each failure that still gets through
    // doubles it, so a guesser soon sees the refusal. No address is locked out: the
    // guessers' own counts (one failure each) are far below the per-address limit.
    let mut slowed = None;
    for last in 5..20 {
        let (status, body) = sign_in(&client_from(last), &base, ADMIN, "guess").await;
        if status == 429 {
            slowed = Some(body);
            break;
        }
        assert_eq!(status, 401, "{body}");
    }
    let body = slowed.expect("no guess was ever slowed down");
    assert!(body.contains("slowed down"), "{body}");
    // ... but only for a moment: the admin gets in once the wait is over.
    let admin = client_from(1);
    eventually("the admin signs in after the backoff", || {
        let (admin, base) = (admin.clone(), base.clone());
        async move { sign_in(&admin, &base, ADMIN, PASSWORD).await.0 == 200 }
    })
    .await;
}

/// Peak resident set of process `pid` so far: `VmHWM` of `/proc/<pid>/status`.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Not a test: the node of [`a_flood_of_anonymous_sign_ins_is_refused_not_queued`],
/// run in a process of its own (this test binary, re-run with `--ignored --exact`) so
/// that its memory is measured without the client's. Prints the HTTP address, then
/// serves until its stdin closes.
#[tokio::test]
#[ignore = "started by a_flood_of_anonymous_sign_ins_is_refused_not_queued"]
async fn node_process() {
    use tokio::io::AsyncReadExt;
    let (_node, base, _dir) = start(|_| {}).await;
    println!("NODE {base}");
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_anonymous_sign_ins_is_refused_not_queued() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "node_process", "--nocapture"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the node process ended");
        if let Some(base) = line.strip_prefix("NODE ") {
            break base.to_owned();
        }
    };
    eprintln!("before the flood: node peak RSS {} MiB", peak_rss_mib(pid));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let flood: Vec<_> = (0..2000)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                sign_in(&http, &base, &format!("nobody{i}@example.com"), "guess")
                    .await
                    .0
            })
        })
        .collect();
    // The API keeps answering other requests meanwhile.
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(health, StatusCode::OK);
    let mut refused = 0;
    for task in flood {
        let status = task.await.unwrap();
        assert!(matches!(status, 401 | 503), "status {status}");
        refused += usize::from(status == 503);
    }
    let peak = peak_rss_mib(pid);
    eprintln!(
        "2000 parallel anonymous sign-ins: {refused} refused with 503, node peak RSS {peak} MiB"
    );
    assert!(
        refused > 0,
        "no sign-in was refused for lack of a hashing slot"
    );
    assert!(peak < 300, "the node's resident set reached {peak} MiB");
    // And the admin still signs in afterwards.
    let (status, body) = sign_in(&http, &base, ADMIN, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    drop(child.stdin.take());
    child.wait().await.unwrap();
}

/// Forwards connections from a local port to `target` until dropped: a backend that
/// can be made to disappear.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                pipes.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every pipe.
        self.task.abort();
    }
}

#[tokio::test]
async fn readiness_tells_anyone_what_failed_but_not_why() {
    let Some(redis) = tp_core::testing::service_url("TP_TEST_REDIS_URL") else {
        return;
    };
    let target = redis
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_owned();
    let relay = Relay::start(target).await;
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let cache = format!("redis://{}/?prefix=tp-ready-{prefix}:", relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(config_with(dir.path(), &[("storage.cache", cache)]))
        .await
        .unwrap();
    let node = Node::signed_in(platform, dir).await;
    let (status, body) = node.call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    drop(relay);
    let anonymous = reqwest::Client::new();
    let url = format!("{}/readyz", node.base);
    let body: serde_json::Value =
        tp_core::testing::eventually_ok("readiness reports the cache down", || {
            let (anonymous, url) = (anonymous.clone(), url.clone());
            async move {
                let res = anonymous
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if res.status() != StatusCode::SERVICE_UNAVAILABLE {
                    return Err(format!("status {}", res.status()));
                }
                res.json().await.map_err(|e| e.to_string())
            }
        })
        .await;
    assert_eq!(body["checks"]["cache"], "failed", "{body}");
    assert_eq!(body["checks"]["metadata"], "ok", "{body}");
    assert_eq!(body["error"]["message"], "cache: failed", "{body}");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn the_history_limit_caps_the_whole_response() {
    let node = Node::start().await;
    let device = node.create_device("meter-1").await;
    let mut mqtt = node.connect(&device, "meter-1").await;
    let rows: Vec<_> = (0..10)
        .map(|i| json!({"ts": 1_000 + i, "values": {"a": i, "b": i, "c": i}}))
        .collect();
    mqtt.publish("devices/telemetry", serde_json::to_vec(&rows).unwrap())
        .await
        .unwrap();
    let all = format!(
        "/api/v1/devices/{}/telemetry?start=0&end=100000&limit=100",
        device.id
    );
    eventually("30 stored rows", || {
        let (node, all) = (&node, all.clone());
        async move {
            let (_, body) = node.call(reqwest::Method::GET, &all, None).await;
            body["items"].as_array().map_or(0, Vec::len) == 30
        }
    })
    .await;
    let capped = format!(
        "/api/v1/devices/{}/telemetry?start=0&end=100000&limit=15",
        device.id
    );
    let (status, body) = node.call(reqwest::Method::GET, &capped, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 15, "{body}");
    // Keys are filled in ascending order: all of `a`, then the first five of `b`.
    let keys: Vec<&str> = items.iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys.iter().filter(|k| **k == "a").count(), 10);
    assert_eq!(keys.iter().filter(|k| **k == "b").count(), 5);
}

/// A request with an API key.
async fn with_key(
    node: &Node,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = node
        .http
        .request(method, format!("{}{path}", node.base))
        .header("x-api-key", key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn api_keys_act_for_their_creator_and_cannot_escape_it() {
    let node = Node::start().await;
    let post = reqwest::Method::POST;
    let (status, ops) = node
        .call(
            post.clone(),
            "/api/v1/users",
            Some(json!({"email": "ops@example.com", "name": "Ops", "password": "ops-password-1", "role": "TENANT_ADMIN"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ops}");
    let ops_id = ops["id"].as_str().unwrap().to_owned();
    let ops_token = login(&node.http, &node.base, "ops@example.com", "ops-password-1").await;
    let hour = tp_core::now_ms() + 3_600_000;
    let (status, k1) = node
        .call_as(
            &ops_token,
            post.clone(),
            "/api/v1/api-keys",
            Some(json!({"name": "k1", "role": "TENANT_ADMIN", "expires_at": hour})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{k1}");
    let k1 = k1["key"].as_str().unwrap().to_owned();

    // A key cannot mint a key that outlives it.
    for expires in [json!(null), json!(hour + 1)] {
        let (status, body) = with_key(
            &node,
            &k1,
            post.clone(),
            "/api/v1/api-keys",
            Some(json!({"name": "k2", "role": "TENANT_USER", "expires_at": expires})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expires}: {body}");
        assert_eq!(body["error"]["field"], "expires_at", "{body}");
    }
    let (status, body) = with_key(
        &node,
        &k1,
        post.clone(),
        "/api/v1/api-keys",
        Some(json!({"name": "k2", "role": "TENANT_USER", "expires_at": hour})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Its creator demoted: the key loses what the creator lost.
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/users/{ops_id}"),
            Some(json!({"role": "TENANT_USER"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = with_key(
        &node,
        &k1,
        post.clone(),
        "/api/v1/api-keys",
        Some(json!({"name": "k3", "role": "TENANT_USER", "expires_at": hour})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = with_key(&node, &k1, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "reading stays within the creator's rights: {body}"
    );

    // Its creator deleted: the key stops working and leaves the list.
    let (status, body) = node
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/users/{ops_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = with_key(&node, &k1, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, keys) = node
        .call(reqwest::Method::GET, "/api/v1/api-keys", None)
        .await;
    assert_eq!(keys["total"], 0, "{keys}");
}

#[tokio::test]
async fn nothing_revoked_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: &std::path::Path| Platform::start(config(dir));
    let platform = start(dir.path()).await.unwrap();
    let base = format!("http://{}", platform.http_addr());
    let http = reqwest::Client::new();
    let me = |token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/api/v1/auth/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // One session signed out, another revoked by a password change.
    let signed_out = login(&http, &base, ADMIN, PASSWORD).await;
    let before_change = login(&http, &base, ADMIN, PASSWORD).await;
    let current = login(&http, &base, ADMIN, PASSWORD).await;
    let res = http
        .post(format!("{base}/api/v1/auth/logout"))
        .bearer_auth(&signed_out)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = http
        .put(format!("{base}/api/v1/auth/password"))
        .bearer_auth(&current)
        .json(&json!({"current_password": PASSWORD, "new_password": "a new password 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let renewed = res.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(signed_out.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(before_change.clone()).await, StatusCode::UNAUTHORIZED);

    // The same node again, on its data directory, with a fresh (in-memory) cache.
    platform.shutdown().await.unwrap();
    let platform = start(dir.path()).await.unwrap();
    let base2 = format!("http://{}", platform.http_addr());
    let me = |token: String| {
        let (http, base) = (http.clone(), base2.clone());
        async move {
            http.get(format!("{base}/api/v1/auth/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(signed_out).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(before_change).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(renewed).await, StatusCode::OK);
    platform.shutdown().await.unwrap();
}

#[tokio::test]
async fn tenant_limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.limits = tp_api::quota::TenantLimits {
        max_devices: 2,
        max_rules: 1,
        max_channels: 1,
        max_streams: 1,
    };
    let node = Node::signed_in(Platform::start(config).await.unwrap(), dir).await;
    let post = reqwest::Method::POST;
    let quota = |status: StatusCode, body: &serde_json::Value, setting: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(setting), "{body}");
    };

    let first = node.create_device("dev-1").await;
    node.create_device("dev-2").await;
    let (status, body) = node
        .call(
            post.clone(),
            "/api/v1/devices",
            Some(json!({"name": "dev-3"})),
        )
        .await;
    quota(status, &body, "limits.max_devices");

    let rule = |name: &str| {
        json!({
            "name": name,
            "trigger_groups": [{"conditions": [
                {"type": "schedule", "kind": {"type": "cron", "expression": "0 */5 * * * *"}}
            ]}],
            "actions": [{"type": "raise_alarm", "severity": "minor", "title": "tick"}],
        })
    };
    let (status, body) = node
        .call(post.clone(), "/api/v1/rules", Some(rule("r1")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = node
        .call(post.clone(), "/api/v1/rules", Some(rule("r2")))
        .await;
    quota(status, &body, "limits.max_rules");

    let channel = |name: &str| {
        json!({"name": name, "type": "webhook", "url": "https://hooks.example.com/a",
               "secret": "a-signing-secret-of-some-length"})
    };
    let (status, body) = node
        .call(
            post.clone(),
            "/api/v1/notification-channels",
            Some(channel("c1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = node
        .call(
            post.clone(),
            "/api/v1/notification-channels",
            Some(channel("c2")),
        )
        .await;
    quota(status, &body, "limits.max_channels");

    // One live stream per tenant: a second is refused until the first is closed.
    let stream = format!("{}/api/v1/devices/{}/telemetry/stream", node.base, first.id);
    let open = || node.http.get(&stream).bearer_auth(&node.token).send();
    let held = open().await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    drop(held);
    eventually("the stream slot is given back", || async {
        let res = open().await.unwrap();
        res.status() == StatusCode::OK
    })
    .await;
}

/// Whether the server closed `conn` (reads until end of stream; any bytes it sent, a
/// 408 for instance, are skipped).
async fn closed_by_server(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_too_many_connections_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.http.header_read_timeout_secs = 1;
    let platform = Platform::start(config).await.unwrap();
    let addr = platform.http_addr();

    // A client that never finishes its headers is disconnected.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(30), closed_by_server(&mut slow)).await;
    assert_eq!(
        cut,
        Ok(true),
        "a connection with unfinished headers stayed open"
    );
    platform.shutdown().await.unwrap();

    // At the cap, a new connection is closed at once (long before the 60 s header
    // deadline could close it); below the cap connections are served again.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.http.header_read_timeout_secs = 60;
    config.http.max_connections = 3;
    let platform = Platform::start(config).await.unwrap();
    let addr = platform.http_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(conn);
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(30), closed_by_server(&mut extra)).await;
    assert_eq!(
        refused,
        Ok(true),
        "a connection over http.max_connections stayed open"
    );
    drop(held);
    eventually("a connection is accepted again below the cap", || async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    platform.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_alone_cannot_change_its_users_password() {
    let node = Node::start().await;
    let (status, me) = node
        .call(reqwest::Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let id = me["id"].as_str().unwrap().to_owned();
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({"password": "taken over by a thief"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "password", "{body}");
    // The owner is not signed out, and the old password still works.
    let (status, _) = node
        .call(reqwest::Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    login(&node.http, &node.base, ADMIN, PASSWORD).await;
}
