//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`; not part of
//! the API). [`mqtt_connection`] runs the bytes a client sends through the real
//! connection driver ([`crate::connection::serve`]: protocol detection, the rumqttd
//! codecs, CONNECT checks, credentials, the publish/subscribe ACL, the will, QoS
//! bookkeeping and ingest hand-off) over an in-memory stream instead of a socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tp_core::model::*;
use tp_core::protocol::UplinkTopic;
use tp_core::{Cache, MetadataStore, Result};

use crate::connection::{Limits, serve};
use crate::session::{Shared, decode_envelope};

/// Login of the `BASIC` device the fuzz corpus uses (`d1`).
pub const BASIC_USERNAME: &str = "fuzz-basic";
/// Password of [`BASIC_USERNAME`].
pub const BASIC_PASSWORD: &str = "fuzz-basic-password";
/// Device number of the `BASIC` device.
pub const BASIC_NUMBER: &str = "d1";
/// Access token of the `ACCESSTOKEN` device (`d2`), sent as the username.
pub const ACCESS_TOKEN: &str = "fuzz-access-token-0001";
/// Login of a disabled device (password [`BASIC_PASSWORD`]).
pub const DISABLED_USERNAME: &str = "fuzz-disabled";

/// Largest packet the fuzzed driver accepts (the production default is larger;
/// smaller keeps executions fast and still exercises the limit).
const MAX_PACKET: usize = 64 * 1024;

fn device(id: u128, number: &str, credentials: DeviceCredentials, enabled: bool) -> Device {
    let tenant = TenantId(uuid::Uuid::from_u128(1));
    let (mut d, _) = Device::new(tenant, number.to_owned(), Some(number.to_owned()));
    d.id = DeviceId(uuid::Uuid::from_u128(id));
    d.credentials = credentials;
    d.enabled = enabled;
    d
}

/// The three devices a fuzzed connection can log in as, by lookup key.
fn devices() -> HashMap<String, Device> {
    [
        device(
            1,
            BASIC_NUMBER,
            DeviceCredentials::from_plain(BASIC_USERNAME.to_owned(), BASIC_PASSWORD),
            true,
        ),
        device(2, "d2", DeviceCredentials::access_token(ACCESS_TOKEN), true),
        device(
            3,
            "d3",
            DeviceCredentials::from_plain(DISABLED_USERNAME.to_owned(), BASIC_PASSWORD),
            false,
        ),
    ]
    .into_iter()
    .map(|d| (d.credentials.username.clone(), d))
    .collect()
}

/// A metadata store that knows three devices and nothing else: the connection
/// driver only looks devices up by username.
#[derive(Debug)]
struct Devices(HashMap<String, Device>);

fn unsupported<T>(operation: &'static str) -> Result<T> {
    Err(tp_core::Error::NotSupported {
        backend: "fuzzing",
        operation,
    })
}

#[async_trait]
impl MetadataStore for Devices {
    fn backend(&self) -> &'static str {
        "fuzzing"
    }
    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }
    async fn create_tenant(&self, _: &Tenant) -> Result<()> {
        unsupported("create_tenant")
    }
    async fn get_tenant(&self, _: TenantId) -> Result<Option<Tenant>> {
        unsupported("get_tenant")
    }
    async fn list_tenants(&self, _: Page) -> Result<Paged<Tenant>> {
        unsupported("list_tenants")
    }
    async fn create_user(&self, _: &User) -> Result<()> {
        unsupported("create_user")
    }
    async fn get_user(&self, _: UserId) -> Result<Option<User>> {
        unsupported("get_user")
    }
    async fn get_user_by_email(&self, _: &str) -> Result<Option<User>> {
        unsupported("get_user_by_email")
    }
    async fn update_user(&self, _: &User) -> Result<()> {
        unsupported("update_user")
    }
    async fn delete_user(&self, _: TenantId, _: UserId) -> Result<()> {
        unsupported("delete_user")
    }
    async fn list_users(&self, _: TenantId, _: Page) -> Result<Paged<User>> {
        unsupported("list_users")
    }
    async fn count_users(&self) -> Result<u64> {
        unsupported("count_users")
    }
    async fn create_device(&self, _: &Device) -> Result<()> {
        unsupported("create_device")
    }
    async fn get_device(&self, _: TenantId, id: DeviceId) -> Result<Option<Device>> {
        self.get_device_by_id(id).await
    }
    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>> {
        Ok(self.0.values().find(|d| d.id == id).cloned())
    }
    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>> {
        Ok(self.0.get(username).cloned())
    }
    async fn get_device_by_number(&self, number: &str) -> Result<Option<Device>> {
        Ok(self.0.values().find(|d| d.device_number == number).cloned())
    }
    async fn get_sub_device(&self, _: DeviceId, _: &str) -> Result<Option<Device>> {
        Ok(None)
    }
    async fn list_sub_devices(&self, _: DeviceId) -> Result<Vec<Device>> {
        Ok(Vec::new())
    }
    async fn list_devices(&self, _: TenantId, _: &DeviceFilter) -> Result<Paged<Device>> {
        unsupported("list_devices")
    }
    async fn update_device(&self, _: &Device) -> Result<()> {
        unsupported("update_device")
    }
    async fn delete_device(&self, _: TenantId, _: DeviceId) -> Result<()> {
        unsupported("delete_device")
    }
    async fn set_device_online(&self, _: DeviceId, _: bool, _: Timestamp) -> Result<()> {
        Ok(())
    }
    async fn touch_devices(&self, _: &[(DeviceId, Timestamp)]) -> Result<()> {
        Ok(())
    }
    async fn append_status(&self, _: &DeviceStatusEvent) -> Result<()> {
        Ok(())
    }
    async fn list_status_history(
        &self,
        _: TenantId,
        _: DeviceId,
        _: &StatusHistoryQuery,
    ) -> Result<Paged<DeviceStatusEvent>> {
        unsupported("list_status_history")
    }
    async fn upsert_attributes(&self, _: DeviceId, _: &[KeyValue]) -> Result<()> {
        Ok(())
    }
    async fn get_attributes(&self, _: DeviceId, _: Option<&[String]>) -> Result<Vec<KeyValue>> {
        Ok(Vec::new())
    }
    async fn create_command(&self, _: &CommandLog) -> Result<()> {
        unsupported("create_command")
    }
    async fn update_command(&self, _: &CommandLog) -> Result<()> {
        unsupported("update_command")
    }
    async fn get_command_by_message_id(&self, _: DeviceId, _: &str) -> Result<Option<CommandLog>> {
        Ok(None)
    }
    async fn get_command_by_published_topic(
        &self,
        _: TenantId,
        _: &str,
    ) -> Result<Option<CommandLog>> {
        Ok(None)
    }
    async fn list_commands(&self, _: TenantId, _: DeviceId, _: Page) -> Result<Paged<CommandLog>> {
        unsupported("list_commands")
    }
}

