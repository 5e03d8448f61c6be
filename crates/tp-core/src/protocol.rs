//! The ThingsPanel MQTT device protocol: topics, the topic ACL and payload codecs.
//!
//! Uplink topics (device -> platform) and downlink topics (platform -> device) are
//! exactly those of ThingsPanel (`devices/...` for direct devices, `gateway/...` for
//! gateways). Two of ThingsPanel's flaws are fixed here: the subscribe ACL binds the
//! `{device_number}` level to the connected device, and telemetry may carry device
//! timestamps (`{"ts":..,"values":{..}}` or an array of those) besides flat JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Timestamp, Value};
use crate::{Error, Result};

/// Largest accepted message id (a topic level chosen by the device).
pub const MAX_MESSAGE_ID_LEN: usize = 64;
/// Largest accepted telemetry/attribute key.
pub const MAX_KEY_LEN: usize = 255;
/// Deepest accepted gateway envelope nesting (as in ThingsPanel).
pub const MAX_GATEWAY_DEPTH: usize = 5;
/// Latest accepted device timestamp: 9999-12-31T23:59:59Z in ms.
pub const MAX_TIMESTAMP: Timestamp = 253_402_300_799_999;

/// What an uplink message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkKind {
    /// `devices/telemetry`.
    Telemetry,
    /// `devices/attributes/{message_id}`.
    Attributes,
    /// `devices/event/{message_id}`.
    Event,
    /// `devices/command/response/{message_id}`.
    CommandResponse,
    /// `devices/attributes/set/response/{message_id}`.
    AttributeSetResponse,
    /// `ota/devices/progress`.
    OtaProgress,
    /// `devices/register`: a device (or a gateway, for one behind it) registers a
    /// new device with a profile secret; answered on `devices/register/response/{device_number}`.
    Register,
}

/// A parsed uplink topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UplinkTopic {
    /// Sent by a gateway (`gateway/...`) with the gateway envelope as payload.
    pub gateway: bool,
    /// Message kind.
    pub kind: UplinkKind,
    /// The `{message_id}` level, for kinds that have one.
    pub message_id: Option<String>,
}

impl UplinkTopic {
    /// Parses a topic a device published to. Anything that is not an uplink topic
    /// is an error: this is the publish ACL.
    pub fn parse(topic: &str) -> Result<Self> {
        let levels: Vec<&str> = topic.split('/').collect();
        let (gateway, rest) = match levels.first() {
            Some(&"devices") => (false, &levels[1..]),
            Some(&"gateway") => (true, &levels[1..]),
            Some(&"ota") if levels == ["ota", "devices", "progress"] => {
                return Ok(Self {
                    gateway: false,
                    kind: UplinkKind::OtaProgress,
                    message_id: None,
                });
            }
            _ => return Err(not_uplink(topic)),
        };
        let (kind, mid) = match rest {
            ["telemetry"] => (UplinkKind::Telemetry, None),
            ["register"] if !gateway => (UplinkKind::Register, None),
            ["attributes", mid] => (UplinkKind::Attributes, Some(*mid)),
            ["event", mid] => (UplinkKind::Event, Some(*mid)),
            ["command", "response", mid] => (UplinkKind::CommandResponse, Some(*mid)),
            ["attributes", "set", "response", mid] => {
                (UplinkKind::AttributeSetResponse, Some(*mid))
            }
            _ => return Err(not_uplink(topic)),
        };
        if let Some(mid) = mid {
            validate_message_id(mid)?;
        }
        Ok(Self {
            gateway,
            kind,
            message_id: mid.map(str::to_owned),
        })
    }

    /// The topic string.
    pub fn to_topic(&self) -> String {
        let root = if self.gateway { "gateway" } else { "devices" };
        let mid = self.message_id.as_deref().unwrap_or_default();
        match self.kind {
            UplinkKind::Telemetry => format!("{root}/telemetry"),
            UplinkKind::Attributes => format!("{root}/attributes/{mid}"),
            UplinkKind::Event => format!("{root}/event/{mid}"),
            UplinkKind::CommandResponse => format!("{root}/command/response/{mid}"),
            UplinkKind::AttributeSetResponse => format!("{root}/attributes/set/response/{mid}"),
            UplinkKind::OtaProgress => "ota/devices/progress".to_owned(),
            UplinkKind::Register => format!("{root}/register"),
        }
    }
}

