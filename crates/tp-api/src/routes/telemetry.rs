//! `/api/v1/devices/{id}/{telemetry,attributes,events}`: device data.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::devices::load_device;
use super::extract::{DeviceIdPath, Query};
use super::support::audit;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
use tp_core::{Aggregation, KeyValue, Order, TsQuery, now_ms};

/// Most rows (per key) one history query returns.
pub(crate) const MAX_LIMIT: u64 = 100_000;
/// Default rows per key of a history query.
pub(crate) const DEFAULT_LIMIT: u64 = 10_000;
/// Default number of events returned.
pub(crate) const DEFAULT_EVENT_LIMIT: u64 = 100;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A keyed value at a time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyValueItem {
    /// Key.
    key: String,
    /// Time in ms (for aggregates: the bucket start).
    ts: i64,
    /// Value: number, boolean, string or JSON.
    value: serde_json::Value,
}

/// Keyed values.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyValueList {
    /// Rows, grouped by key (keys ascending).
    items: Vec<KeyValueItem>,
}

impl KeyValueList {
    fn from_rows(rows: Vec<KeyValue>) -> Self {
        Self {
            items: rows
                .into_iter()
                .map(|kv| KeyValueItem {
                    value: kv.value.to_json(),
                    key: kv.key,
                    ts: kv.ts,
                })
                .collect(),
        }
    }
}

/// An event reported by a device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventItem {
    /// Receive time (ms).
    ts: i64,
    /// Message id from the topic.
    message_id: String,
    /// Event identifier.
    method: String,
    /// Event parameters.
    params: serde_json::Value,
}

/// Device events.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventList {
    /// Events in the requested order.
    items: Vec<EventItem>,
}

/// Rows deleted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedResponse {
    /// Number of history rows removed.
    deleted: u64,
}

/// Key selection.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeysQuery {
    /// Comma-separated keys; absent or empty means all keys.
    keys: Option<String>,
}

/// History query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// Comma-separated keys; absent or empty means all keys.
    keys: Option<String>,
    /// Inclusive start (ms since the epoch).
    start: i64,
    /// Exclusive end (ms since the epoch); an `end` not after `start` is an empty range.
    end: i64,
    /// Aggregate each key into buckets of `interval` ms counted from `start`; only
    /// buckets holding data are returned. Without `interval`: one bucket over the
    /// whole range.
    #[param(value_type = Option<super::names::AggregationName>, inline)]
    agg: Option<String>,
    /// Bucket length in ms, at least 1. Without `agg`: averages.
    #[param(minimum = 1)]
    interval: Option<i64>,
    /// Rows in the whole response, 1 to 100000 (default 10000), filled key by key
    /// in ascending key order.
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<u64>,
    /// `asc` (default) or `desc`.
    #[param(value_type = Option<super::names::OrderName>, inline)]
    order: Option<String>,
}

/// Time range of a deletion.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// Comma-separated keys; absent or empty means all keys.
    keys: Option<String>,
    /// Inclusive start (ms since the epoch).
    start: i64,
    /// Exclusive end (ms since the epoch); an `end` not after `start` is an empty range.
    end: i64,
}

/// Event query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Inclusive start in ms (default: 24 hours before `end`).
    start: Option<i64>,
    /// Exclusive end in ms (default: now).
    end: Option<i64>,
    /// At most this many events, 1 to 100000 (default 100).
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<u64>,
    /// `desc` (default) or `asc`.
    #[param(value_type = Option<super::names::OrderName>, inline)]
    order: Option<String>,
}

/// Splits `a,b` into keys; `None` when no key is given.
fn parse_keys(keys: Option<&str>) -> ApiResult<Option<Vec<String>>> {
    let Some(raw) = keys else { return Ok(None) };
    let keys: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    // `keys` is one free string in the document, so what is wrong inside it is a 422.
    if keys.iter().any(|k| k.chars().count() > 255) {
        return Err(ApiError::unprocessable(
            "keys",
            "a key is longer than 255 characters",
        ));
    }
    if keys.len() > 1000 {
        return Err(ApiError::unprocessable("keys", "at most 1000 keys"));
    }
    Ok((!keys.is_empty()).then_some(keys))
}

/// Whether `[start, end)` holds no time at all (`end <= start`): such a range is
/// answered as empty (nothing read, nothing deleted), like any range without data.
fn is_empty_range(start: i64, end: i64) -> bool {
    end <= start
}

fn parse_order(order: Option<&str>, default: Order) -> ApiResult<Order> {
    match order {
        None => Ok(default),
        Some("asc") => Ok(Order::Asc),
        Some("desc") => Ok(Order::Desc),
        Some(other) => Err(ApiError::invalid(
            "order",
            format!("{other:?} is not asc or desc"),
        )),
    }
}

fn parse_limit(limit: Option<u64>, default: u64) -> ApiResult<u64> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

