//! The HTTP device API over a real socket with reqwest: a [`TestBroker`] plus
//! [`tp_broker::http::device_router`] served on an ephemeral loopback port.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use tp_broker::testing::TestBroker;
use tp_core::{
    CommandId, CommandKind, CommandLog, CommandStatus, Device, Order, TsQuery, Value, now_ms,
};

struct Node {
    broker: TestBroker,
    base: String,
    http: reqwest::Client,
}

async fn start(configure: impl FnOnce(&mut tp_broker::BrokerConfig)) -> Node {
    let broker = TestBroker::start(configure).await;
    let app = tp_broker::http::device_router(&broker.broker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        broker,
        base: format!("http://{addr}/api/v1/device"),
        http: reqwest::Client::new(),
    }
}

impl Node {
    async fn post(
        &self,
        path: &str,
        device: &Device,
        password: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Json) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(&device.credentials.username, Some(password))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn get_commands(&self, device: &Device, password: &str) -> (StatusCode, Json) {
        let resp = self
            .http
            .get(format!("{}/commands", self.base))
            .basic_auth(&device.credentials.username, Some(password))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_attributes_and_events_are_stored_exactly() {
    let node = start(|_| {}).await;
    let (device, password) = node.broker.create_device().await;
    let before = now_ms();

    let (status, body) = node
        .post(
            "/telemetry",
            &device,
            &password,
            r#"{"temp":21.5,"on":true,"mode":"eco","n":7}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["result"], 0);
    let (status, _) = node
        .post(
            "/telemetry",
            &device,
            &password,
            r#"[{"ts":1700000000000,"values":{"temp":19}},{"ts":1700000001000,"values":{"temp":20.25}}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = node
        .post(
            "/telemetry",
            &device,
            &password,
            r#"{"ts":1700000002000,"values":{"temp":-3}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    node.broker.writer.flush().await.unwrap();

    let latest = node
        .broker
        .timeseries
        .latest(device.id, None)
        .await
        .unwrap();
    let get = |k: &str| latest.iter().find(|kv| kv.key == k).cloned();
    assert_eq!(get("on").map(|kv| kv.value), Some(Value::Bool(true)));
    assert_eq!(
        get("mode").map(|kv| kv.value),
        Some(Value::String("eco".into()))
    );
    assert_eq!(get("n").map(|kv| kv.value), Some(Value::Integer(7)));
    let temp = get("temp").unwrap();
    assert_eq!((temp.value, temp.ts >= before), (Value::Float(21.5), true));
    let history = node
        .broker
        .timeseries
        .query(&TsQuery {
            device_id: device.id,
            keys: vec!["temp".into()],
            start: 1_700_000_000_000,
            end: 1_700_000_003_000,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        })
        .await
        .unwrap();
    let values: Vec<_> = history.iter().map(|kv| (kv.ts, kv.value.clone())).collect();
    assert_eq!(
        values,
        vec![
            (1_700_000_000_000, Value::Integer(19)),
            (1_700_000_001_000, Value::Float(20.25)),
            (1_700_000_002_000, Value::Integer(-3)),
        ]
    );

    let (status, body) = node
        .post(
            "/attributes",
            &device,
            &password,
            r#"{"fw":"1.2.3","slots":4}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 0);
    let mut attrs: Vec<_> = node
        .broker
        .metadata
        .get_attributes(device.id, None)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        attrs,
        vec![
            ("fw".to_owned(), Value::String("1.2.3".into())),
            ("slots".to_owned(), Value::Integer(4)),
        ]
    );

    let (status, body) = node
        .post(
            "/events?message_id=ev1",
            &device,
            &password,
            r#"{"method":"alarm","params":{"level":3}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (body["result"].clone(), body["method"].clone()),
        (json!(0), json!("alarm"))
    );
    node.broker.writer.flush().await.unwrap();
    let events = node
        .broker
        .timeseries
        .query_events(device.id, 0, i64::MAX, 10, Order::Asc)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].message_id.as_str(),
            events[0].method.as_str(),
            &events[0].params
        ),
        ("ev1", "alarm", &json!({"level":3}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_right_status() {
    let node = start(|c| c.max_payload_size = 1024).await;
    let (device, password) = node.broker.create_device().await;

    // payload problems: 400 naming the problem, nothing stored
    for (path, body, needle) in [
        ("/telemetry", "not json", "not valid JSON"),
        ("/telemetry", "{}", "no values"),
        ("/telemetry", r#"{"a":null}"#, "null"),
        ("/telemetry", r#"{"ts":-5,"values":{"a":1}}"#, "\"ts\""),
        ("/attributes", "[1,2]", "attributes must be a JSON object"),
        ("/events", r#"{"params":{}}"#, "method"),
        ("/commands/m1/response", r#"{"x":1}"#, "response object"),
    ] {
        let (status, resp) = node.post(path, &device, &password, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {resp}");
        assert_eq!(resp["result"], 1);
        assert_eq!(resp["errcode"], "invalid_payload");
        let message = resp["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path} {body}: {message}");
    }
    let (status, resp) = node
        .post(
            "/events?message_id=a/b",
            &device,
            &password,
            r#"{"method":"m"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("message_id"));

    // over the payload limit: 413
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(2000));
    let (status, resp) = node.post("/telemetry", &device, &password, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["errcode"], "payload_too_large");
    // just at the limit is fine
    let exact = format!(r#"{{"k":"{}"}}"#, "x".repeat(1024 - 8));
    assert_eq!(exact.len(), 1024);
    let (status, resp) = node.post("/telemetry", &device, &password, exact).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");

    // credentials: wrong password, unknown user, none, disabled device -> 401
    let (status, resp) = node
        .post("/telemetry", &device, "wrong", r#"{"a":1}"#)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    assert_eq!(resp["errcode"], "unauthorized");
    let mut stranger = device.clone();
    stranger.credentials.username = "nobody".into();
    let (status, _) = node
        .post("/telemetry", &stranger, &password, r#"{"a":1}"#)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = node
        .http
        .post(format!("{}/telemetry", node.base))
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let (mut disabled, pw2) = node.broker.create_device().await;
    disabled.enabled = false;
    node.broker.metadata.update_device(&disabled).await.unwrap();
    let (status, _) = node.post("/telemetry", &disabled, &pw2, r#"{"a":1}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = node.get_commands(&device, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    node.broker.writer.flush().await.unwrap();
    let latest = node
        .broker
        .timeseries
        .latest(device.id, None)
        .await
        .unwrap();
    let keys: Vec<_> = latest.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, vec!["k"], "only the accepted payload is stored");
    assert!(
        node.broker
            .metadata
            .get_attributes(device.id, None)
            .await
            .unwrap()
            .is_empty()
    );
}

fn log_row(device: &Device, mid: &str, kind: CommandKind, expires_at: Option<i64>) -> CommandLog {
    let now = now_ms();
    CommandLog {
        id: CommandId::new(),
        tenant_id: device.tenant_id,
        device_id: device.id,
        message_id: mid.into(),
        kind,
        payload: json!({"method":"ReSet","params":{"mid":mid}}),
        status: CommandStatus::Pending,
        response: None,
        created_at: now,
        updated_at: now,
        expires_at,
        published: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_commands_are_marked_sent_and_responses_mark_them_replied() {
    let node = start(|_| {}).await;
    let (device, password) = node.broker.create_device().await;
    let (other, _) = node.broker.create_device().await;
    let meta = &node.broker.metadata;
    meta.create_command(&log_row(&device, "c1", CommandKind::Command, None))
        .await
        .unwrap();
    meta.create_command(&log_row(&device, "s1", CommandKind::AttributeSet, None))
        .await
        .unwrap();
    meta.create_command(&log_row(&device, "old", CommandKind::Command, Some(1)))
        .await
        .unwrap();
    meta.create_command(&log_row(&other, "x1", CommandKind::Command, None))
        .await
        .unwrap();

    let (status, body) = node.get_commands(&device, &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let commands = body["commands"].as_array().unwrap();
    let mut mids: Vec<_> = commands
        .iter()
        .map(|c| c["message_id"].as_str().unwrap())
        .collect();
    mids.sort_unstable();
    assert_eq!(mids, vec!["c1", "s1"]);
    let c1 = commands.iter().find(|c| c["message_id"] == "c1").unwrap();
    assert_eq!(c1["kind"], "command");
    assert_eq!(
        c1["topic"],
        format!("devices/command/{}/c1", device.device_number)
    );
    assert_eq!(
        c1["payload"],
        json!({"method":"ReSet","params":{"mid":"c1"}})
    );

    let status_of = |mid: &'static str, dev: tp_core::DeviceId| async move {
        meta.get_command_by_message_id(dev, mid)
            .await
            .unwrap()
            .unwrap()
            .status
    };
    assert_eq!(status_of("c1", device.id).await, CommandStatus::Sent);
    assert_eq!(status_of("s1", device.id).await, CommandStatus::Sent);
    assert_eq!(status_of("old", device.id).await, CommandStatus::Expired);
    assert_eq!(status_of("x1", other.id).await, CommandStatus::Pending);
    // taken once
    let (_, body) = node.get_commands(&device, &password).await;
    assert_eq!(body["commands"], json!([]));

    let (status, body) = node
        .post(
            "/commands/c1/response",
            &device,
            &password,
            r#"{"result":0,"message":"done"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row = meta
        .get_command_by_message_id(device.id, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, CommandStatus::Replied);
    assert_eq!(row.response.unwrap()["message"], "done");
    let (status, _) = node
        .post(
            "/commands/s1/response",
            &device,
            &password,
            r#"{"result":1,"errcode":"E1"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_of("s1", device.id).await, CommandStatus::Failed);

    // unknown id, and another device's command: 404, nothing changed
    let (status, body) = node
        .post(
            "/commands/nope/response",
            &device,
            &password,
            r#"{"result":0}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "not_found");
    let (status, _) = node
        .post(
            "/commands/x1/response",
            &device,
            &password,
            r#"{"result":0}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(status_of("x1", other.id).await, CommandStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_device_rate_limit_applies_to_http_too() {
    // 1 msg/s with bursts of 2, as for MQTT publishes.
    let node = start(|c| c.max_messages_per_second = Some(1)).await;
    let (device, password) = node.broker.create_device().await;
    let (other, other_password) = node.broker.create_device().await;
    let mut limited = None;
    for n in 0..50 {
        let (status, body) = node
            .post("/telemetry", &device, &password, format!(r#"{{"n":{n}}}"#))
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
        assert!(status.is_success(), "{status}: {body}");
    }
    let body = limited.expect("HTTP requests were never rate limited");
    assert!(
        body.to_string().contains("max_messages_per_second"),
        "{body}"
    );
    let (status, body) = node
        .post("/telemetry", &other, &other_password, r#"{"m":1}"#)
        .await;
    assert!(
        status.is_success(),
        "another device has its own budget: {status}: {body}"
    );
}
