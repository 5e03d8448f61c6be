//! The device payload codecs and topic parsing of the ThingsPanel MQTT protocol
//! (`tp_core::protocol`), on arbitrary bytes: every decoder a device payload reaches
//! (telemetry, attributes, events, responses) and every topic check (publish ACL,
//! subscribe ACL, ignored topics, the `/down` alias). Oracles: no panic, decoded
//! values obey the documented limits, and what the encoders write decodes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tp_core::protocol::{
    MAX_KEY_LEN, MAX_MESSAGE_ID_LEN, MAX_TIMESTAMP, ResponseObject, UplinkTopic, check_subscribe,
    decode_attributes, decode_event, decode_telemetry, down_alias, encode_telemetry,
    ignored_uplink,
};

/// Server time handed to the telemetry decoder (outside the device range, so
/// server-stamped samples are told apart).
const SERVER_TS: i64 = -7;

fuzz_target!(|data: &[u8]| {
    topics(&String::from_utf8_lossy(data));

    if let Ok(samples) = decode_telemetry(data, SERVER_TS) {
        assert!(!samples.is_empty(), "telemetry without values accepted");
        for s in &samples {
            assert!((1..=MAX_KEY_LEN).contains(&s.key.len()));
            assert!(s.ts == SERVER_TS || (0..=MAX_TIMESTAMP).contains(&s.ts));
        }
        // What the platform encodes (history export, rule inputs) decodes again, to
        // values it was given (duplicates of a (ts, key) collapse to one).
        let stamped: Vec<_> = samples
            .iter()
            .cloned()
            .map(|mut s| {
                s.ts = s.ts.max(0);
                s
            })
            .collect();
        let again = decode_telemetry(&encode_telemetry(&stamped), SERVER_TS)
            .expect("encoded telemetry decodes");
        for s in &again {
            assert!(stamped.contains(s), "round trip invented {s:?}");
        }
    }
    if let Ok(attrs) = decode_attributes(data) {
        assert!(!attrs.is_empty());
        assert!(
            attrs
                .iter()
                .all(|(k, _)| (1..=MAX_KEY_LEN).contains(&k.len()))
        );
    }
    if let Ok(call) = decode_event(data) {
        assert!((1..=MAX_KEY_LEN).contains(&call.method.len()));
    }
    if let Ok(r) = ResponseObject::decode(data) {
        assert_eq!(ResponseObject::decode(&r.encode()).expect("re-decodes"), r);
    }
});

fn topics(topic: &str) {
    if let Ok(t) = UplinkTopic::parse(topic) {
        assert_eq!(t.to_topic(), topic, "uplink topics round trip");
        if let Some(mid) = &t.message_id {
            assert!((1..=MAX_MESSAGE_ID_LEN).contains(&mid.len()));
            assert!(!mid.contains(['+', '#', '/']));
        }
    }
    // The subscribe ACL binds the device number level: a filter allowed for d1
    // names d1, unless it is one of the register/config answers with a wildcard.
    if check_subscribe(topic, "d1").is_ok() {
        let names_d1 = topic.split('/').any(|level| level == "d1");
        let answer = [
            "devices/register/response/",
            "devices/config/down/response/",
        ]
        .iter()
        .any(|p| topic.strip_prefix(p).is_some_and(|l| l == "+" || l == "#"));
        assert!(names_d1 || answer, "{topic:?} allowed for d1");
    }
    let _ = check_subscribe(topic, topic);
    let _ = ignored_uplink(topic, "d1");
    if let Some(alias) = down_alias(topic) {
        assert!(alias.ends_with("/down"));
        assert_eq!(alias.matches('/').count(), 1);
    }
}
