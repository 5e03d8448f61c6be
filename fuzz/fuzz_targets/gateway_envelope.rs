//! The gateway envelope (`gateway/...` payloads): `GatewayEnvelope::decode`, then
//! what tp-broker's uplink handler does with every part of it (each device's part
//! re-serialized and decoded as telemetry, attributes, an event or a response, as
//! `route_envelope`/`store_part` do). Oracles: no panic, the depth limit holds,
//! and an accepted envelope encodes to bytes that decode to the same envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tp_core::protocol::{
    GatewayEnvelope, MAX_GATEWAY_DEPTH, ResponseObject, decode_attributes, decode_event,
    decode_telemetry,
};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = GatewayEnvelope::decode(data) else {
        return;
    };
    assert!(envelope.depth() <= MAX_GATEWAY_DEPTH);
    let again = GatewayEnvelope::decode(&envelope.encode()).expect("an encoded envelope decodes");
    assert_eq!(again, envelope);
    // Every device's part, as the broker stores it.
    let mut todo = vec![envelope];
    while let Some(env) = todo.pop() {
        let parts = env
            .gateway_data
            .into_iter()
            .chain(env.sub_device_data.into_values());
        for part in parts {
            let bytes = serde_json::to_vec(&part).unwrap_or_default();
            let _ = decode_telemetry(&bytes, 0);
            let _ = decode_attributes(&bytes);
            let _ = decode_event(&bytes);
            let _ = ResponseObject::decode(&bytes);
        }
        todo.extend(env.sub_gateway_data.into_values());
    }
});
