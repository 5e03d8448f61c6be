//! The web console: its assets, the live telemetry stream it draws from, and the
//! whole console driven in headless Chromium (Debian's `chromium` and
//! `chromium-driver`) over WebDriver: sign in, create a device, create a threshold
//! rule in the rule editor (an unusable value is reported next to its input), see a
//! value the device publishes on the live chart, send a command and see it in the
//! log, acknowledge the alarm the rule raised, create, run and delete a scene,
//! create a webhook channel (its secret never shows again), a rule with a cron
//! schedule, a custom role with two permissions, a tenant (renamed, given an
//! admin whose too-short password is reported in place first) and a deleted
//! tenant, a device profile with a 60 s heartbeat, a profile with a 2 s heartbeat and
//! access tokens with a device created in it (its token logs in; the device goes
//! offline after the window), a device group holding the
//! device, an API key (shown once), and the audit log, notification history and
//! device status history pages.
//! Screenshots of each page go to `$TP_ARTIFACTS_DIR`, else
//! `target/console-screenshots/`.
//!
//! The browser test is skipped when Chromium or chromedriver is missing, unless
//! `TP_REQUIRE_SERVICES` is set (CI), where it fails instead.

mod common;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Assets and the stream (no browser needed)

#[tokio::test]
async fn console_is_served_from_the_binary() {
    let node = Node::start().await;
    let res = node
        .http
        .get(format!("{}/", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(headers["cache-control"], "no-cache");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"src="/console/app.js""#), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );

    for (file, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let res = node
            .http
            .get(format!("{}/console/{file}", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        assert_eq!(res.headers()["content-type"], ty, "{file}");
        let etag = res.headers()["etag"].clone();
        let again = node
            .http
            .get(format!("{}/console/{file}", node.base))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{file}");
    }
    let missing = node
        .http
        .get(format!("{}/console/nope.js", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

/// Reads an SSE response until a `telemetry` event whose data satisfies `pred`.
async fn next_sample(
    res: &mut reqwest::Response,
    buf: &mut String,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + RECV;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if event == "telemetry" {
                let v: Value = serde_json::from_str(&data).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("no matching telemetry event in time")
            .unwrap()
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn telemetry_stream_is_authenticated_tenant_scoped_and_live() {
    let node = Node::start().await;
    let d = node.create_device("streamer").await;
    let url = format!("{}/api/v1/devices/{}/telemetry/stream", node.base, d.id);

    // No credentials, a bad token, a malformed id.
    let res = node.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = node
        .http
        .get(format!("{url}?access_token=not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = node
        .http
        .get(format!(
            "{}/api/v1/devices/nope/telemetry/stream",
            node.base
        ))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Another tenant's admin: the device does not exist for them.
    let (status, tenant) = node
        .call(post(), "/api/v1/tenants", Some(json!({"name": "other"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let (status, admin) = node
        .call(
            post(),
            &format!("/api/v1/tenants/{}/admins", tenant["id"].as_str().unwrap()),
            Some(json!({"email": "other@example.com", "name": "Other", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{admin}");
    let other = login(&node.http, &node.base, "other@example.com", PASSWORD).await;
    let res = node
        .http
        .get(&url)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = node
        .http
        .get(format!("{url}?access_token={other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The owner, once by header and once by query token (EventSource's way).
    let mut by_header = node
        .http
        .get(&url)
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), StatusCode::OK);
    assert_eq!(by_header.headers()["content-type"], "text/event-stream");
    let mut by_query = node
        .http
        .get(format!("{url}?access_token={}", node.token))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);

    // A second device's data never reaches this stream.
    let noise = node.create_device("noise").await;
    let mut noisy = node.connect(&noise, "mqtt_noise").await;
    noisy
        .publish("devices/telemetry", json!({"temp": -1}).to_string())
        .await
        .unwrap();
    let mut dev = node.connect(&d, "mqtt_streamer").await;
    dev.publish(
        "devices/telemetry",
        json!({"temp": 21.5, "on": true}).to_string(),
    )
    .await
    .unwrap();

    for res in [&mut by_header, &mut by_query] {
        let mut buf = String::new();
        let sample = next_sample(res, &mut buf, |_| true).await;
        assert_eq!(
            sample["device_id"],
            json!(d.id),
            "only this device: {sample}"
        );
        let items = sample["items"].as_array().unwrap();
        let temp = items.iter().find(|i| i["key"] == "temp").unwrap();
        assert_eq!(temp["value"], json!(21.5));
        assert!(
            items
                .iter()
                .any(|i| i["key"] == "on" && i["value"] == json!(true))
        );
    }
}

#[tokio::test]
async fn telemetry_stream_ends_after_one_token_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth.token_ttl_secs = 1;
    let platform = Platform::start(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", platform.http_addr());
    let token = login(&http, &base, ADMIN, PASSWORD).await;
    let res = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&json!({"name": "short"}))
        .send()
        .await
        .unwrap();
    let device: Value = res.json().await.unwrap();
    let mut stream = http
        .get(format!(
            "{base}/api/v1/devices/{}/telemetry/stream",
            device["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // The server closes it (a revoked session would stop receiving data by then).
    let deadline = tokio::time::Instant::now() + RECV;
    loop {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("the stream outlived its token"),
        }
    }
}

// ---------------------------------------------------------------------------
// The console in headless Chromium

#[path = "common/browser.rs"]
mod browser;

use browser::*;

/// A field of the first condition of the rule editor's first trigger group.
fn cond(field: &str) -> String {
    format!("#rule-form [name=\"trigger_groups[0].conditions[0].{field}\"]")
}

#[tokio::test]
async fn console_in_headless_chromium() {
    let Some(c) = Console::start().await else {
        return;
    };
    sign_in(&c).await;
    let boiler = create_device(&c).await;
    create_threshold_rule(&c, &boiler).await;
    // Connected from here to the end: the dashboard counts it online.
    let mut radio = see_live_values(&c, &boiler).await;
    send_command_and_attributes(&c, &mut radio).await;
    acknowledge_alarm(&c).await;
    create_run_and_delete_scene(&c).await;
    let channel_id = create_webhook_channel(&c).await;
    create_scheduled_rule(&c, &channel_id).await;
    create_role(&c).await;
    let acme = create_and_rename_tenant(&c).await;
    add_tenant_admin(&c, &acme).await;
    delete_tenant(&c).await;
    create_profile(&c).await;
    let beacons = create_access_token_profile(&c).await;
    access_token_device_goes_offline(&c, &beacons).await;
    create_group(&c).await;
    create_api_key(&c).await;
    notification_history(&c).await;
    device_status_history(&c, &boiler).await;
    dashboard(&c).await;
    skip_link_by_keyboard(&c).await;
    c.close().await;
}

/// Sign in: a wrong password is reported in place, then the right one works.
async fn sign_in(c: &Console) {
    let b = &c.b;
    c.open("", "the sign-in form", "#login-form").await;
    b.screenshot("01-login").await;
    b.fill(
        "#login-form",
        &[("email", ADMIN), ("password", "wrong password")],
    )
    .await;
    b.submit("#login-form").await;
    let err = b
        .wait(
            "the login error",
            "return document.querySelector('#login-form .error').textContent",
        )
        .await;
    assert_eq!(err, json!("invalid email or password"));
    b.fill("#login-form", &[("password", PASSWORD)]).await;
    b.submit("#login-form").await;
    b.wait_for("the dashboard", "#card-devices").await;
}

/// Create a device in the devices page; the credentials are shown once.
async fn create_device(c: &Console) -> TestDevice {
    let b = &c.b;
    c.open("#/devices", "the create form", "#create-device-form")
        .await;
    b.fill(
        "#create-device-form",
        &[("name", "Boiler"), ("device_number", "boiler-1")],
    )
    .await;
    b.submit("#create-device-form").await;
    let username = b
        .wait(
            "the new credentials",
            "return document.querySelector('#new-username')?.textContent",
        )
        .await;
    let password = b
        .js("return document.querySelector('#new-password').textContent")
        .await;
    b.wait(
        "the device in the list",
        "return document.querySelector('#device-list').textContent.includes('boiler-1')",
    )
    .await;
    b.screenshot("02-devices").await;
    let list = c.get("/api/v1/devices?search=boiler-1").await;
    TestDevice {
        id: list["items"][0]["id"].as_str().unwrap().to_owned(),
        number: "boiler-1".to_owned(),
        username: username.as_str().unwrap().to_owned(),
        password: password.as_str().unwrap().to_owned(),
    }
}

/// A threshold rule through the rule editor, so the value the device publishes
/// also raises an alarm. A value the operator cannot use is reported next to its
/// input; a condition row can be added and removed.
async fn create_threshold_rule(c: &Console, boiler: &TestDevice) {
    let b = &c.b;
    c.open("#/rules", "the rules page", "#new-rule").await;
    b.click("#new-rule").await;
    b.wait_for("the rule editor", "#rule-form").await;
    b.fill("#rule-form", &[("name", "boiler hot")]).await;
    b.choose(&cond("source"), &boiler.id).await;
    b.choose(&cond("data"), "telemetry").await;
    b.type_into(&cond("key"), "temp").await;
    b.choose(&cond("operator"), ">").await;
    b.type_into(&cond("value"), "hot").await;
    b.click("#rule-form .add-condition").await;
    b.wait_for(
        "a second condition row",
        "[name=\"trigger_groups[0].conditions[1].key\"]",
    )
    .await;
    b.click("[aria-label=\"Remove condition 2 of group 1\"]")
        .await;
    b.choose("#rule-form [name=\"actions[0].type\"]", "raise_alarm")
        .await;
    b.choose("#rule-form [name=\"actions[0].severity\"]", "major")
        .await;
    b.fill("#rule-form", &[("actions[0].title", "Boiler hot")])
        .await;
    b.submit("#rule-form").await;
    let err = b
        .wait(
            "the value error next to its input",
            "const v = document.querySelector('[name=\"trigger_groups[0].conditions[0].value\"]'); \
             return v.getAttribute('aria-invalid') === 'true' \
             && v.closest('label').querySelector('.field-error')?.textContent",
        )
        .await;
    assert!(err.as_str().unwrap().contains("needs a number"), "{err}");
    b.screenshot("02a-rule-editor-invalid").await;
    let none = c.get("/api/v1/rules").await;
    assert_eq!(none["total"], 0, "nothing stored: {none}");
    b.type_into(&cond("value"), "30").await;
    b.screenshot("02b-rule-editor").await;
    b.submit("#rule-form").await;
    b.wait_text("the new rule in the list", "#rule-list", "boiler hot")
        .await;
    let rules = c.get("/api/v1/rules").await;
    let rule = &rules["items"][0];
    assert_eq!(rule["enabled"], true, "{rule}");
    assert_eq!(
        rule["trigger_groups"],
        json!([{"conditions": [{
            "type": "device", "source": {"kind": "device", "id": boiler.id},
            "data": "telemetry", "key": "temp", "operator": ">", "value": 30,
            "duration_secs": null,
        }]}]),
    );
    assert_eq!(
        rule["actions"],
        json!([{"type": "raise_alarm", "severity": "major", "title": "Boiler hot",
            "description": null, "channels": []}]),
    );
    // The editor opens a stored rule with its values.
    b.click("[aria-label=\"Edit rule boiler hot\"]").await;
    b.wait(
        "the stored rule in the editor",
        &format!(
            "return document.querySelector('{}')?.value === '30' \
             && document.querySelector('{}').value === '{}'",
            cond("value"),
            cond("source"),
            boiler.id
        ),
    )
    .await;
    b.screenshot("02c-rule-editor-edit").await;
}

/// The device page subscribes to the live stream; a published value shows up, and
/// the history of the last hour is drawn averaged into buckets. Returns the device,
/// connected and subscribed to its commands.
async fn see_live_values(c: &Console, boiler: &TestDevice) -> MqttTestClient {
    let b = &c.b;
    c.goto(&format!("#/devices/{}", boiler.id)).await;
    b.wait(
        "the live stream to open",
        "return document.querySelector('#live-chart')?.dataset.stream === 'open'",
    )
    .await;
    let mut device = c.node.connect(boiler, "mqtt_boiler-1").await;
    device
        .subscribe(&["devices/command/boiler-1/+"])
        .await
        .unwrap();
    for temp in [38.5, 41.0, 42.5] {
        device
            .publish("devices/telemetry", json!({"temp": temp}).to_string())
            .await
            .unwrap();
    }
    b.wait(
        "42.5 on the live chart",
        "return JSON.parse(document.querySelector('#live-chart').dataset.latest).temp === 42.5",
    )
    .await;
    let points = b
        .js("return document.querySelector('#live-chart').dataset.points")
        .await;
    assert_eq!(points, json!("3"), "every published value is a point");
    // History of the last hour, averaged into buckets.
    b.js("document.querySelector('#history-form [name=agg]').value = 'avg'; return true")
        .await;
    b.submit("#history-form").await;
    b.wait(
        "the history chart",
        // Re-asked until the batching writer has stored the values.
        "if (Number(document.querySelector('#history-chart').dataset.points) > 0) return true; \
         document.querySelector('#history-form').requestSubmit(); return false",
    )
    .await;
    b.screenshot("03-device-live").await;
    device
}

/// Send a command from the form: it is in the log and reaches the device. A bad
/// parameter object is reported next to the form; an attribute set goes out
/// through the same log.
async fn send_command_and_attributes(c: &Console, device: &mut MqttTestClient) {
    let b = &c.b;
    b.fill(
        "#command-form",
        &[("method", "reboot"), ("params", r#"{"delay": 5}"#)],
    )
    .await;
    b.submit("#command-form").await;
    b.wait(
        "the command in the log",
        "return document.querySelector('#command-log').textContent.includes('reboot')",
    )
    .await;
    let (topic, payload) = device.recv_publish(RECV).await.expect("the command");
    assert!(topic.starts_with("devices/command/boiler-1/"), "{topic}");
    assert_eq!(json_of(&payload)["method"], "reboot");
    // A bad parameter object is reported next to the form, nothing is sent.
    b.fill("#command-form", &[("params", "{oops")]).await;
    b.submit("#command-form").await;
    b.wait(
        "the JSON error in place",
        "return document.querySelector('#command-form .error').textContent.includes('not valid JSON')",
    )
    .await;
    // An attribute set goes out through the same log.
    b.fill("#attribute-form", &[("values", r#"{"interval": 15}"#)])
        .await;
    b.submit("#attribute-form").await;
    b.wait(
        "the attribute set in the log",
        "return document.querySelector('#command-log').textContent.includes('interval')",
    )
    .await;
    b.screenshot("04-device-command").await;
}

/// Acknowledge the alarm the rule raised.
async fn acknowledge_alarm(c: &Console) {
    let b = &c.b;
    c.open("#/alarms", "the alarm", "button[data-action=acknowledge]")
        .await;
    b.screenshot("05-alarms").await;
    b.click("button[data-action=acknowledge]").await;
    b.wait(
        "the acknowledged state",
        "return document.querySelector('.alarm-status')?.textContent === 'acknowledged'",
    )
    .await;
    let alarms = c.get("/api/v1/alarms").await;
    assert_eq!(alarms["items"][0]["status"], "acknowledged", "{alarms}");
    assert_eq!(alarms["items"][0]["title"], "Boiler hot");
    b.screenshot("06-alarms-acknowledged").await;
}

/// The rules page renders with real data. Create a scene in the scene editor,
/// disable the rule and run the scene; then delete the scene from the list (the
/// confirmation answered yes).
async fn create_run_and_delete_scene(c: &Console) {
    let b = &c.b;
    c.goto("#/rules").await;
    b.wait_text("the rule list", "#rule-list", "boiler hot")
        .await;
    b.click("#new-scene").await;
    b.wait_for("the scene editor", "#scene-form").await;
    b.fill("#scene-form", &[("name", "evening")]).await;
    b.choose("#scene-form [name=\"actions[0].type\"]", "clear_alarm")
        .await;
    b.submit("#scene-form").await;
    b.wait_text("the scene list", "#scene-list", "evening")
        .await;
    b.click("#rule-list button").await;
    b.wait(
        "the disabled rule",
        "return document.querySelector('#rule-list button')?.textContent === 'Enable'",
    )
    .await;
    let rules = c.get("/api/v1/rules").await;
    assert_eq!(rules["items"][0]["enabled"], false, "{rules}");
    b.click("#scene-list button").await;
    b.wait(
        "the scene's outcome",
        "return document.querySelector('main').textContent.includes('Scene “evening” ran')",
    )
    .await;
    b.screenshot("07-rules").await;
    b.js("window.confirm = () => true; return true").await;
    b.click("#scene-list button[data-action=delete]").await;
    b.wait_text("the scene gone", "#scene-list", "No scenes yet")
        .await;
    let scenes = c.get("/api/v1/scenes").await;
    assert_eq!(scenes["total"], 0, "{scenes}");
}

/// A webhook channel in the channels page: a short secret is reported next to its
/// input; once saved, the secret is nowhere in the page, only "secret set", not
/// even when the channel is edited. Returns the channel's id.
async fn create_webhook_channel(c: &Console) -> String {
    const SECRET: &str = "console-test-secret-7f3a9c";
    let b = &c.b;
    b.click("#channels-link").await;
    b.wait_for("the channel form", "#channel-form").await;
    b.fill(
        "#channel-form",
        &[
            ("name", "ops hook"),
            ("url", "http://127.0.0.1:9/hook"),
            ("secret", "short"),
        ],
    )
    .await;
    b.submit("#channel-form").await;
    let err = b
        .wait(
            "the secret error in place",
            "const s = document.querySelector('#channel-form [name=secret]'); \
             return s.getAttribute('aria-invalid') === 'true' \
             && document.querySelector('#channel-form .error').textContent",
        )
        .await;
    assert!(err.as_str().unwrap().contains("16 to 1024"), "{err}");
    b.fill("#channel-form", &[("secret", SECRET)]).await;
    b.submit("#channel-form").await;
    b.wait(
        "the channel in the list",
        "const t = document.querySelector('#channel-list')?.textContent || ''; \
         return t.includes('ops hook') && t.includes('secret set')",
    )
    .await;
    let secret_shown = format!(
        "return document.documentElement.outerHTML.includes({s}) \
         || [...document.querySelectorAll('input, textarea')].some(i => i.value.includes({s}))",
        s = json!(SECRET)
    );
    assert_eq!(
        b.js(&secret_shown).await,
        json!(false),
        "secret in the page"
    );
    // Editing offers to replace the secret, never shows it.
    b.click("[aria-label=\"Edit channel ops hook\"]").await;
    b.wait(
        "the channel's edit form",
        "return document.querySelector('#channel-form')?.textContent.includes('A secret is set') \
         && document.querySelector('#channel-form [name=secret]').value === ''",
    )
    .await;
    assert_eq!(
        b.js(&secret_shown).await,
        json!(false),
        "secret in the page"
    );
    b.screenshot("07a-channels").await;
    let channels = c.get("/api/v1/notification-channels").await;
    let channel = &channels["items"][0];
    assert_eq!(channel["name"], "ops hook", "{channels}");
    assert_eq!(channel["type"], "webhook");
    assert_eq!(channel["url"], "http://127.0.0.1:9/hook");
    assert_eq!(channel["has_secret"], true);
    assert!(!channels.to_string().contains(SECRET));
    channel["id"].as_str().unwrap().to_owned()
}

/// A rule with a cron schedule that notifies the channel; an expression cron
/// cannot parse is reported next to its input. The editor opens it with the
/// schedule.
async fn create_scheduled_rule(c: &Console, channel_id: &str) {
    let b = &c.b;
    c.open("#/rules/new", "the rule editor", "#rule-form").await;
    b.fill("#rule-form", &[("name", "nightly")]).await;
    b.choose(&cond("type"), "schedule").await;
    b.wait_for("the schedule fields", &cond("kind.type")).await;
    b.choose(&cond("kind.type"), "cron").await;
    b.type_into(&cond("kind.expression"), "not a cron").await;
    b.choose("#rule-form [name=\"actions[0].type\"]", "notify")
        .await;
    b.choose("#rule-form [name=\"actions[0].channel\"]", channel_id)
        .await;
    b.fill(
        "#rule-form",
        &[
            ("actions[0].subject", "nightly check"),
            ("actions[0].body", "3 o'clock"),
        ],
    )
    .await;
    b.submit("#rule-form").await;
    b.wait(
        "the cron error next to its input",
        &format!(
            "const v = document.querySelector('{}'); \
             return v.getAttribute('aria-invalid') === 'true' \
             && v.closest('label').querySelector('.field-error')?.textContent",
            cond("kind.expression")
        ),
    )
    .await;
    b.type_into(&cond("kind.expression"), "0 0 3 * * *").await;
    b.screenshot("07b-rule-editor-schedule").await;
    b.submit("#rule-form").await;
    b.wait_text(
        "the scheduled rule in the list",
        "#rule-list",
        "cron 0 0 3 * * *",
    )
    .await;
    let rules = c.get("/api/v1/rules").await;
    let nightly = named(&rules, "nightly");
    assert_eq!(
        nightly["trigger_groups"],
        json!([{"conditions": [{
            "type": "schedule", "kind": {"type": "cron", "expression": "0 0 3 * * *"},
            "not_before": null, "not_after": null,
        }]}]),
    );
    assert_eq!(nightly["actions"][0]["type"], "notify", "{nightly}");
    assert_eq!(nightly["actions"][0]["channel"], json!(channel_id));
    b.click("[aria-label=\"Edit rule nightly\"]").await;
    b.wait(
        "the stored schedule in the editor",
        &format!(
            "return document.querySelector('{}')?.value === '0 0 3 * * *'",
            cond("kind.expression")
        ),
    )
    .await;
}

/// The admin page lists the users; a custom role with two permissions, which its
/// edit form shows again.
async fn create_role(c: &Console) {
    let b = &c.b;
    c.goto("#/admin").await;
    b.wait(
        "the user list",
        &format!("return document.querySelector('main').textContent.includes('{ADMIN}')"),
    )
    .await;
    b.screenshot("08-admin").await;
    b.fill("#role-form", &[("name", "operators")]).await;
    b.click("#role-form input[value=\"device:command\"]").await;
    b.click("#role-form input[value=\"alarm:ack\"]").await;
    b.submit("#role-form").await;
    b.wait_text("the role in the list", "#role-list", "operators")
        .await;
    let roles = c.get("/api/v1/roles").await;
    assert_eq!(roles["total"], 1, "{roles}");
    assert_eq!(roles["items"][0]["name"], "operators");
    let mut perms: Vec<&str> = roles["items"][0]["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    perms.sort_unstable();
    assert_eq!(perms, ["alarm:ack", "device:command"]);
    b.click("[aria-label=\"Edit role operators\"]").await;
    b.wait(
        "the role's edit form",
        "return document.querySelector('#role-form input[value=\"alarm:ack\"]')?.checked \
         && document.querySelector('#role-form [name=name]').value === 'operators'",
    )
    .await;
    b.screenshot("08a-roles").await;
}

/// Tenants (SYS_ADMIN): create one in the admin page and rename it. Returns its id.
async fn create_and_rename_tenant(c: &Console) -> String {
    let b = &c.b;
    b.fill("#tenant-form", &[("name", "acme")]).await;
    b.submit("#tenant-form").await;
    b.wait_text("the tenant in the list", "#tenant-list", "acme")
        .await;
    let tenants = c.get("/api/v1/tenants").await;
    let acme = named(&tenants, "acme")["id"].as_str().unwrap().to_owned();
    b.click("[aria-label=\"Rename tenant acme\"]").await;
    b.wait(
        "the tenant's rename form",
        "return document.querySelector('#tenant-form [name=name]')?.value === 'acme'",
    )
    .await;
    b.fill("#tenant-form", &[("name", "Acme Corp")]).await;
    b.submit("#tenant-form").await;
    b.wait_text(
        "the renamed tenant in the list",
        "#tenant-list",
        "Acme Corp",
    )
    .await;
    let (status, tenant) = c
        .node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/tenants/{acme}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    assert_eq!(tenant["name"], "Acme Corp");
    acme
}

/// The tenant's admin, from its row; a too-short password is reported in place
/// first. The admin signs in to that tenant.
async fn add_tenant_admin(c: &Console, acme: &str) {
    let b = &c.b;
    b.click("[aria-label=\"Add an admin to tenant Acme Corp\"]")
        .await;
    b.wait(
        "the admin form on the tenant",
        &format!(
            "return document.querySelector('#tenant-admin-form [name=tenant]')?.value === '{acme}'"
        ),
    )
    .await;
    b.fill(
        "#tenant-admin-form",
        &[
            ("email", "boss@acme.example"),
            ("name", "Acme Boss"),
            ("password", "short"),
        ],
    )
    .await;
    b.submit("#tenant-admin-form").await;
    b.wait(
        "the password error in place",
        "return document.querySelector('#tenant-admin-form .error')?.textContent",
    )
    .await;
    b.fill("#tenant-admin-form", &[("password", PASSWORD)])
        .await;
    b.submit("#tenant-admin-form").await;
    b.wait_text(
        "the created admin",
        "#tenant-admin-done",
        "boss@acme.example",
    )
    .await;
    let node = &c.node;
    let boss = login(&node.http, &node.base, "boss@acme.example", PASSWORD).await;
    let (_, me) = node
        .call_as(&boss, reqwest::Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(me["role"], "TENANT_ADMIN", "{me}");
    assert_eq!(me["tenant_id"], json!(acme), "{me}");
    assert_eq!(me["name"], "Acme Boss", "{me}");
    b.screenshot("08b-tenants").await;
}

/// A second tenant, deleted from the list (the confirmation answered yes).
async fn delete_tenant(c: &Console) {
    let b = &c.b;
    b.fill("#tenant-form", &[("name", "doomed")]).await;
    b.submit("#tenant-form").await;
    b.wait_text("the second tenant in the list", "#tenant-list", "doomed")
        .await;
    b.js("window.confirm = () => true; return true").await;
    b.click("[aria-label=\"Delete tenant doomed\"]").await;
    b.wait(
        "the tenant gone from the list",
        "return !document.querySelector('#tenant-list')?.textContent.includes('doomed')",
    )
    .await;
    let tenants = c.get("/api/v1/tenants").await;
    let names: Vec<&str> = tenants["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Acme Corp") && !names.contains(&"doomed"),
        "{tenants}"
    );
}

/// A device profile with a 60 s heartbeat, created through its page.
async fn create_profile(c: &Console) {
    let b = &c.b;
    c.open("#/devices/profiles", "the profile form", "#profile-form")
        .await;
    b.fill(
        "#profile-form",
        &[("name", "thermostats"), ("heartbeat_secs", "60")],
    )
    .await;
    b.submit("#profile-form").await;
    b.wait_text("the profile in the list", "#profile-list", "thermostats")
        .await;
    b.screenshot("10-profiles").await;
    let profiles = c.get("/api/v1/profiles").await;
    let profile = named(&profiles, "thermostats");
    assert_eq!(profile["heartbeat_secs"], 60, "{profile}");
    assert_eq!(profile["online_timeout_secs"], Value::Null, "{profile}");
    assert_eq!(profile["auto_register"], false, "{profile}");
}

/// A profile with a 2 s heartbeat whose devices log in with access tokens.
/// Returns the stored profile.
async fn create_access_token_profile(c: &Console) -> Value {
    let b = &c.b;
    c.open("#/devices/profiles", "the profile form", "#profile-form")
        .await;
    b.fill(
        "#profile-form",
        &[("name", "beacons"), ("heartbeat_secs", "2")],
    )
    .await;
    b.choose("#profile-form [name=voucher_type]", "ACCESSTOKEN")
        .await;
    b.submit("#profile-form").await;
    b.wait_text(
        "the beacons profile in the list",
        "#profile-list",
        "beacons",
    )
    .await;
    let profiles = c.get("/api/v1/profiles").await;
    let beacons = named(&profiles, "beacons").clone();
    assert_eq!(beacons["voucher_type"], "ACCESSTOKEN", "{beacons}");
    beacons
}

/// A device created in the `beacons` profile through the devices page gets an
/// access token and no password; it is online while it sends and offline once the
/// heartbeat window passes in silence, with its connection still open
/// (ThingsPanel's heartbeat mode). Deleted again, so the dashboard further down
/// counts the boiler alone.
async fn access_token_device_goes_offline(c: &Console, beacons: &Value) {
    let b = &c.b;
    c.open(
        "#/devices",
        "the create form",
        "#create-device-form [name=profile_id] option[value]:not([value=\"\"])",
    )
    .await;
    b.fill(
        "#create-device-form",
        &[("name", "Beacon"), ("device_number", "beacon-1")],
    )
    .await;
    b.choose(
        "#create-device-form [name=profile_id]",
        beacons["id"].as_str().unwrap(),
    )
    .await;
    b.submit("#create-device-form").await;
    let voucher = b
        .wait(
            "the new access token",
            "return document.querySelector('#new-voucher-type')?.textContent",
        )
        .await;
    assert_eq!(voucher, "ACCESSTOKEN");
    let token = b
        .js("return document.querySelector('#new-username').textContent")
        .await;
    assert_eq!(
        b.js("return document.querySelector('#new-password')").await,
        Value::Null,
        "an access token has no password"
    );
    b.screenshot("10b-access-token").await;
    let found = c.get("/api/v1/devices?search=beacon-1").await;
    let beacon = found["items"][0].clone();
    assert_eq!(beacon["profile_id"], beacons["id"], "{beacon}");
    let beacon_id = beacon["id"].as_str().unwrap().to_owned();
    let mut radio = MqttTestClient::connect(
        c.node.platform.mqtt_addr(),
        "mqtt_beacon-1",
        token.as_str().unwrap(),
        "",
    )
    .await
    .expect("the access token logs in");
    radio
        .publish("devices/telemetry", r#"{"rssi":-70}"#)
        .await
        .unwrap();
    let path = format!("/api/v1/devices/{beacon_id}");
    for want in [true, false] {
        tp_core::testing::eventually(&format!("beacon online={want}"), || async {
            c.get(&path).await["online"] == want
        })
        .await;
    }
    let history = c.get(&format!("{path}/status-history")).await;
    assert_eq!(
        history["items"][0]["reason"], "heartbeat_timeout",
        "{history}"
    );
    radio.disconnect().await;
    let (status, _) = c.node.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A device group, with the device added to it.
async fn create_group(c: &Console) {
    let b = &c.b;
    c.open("#/devices/groups", "the group form", "#group-form")
        .await;
    b.fill("#group-form", &[("name", "Cellar")]).await;
    b.submit("#group-form").await;
    b.wait_for("the new group's page", "#group-add-device")
        .await;
    b.fill("#group-add-device", &[("device", "boiler-1")]).await;
    b.submit("#group-add-device").await;
    b.wait_text("the device in the group", "#group-devices", "boiler-1")
        .await;
    b.screenshot("11-groups").await;
}

/// An API key: the key is shown once, right after creation; the audit log records
/// it; back on the page, the key is gone for good.
async fn create_api_key(c: &Console) {
    let b = &c.b;
    c.open("#/admin/api-keys", "the API key form", "#api-key-form")
        .await;
    b.fill("#api-key-form", &[("name", "ci")]).await;
    b.submit("#api-key-form").await;
    let key = b
        .wait(
            "the new key",
            "return document.querySelector('#new-api-key')?.textContent",
        )
        .await;
    let key = key.as_str().unwrap().to_owned();
    assert!(key.starts_with("tpk_"), "{key}");
    b.wait_text("the key in the list", "#api-key-list", "ci")
        .await;
    b.screenshot("12-api-keys").await;
    let keys = c.get("/api/v1/api-keys").await;
    assert!(!keys.to_string().contains(&key), "the list shows the key");
    c.goto("#/admin/audit").await;
    b.wait_text("the audit log", "#audit-list", "api_key.create")
        .await;
    b.screenshot("13-audit").await;
    c.goto("#/admin/api-keys").await;
    b.wait_text("the API key list again", "#api-key-list", "ci")
        .await;
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('#new-api-key') === null \
             && !document.body.textContent.includes('{key}')"
        ))
        .await,
        json!(true)
    );
}

/// The notification history page renders.
async fn notification_history(c: &Console) {
    c.open(
        "#/rules/notifications",
        "the notification history",
        "#notification-list",
    )
    .await;
    c.b.screenshot("14-notifications").await;
}

/// The device page shows the device's status history.
async fn device_status_history(c: &Console, boiler: &TestDevice) {
    let b = &c.b;
    c.open(
        &format!("#/devices/{}", boiler.id),
        "the status history",
        "#status-history table, #status-history p.muted",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#status-history .error')?.textContent || ''")
            .await,
        json!("")
    );
    b.screenshot("15-device-status-history").await;
}

/// The dashboard counts the one device, online.
async fn dashboard(c: &Console) {
    let b = &c.b;
    c.goto("#/").await;
    b.wait(
        "the dashboard counts",
        "return document.querySelector('#card-devices .big')?.textContent === '1' \
         && document.querySelector('#card-online .big')?.textContent === '1'",
    )
    .await;
    let shot = b.screenshot("09-dashboard").await;
    eprintln!("screenshots in {}", shot.parent().unwrap().display());
}

/// Keyboard: from the top of the page, Tab reaches the skip button and Enter on it
/// moves focus to the content.
async fn skip_link_by_keyboard(c: &Console) {
    let b = &c.b;
    b.js("window.beforeReload = true; location.reload(); return true")
        .await;
    b.wait(
        "the reloaded dashboard",
        "return !window.beforeReload && document.readyState === 'complete' \
         && document.querySelector('#card-devices')",
    )
    .await;
    b.keys(&["\u{E004}"]).await;
    assert_eq!(
        b.js("return document.activeElement.id").await,
        json!("skip")
    );
    b.keys(&["\u{E007}"]).await;
    assert_eq!(
        b.js("return document.activeElement.id").await,
        json!("main")
    );
}

/// The data scripts page (issue #21): pick a profile, write a Lua decoder in the
/// editor, enable it, and test-run it on a hex sample; the output shows in place.
#[tokio::test]
async fn data_scripts_page_in_headless_chromium() {
    let Some(c) = Console::start().await else {
        return;
    };
    sign_in(&c).await;
    let (status, profile) = c
        .node
        .call(
            post(),
            "/api/v1/profiles",
            Some(json!({"name": "packed sensors"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let profile_id = profile["id"].as_str().unwrap();
    let b = &c.b;
    c.open(
        &format!("#/devices/scripts?profile={profile_id}"),
        "the script form",
        "#script-form",
    )
    .await;
    b.fill(
        "#script-form",
        &[
            ("name", "frame decoder"),
            (
                "content",
                "local json = require(\"json\")\nfunction encodeInp(msg, topic)\n  local hi, lo = string.byte(msg, 1, 2)\n  return json.encode({temperature = (hi * 256 + lo) / 10})\nend\n",
            ),
        ],
    )
    .await;
    b.choose("#script-form [name=\"script_type\"]", "telemetry_up")
        .await;
    b.click("#script-form [name=\"enabled\"]").await;
    b.submit("#script-form").await;
    b.wait_text("the script in the list", "#script-list", "frame decoder")
        .await;
    b.wait_for("the test form", "#script-test-form").await;
    b.choose("#script-sample-format", "hex").await;
    b.type_into("#script-sample", "01 05").await;
    b.submit("#script-test-form").await;
    b.wait_text("the test output", "#script-output", "26.1")
        .await;
    b.screenshot("20-data-scripts").await;
    let scripts = c
        .get(&format!("/api/v1/scripts?profile_id={profile_id}"))
        .await;
    let script = named(&scripts, "frame decoder");
    assert_eq!(script["enabled"], true, "{script}");
    assert_eq!(script["script_type"], "telemetry_up", "{script}");

    // a failing sample shows the script's error in place
    b.choose("#script-sample-format", "text").await;
    b.type_into("#script-sample", "").await;
    b.submit("#script-test-form").await;
    b.wait_text("the failure", "#script-failure", "runtime")
        .await;
    b.screenshot("21-data-scripts-failure").await;
    c.close().await;
}
