//! `/api/v1/stats/*`: the tenant's trends on the home page, `device:read`.
//!
//! - `messages`: messages per minute over the last 24 hours, counted on ingest per
//!   tenant ([`crate::TenantTraffic`]: this node's ingest since it started).
//! - `online`: devices online at the end of each hour of the last 24, from the
//!   count now and the status history's transitions per hour.
//! - `alarms`: alarms raised and cleared per hour of the last 24.
//! - `top-devices`: the devices with the most messages in the last 24 hours.
//!
//! Each answers from counters or from a few indexed aggregate queries, so its cost
//! does not grow with the tenant's stored telemetry (benches/RESULTS.md has the
//! measurement on 1,000 devices with a day of data at 1 msg/s each).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::now_ms;
use tp_core::trends::{TrendStoreRef, online_series};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::Query;
use crate::TenantTraffic;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

const HOUR_MS: i64 = 3_600_000;
const HOURS: usize = 24;
/// Most devices `top-devices` lists.
const MAX_TOP: u32 = 100;

/// Messages per minute.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageTrend {
    /// Start of the first minute (ms); minute `k` starts at `start + k * 60000`.
    start: i64,
    /// Bucket length (ms): 60000.
    bucket_ms: i64,
    /// Messages per minute, oldest first: 1440 minutes, the last one still running.
    counts: Vec<u32>,
    /// Since when this node counts (ms): minutes before it read 0.
    counted_since: i64,
}

/// One hour of the online trend.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OnlinePoint {
    /// End of the hour (ms; the last point is now).
    ts: i64,
    /// Devices online then.
    online: u64,
}

/// Devices online over the last 24 hours.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OnlineTrend {
    /// 25 points: 24 hours ago, then the end of each hour, the last one now.
    items: Vec<OnlinePoint>,
}

/// One hour of the alarm trend.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmPoint {
    /// Start of the hour (ms).
    ts: i64,
    /// Alarms raised in it.
    raised: u64,
    /// Alarms cleared in it.
    cleared: u64,
}

/// Alarms raised and cleared per hour over the last 24 hours.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmTrend {
    /// 24 hours, oldest first, the last one still running.
    items: Vec<AlarmPoint>,
}

/// A device and its messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopDevice {
    /// Device id.
    device_id: Uuid,
    /// Its name (empty when it was deleted meanwhile).
    name: String,
    /// Messages in the last 24 hours.
    messages: u64,
}

/// The busiest devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopDevices {
    /// Most messages first.
    items: Vec<TopDevice>,
    /// Since when this node counts (ms).
    counted_since: i64,
}

/// How many devices to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TopQuery {
    /// 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

fn trends(state: &AppState) -> ApiResult<&TrendStoreRef> {
    state.trends.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "trends_unavailable",
            "trends are not enabled on this node",
        )
    })
}

fn traffic(state: &AppState) -> ApiResult<&Arc<TenantTraffic>> {
    state.traffic.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "traffic_unavailable",
            "this node does not count ingest (it runs no broker)",
        )
    })
}

/// The tenant's messages per minute over the last 24 hours.
#[utoipa::path(
    get,
    path = "/stats/messages",
    tag = "stats",
    responses(
        (status = 200, description = "Messages per minute", body = MessageTrend),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 503, description = "This node does not count ingest", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn message_trend(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<MessageTrend>> {
    caller.require(Permission::DeviceRead)?;
    let traffic = traffic(&state)?;
    let (start, counts) = traffic.per_minute(caller.tenant_id, now_ms());
    Ok(axum::Json(MessageTrend {
        start,
        bucket_ms: 60_000,
        counts,
        counted_since: traffic.started_at(),
    }))
}

/// The tenant's devices online over the last 24 hours, hour by hour.
#[utoipa::path(
    get,
    path = "/stats/online",
    tag = "stats",
    responses(
        (status = 200, description = "Devices online at the end of each hour", body = OnlineTrend),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 503, description = "Trends are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn online_trend(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<OnlineTrend>> {
    caller.require(Permission::DeviceRead)?;
    let store = trends(&state)?;
    let now = now_ms();
    let since = now - HOURS as i64 * HOUR_MS;
    let (count, changes) = tokio::try_join!(
        store.online_now(caller.tenant_id),
        store.online_changes(caller.tenant_id, since, HOUR_MS)
    )?;
    // Point 0 is `since`; point k (1..=24) the end of bucket k - 1.
    let ends = online_series(count, &changes, HOURS);
    let first = ends[0].saturating_add_signed(
        -changes
            .iter()
            .filter(|c| c.0 == 0)
            .map(|c| c.1)
            .sum::<i64>(),
    );
    let mut items = vec![OnlinePoint {
        ts: since,
        online: first,
    }];
    items.extend(ends.into_iter().enumerate().map(|(k, online)| OnlinePoint {
        ts: (since + (k as i64 + 1) * HOUR_MS).min(now),
        online,
    }));
    Ok(axum::Json(OnlineTrend { items }))
}

/// Alarms raised and cleared in each hour of the last 24.
#[utoipa::path(
    get,
    path = "/stats/alarms",
    tag = "stats",
    responses(
        (status = 200, description = "Alarms raised and cleared per hour", body = AlarmTrend),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 503, description = "Trends are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn alarm_trend(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<AlarmTrend>> {
    caller.require(Permission::DeviceRead)?;
    let now = now_ms();
    // Whole hours: the last bucket is the running hour.
    let since = (now.div_euclid(HOUR_MS) - HOURS as i64 + 1) * HOUR_MS;
    let buckets = trends(&state)?
        .alarm_buckets(caller.tenant_id, since, HOUR_MS)
        .await?;
    let mut items: Vec<AlarmPoint> = (0..HOURS as i64)
        .map(|k| AlarmPoint {
            ts: since + k * HOUR_MS,
            raised: 0,
            cleared: 0,
        })
        .collect();
    for b in buckets {
        if let Some(p) = usize::try_from(b.bucket)
            .ok()
            .and_then(|i| items.get_mut(i))
        {
            p.raised = b.raised;
            p.cleared = b.cleared;
        }
    }
    Ok(axum::Json(AlarmTrend { items }))
}

/// The tenant's devices with the most messages in the last 24 hours.
#[utoipa::path(
    get,
    path = "/stats/top-devices",
    tag = "stats",
    params(TopQuery),
    responses(
        (status = 200, description = "The busiest devices, most messages first", body = TopDevices),
        (status = 400, description = "`limit` out of range", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 503, description = "This node does not count ingest", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn top_devices(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<TopQuery>,
) -> ApiResult<axum::Json<TopDevices>> {
    caller.require(Permission::DeviceRead)?;
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_TOP).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 100"));
    }
    let traffic = traffic(&state)?;
    let top = traffic.top_devices(caller.tenant_id, now_ms(), limit as usize);
    let mut items = Vec::with_capacity(top.len());
    for (device, messages) in top {
        let name = state
            .metadata
            .get_device(caller.tenant_id, device)
            .await?
            .map(|d| d.name)
            .unwrap_or_default();
        items.push(TopDevice {
            device_id: device.0,
            name,
            messages,
        });
    }
    Ok(axum::Json(TopDevices {
        items,
        counted_since: traffic.started_at(),
    }))
}
