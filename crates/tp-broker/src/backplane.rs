//! The cluster side of the embedded broker: N broker nodes share nothing but Redis
//! and the databases (broker nodes share no connection state), so whatever one node does that
//! another must act on goes over a [`Backplane`] (tp-storage's Redis pub/sub one in
//! production):
//!
//! - [`ClusterTransport`] wraps a node's [`MqttTransport`](crate::MqttTransport) (or
//!   nothing, on an API-only node). A downlink the node cannot deliver itself stays
//!   a pending row in the command log, and [`DeviceTransport::queued`] publishes
//!   [`ClusterEvent::Downlink`] so the node holding the device's connection
//!   delivers it ([`EmbeddedBroker::deliver_queued`]). The event carries no payload:
//!   the log row is the source of truth, so a lost event only delays delivery to
//!   the device's next subscribe, and a delivered row is never delivered twice by
//!   two nodes racing (each pass marks rows `sent` under the session's lock).
//! - [`InvalidatingCache`] wraps the cache handed to the REST API: every key it
//!   deletes (a device's cached credentials after delete, disable or re-key) is
//!   deleted on every node again ([`ClusterEvent::CacheInvalidated`]), which also
//!   removes an entry another node re-cached from the old row in between.
//! - A revoked device (disabled, deleted, credentials changed) is disconnected on
//!   every node ([`ClusterEvent::DeviceRevoked`], `DeviceTransport::disconnect`).
//! - [`ClusterRules`] wraps the rule engine's control handle: a rule change made
//!   through one node's API reloads the tenant's rules on every node.
//! - [`spawn_listener`] is each node's receiving end for all three.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tp_core::cluster::{Backplane, BackplaneRef, ClusterEvent};
use tp_core::rules::{ActionOutcome, RuleEngineControl, RuleEngineControlRef};
use tp_core::{
    Cache, CacheRef, DeviceId, DeviceTransport, DeviceTransportRef, Downlink, Error, Result,
    SceneId, TenantId,
};

use crate::EmbeddedBroker;

/// Downlink in a cluster: this node's broker for its own devices, the backplane for
/// the others. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ClusterTransport {
    local: Option<DeviceTransportRef>,
    backplane: BackplaneRef,
}

impl ClusterTransport {
    /// `local` is this node's broker transport; `None` on a node without MQTT
    /// listeners (the API role), which hands every downlink to the backplane.
    pub fn new(local: Option<DeviceTransportRef>, backplane: BackplaneRef) -> Self {
        Self { local, backplane }
    }
}

#[async_trait]
impl DeviceTransport for ClusterTransport {
    fn name(&self) -> &'static str {
        "mqtt-cluster"
    }

    /// Whether the device has a session on *this* node (only then can `send`
    /// deliver it; other nodes are reached through [`Self::queued`]).
    async fn is_connected(&self, device: DeviceId) -> bool {
        match &self.local {
            Some(local) => local.is_connected(device).await,
            None => false,
        }
    }

    async fn send(&self, message: Downlink) -> Result<()> {
        match &self.local {
            Some(local) => local.send(message).await,
            None => Err(Error::not_found("connection", message.device_id)),
        }
    }

    /// Tells the node holding `device`'s connection to deliver its pending rows. A
    /// failed publish is logged, not returned: the row stays pending and goes out
    /// when the device next subscribes.
    async fn queued(&self, device: DeviceId, message_id: &str) {
        let event = ClusterEvent::Downlink {
            device_id: device,
            message_id: Some(message_id.to_owned()),
        };
        if let Err(e) = self.backplane.publish(&event).await {
            tracing::warn!(device_id = %device, %message_id, error = %e,
                "cannot announce queued downlink to the cluster; it goes out on the device's next subscribe");
        }
    }

    /// Closes the device's connections here and on every other node.
    async fn disconnect(&self, device: DeviceId) {
        if let Some(local) = &self.local {
            local.disconnect(device).await;
        }
        let event = ClusterEvent::DeviceRevoked { device_id: device };
        if let Err(e) = self.backplane.publish(&event).await {
            // Its credentials are already refused everywhere (cache invalidation);
            // only a connection open on another node stays until it drops.
            tracing::error!(device_id = %device, error = %e,
                "cannot announce a revoked device to the cluster");
        }
    }
}