fn not_uplink(topic: &str) -> Error {
    Error::invalid("topic", format!("{topic:?} is not a device uplink topic"))
}

/// Checks a `{message_id}` topic level.
pub fn validate_message_id(mid: &str) -> Result<()> {
    if mid.is_empty() || mid.len() > MAX_MESSAGE_ID_LEN {
        return Err(Error::invalid(
            "message_id",
            format!("must be 1 to {MAX_MESSAGE_ID_LEN} bytes"),
        ));
    }
    if mid.contains(['+', '#', '/']) {
        return Err(Error::invalid(
            "message_id",
            "must not contain '+', '#' or '/'",
        ));
    }
    Ok(())
}

/// What a downlink message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownlinkKind {
    /// `devices/telemetry/control/{device_number}`.
    TelemetryControl,
    /// `devices/attributes/set/{device_number}/{message_id}`.
    AttributeSet,
    /// `devices/attributes/get/{device_number}`.
    AttributeGet,
    /// `devices/command/{device_number}/{message_id}`.
    Command,
    /// `devices/attributes/response/{device_number}/{message_id}`: ack of an attribute report.
    AttributeResponse,
    /// `devices/event/response/{device_number}/{message_id}`: ack of an event report.
    EventResponse,
    /// `ota/devices/inform/{device_number}`.
    OtaInform,
    /// `devices/register/response/{device_number}`: the answer to a `devices/register`.
    RegisterResponse,
}

impl DownlinkKind {
    /// Whether the topic ends with a `{message_id}` level.
    pub fn has_message_id(self) -> bool {
        matches!(
            self,
            DownlinkKind::AttributeSet
                | DownlinkKind::Command
                | DownlinkKind::AttributeResponse
                | DownlinkKind::EventResponse
        )
    }

    fn prefix(self) -> &'static [&'static str] {
        match self {
            DownlinkKind::TelemetryControl => &["telemetry", "control"],
            DownlinkKind::AttributeSet => &["attributes", "set"],
            DownlinkKind::AttributeGet => &["attributes", "get"],
            DownlinkKind::Command => &["command"],
            DownlinkKind::AttributeResponse => &["attributes", "response"],
            DownlinkKind::EventResponse => &["event", "response"],
            DownlinkKind::OtaInform => &["devices", "inform"],
            DownlinkKind::RegisterResponse => &["register", "response"],
        }
    }

    const ALL: [DownlinkKind; 8] = [
        DownlinkKind::TelemetryControl,
        DownlinkKind::AttributeSet,
        DownlinkKind::AttributeGet,
        DownlinkKind::Command,
        DownlinkKind::AttributeResponse,
        DownlinkKind::EventResponse,
        DownlinkKind::OtaInform,
        DownlinkKind::RegisterResponse,
    ];
}

/// A downlink topic addressed to one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DownlinkTopic {
    /// Addressed to a gateway (`gateway/...`), payload in the gateway envelope.
    pub gateway: bool,
    /// Message kind.
    pub kind: DownlinkKind,
    /// The addressed device.
    pub device_number: String,
    /// The `{message_id}` level, for kinds that have one.
    pub message_id: Option<String>,
}

impl DownlinkTopic {
    /// The topic string.
    pub fn to_topic(&self) -> String {
        let root = match (self.kind, self.gateway) {
            (DownlinkKind::OtaInform, _) => "ota",
            (_, true) => "gateway",
            (_, false) => "devices",
        };
        let mut t = String::with_capacity(64);
        t.push_str(root);
        for p in self.kind.prefix() {
            t.push('/');
            t.push_str(p);
        }
        t.push('/');
        t.push_str(&self.device_number);
        if let Some(mid) = &self.message_id {
            t.push('/');
            t.push_str(mid);
        }
        t
    }
}

