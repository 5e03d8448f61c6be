//! Foundation end-to-end test: the whole node over real sockets. An admin logs in,
//! creates a device; the device (rumqttc) connects with its credentials and publishes
//! telemetry, attributes and events; the REST API returns exactly those values; ACL
//! violations store nothing; after a restart everything is still there.

mod common;

use common::cluster::SharedStores;
use common::*;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(platform: &Platform) -> Self {
        let http = reqwest::Client::new();
        let base = format!("http://{}", platform.http_addr());
        let token = login(&http, &base, ADMIN, PASSWORD).await;
        Self { http, base, token }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn items(&self, path: &str) -> Vec<Value> {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `path` until its `items` satisfy `done`; returns them.
async fn items_when(api: &Api, path: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    tp_core::testing::eventually_ok(path, || async {
        let items = api.items(path).await;
        if done(&items) { Ok(items) } else { Err(items) }
    })
    .await
}

fn kv(items: &[Value]) -> Vec<(String, i64, Value)> {
    items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_owned(),
                i["ts"].as_i64().unwrap(),
                i["value"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_data_flows_from_mqtt_to_the_rest_api_and_survives_a_restart() {
    device_data_flows(&[]).await;
}

/// The same flow on PostgreSQL (metadata and time series, in a schema of its own) and
/// Redis (cache, under a key prefix of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_data_flows_on_postgres_and_redis() {
    let Some(stores) = SharedStores::new("e2e") else {
        return;
    };
    device_data_flows(&stores.overrides()).await;
    stores.drop_schema().await;
}

async fn device_data_flows(backends: &[(&'static str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(config_with(dir.path(), backends))
        .await
        .unwrap();
    let api = Api::login(&platform).await;

    // no token, bad token -> 401 with the JSON error body
    let res = api
        .http
        .get(format!("{}/api/v1/devices", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.json::<Value>().await.unwrap()["error"]["code"].is_string());
    let res = api
        .http
        .get(format!("{}/api/v1/devices", api.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // create a device
    let res = api
        .http
        .post(format!("{}/api/v1/devices", api.base))
        .bearer_auth(&api.token)
        .json(&json!({"name": "boiler", "device_number": "boiler-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["device_number"], "boiler-1");
    let username = created["credentials"]["username"]
        .as_str()
        .unwrap()
        .to_owned();
    let password = created["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let other: Value = {
        let res = api
            .http
            .post(format!("{}/api/v1/devices", api.base))
            .bearer_auth(&api.token)
            .json(&json!({"name": "other"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    };
    let (_, list) = api.get("/api/v1/devices").await;
    assert_eq!(list["total"], 2);

    // the device connects with its credentials; a wrong password is refused
    let mqtt = platform.mqtt_addr();
    assert!(
        MqttTestClient::connect(mqtt, "mqtt_boiler", &username, "wrong")
            .await
            .is_err()
    );
    let mut device = MqttTestClient::connect(mqtt, "mqtt_boiler", &username, &password)
        .await
        .unwrap();

    device
        .publish("devices/telemetry", r#"{"hum":40,"on":true}"#)
        .await
        .unwrap();
    let t0 = 1_700_000_000_000i64;
    let series: Vec<Value> = (0..6)
        .map(|i| json!({"ts": t0 + i * 1000, "values": {"temp": (i + 1) * 10}}))
        .collect();
    device
        .publish("devices/telemetry", serde_json::to_vec(&series).unwrap())
        .await
        .unwrap();
    device
        .publish(
            "devices/telemetry",
            json!({"ts": t0 + 10_000, "values": {"temp": 21.5}}).to_string(),
        )
        .await
        .unwrap();
    device
        .publish("devices/attributes/a1", r#"{"ip":"10.0.0.7","fw":"1.2.3"}"#)
        .await
        .unwrap();
    device
        .publish(
            "devices/event/e1",
            r#"{"method":"Alarm","params":{"level":2}}"#,
        )
        .await
        .unwrap();
    // a malformed payload is acknowledged by MQTT but rejected by ingest
    device
        .publish("devices/telemetry", "this is not json")
        .await
        .unwrap();

    let base = format!("/api/v1/devices/{id}");
    // Wait for the last of the three telemetry messages: the first two may be stored
    // in an earlier batch, and then the three keys show with the series' 60 as `temp`.
    let latest = items_when(&api, &format!("{base}/telemetry/latest"), |items| {
        items.len() == 3
            && items
                .iter()
                .any(|i| i["key"] == "temp" && i["ts"] == json!(t0 + 10_000))
    })
    .await;
    let latest = kv(&latest);
    assert_eq!(latest[0].0, "hum");
    assert_eq!(latest[0].2, json!(40));
    assert_eq!(latest[1].0, "on");
    assert_eq!(latest[1].2, json!(true));
    assert_eq!(
        (latest[2].0.as_str(), latest[2].1, &latest[2].2),
        ("temp", t0 + 10_000, &json!(21.5))
    );

    let history = api
        .items(&format!(
            "{base}/telemetry?keys=temp&start={t0}&end={}",
            t0 + 6000
        ))
        .await;
    let expected: Vec<_> = (0..6)
        .map(|i| ("temp".to_owned(), t0 + i * 1000, json!((i + 1) * 10)))
        .collect();
    assert_eq!(kv(&history), expected);
    let limited = api
        .items(&format!(
            "{base}/telemetry?keys=temp&start={t0}&end={}&limit=2&order=desc",
            t0 + 6000
        ))
        .await;
    assert_eq!(kv(&limited), vec![expected[5].clone(), expected[4].clone()]);

    let avg = api
        .items(&format!(
            "{base}/telemetry?keys=temp&start={t0}&end={}&agg=avg&interval=2000",
            t0 + 6000
        ))
        .await;
    assert_eq!(
        kv(&avg),
        vec![
            ("temp".into(), t0, json!(15.0)),
            ("temp".into(), t0 + 2000, json!(35.0)),
            ("temp".into(), t0 + 4000, json!(55.0))
        ]
    );
    let max = api
        .items(&format!(
            "{base}/telemetry?keys=temp&start={t0}&end={}&agg=max&interval=3000",
            t0 + 6000
        ))
        .await;
    assert_eq!(
        kv(&max),
        vec![
            ("temp".into(), t0, json!(30.0)),
            ("temp".into(), t0 + 3000, json!(60.0))
        ]
    );
    let count = api
        .items(&format!(
            "{base}/telemetry?keys=temp&start={t0}&end={}&agg=count&interval=6000",
            t0 + 6000
        ))
        .await;
    assert_eq!(kv(&count), vec![("temp".into(), t0, json!(6))]);

    let attrs = items_when(&api, &format!("{base}/attributes"), |items| {
        items.len() == 2
    })
    .await;
    let attrs: Vec<_> = attrs
        .iter()
        .map(|a| (a["key"].clone(), a["value"].clone()))
        .collect();
    assert_eq!(
        attrs,
        vec![
            (json!("fw"), json!("1.2.3")),
            (json!("ip"), json!("10.0.0.7"))
        ]
    );
    let events = items_when(&api, &format!("{base}/events"), |items| items.len() == 1).await;
    assert_eq!(events[0]["method"], "Alarm");
    assert_eq!(events[0]["message_id"], "e1");
    assert_eq!(events[0]["params"], json!({"level": 2}));

    // the malformed payload was counted
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tp_ingest_rejected_total"), "{metrics}");

    // ACL: publishing outside the uplink topics or subscribing to another device's
    // downlink is refused, and nothing of it is stored
    let mut rogue = MqttTestClient::connect(mqtt, "mqtt_rogue", &username, &password)
        .await
        .unwrap();
    assert!(
        rogue
            .publish_closes("devices/status/boiler-1", r#"{"evil":1}"#)
            .await
    );
    let mut rogue = MqttTestClient::connect(mqtt, "mqtt_rogue", &username, &password)
        .await
        .unwrap();
    let theirs = format!(
        "devices/command/{}/+",
        other["device_number"].as_str().unwrap()
    );
    assert!(rogue.subscribe_closes(&[&theirs]).await);
    let latest = api.items(&format!("{base}/telemetry/latest")).await;
    assert!(latest.iter().all(|i| i["key"] != "evil"));

    // online state is visible in the device API
    let (_, dev) = api.get(&base).await;
    assert_eq!(dev["online"], true);
    // and filters the device list (the console's dashboard counts use the totals)
    let (_, online) = api.get("/api/v1/devices?online=true").await;
    let online_ids: Vec<&str> = online["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(
        online_ids.contains(&dev["id"].as_str().unwrap()),
        "{online}"
    );
    assert_eq!(online["total"].as_u64(), Some(online_ids.len() as u64));
    let (_, offline) = api.get("/api/v1/devices?online=false").await;
    assert!(
        offline["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["online"] == false && d["id"] != dev["id"]),
        "{offline}"
    );

    // restart on the same data dir: everything is still there
    device.disconnect().await;
    platform.shutdown().await.unwrap();
    let platform = Platform::start(config_with(dir.path(), backends))
        .await
        .unwrap();
    assert!(
        platform.bootstrap_admin().is_none(),
        "the admin is created only once"
    );
    let api = Api::login(&platform).await;
    let after = api.items(&format!("{base}/telemetry/latest")).await;
    assert_eq!(kv(&after), kv(&latest));
    assert_eq!(
        kv(&api
            .items(&format!(
                "{base}/telemetry?keys=temp&start={t0}&end={}",
                t0 + 6000
            ))
            .await),
        expected
    );
    assert_eq!(api.items(&format!("{base}/attributes")).await.len(), 2);
    assert_eq!(api.items(&format!("{base}/events")).await.len(), 1);
    let (_, dev) = api.get(&base).await;
    assert_eq!(dev["online"], false);
    // the device can reconnect after the restart
    let mut device =
        MqttTestClient::connect(platform.mqtt_addr(), "mqtt_boiler", &username, &password)
            .await
            .unwrap();
    device
        .publish("devices/telemetry", r#"{"hum":41}"#)
        .await
        .unwrap();
    platform.shutdown().await.unwrap();
}
