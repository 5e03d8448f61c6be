//! The cluster backplane: how the nodes of a cluster tell each other what they
//! cannot do alone (deliver a downlink to a connection another node holds, close a
//! revoked device's connections, drop a cache key, reload a tenant's rules).
//!
//! [`Backplane`] is the contract; tp-storage's Redis pub/sub backplane implements it.
//! None of the events carries state (the command log, the caches' TTLs and the rule
//! engines' reload timers are the sources of truth), so a backplane may be
//! fire-and-forget: a lost event only delays what the event would have hastened.
//!
//! ```
//! use tp_core::cluster::ClusterEvent;
//! use tp_core::TenantId;
//!
//! let event = ClusterEvent::RulesChanged { tenant_id: TenantId::new() };
//! let wire = serde_json::to_value(&event)?;
//! assert_eq!(wire["type"], "rules_changed");
//! assert_eq!(serde_json::from_value::<ClusterEvent>(wire)?, event);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{DeviceId, Result, TenantId};

/// A message from one node to all others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A downlink was logged as pending for a device the publishing node cannot
    /// reach; the node holding `device_id`'s connection delivers the device's
    /// pending rows (for a sub-device, `device_id` is its top-level gateway).
    Downlink {
        /// The device holding the connection.
        device_id: DeviceId,
        /// The logged row's message id (for logs; delivery reads every pending row).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    /// A device was disabled or deleted, or its credentials changed: every node
    /// closes the device's connections.
    DeviceRevoked {
        /// The device.
        device_id: DeviceId,
    },
    /// A cache key was deleted; every node deletes it from its cache too.
    CacheInvalidated {
        /// The cache key (without the URL prefix).
        key: String,
    },
    /// A tenant's rules, scenes or notification channels changed.
    RulesChanged {
        /// The tenant.
        tenant_id: TenantId,
    },
}

/// A node's link to the other nodes of its cluster.
#[async_trait]
pub trait Backplane: std::fmt::Debug + Send + Sync + 'static {
    /// This node's id, unique in the cluster.
    fn node_id(&self) -> &str;

    /// Sends `event` to every other node (not back to this one).
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the backplane cannot be reached.
    async fn publish(&self, event: &ClusterEvent) -> Result<()>;

    /// The other nodes' events from now on; a receiver that falls too far behind
    /// gets `RecvError::Lagged` and misses the oldest.
    fn subscribe(&self) -> broadcast::Receiver<ClusterEvent>;

    /// Whether events from other nodes currently arrive (for readiness checks).
    fn is_subscribed(&self) -> bool;
}

/// Shared handle to a backplane.
pub type BackplaneRef = Arc<dyn Backplane>;

/// Which broker node serves which device, held as a renewed lease per node, so that
/// the devices of a node that died (killed, crashed, cut off) can be marked offline
/// by another node, exactly once.
///
/// # Contract
/// - A lease belongs to one node id (given when the implementation is built).
///   [`Self::renew`] keeps it alive for the lease time; a node that stops renewing
///   loses it when that time has passed.
/// - [`Self::record`] moves a device to this node (`online = true`) or lets go of
///   it (`online = false`, only if this node still owns it). A device owned by
///   another node moves; that node's later loss does not include it any more.
/// - [`Self::reap_lost`] hands each lost node's devices (those it still owned) to
///   exactly one caller across the cluster, and forgets them: two nodes calling it
///   at once never both get a device.
/// - [`Self::take_own`] hands back what a previous run under this node id owned
///   (it is a new process: none of those connections exist) and forgets it.
#[async_trait]
pub trait DeviceLeases: std::fmt::Debug + Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// How long a lease lasts without renewal: renew well within it (a third).
    fn lease(&self) -> std::time::Duration;

    /// Renews this node's lease; `false` when it had lapsed before this call
    /// (another node may have marked this node's devices offline meanwhile).
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the lease store cannot be reached.
    async fn renew(&self) -> Result<bool>;

    /// Records ownership changes of this node, in order (`true` = the device is
    /// online here now, `false` = it left this node).
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the lease store cannot be reached.
    async fn record(&self, changes: &[(DeviceId, bool)]) -> Result<()>;

    /// The devices of every node whose lease expired, each handed to one caller
    /// only: `(node id, devices it still owned)`.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the lease store cannot be reached.
    async fn reap_lost(&self) -> Result<Vec<(String, Vec<DeviceId>)>>;

    /// The devices a previous run of this node id still owned; forgets them.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the lease store cannot be reached.
    async fn take_own(&self) -> Result<Vec<DeviceId>>;
}

/// Shared handle to device leases.
pub type DeviceLeasesRef = Arc<dyn DeviceLeases>;