/// The subscribe ACL: may the device `device_number` subscribe to `filter`?
///
/// Allowed are exactly the downlink topics of that device; the
/// `{device_number}` level must be the device's own number (no wildcard), and only
/// the trailing `{message_id}` level may be `+` or `#`. Also allowed, as
/// ThingsPanel's broker does: `devices/register/response/…` and
/// `devices/config/down/response/…` with the device's own number, `+` or `#` as the
/// last level (only messages addressed to the device reach its connection), and
/// `{device_number}/down` ([`DOWN_ALIAS_SUFFIX`], an alias of the device's
/// telemetry control topic).
pub fn check_subscribe(filter: &str, device_number: &str) -> Result<()> {
    let levels: Vec<&str> = filter.split('/').collect();
    let deny = || {
        Error::PermissionDenied(format!(
            "device {device_number} may not subscribe to {filter:?}"
        ))
    };
    match levels.as_slice() {
        [n, "down"] if *n == device_number => return Ok(()),
        ["devices", "register", "response", last]
        | ["devices", "config", "down", "response", last]
            if *last == device_number || *last == "+" || *last == "#" =>
        {
            return Ok(());
        }
        _ => {}
    }
    let rest = match levels.first() {
        Some(&"devices") | Some(&"gateway") => &levels[1..],
        Some(&"ota") => {
            return if levels == ["ota", "devices", "inform", device_number] {
                Ok(())
            } else {
                Err(deny())
            };
        }
        _ => return Err(deny()),
    };
    for kind in DownlinkKind::ALL {
        if matches!(
            kind,
            DownlinkKind::OtaInform | DownlinkKind::RegisterResponse
        ) {
            continue;
        }
        let prefix = kind.prefix();
        if rest.len() < prefix.len() + 1 || rest[..prefix.len()] != *prefix {
            continue;
        }
        let tail = &rest[prefix.len()..];
        if tail[0] != device_number {
            continue;
        }
        let ok = match (kind.has_message_id(), &tail[1..]) {
            (false, []) => true,
            // ThingsPanel also lets a device listen below its control topic.
            (false, ["+"]) | (false, ["#"]) => kind == DownlinkKind::TelemetryControl,
            (true, [mid]) => *mid == "+" || *mid == "#" || validate_message_id(mid).is_ok(),
            (true, []) => false,
            _ => false,
        };
        if ok {
            return Ok(());
        }
    }
    Err(deny())
}

/// The last level of `{device_number}/down`, which receives what the device's
/// `devices/telemetry/control/{device_number}` does.
pub const DOWN_ALIAS_SUFFIX: &str = "/down";

/// Prefix of the internal topic a device publish is rewritten to (VerneMQ) or
/// republished on (EMQX rule): `tp/ingest/{device_id}/{uplink topic}`. The consumer
/// (tp-broker's `external` consumer) learns the device from it; devices themselves can never
/// publish there, as it is outside the uplink ACL.
pub const INGEST_PREFIX: &str = "tp/ingest/";

/// The `{device_number}/down` alias a telemetry control `topic` is also delivered
/// on, if it is one.
pub fn down_alias(topic: &str) -> Option<String> {
    let number = topic.strip_prefix("devices/telemetry/control/")?;
    (!number.is_empty() && !number.contains('/')).then(|| format!("{number}{DOWN_ALIAS_SUFFIX}"))
}

/// Topics ThingsPanel's broker lets a device publish that have no meaning here:
/// `devices/config/down` and `{device_number}/up` (a vendor's custom uplink), the
/// latter bound to the device's own number. They are acknowledged and counted,
/// nothing is stored; the label names the topic for the metric.
pub fn ignored_uplink(topic: &str, device_number: &str) -> Option<&'static str> {
    if topic == "devices/config/down" {
        return Some("devices/config/down");
    }
    match topic.split_once('/') {
        Some((n, "up")) if n == device_number => Some("+/up"),
        _ => None,
    }
}

/// A telemetry sample decoded from a payload, before it is bound to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Time: device time if given, else the server time passed to the decoder.
    pub ts: Timestamp,
    /// Key.
    pub key: String,
    /// Value.
    pub value: Value,
}

