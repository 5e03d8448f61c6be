//! Per-tenant limits: how many devices, rules and notification channels a tenant may
//! create and how many live streams it may hold open, so one tenant's growth or
//! load cannot take a node's capacity from the others.
//!
//! Counts are checked before an insert: two creations racing at the limit may both
//! pass, which overshoots by the number of concurrent requests, never more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::TenantId;

use crate::error::ApiError;

/// Per-tenant limits (`[limits]`); 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Devices per tenant (REST creation and self-registration).
    pub max_devices: u64,
    /// Rules per tenant.
    pub max_rules: u64,
    /// Notification channels per tenant.
    pub max_channels: u64,
    /// Live telemetry streams a tenant may hold open on one node at once.
    pub max_streams: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_devices: 100_000,
            max_rules: 1_000,
            max_channels: 100,
            max_streams: 50,
        }
    }
}

/// Refuses with 403 `quota_exceeded` when `current` already reaches `limit`.
pub(crate) fn check(what: &str, setting: &str, current: u64, limit: u64) -> Result<(), ApiError> {
    if limit != 0 && current >= limit {
        return Err(ApiError::http(
            StatusCode::FORBIDDEN,
            "quota_exceeded",
            format!("the tenant has reached its limit of {limit} {what} (limits.{setting})"),
        ));
    }
    Ok(())
}

/// Open live streams per tenant on this node.
#[derive(Debug, Default)]
pub(crate) struct StreamCounts(Mutex<HashMap<TenantId, usize>>);

/// One open stream; counted out when dropped (the stream ended or the client left).
#[derive(Debug)]
pub(crate) struct StreamSlot {
    counts: Arc<StreamCounts>,
    tenant: TenantId,
}

impl StreamCounts {
    /// Counts a stream in, or refuses with 429 when the tenant holds `limit` already.
    pub(crate) fn open(
        self: &Arc<Self>,
        tenant: TenantId,
        limit: usize,
    ) -> Result<StreamSlot, ApiError> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(tenant).or_default();
        if limit != 0 && *open >= limit {
            return Err(ApiError::http(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "the tenant already holds {limit} live streams open (limits.max_streams); \
                     close one first"
                ),
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            counts: self.clone(),
            tenant,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}