/// A cache that always misses (every login goes to [`Devices`]), so one execution
/// cannot change the next.
#[derive(Debug)]
struct NoCache;

#[async_trait]
impl Cache for NoCache {
    fn backend(&self) -> &'static str {
        "fuzzing"
    }
    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    async fn set(&self, _: &str, _: &[u8], _: Option<Duration>) -> Result<()> {
        Ok(())
    }
    async fn set_nx(&self, _: &str, _: &[u8], _: Option<Duration>) -> Result<bool> {
        Ok(true)
    }
    async fn delete(&self, _: &str) -> Result<bool> {
        Ok(false)
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    metadata: Arc<Devices>,
}

thread_local! {
    static HARNESS: Harness = Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime"),
        metadata: Arc::new(Devices(devices())),
    };
}

/// Serves one connection whose client sends `input` and then closes its side;
/// what the broker answers is read and discarded. Each call starts from a fresh
/// broker state (no sessions, no client ids).
///
/// # Panics
/// When the driver panics, or when it handed ingest a publish whose topic is
/// outside the uplink ACL or that does not belong to a known device.
pub fn mqtt_connection(input: &[u8]) {
    HARNESS.with(|h| h.runtime.block_on(connection(h.metadata.clone(), input)));
}

async fn connection(metadata: Arc<Devices>, input: &[u8]) {
    let (shared, mut receivers) = Shared::new(
        metadata.clone(),
        None,
        Arc::new(NoCache),
        Duration::from_secs(60),
        16,
        1 << 20,
        None,
        None,
    );
    let limits = Arc::new(Limits {
        connect_timeout: Duration::from_secs(5),
        max_packet_size: MAX_PACKET,
        max_inflight: 16,
        session_expiry: Duration::from_secs(60),
    });
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .try_acquire_owned()
        .expect("a fresh semaphore has a permit");
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (mut from_broker, mut to_broker) = tokio::io::split(client);
    let input = Bytes::copy_from_slice(input);
    let peer = SocketAddr::from(([127, 0, 0, 1], 1883));
    let send = async move {
        // Written in pieces, so reads see packets split across reads too.
        for chunk in input.chunks(1024) {
            if to_broker.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = to_broker.shutdown().await;
    };
    // Whatever the broker answers is read as it comes, so it never blocks on a
    // full stream.
    let receive = async move {
        let mut sink = [0u8; 4096];
        while let Ok(n) = from_broker.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::join!(serve(server, peer, shared, limits, permit), send, receive);
    while let Ok(envelope) = receivers.ingest.try_recv() {
        let e = decode_envelope(&envelope).expect("ingest envelopes decode");
        assert!(
            metadata
                .0
                .values()
                .any(|d| d.id == e.device_id && d.enabled),
            "ingested for an unknown or disabled device"
        );
        assert!(
            UplinkTopic::parse(e.topic).is_ok(),
            "ingested a publish outside the uplink ACL: {:?}",
            e.topic
        );
    }
}