fn parse_json(payload: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(payload)
        .map_err(|e| Error::invalid("payload", format!("not valid JSON: {e}")))
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            "payload",
            format!("key {key:?} must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    Ok(())
}

fn flat_values(
    map: serde_json::Map<String, serde_json::Value>,
    ts: Timestamp,
    out: &mut Vec<Sample>,
) -> Result<()> {
    for (key, v) in map {
        check_key(&key)?;
        let value = Value::from_json(v)
            .ok_or_else(|| Error::invalid("payload", format!("key {key:?} is null")))?;
        out.push(Sample { ts, key, value });
    }
    Ok(())
}

fn timestamped(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    obj.len() == 2 && obj.contains_key("ts") && obj.get("values").is_some_and(|v| v.is_object())
}

fn device_ts(v: &serde_json::Value) -> Result<Timestamp> {
    match v.as_i64() {
        Some(ts) if (0..=MAX_TIMESTAMP).contains(&ts) => Ok(ts),
        _ => Err(Error::invalid(
            "payload",
            "\"ts\" must be an integer number of milliseconds since the epoch",
        )),
    }
}

/// Decodes a `devices/telemetry` payload.
///
/// Accepted forms: a flat object `{"temp":21.5,"on":true}` (stamped `server_ts`),
/// `{"ts":1700000000000,"values":{..}}`, and an array of the latter. A payload that
/// is not JSON, holds no values, has a null value, or has a bad timestamp is an error.
pub fn decode_telemetry(payload: &[u8], server_ts: Timestamp) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    match parse_json(payload)? {
        serde_json::Value::Object(obj) if timestamped(&obj) => decode_ts_values(obj, &mut out)?,
        serde_json::Value::Object(obj) => flat_values(obj, server_ts, &mut out)?,
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::Object(obj) if timestamped(&obj) => {
                        decode_ts_values(obj, &mut out)?
                    }
                    _ => {
                        return Err(Error::invalid(
                            "payload",
                            "array items must be {\"ts\":..,\"values\":{..}}",
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(Error::invalid(
                "payload",
                "telemetry must be a JSON object or an array of {\"ts\",\"values\"}",
            ));
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("payload", "no values"));
    }
    Ok(out)
}

fn decode_ts_values(
    mut obj: serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<Sample>,
) -> Result<()> {
    let ts = device_ts(&obj["ts"])?;
    match obj.remove("values") {
        Some(serde_json::Value::Object(values)) => flat_values(values, ts, out),
        _ => Err(Error::invalid("payload", "\"values\" must be an object")),
    }
}

/// Encodes samples in the timestamped array form that [`decode_telemetry`] reads back.
pub fn encode_telemetry(samples: &[Sample]) -> Vec<u8> {
    let mut groups: Vec<(Timestamp, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    for s in samples {
        let idx = match groups
            .iter()
            .position(|(ts, m)| *ts == s.ts && !m.contains_key(&s.key))
        {
            Some(i) => i,
            None => {
                groups.push((s.ts, serde_json::Map::new()));
                groups.len() - 1
            }
        };
        groups[idx].1.insert(s.key.clone(), s.value.to_json());
    }
    let arr: Vec<serde_json::Value> = groups
        .into_iter()
        .map(|(ts, values)| serde_json::json!({"ts": ts, "values": values}))
        .collect();
    serde_json::to_vec(&arr).unwrap_or_default()
}

/// Decodes a `devices/attributes/{message_id}` payload: a flat JSON object.
pub fn decode_attributes(payload: &[u8]) -> Result<Vec<(String, Value)>> {
    match parse_json(payload)? {
        serde_json::Value::Object(obj) => {
            let mut out = Vec::new();
            flat_values(obj, 0, &mut out)?;
            if out.is_empty() {
                return Err(Error::invalid("payload", "no values"));
            }
            Ok(out.into_iter().map(|s| (s.key, s.value)).collect())
        }
        _ => Err(Error::invalid(
            "payload",
            "attributes must be a JSON object",
        )),
    }
}

/// `{"method": .., "params": {..}}`: an event (uplink) or a command (downlink).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodCall {
    /// Event or command identifier.
    pub method: String,
    /// Parameters (an object; `{}` when absent).
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Decodes a `devices/event/{message_id}` payload.
pub fn decode_event(payload: &[u8]) -> Result<MethodCall> {
    let call: MethodCall = serde_json::from_slice(payload).map_err(|e| {
        Error::invalid(
            "payload",
            format!("event must be {{\"method\",\"params\"}}: {e}"),
        )
    })?;
    if call.method.is_empty() || call.method.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            "payload",
            "\"method\" must be 1 to 255 bytes",
        ));
    }
    Ok(call)
}

