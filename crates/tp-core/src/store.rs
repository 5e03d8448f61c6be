//! The persistence contracts: [`MetadataStore`] and [`TimeSeriesStore`].

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::model::*;

/// Persistent registry of tenants, users, devices, attributes and the downlink log.
///
/// # Contract
/// - Tenant-scoped reads (`get_device(tenant, id)`, `list_devices(tenant, ..)`) never
///   return another tenant's rows; a row of another tenant is [`crate::Error::NotFound`].
/// - Unique values (user email, device number, device username) are enforced by the
///   store and violations are [`crate::Error::AlreadyExists`].
/// - Reads after a successful write observe the write.
/// - Implementations must pass every case of `tp_core::testing::metadata`.
#[async_trait]
pub trait MetadataStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stable backend name used in errors and metrics (`"sqlite"`, `"postgres"`).
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the store is usable (for `/readyz`).
    async fn healthcheck(&self) -> Result<()>;

    /// Creates a tenant.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    /// Looks a tenant up.
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    /// Lists tenants by creation time.
    async fn list_tenants(&self, page: Page) -> Result<Paged<Tenant>>;

    /// Creates a user; the email is unique installation-wide.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// Looks a user up by id.
    async fn get_user(&self, id: UserId) -> Result<Option<User>>;
    /// Looks a user up by (lower-case) email, for login.
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Replaces a user's mutable fields (name, password hash, role).
    async fn update_user(&self, user: &User) -> Result<()>;
    /// Deletes a user of a tenant.
    async fn delete_user(&self, tenant: TenantId, id: UserId) -> Result<()>;
    /// Lists a tenant's users by creation time.
    async fn list_users(&self, tenant: TenantId, page: Page) -> Result<Paged<User>>;
    /// Number of users installation-wide (bootstrap check).
    async fn count_users(&self) -> Result<u64>;

    /// Stores a piece of authentication state that must survive restarts and be
    /// shared by every API node (a revoked session, a user's session generation, a
    /// used refresh token): `key` holds `value` until `expires_at` (ms), replacing any
    /// earlier value. Expired entries may be dropped at any time.
    async fn put_auth_state(&self, key: &str, value: &str, expires_at: Timestamp) -> Result<()>;
    /// The value of `key` if it has not expired at `now` (ms).
    async fn get_auth_state(&self, key: &str, now: Timestamp) -> Result<Option<String>>;
    /// Drops the entries expired at `now`; returns how many.
    async fn purge_auth_state(&self, now: Timestamp) -> Result<u64>;

    /// Creates a device.
    async fn create_device(&self, device: &Device) -> Result<()>;
    /// Looks a device of a tenant up.
    async fn get_device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>>;
    /// Looks any device up by id (internal paths such as ingest).
    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>>;
    /// Looks a device up by its MQTT username (connect path).
    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>>;
    /// Looks a device up by its device number.
    async fn get_device_by_number(&self, device_number: &str) -> Result<Option<Device>>;
    /// Looks up the device whose gateway is `parent` and whose sub-device address is
    /// `addr` (gateway envelope routing).
    async fn get_sub_device(&self, parent: DeviceId, addr: &str) -> Result<Option<Device>>;
    /// The devices directly behind gateway `parent`, by creation time (queued downlink
    /// of sub-devices goes out when their gateway connects).
    async fn list_sub_devices(&self, parent: DeviceId) -> Result<Vec<Device>>;
    /// Lists a tenant's devices by creation time, optionally filtered.
    async fn list_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<Paged<Device>>;
    /// Replaces a device's mutable fields; scoped by `device.tenant_id`.
    async fn update_device(&self, device: &Device) -> Result<()>;
    /// Deletes a device of a tenant with its attributes and downlink log.
    async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> Result<()>;
    /// Records a connection state change.
    async fn set_device_online(&self, id: DeviceId, online: bool, at: Timestamp) -> Result<()>;
    /// Moves `last_seen` of each listed device forward to its timestamp (never back);
    /// unknown devices are skipped. Brokers call it with batches of recent activity,
    /// so one write covers many devices.
    async fn touch_devices(&self, seen: &[(DeviceId, Timestamp)]) -> Result<()>;
    /// Records an online/offline transition: appends it to the device's status history
    /// and sets the device's `online` and `last_seen` (to `event.at`), atomically, so
    /// the history and the device row never disagree. A missing device is
    /// [`crate::Error::NotFound`]. Deleting a device deletes its history.
    async fn append_status(&self, event: &DeviceStatusEvent) -> Result<()>;
    /// Records several transitions in order, as [`Self::append_status`] does each;
    /// events of missing devices are skipped. Returns how many were recorded. A
    /// backend may commit them together (a connect storm is thousands per second);
    /// the default records them one by one.
    async fn append_statuses(&self, events: &[DeviceStatusEvent]) -> Result<usize> {
        let mut recorded = 0;
        for event in events {
            match self.append_status(event).await {
                Ok(()) => recorded += 1,
                Err(crate::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recorded)
    }
    /// A device's status history within `query`'s time range, newest first (events
    /// of the same millisecond in reverse append order); `total` counts the range.
    async fn list_status_history(
        &self,
        tenant: TenantId,
        device: DeviceId,
        query: &StatusHistoryQuery,
    ) -> Result<Paged<DeviceStatusEvent>>;

    /// Upserts attributes; a key keeps the value with the newest `ts`.
    async fn upsert_attributes(&self, device: DeviceId, attrs: &[KeyValue]) -> Result<()>;
    /// A device's attributes ordered by key, optionally only `keys`.
    async fn get_attributes(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<KeyValue>>;

    /// Logs a downlink.
    async fn create_command(&self, command: &CommandLog) -> Result<()>;
    /// Updates status, response, `updated_at` and `published` of a logged downlink.
    async fn update_command(&self, command: &CommandLog) -> Result<()>;
    /// Finds the downlink a device response refers to.
    async fn get_command_by_message_id(
        &self,
        device: DeviceId,
        message_id: &str,
    ) -> Result<Option<CommandLog>>;
    /// The newest downlink of the tenant last published on `topic` (a gateway's
    /// topic with a message id: which device behind the gateway it was for).
    async fn get_command_by_published_topic(
        &self,
        tenant: TenantId,
        topic: &str,
    ) -> Result<Option<CommandLog>>;
    /// A device's downlink log, newest first.
    async fn list_commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: Page,
    ) -> Result<Paged<CommandLog>>;
}

/// Shared handle to a metadata store.
pub type MetadataStoreRef = Arc<dyn MetadataStore>;

/// Aggregation functions over fixed intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Mean of numeric values.
    Avg,
    /// Smallest numeric value.
    Min,
    /// Largest numeric value.
    Max,
    /// Sum of numeric values.
    Sum,
    /// Number of samples of any type.
    Count,
}