/// A cache whose deletes are repeated on every node of the cluster. Give it to the
/// code that invalidates (the REST API), not to the broker: see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct InvalidatingCache {
    inner: CacheRef,
    backplane: BackplaneRef,
}

impl InvalidatingCache {
    /// Wraps `inner`.
    pub fn new(inner: CacheRef, backplane: BackplaneRef) -> Self {
        Self { inner, backplane }
    }
}

#[async_trait]
impl Cache for InvalidatingCache {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn healthcheck(&self) -> Result<()> {
        self.inner.healthcheck().await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.inner.set_nx(key, value, ttl).await
    }

    /// Deletes here, then on every other node. A failed broadcast is logged: the
    /// local delete (of a shared Redis key) already took effect, and other nodes'
    /// copies expire with their TTL.
    async fn delete(&self, key: &str) -> Result<bool> {
        let existed = self.inner.delete(key).await?;
        let event = ClusterEvent::CacheInvalidated {
            key: key.to_owned(),
        };
        if let Err(e) = self.backplane.publish(&event).await {
            tracing::warn!(error = %e, "cannot announce a cache invalidation to the cluster");
        }
        Ok(existed)
    }
}

/// The rule engine's control handle, telling every node about rule changes.
#[derive(Debug, Clone)]
pub struct ClusterRules {
    local: RuleEngineControlRef,
    backplane: BackplaneRef,
}

impl ClusterRules {
    /// Wraps this node's engine.
    pub fn new(local: RuleEngineControlRef, backplane: BackplaneRef) -> Self {
        Self { local, backplane }
    }
}

#[async_trait]
impl RuleEngineControl for ClusterRules {
    async fn rules_changed(&self, tenant: TenantId) {
        self.local.rules_changed(tenant).await;
        let event = ClusterEvent::RulesChanged { tenant_id: tenant };
        if let Err(e) = self.backplane.publish(&event).await {
            tracing::warn!(tenant_id = %tenant, error = %e,
                "cannot announce a rule change to the cluster; other nodes reload on their timer");
        }
    }

    /// Scenes run on the node that was asked (their downlink reaches devices on
    /// other nodes through the [`ClusterTransport`]).
    async fn run_scene(&self, tenant: TenantId, scene: SceneId) -> Result<Vec<ActionOutcome>> {
        self.local.run_scene(tenant, scene).await
    }
}

/// What a node does with the other nodes' events; each part is optional because
/// a role may lack it (an API node has no broker, a plain broker node no rule engine).
#[derive(Debug, Clone)]
pub struct ListenerParts {
    /// Delivers downlink for devices connected here.
    pub broker: Option<Arc<EmbeddedBroker>>,
    /// Where invalidated keys are deleted (the unwrapped cache, so a received
    /// invalidation is not broadcast again).
    pub cache: CacheRef,
    /// Reloads rules (this node's engine itself, not a [`ClusterRules`]).
    pub rules: Option<RuleEngineControlRef>,
}

/// Applies the other nodes' events until the backplane is dropped.
pub fn spawn_listener(backplane: &dyn Backplane, parts: ListenerParts) -> JoinHandle<()> {
    let mut events = backplane.subscribe();
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cluster listener fell behind; events dropped");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            apply(&parts, event).await;
        }
    })
}

async fn apply(parts: &ListenerParts, event: ClusterEvent) {
    match event {
        ClusterEvent::Downlink {
            device_id,
            message_id,
        } => {
            if let Some(broker) = &parts.broker
                && broker.deliver_queued(device_id)
            {
                tracing::debug!(%device_id, ?message_id, "delivering downlink queued on another node");
            }
        }
        ClusterEvent::DeviceRevoked { device_id } => {
            if let Some(broker) = &parts.broker {
                broker.disconnect_device(device_id);
            }
        }
        ClusterEvent::CacheInvalidated { key } => {
            if let Err(e) = parts.cache.delete(&key).await {
                tracing::warn!(error = %e, "cannot apply a cluster cache invalidation");
            }
        }
        ClusterEvent::RulesChanged { tenant_id } => {
            if let Some(rules) = &parts.rules {
                rules.rules_changed(tenant_id).await;
            }
        }
        other => tracing::debug!(event = ?other, "ignoring unknown cluster event"),
    }
}
