//! Conformance suite for [`DeviceTransport`].
//!
//! A transport is exercised through a [`TransportHarness`], which knows how to
//! register a device and open a real session for it (an MQTT client for the embedded
//! broker, for example).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{DeviceId, DeviceTransportRef, Downlink, Error};

/// One connected test device.
#[async_trait]
pub trait DeviceSession: Send {
    /// The device's id.
    fn device_id(&self) -> DeviceId;
    /// The device's number.
    fn device_number(&self) -> String;
    /// The next message the device received, or `None` after `timeout`.
    async fn recv(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)>;
    /// Closes the session.
    async fn disconnect(self: Box<Self>);
}

/// Builds the transport under test and connects devices to it.
#[async_trait]
pub trait TransportHarness: Send + Sync {
    /// The transport under test.
    fn transport(&self) -> DeviceTransportRef;
    /// Registers a new device and opens a session subscribed to the device's
    /// `devices/command/{n}/+` and `devices/telemetry/control/{n}` topics; returns once
    /// the subscription is acknowledged.
    async fn connect_device(&self) -> Box<dyn DeviceSession>;
}

async fn eventually_connected(t: &DeviceTransportRef, id: DeviceId, want: bool) {
    super::eventually(&format!("is_connected({id}) becomes {want}"), || async {
        t.is_connected(id).await == want
    })
    .await;
}

/// A message sent to a connected device arrives on the right topic with its payload.
pub async fn send_reaches_connected_device(h: &dyn TransportHarness) {
    let t = h.transport();
    let mut dev = h.connect_device().await;
    eventually_connected(&t, dev.device_id(), true).await;
    let topic = format!("devices/command/{}/m1", dev.device_number());
    let payload = br#"{"method":"reboot","params":{"delay":1}}"#;
    t.send(Downlink {
        device_id: dev.device_id(),
        topic: topic.clone(),
        payload: Bytes::from_static(payload),
    })
    .await
    .expect("send to a connected device");
    let got = dev
        .recv(Duration::from_secs(5))
        .await
        .expect("device received the message");
    assert_eq!(got, (topic, payload.to_vec()));
    dev.disconnect().await;
}

/// A device with no session: `is_connected` is false and `send` is NotFound.
pub async fn send_to_disconnected_device_is_not_found(h: &dyn TransportHarness) {
    let t = h.transport();
    let id = DeviceId::new();
    assert!(!t.is_connected(id).await);
    let err = t
        .send(Downlink {
            device_id: id,
            topic: "devices/telemetry/control/x".into(),
            payload: Bytes::from_static(b"{}"),
        })
        .await
        .expect_err("no session");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// Connection state follows the session.
pub async fn is_connected_follows_session(h: &dyn TransportHarness) {
    let t = h.transport();
    let dev = h.connect_device().await;
    let id = dev.device_id();
    eventually_connected(&t, id, true).await;
    dev.disconnect().await;
    eventually_connected(&t, id, false).await;
}

/// A message for one device does not reach another.
pub async fn messages_reach_only_the_addressed_device(h: &dyn TransportHarness) {
    let t = h.transport();
    let mut a = h.connect_device().await;
    let mut b = h.connect_device().await;
    eventually_connected(&t, a.device_id(), true).await;
    eventually_connected(&t, b.device_id(), true).await;
    let topic = format!("devices/telemetry/control/{}", a.device_number());
    t.send(Downlink {
        device_id: a.device_id(),
        topic: topic.clone(),
        payload: Bytes::from_static(br#"{"switch":true}"#),
    })
    .await
    .expect("send");
    assert_eq!(
        a.recv(Duration::from_secs(5)).await.map(|m| m.0),
        Some(topic)
    );
    assert_eq!(b.recv(Duration::from_millis(300)).await, None);
    a.disconnect().await;
    b.disconnect().await;
}

/// Stamps out one `#[tokio::test]` per transport case. `$make` is an async expression
/// yielding a `TransportHarness` value.
#[macro_export]
macro_rules! transport_conformance {
    ($make:expr) => {
        $crate::transport_conformance!(@case $make,
            send_reaches_connected_device,
            send_to_disconnected_device_is_not_found,
            is_connected_follows_session,
            messages_reach_only_the_addressed_device);
    };
    (@case $make:expr, $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make.await;
                $crate::testing::transport::$case(&harness).await;
            }
        )+
    };
}
