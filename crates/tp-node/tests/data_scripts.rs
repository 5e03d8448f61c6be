//! Data scripts end to end over real sockets: the whole node (REST + embedded broker +
//! SQLite), devices as rumqttc clients. A profile's Lua script turns a packed binary
//! frame into stored telemetry, a script from ThingsPanel runs unchanged, a downlink
//! script re-encodes telemetry control, runaway scripts are stopped by their limits
//! while other devices keep ingesting, and the test endpoint runs a sample.

use serde_json::{Value, json};

mod common;
use common::*;

/// Decodes a 4-byte frame: temperature ×10 (int16, big endian), humidity (uint8),
/// flags (bit 0: the pump runs).
const FRAME_DECODER: &str = r#"
local json = require("json")

function encodeInp(msg, topic)
    if #msg ~= 4 then
        error("expected a 4-byte frame, got " .. #msg .. " bytes")
    end
    local hi, lo, hum, flags = string.byte(msg, 1, 4)
    local raw = hi * 256 + lo
    if raw >= 32768 then raw = raw - 65536 end
    return json.encode({
        temperature = raw / 10,
        humidity = hum,
        pump = (flags % 2) == 1,
    })
end
"#;

/// ThingsPanel's own starting script: the template its console puts in a new data
/// processing script (thingspanel-frontend-community,
/// `src/views/device/config-detail/modules/data-handle.vue`), kept as ThingsPanel
/// ships it (only trailing blanks dropped). It decodes the message with
/// `require("json")` and encodes it again.
const THINGSPANEL_TEMPLATE: &str = r#"function encodeInp(msg,topic)
 -- 说明：该函数为编码函数，将输入的消息编码为平台可识别的消息格式或者设备可识别的消息格式，请根据实际需求编写编码逻辑
 -- 入参：输入的msg，可以是任意数据类型的字符串。
 -- 出参：返回值为编码后的消息,需要是json字符串形式
 -- 注意：string与jsonObj互转需导入json库：local json = require("json")
 -- 例，string转jsonObj：local jsonData = json.decode(msgString)
 -- 例，jsonObj转string：local jsonStr = json.encode(jsonTable)
 local json = require("json")
 local jsonData = json.decode(msg)
 -- 例 if jsonData.temp then
 -- 例 jsonData.temp = jsonData.temp * 10
 -- 例 end
 local newJsonString = json.encode(jsonData)
 return newJsonString
 end"#;

/// The script of ThingsPanel's tutorial on data processing scripts ("ThingsPanel编写数据
/// 处理脚本,将电压从3000改成3", thingspanel.cn/posts/114), its steps put together in
/// the order the tutorial gives them: `pcall` around `json.decode`, `print` of a
/// concatenated float, `type`/`tostring`, millivolts to volts and a battery status.
/// The stored copy of the page breaks off inside the battery thresholds; the branches
/// after "很好" and the final `json.encode` are completed the way its text describes.
const THINGSPANEL_TUTORIAL: &str = r#"-- 引入需要的工具箱
local json = require("json")
-- 创建我们的翻译官函数
function encodeInp(msg, topic)
    -- 尝试理解传感器发来的消息
    local jsonData = {}
    local status, err = pcall(function()
        jsonData = json.decode(msg)
    end)
    -- 如果无法理解,记录下原因并原样返回
    if not status or type(jsonData) ~= "table" then
        print("无法理解消息: " .. tostring(err))
        return msg
    end
    -- 检查是否有电压信息
    if jsonData.voltage ~= nil then
        -- 把毫伏转换为伏特
        jsonData.voltage = jsonData.voltage / 1000
        print("电压是: " .. jsonData.voltage .. "V")
        -- 根据电压判断电池状态
        if jsonData.voltage >= 3.0 then
            jsonData.battery_status = "很好"
        elseif jsonData.voltage >= 2.5 then
            jsonData.battery_status = "一般"
        else
            jsonData.battery_status = "需要更换"
        end
    end
    return json.encode(jsonData)
end"#;

async fn create_profile(node: &Node, name: &str) -> String {
    let (status, p) = node
        .call(post(), "/api/v1/profiles", Some(json!({"name": name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    p["id"].as_str().unwrap().to_owned()
}

async fn create_script(
    node: &Node,
    profile: &str,
    script_type: &str,
    name: &str,
    content: &str,
) -> Value {
    let (status, s) = node
        .call(
            post(),
            "/api/v1/scripts",
            Some(json!({
                "profile_id": profile, "script_type": script_type, "name": name,
                "content": content, "enabled": true,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    s
}

/// A device in `profile` (or none), registered through the API.
async fn device_in(node: &Node, number: &str, profile: Option<&str>) -> TestDevice {
    let d = node.create_device(number).await;
    if let Some(profile) = profile {
        let (status, body) = node
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/devices/{}", d.id),
                Some(json!({"profile_id": profile})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    d
}

/// The device's latest telemetry as `key -> value`, once `ready` holds for it.
async fn latest_when(
    node: &Node,
    d: &TestDevice,
    ready: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> serde_json::Map<String, Value> {
    let path = format!("/api/v1/devices/{}/telemetry/latest", d.id);
    tp_core::testing::eventually_ok(&path, || async {
        let (status, body) = node.call(reqwest::Method::GET, &path, None).await;
        if status != StatusCode::OK {
            return Err(format!("{status}: {body}"));
        }
        let values: serde_json::Map<String, Value> = body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or("").to_owned(),
                    i["value"].clone(),
                )
            })
            .collect();
        if ready(&values) {
            Ok(values)
        } else {
            Err(format!("latest so far: {values:?}"))
        }
    })
    .await
}

async fn latest(node: &Node, d: &TestDevice) -> Value {
    let (status, body) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{}/telemetry/latest", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_decoded_by_the_profiles_lua_script() {
    let node = Node::start().await;
    let profile = create_profile(&node, "packed-sensors").await;
    let script = create_script(&node, &profile, "telemetry_up", "frame", FRAME_DECODER).await;
    assert_eq!(script["enabled"], true);
    assert_eq!(script["script_type"], "telemetry_up");

    let d = device_in(&node, "packed-1", Some(&profile)).await;
    let mut dev = node.connect(&d, "mqtt_packed_1").await;
    // 26.1 °C, 55 %, pump on: bytes no JSON decoder would take
    dev.publish("devices/telemetry", vec![0x01, 0x05, 0x37, 0x01])
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v.len() == 3).await;
    assert_eq!(values["temperature"], json!(26.1));
    assert_eq!(values["humidity"], json!(55));
    assert_eq!(values["pump"], json!(true));

    // a negative reading through the same compiled script
    dev.publish("devices/telemetry", vec![0xff, 0x9c, 0x20, 0x00])
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v.get("temperature") == Some(&json!(-10.0))).await;
    assert_eq!(values["humidity"], json!(32));
    assert_eq!(values["pump"], json!(false));

    // the test endpoint (TP's quiz) runs the stored script on a hex sample
    let id = script["id"].as_str().unwrap();
    let (status, out) = node
        .call(
            post(),
            &format!("/api/v1/scripts/{id}/test"),
            Some(json!({"payload_hex": "0x0105 3701"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(
        out["output_json"],
        json!({"temperature": 26.1, "humidity": 55, "pump": true})
    );
    // and unsaved source from the editor, reporting the script's own error
    let (status, out) = node
        .call(
            post(),
            &format!("/api/v1/scripts/{id}/test"),
            Some(json!({"payload": "{}", "content": FRAME_DECODER})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["reason"], "runtime");
    assert!(
        out["error"].as_str().unwrap().contains("4-byte frame"),
        "{out}"
    );

    // a frame the script refuses stores nothing of it
    dev.publish("devices/telemetry", vec![0x01]).await.unwrap();
    // listed by profile and type, with TP's letter accepted
    let (status, list) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/scripts?profile_id={profile}&script_type=A"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], script["id"]);

    // disabled, the script no longer runs: messages reach the JSON decoder as sent
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/scripts/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    dev.publish("devices/telemetry", r#"{"after_disable": 1}"#)
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v.contains_key("after_disable")).await;
    assert_eq!(
        values["temperature"],
        json!(-10.0),
        "nothing of the short frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thingspanel_script_runs_unchanged() {
    let node = Node::start().await;
    let profile = create_profile(&node, "tp-template").await;
    create_script(
        &node,
        &profile,
        "telemetry_up",
        "数据处理",
        THINGSPANEL_TEMPLATE,
    )
    .await;
    // the same template as an attribute script, by ThingsPanel's letter C
    let (status, attr) = node
        .call(
            post(),
            "/api/v1/scripts",
            Some(json!({
                "profile_id": profile, "script_type": "C", "name": "属性",
                "content": THINGSPANEL_TEMPLATE, "enabled": true,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{attr}");
    assert_eq!(attr["script_type"], "attribute_up");

    let d = device_in(&node, "tp-1", Some(&profile)).await;
    let mut dev = node.connect(&d, "mqtt_tp_1").await;
    dev.publish("devices/telemetry", r#"{"temp": 21.5, "hum": 40}"#)
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v.len() == 2).await;
    assert_eq!(values["temp"], json!(21.5));
    assert_eq!(values["hum"], json!(40));

    dev.publish(
        "devices/attributes/1001",
        r#"{"ip": "10.0.0.7", "port": 1883}"#,
    )
    .await
    .unwrap();
    let path = format!("/api/v1/devices/{}/attributes", d.id);
    let attrs = tp_core::testing::eventually_ok(&path, || async {
        let (_, body) = node.call(reqwest::Method::GET, &path, None).await;
        match body["items"].as_array() {
            Some(items) if items.len() == 2 => Ok(body.clone()),
            _ => Err(body.to_string()),
        }
    })
    .await;
    let text = attrs.to_string();
    assert!(text.contains("10.0.0.7") && text.contains("1883"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thingspanel_tutorial_script_converts_millivolts() {
    let node = Node::start().await;
    let profile = create_profile(&node, "tp-tutorial").await;
    let script = create_script(
        &node,
        &profile,
        "telemetry_up",
        "电压转换",
        THINGSPANEL_TUTORIAL,
    )
    .await;
    let d = device_in(&node, "tp-volt-1", Some(&profile)).await;
    let mut dev = node.connect(&d, "mqtt_tp_volt_1").await;
    // The tutorial's sample message.
    dev.publish(
        "devices/telemetry",
        r#"{"temperature": 25.7, "humidity": 60.2, "voltage": 3000}"#,
    )
    .await
    .unwrap();
    let values = latest_when(&node, &d, |v| v.len() == 4).await;
    assert_eq!(values["voltage"].as_f64(), Some(3.0), "{values:?}");
    assert_eq!(values["battery_status"], json!("很好"), "{values:?}");
    assert_eq!(values["temperature"], json!(25.7), "{values:?}");
    assert_eq!(values["humidity"], json!(60.2), "{values:?}");

    // A low battery takes the other branch.
    dev.publish("devices/telemetry", r#"{"voltage": 2100}"#)
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v["voltage"] == json!(2.1)).await;
    assert_eq!(values["battery_status"], json!("需要更换"), "{values:?}");

    // What the script cannot parse it returns unchanged (after printing why), as
    // ThingsPanel's quiz shows; our decoder then refuses it and stores nothing.
    let id = script["id"].as_str().unwrap();
    let (status, quiz) = node
        .call(
            post(),
            &format!("/api/v1/scripts/{id}/test"),
            Some(json!({"payload": "not json"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{quiz}");
    assert_eq!(quiz["ok"], json!(true), "{quiz}");
    assert_eq!(quiz["output"], json!("not json"), "{quiz}");
    dev.publish("devices/telemetry", "not json").await.unwrap();
    dev.publish("devices/telemetry", r#"{"voltage": 3300}"#)
        .await
        .unwrap();
    let values = latest_when(&node, &d, |v| v["voltage"] == json!(3.3)).await;
    assert_eq!(values["battery_status"], json!("很好"), "{values:?}");
    assert_eq!(values.len(), 4, "{values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_script_encodes_telemetry_control_for_the_device() {
    let node = Node::start().await;
    let profile = create_profile(&node, "relays").await;
    // our telemetry control {"switch":true,"level":7} -> two bytes
    create_script(
        &node,
        &profile,
        "telemetry_down",
        "to relay frame",
        r#"
        local json = require("json")
        function encodeInp(msg, topic)
            local t = json.decode(msg)
            return string.char(t.switch and 1 or 0, t.level or 0)
        end"#,
    )
    .await;
    let d = device_in(&node, "relay-1", Some(&profile)).await;
    let mut dev = node.connect(&d, "mqtt_relay_1").await;
    let topic = format!("devices/telemetry/control/{}", d.number);
    dev.subscribe(&[&topic]).await.unwrap();
    node.downlink(
        post(),
        &format!("/api/v1/devices/{}/telemetry/control", d.id),
        json!({"values": {"switch": true, "level": 7}}),
    )
    .await;
    let (got_topic, payload) = dev.recv_publish(RECV).await.expect("telemetry control");
    assert_eq!(got_topic, topic);
    assert_eq!(payload, vec![0x01, 0x07]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_scripts_are_stopped_and_other_devices_keep_ingesting() {
    let node = Node::start().await;
    let looping = create_profile(&node, "looping").await;
    create_script(
        &node,
        &looping,
        "telemetry_up",
        "spins forever",
        "function encodeInp(msg, topic) while true do end end",
    )
    .await;
    let hungry = create_profile(&node, "hungry").await;
    create_script(
        &node,
        &hungry,
        "telemetry_up",
        "allocates without bound",
        r#"
        local kept = {}
        function encodeInp(msg, topic)
            local s = msg
            while true do
                s = s .. s .. "x"
                kept[#kept + 1] = s
            end
        end"#,
    )
    .await;
    let healthy = create_profile(&node, "healthy").await;
    create_script(
        &node,
        &healthy,
        "telemetry_up",
        "passes through",
        "function encodeInp(msg, topic) return msg end",
    )
    .await;

    let spinner = device_in(&node, "spinner", Some(&looping)).await;
    let glutton = device_in(&node, "glutton", Some(&hungry)).await;
    let good = device_in(&node, "good", Some(&healthy)).await;
    let plain = device_in(&node, "plain", None).await;
    let mut spinner_c = node.connect(&spinner, "mqtt_spinner").await;
    let mut glutton_c = node.connect(&glutton, "mqtt_glutton").await;
    let mut good_c = node.connect(&good, "mqtt_good").await;
    let mut plain_c = node.connect(&plain, "mqtt_plain").await;

    for round in 0..3 {
        spinner_c
            .publish("devices/telemetry", format!(r#"{{"n": {round}}}"#))
            .await
            .unwrap();
        glutton_c
            .publish("devices/telemetry", format!(r#"{{"n": {round}}}"#))
            .await
            .unwrap();
    }
    good_c
        .publish("devices/telemetry", r#"{"n": 1}"#)
        .await
        .unwrap();
    plain_c
        .publish("devices/telemetry", r#"{"n": 2}"#)
        .await
        .unwrap();
    // both healthy devices are stored, after the runaway messages were taken
    assert_eq!(
        latest_when(&node, &good, |v| v.contains_key("n")).await["n"],
        1
    );
    assert_eq!(
        latest_when(&node, &plain, |v| v.contains_key("n")).await["n"],
        2
    );
    // and the node still ingests afterwards
    good_c
        .publish("devices/telemetry", r#"{"n": 3}"#)
        .await
        .unwrap();
    latest_when(&node, &good, |v| v.get("n") == Some(&json!(3))).await;

    // the failures are counted by reason, once every runaway message was handled
    let metrics_url = format!("{}/metrics", node.base);
    let failures = tp_core::testing::eventually_ok("script failure metrics", || async {
        let text = reqwest::get(&metrics_url)
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let count = |reason: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("tp_script_failures_total")
                        && l.contains(&format!("reason=\"{reason}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        // the loop hits its instruction budget or its timeout, whichever comes first
        let stopped = count("instructions") + count("timeout");
        let memory = count("memory");
        if stopped >= 3.0 && memory >= 3.0 {
            Ok((stopped, memory))
        } else {
            Err(format!("stopped {stopped}, memory {memory}"))
        }
    })
    .await;
    assert!(failures.0 >= 3.0 && failures.1 >= 3.0);
    // nothing of the runaway devices' messages was stored
    assert_eq!(latest(&node, &spinner).await, json!([]));
    assert_eq!(latest(&node, &glutton).await, json!([]));
}