/// Latest value of each key.
#[utoipa::path(
    get,
    path = "/devices/{id}/telemetry/latest",
    tag = "telemetry",
    params(("id" = uuid::Uuid, Path, description = "Device id"), KeysQuery),
    responses(
        (status = 200, description = "Latest value per key, keys ascending", body = KeyValueList),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn latest_telemetry(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<KeysQuery>,
) -> ApiResult<axum::Json<KeyValueList>> {
    caller.require(Permission::DeviceRead)?;
    let keys = parse_keys(q.keys.as_deref())?;
    load_device(&state, &caller, id).await?;
    let rows = state.timeseries.latest(id, keys.as_deref()).await?;
    Ok(axum::Json(KeyValueList::from_rows(rows)))
}

/// Telemetry history, raw or aggregated, over `[start, end)`.
#[utoipa::path(
    get,
    path = "/devices/{id}/telemetry",
    tag = "telemetry",
    params(("id" = uuid::Uuid, Path, description = "Device id"), HistoryQuery),
    responses(
        (status = 200, description = "Rows grouped by key (keys ascending)", body = KeyValueList),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn telemetry_history(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<axum::Json<KeyValueList>> {
    caller.require(Permission::DeviceRead)?;
    let keys = parse_keys(q.keys.as_deref())?.unwrap_or_default();
    let aggregation = match (q.agg.as_deref(), q.interval) {
        (None, None) => None,
        (agg, interval) => {
            let agg: Aggregation = agg.unwrap_or("avg").parse()?;
            // One bucket over the whole range when no length is given (an empty
            // range answers no rows below, whatever the bucket).
            let interval = interval.unwrap_or_else(|| q.end.saturating_sub(q.start).max(1));
            if interval <= 0 {
                return Err(ApiError::invalid("interval", "must be greater than 0"));
            }
            Some((agg, interval))
        }
    };
    let limit = parse_limit(q.limit, DEFAULT_LIMIT)?;
    let order = parse_order(q.order.as_deref(), Order::Asc)?;
    load_device(&state, &caller, id).await?;
    if is_empty_range(q.start, q.end) {
        return Ok(axum::Json(KeyValueList::from_rows(Vec::new())));
    }
    // `limit` bounds the whole response, so the store is asked key by key with what
    // is left: one request can no longer read keys x limit rows.
    let mut keys = if keys.is_empty() {
        let latest = state.timeseries.latest(id, None).await?;
        latest.into_iter().map(|kv| kv.key).collect()
    } else {
        keys
    };
    keys.sort();
    keys.dedup();
    let mut rows = Vec::new();
    let mut left = limit;
    for key in keys {
        if left == 0 {
            break;
        }
        let query = TsQuery {
            device_id: id,
            keys: vec![key],
            start: q.start,
            end: q.end,
            aggregation,
            limit: Some(left),
            order,
        };
        let found = state.timeseries.query(&query).await?;
        left = left.saturating_sub(found.len() as u64);
        rows.extend(found);
    }
    Ok(axum::Json(KeyValueList::from_rows(rows)))
}

/// Deletes telemetry history in `[start, end)`.
#[utoipa::path(
    delete,
    path = "/devices/{id}/telemetry",
    tag = "telemetry",
    params(("id" = uuid::Uuid, Path, description = "Device id"), DeleteQuery),
    responses(
        (status = 200, description = "Rows deleted", body = DeletedResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn delete_telemetry(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<axum::Json<DeletedResponse>> {
    caller.require(Permission::DeviceWrite)?;
    let keys = parse_keys(q.keys.as_deref())?;
    load_device(&state, &caller, id).await?;
    let deleted = if is_empty_range(q.start, q.end) {
        0
    } else {
        state
            .timeseries
            .delete_range(id, keys.as_deref(), q.start, q.end)
            .await?
    };
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "telemetry.delete",
        "device",
        id,
        serde_json::json!({"keys": keys, "start": q.start, "end": q.end, "deleted": deleted}),
    )
    .await;
    Ok(axum::Json(DeletedResponse { deleted }))
}

/// The device's attributes, keys ascending.
#[utoipa::path(
    get,
    path = "/devices/{id}/attributes",
    tag = "telemetry",
    params(("id" = uuid::Uuid, Path, description = "Device id"), KeysQuery),
    responses(
        (status = 200, description = "Attributes, keys ascending", body = KeyValueList),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn attributes(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<KeysQuery>,
) -> ApiResult<axum::Json<KeyValueList>> {
    caller.require(Permission::DeviceRead)?;
    let keys = parse_keys(q.keys.as_deref())?;
    load_device(&state, &caller, id).await?;
    let rows = state.metadata.get_attributes(id, keys.as_deref()).await?;
    Ok(axum::Json(KeyValueList::from_rows(rows)))
}

/// Events reported by the device over `[start, end)`.
#[utoipa::path(
    get,
    path = "/devices/{id}/events",
    tag = "telemetry",
    params(("id" = uuid::Uuid, Path, description = "Device id"), EventsQuery),
    responses(
        (status = 200, description = "Events", body = EventList),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn events(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<EventsQuery>,
) -> ApiResult<axum::Json<EventList>> {
    caller.require(Permission::DeviceRead)?;
    // `end` is exclusive: the default includes events received this millisecond.
    let end = q.end.unwrap_or_else(|| now_ms().saturating_add(1));
    let start = q.start.unwrap_or_else(|| end.saturating_sub(DAY_MS));
    let limit = parse_limit(q.limit, DEFAULT_EVENT_LIMIT)?;
    let order = parse_order(q.order.as_deref(), Order::Desc)?;
    load_device(&state, &caller, id).await?;
    let rows = if is_empty_range(start, end) {
        Vec::new()
    } else {
        state
            .timeseries
            .query_events(id, start, end, limit, order)
            .await?
    };
    Ok(axum::Json(EventList {
        items: rows
            .into_iter()
            .map(|e| EventItem {
                ts: e.ts,
                message_id: e.message_id,
                method: e.method,
                params: e.params,
            })
            .collect(),
    }))
}
