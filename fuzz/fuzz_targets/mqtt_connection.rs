//! The MQTT packet path tp-broker owns: the bytes of one client connection through
//! the real connection driver (`tp_broker::fuzzing::mqtt_connection`): protocol
//! level detection (3.1 rewritten as 3.1.1, 5), rumqttd's packet codecs, the
//! CONNECT checks (client id, credentials of three known devices, will topic
//! ACL), the publish and subscribe ACL, QoS 1/2 bookkeeping, keepalive and the
//! hand-off to ingest; in memory, without sockets. Oracles: no panic or hang, and
//! only publishes of an authenticated, enabled device on an uplink topic reach
//! ingest.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tp_broker::fuzzing::mqtt_connection(data);
});