/// The response object used in both directions:
/// `{"result":0,"errcode":"","message":"success","ts":1609143039,"method":".."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseObject {
    /// `0` success, anything else failure.
    pub result: i64,
    /// Error code when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errcode: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// The method answered, for events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl ResponseObject {
    /// A success response stamped with `now` (ms; the wire carries seconds).
    pub fn success(now: Timestamp, method: Option<String>) -> Self {
        Self {
            result: 0,
            errcode: None,
            message: Some("success".to_owned()),
            ts: Some(now / 1000),
            method,
        }
    }

    /// Whether the response reports success.
    pub fn is_success(&self) -> bool {
        self.result == 0
    }

    /// Decodes a response payload.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        serde_json::from_slice(payload)
            .map_err(|e| Error::invalid("payload", format!("not a response object: {e}")))
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The gateway envelope, recursive up to [`MAX_GATEWAY_DEPTH`] levels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GatewayEnvelope {
    /// The gateway's own data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_data: Option<serde_json::Value>,
    /// Data per sub-device address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sub_device_data: BTreeMap<String, serde_json::Value>,
    /// Nested sub-gateways by address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sub_gateway_data: BTreeMap<String, GatewayEnvelope>,
}

impl GatewayEnvelope {
    /// Decodes and checks the nesting depth.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let env: GatewayEnvelope = serde_json::from_slice(payload)
            .map_err(|e| Error::invalid("payload", format!("not a gateway envelope: {e}")))?;
        if env.depth() > MAX_GATEWAY_DEPTH {
            return Err(Error::invalid(
                "payload",
                format!("gateway envelope nested deeper than {MAX_GATEWAY_DEPTH}"),
            ));
        }
        Ok(env)
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Nesting depth (1 for an envelope without sub-gateways).
    pub fn depth(&self) -> usize {
        1 + self
            .sub_gateway_data
            .values()
            .map(GatewayEnvelope::depth)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn uplink_topics_parse() {
        let t = UplinkTopic::parse("devices/telemetry").unwrap();
        assert_eq!((t.gateway, t.kind), (false, UplinkKind::Telemetry));
        let t = UplinkTopic::parse("gateway/attributes/set/response/m1").unwrap();
        assert_eq!(t.kind, UplinkKind::AttributeSetResponse);
        assert!(t.gateway);
        assert_eq!(t.message_id.as_deref(), Some("m1"));
        for bad in [
            "devices/telemetry/x",
            "devices/attributes",
            "devices/attributes/+",
            "devices/status/1",
            "other",
            "",
            "devices/telemetry/control/d1",
        ] {
            assert!(UplinkTopic::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subscribe_acl_binds_device_number() {
        let ok = [
            "devices/telemetry/control/d1",
            "devices/attributes/set/d1/+",
            "devices/attributes/get/d1",
            "devices/command/d1/+",
            "devices/command/d1/#",
            "devices/command/d1/abc",
            "devices/attributes/response/d1/+",
            "devices/event/response/d1/+",
            "ota/devices/inform/d1",
            "gateway/command/d1/+",
            "gateway/telemetry/control/d1",
            "d1/down",
            "devices/register/response/d1",
            "devices/register/response/+",
            "devices/config/down/response/+",
            "devices/config/down/response/d1",
        ];
        for f in ok {
            assert!(check_subscribe(f, "d1").is_ok(), "{f}");
        }
        let denied = [
            "devices/telemetry/control/d2",
            "devices/telemetry/control/+",
            "devices/command/+/+",
            "devices/#",
            "#",
            "devices/command/d1",
            "devices/telemetry",
            "ota/devices/inform/+",
            "devices/attributes/get/d1/x",
            "d2/down",
            "+/down",
            "#/down",
            "d1/down/x",
            "devices/register/response/d2",
            "devices/register/response/d1/x",
            "devices/config/down/response/d2",
            "devices/register/response",
        ];
        for f in denied {
            assert!(check_subscribe(f, "d1").is_err(), "{f}");
        }
    }

    #[test]
    fn thingspanel_extra_topics() {
        assert_eq!(
            UplinkTopic::parse("devices/register").unwrap().kind,
            UplinkKind::Register
        );
        assert!(UplinkTopic::parse("gateway/register").is_err());
        assert!(UplinkTopic::parse("devices/register/x").is_err());
        assert_eq!(
            ignored_uplink("devices/config/down", "d1"),
            Some("devices/config/down")
        );
        assert_eq!(ignored_uplink("d1/up", "d1"), Some("+/up"));
        assert_eq!(ignored_uplink("d2/up", "d1"), None);
        assert_eq!(ignored_uplink("d1/up/x", "d1"), None);
        assert_eq!(ignored_uplink("devices/other", "d1"), None);
        assert_eq!(
            down_alias("devices/telemetry/control/d1").as_deref(),
            Some("d1/down")
        );
        assert_eq!(down_alias("devices/command/d1/m1"), None);
        assert_eq!(down_alias("devices/telemetry/control/d1/x"), None);
        assert_eq!(
            DownlinkTopic {
                gateway: false,
                kind: DownlinkKind::RegisterResponse,
                device_number: "d1".into(),
                message_id: None,
            }
            .to_topic(),
            "devices/register/response/d1"
        );
    }

    #[test]
    fn downlink_topics_format() {
        let t = DownlinkTopic {
            gateway: false,
            kind: DownlinkKind::Command,
            device_number: "d1".into(),
            message_id: Some("m1".into()),
        };
        assert_eq!(t.to_topic(), "devices/command/d1/m1");
        let t = DownlinkTopic {
            gateway: true,
            kind: DownlinkKind::TelemetryControl,
            device_number: "g1".into(),
            message_id: None,
        };
        assert_eq!(t.to_topic(), "gateway/telemetry/control/g1");
        let t = DownlinkTopic {
            gateway: false,
            kind: DownlinkKind::OtaInform,
            device_number: "d1".into(),
            message_id: None,
        };
        assert_eq!(t.to_topic(), "ota/devices/inform/d1");
        assert!(check_subscribe(&t.to_topic(), "d1").is_ok());
    }

    #[test]
    fn telemetry_forms() {
        let flat =
            decode_telemetry(br#"{"t":21.5,"on":true,"n":3,"s":"x","j":{"a":1}}"#, 7).unwrap();
        assert_eq!(flat.len(), 5);
        assert!(flat.iter().all(|s| s.ts == 7));
        let one = decode_telemetry(br#"{"ts":1000,"values":{"t":1}}"#, 7).unwrap();
        assert_eq!(
            one,
            vec![Sample {
                ts: 1000,
                key: "t".into(),
                value: Value::Integer(1)
            }]
        );
        let arr = decode_telemetry(
            br#"[{"ts":1,"values":{"t":1}},{"ts":2,"values":{"t":2.5}}]"#,
            7,
        )
        .unwrap();
        assert_eq!(
            arr[1],
            Sample {
                ts: 2,
                key: "t".into(),
                value: Value::Float(2.5)
            }
        );
        // a flat object that merely has a "ts" key is flat telemetry
        let f = decode_telemetry(br#"{"ts":5,"v":1}"#, 7).unwrap();
        assert_eq!(f.len(), 2);
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            b"3",
            br#"{"a":null}"#,
            br#"[{"a":1}]"#,
            br#"{"ts":-1,"values":{"a":1}}"#,
            br#"{"ts":"x","values":{"a":1}}"#,
            br#"{"":1}"#,
        ] {
            assert!(
                decode_telemetry(bad, 0).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn events_and_responses() {
        let e = decode_event(br#"{"method":"FindAnimal","params":{"count":2}}"#).unwrap();
        assert_eq!(e.method, "FindAnimal");
        assert_eq!(e.params, json!({"count":2}));
        assert!(decode_event(br#"{"params":{}}"#).is_err());
        let r =
            ResponseObject::decode(br#"{"result":0,"message":"success","ts":1609143039}"#).unwrap();
        assert!(r.is_success());
        assert_eq!(ResponseObject::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn gateway_envelope_depth_is_bounded() {
        let ok = br#"{"gateway_data":{"a":1},"sub_device_data":{"s1":{"t":2}},"sub_gateway_data":{"g2":{"sub_device_data":{"s2":{"t":3}}}}}"#;
        let env = GatewayEnvelope::decode(ok).unwrap();
        assert_eq!(env.depth(), 2);
        assert_eq!(GatewayEnvelope::decode(&env.encode()).unwrap(), env);
        let mut deep = String::from(r#"{"gateway_data":{}}"#);
        for _ in 0..MAX_GATEWAY_DEPTH {
            deep = format!(r#"{{"sub_gateway_data":{{"g":{deep}}}}}"#);
        }
        assert!(GatewayEnvelope::decode(deep.as_bytes()).is_err());
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            "[^\u{0}]{0,16}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn codecs_never_panic_on_arbitrary_input(topic in ".{0,64}", payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = UplinkTopic::parse(&topic);
            let _ = check_subscribe(&topic, "d1");
            let _ = decode_telemetry(&payload, 0);
            let _ = decode_attributes(&payload);
            let _ = decode_event(&payload);
            let _ = ResponseObject::decode(&payload);
            let _ = GatewayEnvelope::decode(&payload);
        }

        #[test]
        fn json_shaped_input_never_panics(s in r#"[\[\]{}":,0-9a-z.\-ts ]{0,80}"#) {
            let _ = decode_telemetry(s.as_bytes(), 0);
            let _ = GatewayEnvelope::decode(s.as_bytes());
        }

        #[test]
        fn telemetry_round_trips(samples in proptest::collection::vec(
            (0..MAX_TIMESTAMP, "[a-z][a-z0-9_]{0,12}", value_strategy())
                .prop_map(|(ts, key, value)| Sample { ts, key, value }), 1..20)) {
            let decoded = decode_telemetry(&encode_telemetry(&samples), 0).unwrap();
            let mut a = samples.clone();
            let mut b = decoded;
            let ord = |x: &Sample, y: &Sample| (x.ts, &x.key, format!("{:?}", x.value)).cmp(&(y.ts, &y.key, format!("{:?}", y.value)));
            a.sort_by(ord);
            b.sort_by(ord);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn valid_uplink_topics_round_trip(gateway in any::<bool>(), kind in 0usize..5, mid in "[a-zA-Z0-9_-]{1,64}") {
            let kind = [UplinkKind::Telemetry, UplinkKind::Attributes, UplinkKind::Event, UplinkKind::CommandResponse, UplinkKind::AttributeSetResponse][kind];
            let t = UplinkTopic { gateway, kind, message_id: (kind != UplinkKind::Telemetry).then_some(mid) };
            prop_assert_eq!(UplinkTopic::parse(&t.to_topic()).unwrap(), t);
        }

        #[test]
        fn downlink_topics_pass_own_acl_only(kind in 0usize..7, dn in "[a-zA-Z0-9_-]{1,32}", other in "[a-zA-Z0-9_-]{1,32}", mid in "[a-z0-9]{1,8}") {
            let kind = DownlinkKind::ALL[kind];
            let t = DownlinkTopic { gateway: false, kind, device_number: dn.clone(), message_id: kind.has_message_id().then_some(mid) };
            prop_assert!(check_subscribe(&t.to_topic(), &dn).is_ok());
            if other != dn {
                prop_assert!(check_subscribe(&t.to_topic(), &other).is_err());
            }
        }
    }
}
