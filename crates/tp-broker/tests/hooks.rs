//! The VerneMQ webhook and EMQX HTTP auth endpoints over a real socket, with the
//! request bodies those brokers document, against in-memory stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tp_broker::hooks::{HookDeps, HooksConfig, SECRET_HEADER};
use tp_core::{Device, MetadataStoreRef, StatusHistoryQuery, StatusReason, TenantId};

const SECRET: &str = "hook-secret-0123456789";
const SERVICE_USER: &str = "tp-storage";
const SERVICE_PASSWORD: &str = "service-password-1";

struct Node {
    base: String,
    http: reqwest::Client,
    metadata: MetadataStoreRef,
    tenant: TenantId,
}

async fn start() -> Node {
    let metadata = tp_storage::open_metadata("sqlite::memory:").await.unwrap();
    let cache = tp_storage::open_cache("memory://").await.unwrap();
    let tenant = tp_core::Tenant {
        id: TenantId::new(),
        name: "hooks".into(),
        created_at: tp_core::now_ms(),
    };
    metadata.create_tenant(&tenant).await.unwrap();
    let app = tp_broker::hooks::router(
        HookDeps {
            metadata: metadata.clone(),
            cache,
            credential_ttl: Duration::from_secs(60),
        },
        &HooksConfig {
            secret: Some(SECRET.into()),
            service_username: Some(SERVICE_USER.into()),
            service_password: Some(SERVICE_PASSWORD.into()),
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        metadata,
        tenant: tenant.id,
    }
}

impl Node {
    async fn device(&self, number: &str) -> (Device, String) {
        let (device, password) = Device::new(self.tenant, number.into(), Some(number.into()));
        self.metadata.create_device(&device).await.unwrap();
        (device, password)
    }

    /// POSTs `body` with the hook secret header.
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(SECRET_HEADER, SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn vmq(&self, hook: &str, body: Value) -> Value {
        let (status, answer) = self.post(&format!("/hooks/vernemq/{hook}"), body).await;
        assert_eq!(status, StatusCode::OK, "{hook}: {answer}");
        answer
    }

    async fn emqx(&self, which: &str, body: Value) -> Value {
        let (status, answer) = self.post(&format!("/hooks/emqx/{which}"), body).await;
        assert_eq!(status, StatusCode::OK, "{which}: {answer}");
        answer
    }
}

fn register(username: &str, password: &str, client_id: &str) -> Value {
    json!({
        "peer_addr": "127.0.0.1",
        "peer_port": 8888,
        "username": username,
        "password": password,
        "mountpoint": "",
        "client_id": client_id,
        "clean_session": true,
    })
}

fn publish(username: &str, client_id: &str, topic: &str) -> Value {
    json!({
        "username": username,
        "client_id": client_id,
        "mountpoint": "",
        "qos": 1,
        "topic": topic,
        "payload": "eyJ0ZW1wIjoyMX0=",
        "retain": false,
    })
}

fn not_allowed() -> Value {
    json!({"result": {"error": "not_allowed"}})
}

#[tokio::test]
async fn vernemq_auth_on_register_accepts_devices_and_refuses_wrong_credentials() {
    let node = start().await;
    let (device, password) = node.device("dev-1").await;
    let user = &device.credentials.username;

    let ok = node
        .vmq("auth_on_register", register(user, &password, "c1"))
        .await;
    assert_eq!(ok, json!({"result": "ok"}));
    let wrong = node
        .vmq("auth_on_register", register(user, "wrong", "c1"))
        .await;
    assert_eq!(wrong, not_allowed());
    let unknown = node
        .vmq("auth_on_register", register("nobody", &password, "c1"))
        .await;
    assert_eq!(unknown, not_allowed());

    let (mut other, other_password) = Device::new(node.tenant, "off".into(), Some("off".into()));
    other.enabled = false;
    node.metadata.create_device(&other).await.unwrap();
    let refused = node
        .vmq(
            "auth_on_register",
            register(&other.credentials.username, &other_password, "c2"),
        )
        .await;
    assert_eq!(refused, not_allowed());

    // The service account, and its name with a wrong password.
    let service = node
        .vmq(
            "auth_on_register",
            register(SERVICE_USER, SERVICE_PASSWORD, "tp-storage-1"),
        )
        .await;
    assert_eq!(service, json!({"result": "ok"}));
    let service_wrong = node
        .vmq(
            "auth_on_register",
            register(SERVICE_USER, "x", "tp-storage-1"),
        )
        .await;
    assert_eq!(service_wrong, not_allowed());

    // No username at all (anonymous CONNECT): VerneMQ sends null.
    let mut anonymous = register("", "", "c3");
    anonymous["username"] = Value::Null;
    anonymous["password"] = Value::Null;
    assert_eq!(node.vmq("auth_on_register", anonymous).await, not_allowed());
}

#[tokio::test]
async fn vernemq_auth_on_subscribe_refuses_other_devices_topics_per_filter() {
    let node = start().await;
    let (device, _) = node.device("dev-1").await;
    let user = &device.credentials.username;

    let own = node
        .vmq(
            "auth_on_subscribe",
            json!({
                "username": user, "client_id": "c1", "mountpoint": "",
                "topics": [
                    {"topic": "devices/command/dev-1/+", "qos": 1},
                    {"topic": "devices/telemetry/control/dev-1", "qos": 0},
                ],
            }),
        )
        .await;
    assert_eq!(own, json!({"result": "ok"}));

    let mixed = node
        .vmq(
            "auth_on_subscribe",
            json!({
                "username": user, "client_id": "c1", "mountpoint": "",
                "topics": [
                    {"topic": "devices/command/dev-1/+", "qos": 1},
                    {"topic": "devices/command/dev-2/+", "qos": 1},
                    {"topic": "#", "qos": 0},
                ],
            }),
        )
        .await;
    assert_eq!(
        mixed,
        json!({"result": "ok", "topics": [
            {"topic": "devices/command/dev-1/+", "qos": 1},
            {"topic": "devices/command/dev-2/+", "qos": 128},
            {"topic": "#", "qos": 128},
        ]})
    );

    let unknown = node
        .vmq(
            "auth_on_subscribe",
            json!({"username": "nobody", "client_id": "c9", "mountpoint": "",
                   "topics": [{"topic": "devices/command/dev-1/+", "qos": 1}]}),
        )
        .await;
    assert_eq!(unknown, not_allowed());

    let service = node
        .vmq(
            "auth_on_subscribe",
            json!({"username": SERVICE_USER, "client_id": "tp-storage-1", "mountpoint": "",
                   "topics": [{"topic": "$share/tp-storage/tp/ingest/#", "qos": 1}]}),
        )
        .await;
    assert_eq!(service, json!({"result": "ok"}));
}

#[tokio::test]
async fn vernemq_auth_on_publish_rewrites_uplink_and_refuses_the_rest() {
    let node = start().await;
    let (device, _) = node.device("dev-1").await;
    let (other, _) = node.device("dev-2").await;
    let user = &device.credentials.username;

    let telemetry = node
        .vmq("auth_on_publish", publish(user, "c1", "devices/telemetry"))
        .await;
    assert_eq!(
        telemetry,
        json!({"result": "ok", "modifiers": {
            "topic": format!("tp/ingest/{}/devices/telemetry", device.id.0),
            "retain": false,
        }})
    );
    let event = node
        .vmq("auth_on_publish", publish(user, "c1", "devices/event/m1"))
        .await;
    assert_eq!(
        event["modifiers"]["topic"],
        json!(format!("tp/ingest/{}/devices/event/m1", device.id.0))
    );

    for topic in [
        // downlink of a device, its own or another's
        "devices/command/dev-1/m1",
        "devices/telemetry/control/dev-2",
        // the internal topic, claiming another identity
        &format!("tp/ingest/{}/devices/telemetry", other.id.0),
        "anything/else",
    ] {
        let answer = node
            .vmq("auth_on_publish", publish(user, "c1", topic))
            .await;
        assert_eq!(answer, not_allowed(), "{topic}");
    }

    // The payload may be omitted (vmq_webhooks no_payload = on).
    let mut without_payload = publish(user, "c1", "devices/telemetry");
    without_payload.as_object_mut().unwrap().remove("payload");
    assert_eq!(
        node.vmq("auth_on_publish", without_payload).await["result"],
        json!("ok")
    );

    // The service account publishes downlink unchanged.
    let service = node
        .vmq(
            "auth_on_publish",
            publish(SERVICE_USER, "tp-storage-1", "devices/command/dev-1/m1"),
        )
        .await;
    assert_eq!(service, json!({"result": "ok"}));
}

#[tokio::test]
async fn vernemq_presence_hooks_record_online_and_offline() {
    let node = start().await;
    let (device, password) = node.device("dev-1").await;
    let user = &device.credentials.username;

    node.vmq("auth_on_register", register(user, &password, "c1"))
        .await;
    let answer = node
        .vmq(
            "on_register",
            json!({"peer_addr": "127.0.0.1", "peer_port": 8888, "username": user,
                   "mountpoint": "", "client_id": "c1"}),
        )
        .await;
    assert_eq!(answer, json!({}));
    let stored = node
        .metadata
        .get_device_by_id(device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.online, "online after on_register");

    let answer = node
        .vmq(
            "on_client_offline",
            json!({"client_id": "c1", "mountpoint": ""}),
        )
        .await;
    assert_eq!(answer, json!({}));
    let stored = node
        .metadata
        .get_device_by_id(device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.online, "offline after on_client_offline");

    let history = node
        .metadata
        .list_status_history(node.tenant, device.id, &StatusHistoryQuery::default())
        .await
        .unwrap();
    let reasons: Vec<(bool, StatusReason)> =
        history.items.iter().map(|e| (e.online, e.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (false, StatusReason::ConnectionLost),
            (true, StatusReason::Connect)
        ],
        "newest first"
    );

    // on_client_gone forgets the client: a second one records nothing more.
    node.vmq(
        "on_client_gone",
        json!({"client_id": "c1", "mountpoint": ""}),
    )
    .await;
    node.vmq(
        "on_client_gone",
        json!({"client_id": "c1", "mountpoint": ""}),
    )
    .await;
    let history = node
        .metadata
        .list_status_history(node.tenant, device.id, &StatusHistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(history.items.len(), 3);
    // A client id registered under another mountpoint is another session.
    node.vmq(
        "on_client_gone",
        json!({"client_id": "c1", "mountpoint": "m2"}),
    )
    .await;
}

#[tokio::test]
async fn hooks_require_the_secret_and_reject_malformed_bodies() {
    let node = start().await;
    let (device, password) = node.device("dev-1").await;
    let body = register(&device.credentials.username, &password, "c1");
    let url = format!("{}/hooks/vernemq/auth_on_register", node.base);

    let missing = node.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let answer: Value = missing.json().await.unwrap();
    assert_eq!(answer["error"], json!("unauthorized"));
    let wrong = node
        .http
        .post(&url)
        .header(SECRET_HEADER, "hook-secret-0123456780")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    for path in ["/hooks/emqx/authn", "/hooks/emqx/authz"] {
        let resp = node
            .http
            .post(format!("{}{path}", node.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    // VerneMQ's way: basic auth from the endpoint URL's user info.
    let basic = node
        .http
        .post(&url)
        .basic_auth("vernemq", Some(SECRET))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    assert_eq!(
        basic.json::<Value>().await.unwrap(),
        json!({"result": "ok"})
    );
    let bearer = node
        .http
        .post(&url)
        .bearer_auth(SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);

    // One endpoint for every hook, dispatched by VerneMQ's vernemq-hook header.
    let by_header = node
        .http
        .post(format!("{}/hooks/vernemq", node.base))
        .header(SECRET_HEADER, SECRET)
        .header("vernemq-hook", "auth_on_register")
        .json(&register(&device.credentials.username, "wrong", "c1"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.json::<Value>().await.unwrap(), not_allowed());

    // Malformed JSON and missing fields: 400 with a JSON body, never a panic.
    for (path, raw) in [
        ("/hooks/vernemq/auth_on_register", "{not json"),
        ("/hooks/vernemq/auth_on_subscribe", r#"{"username":"u"}"#),
        ("/hooks/vernemq/auth_on_publish", r#"{"topic":5}"#),
        ("/hooks/vernemq/on_client_offline", "[]"),
        ("/hooks/emqx/authn", ""),
        (
            "/hooks/emqx/authz",
            r#"{"clientid":"c","username":"u","topic":"t","action":"all"}"#,
        ),
        ("/hooks/vernemq", r#"{}"#),
    ] {
        let resp = node
            .http
            .post(format!("{}{path}", node.base))
            .header(SECRET_HEADER, SECRET)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path} {raw}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], json!("invalid_request"), "{path} {raw}");
    }
    let (status, answer) = node.post("/hooks/vernemq/on_deliver", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"], json!("unknown_hook"));
}

#[tokio::test]
async fn emqx_authn_and_authz() {
    let node = start().await;
    let (device, password) = node.device("dev-1").await;
    let user = device.credentials.username.clone();
    let authn = |username: &str, password: &str| json!({"clientid": "c1", "username": username, "password": password, "peerhost": "127.0.0.1"});

    let allowed = node.emqx("authn", authn(&user, &password)).await;
    assert_eq!(
        allowed,
        json!({"result": "allow", "is_superuser": false, "client_attrs": {
            "tp_device_id": device.id.0.to_string(),
            "tp_device_number": "dev-1",
        }})
    );
    assert_eq!(
        node.emqx("authn", authn(&user, "wrong")).await,
        json!({"result": "deny"})
    );
    assert_eq!(
        node.emqx("authn", authn("nobody", &password)).await,
        json!({"result": "deny"})
    );
    assert_eq!(
        node.emqx("authn", authn(SERVICE_USER, SERVICE_PASSWORD))
            .await,
        json!({"result": "allow", "is_superuser": true})
    );
    assert_eq!(
        node.emqx("authn", authn(SERVICE_USER, "wrong")).await,
        json!({"result": "deny"})
    );

    let authz = |topic: &str, action: &str| {
        json!({"clientid": "c1", "username": user, "topic": topic, "action": action,
               "qos": 1, "retain": false, "peerhost": "127.0.0.1"})
    };
    let allow = json!({"result": "allow"});
    let deny = json!({"result": "deny"});
    for (topic, action, expected) in [
        ("devices/telemetry", "publish", &allow),
        ("gateway/event/m1", "publish", &allow),
        ("devices/command/dev-1/m1", "publish", &deny),
        ("tp/ingest/x/devices/telemetry", "publish", &deny),
        ("devices/command/dev-1/+", "subscribe", &allow),
        ("devices/command/dev-2/+", "subscribe", &deny),
        ("devices/#", "subscribe", &deny),
    ] {
        assert_eq!(
            &node.emqx("authz", authz(topic, action)).await,
            expected,
            "{action} {topic}"
        );
    }
    let unknown = json!({"clientid": "c9", "username": "nobody",
                         "topic": "devices/telemetry", "action": "publish"});
    assert_eq!(node.emqx("authz", unknown).await, deny);
}

#[tokio::test]
async fn router_refuses_weak_configuration() {
    let deps = HookDeps {
        metadata: tp_storage::open_metadata("sqlite::memory:").await.unwrap(),
        cache: tp_storage::open_cache("memory://").await.unwrap(),
        credential_ttl: Duration::from_secs(1),
    };
    let weak = HooksConfig {
        secret: Some("short".into()),
        ..Default::default()
    };
    assert!(tp_broker::hooks::router(deps.clone(), &weak).is_err());
    assert!(tp_broker::hooks::router(deps.clone(), &HooksConfig::default()).is_err());
    let half = HooksConfig {
        secret: Some(SECRET.into()),
        service_username: Some("svc".into()),
        service_password: None,
    };
    assert!(tp_broker::hooks::router(deps, &half).is_err());
}