impl std::str::FromStr for Aggregation {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "avg" => Aggregation::Avg,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            "sum" => Aggregation::Sum,
            "count" => Aggregation::Count,
            other => {
                return Err(crate::Error::invalid(
                    "agg",
                    format!("{other:?} is not one of avg, min, max, sum, count"),
                ));
            }
        })
    }
}

/// Where buckets of `interval` ms counted from `start` begin, expressed as the
/// boundary in `(-interval, 0]`: buckets then start at `phase + k * interval`.
/// SQL stores label a point `ts >= 0` as
/// `phase + (ts / interval) * interval + (interval if ts % interval >= interval + phase)`,
/// which never overflows 64-bit integers, where `start + ((ts - start) / interval) *
/// interval` does for a `start` far below zero.
///
/// ```
/// use tp_core::bucket_phase;
/// assert_eq!(bucket_phase(1_000, 300), -200); // 1000 = -200 + 4 * 300
/// assert_eq!(bucket_phase(600, 300), 0);
/// assert_eq!(bucket_phase(i64::MIN, i64::MAX), -1);
/// ```
pub fn bucket_phase(start: Timestamp, interval: i64) -> i64 {
    debug_assert!(interval > 0);
    match start.rem_euclid(interval.max(1)) {
        0 => 0,
        r => r - interval,
    }
}

/// Result order by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A history query over `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TsQuery {
    /// Device.
    pub device_id: DeviceId,
    /// Keys to return; empty means all keys.
    pub keys: Vec<String>,
    /// Inclusive start (ms).
    pub start: Timestamp,
    /// Exclusive end (ms).
    pub end: Timestamp,
    /// Aggregate into buckets `[start + k*interval, start + (k+1)*interval)`.
    pub aggregation: Option<(Aggregation, i64)>,
    /// At most this many rows per key.
    pub limit: Option<u64>,
    /// Time order within each key.
    pub order: Order,
}

/// Time-series storage of telemetry and events.
///
/// # Contract
/// - `write` is idempotent per `(device, key, ts)`: writing the same point twice keeps one.
/// - `latest` returns, per key, the point with the greatest `ts` ever written (and not deleted).
/// - `query` returns rows grouped by key (keys ascending), each key's rows in `order`,
///   at most `limit` per key. With an aggregation, a row is one non-empty bucket with
///   `ts` = bucket start; `avg/min/max/sum` use numeric values (booleans count as 0/1;
///   strings and JSON are ignored) and yield [`Value::Float`]; `count` counts every
///   sample and yields [`Value::Integer`]. Buckets with no usable values are omitted.
/// - `delete_range` removes history in `[start, end)` and keeps `latest` consistent
///   with what remains.
/// - Implementations must pass every case of `tp_core::testing::timeseries`.
#[async_trait]
pub trait TimeSeriesStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stable backend name.
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the store is usable.
    async fn healthcheck(&self) -> Result<()>;
    /// Writes a batch of points (any devices, any keys) and updates latest values.
    async fn write(&self, points: &[TelemetryPoint]) -> Result<()>;
    /// Latest value per key of a device, keys ascending; `keys` restricts the keys.
    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>>;
    /// History or aggregates.
    async fn query(&self, query: &TsQuery) -> Result<Vec<KeyValue>>;
    /// Deletes history in `[start, end)`; `keys` restricts the keys. Returns rows deleted.
    async fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<u64>;
    /// Stores device events.
    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()>;
    /// A device's events in `[start, end)` in `order`, at most `limit`.
    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> Result<Vec<DeviceEvent>>;
}

/// Shared handle to a time-series store.
pub type TimeSeriesStoreRef = Arc<dyn TimeSeriesStore>;
