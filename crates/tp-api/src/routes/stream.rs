//! `GET /api/v1/devices/{id}/telemetry/stream`: live telemetry as Server-Sent Events.
//!
//! The broker hands every accepted message to an [`UplinkObserver`]; the platform puts
//! a [`ObserverFanout`] there so that both the rule engine and [`LiveTelemetry`] see
//! it. [`LiveTelemetry`] keeps one bounded `broadcast` channel per device that has a
//! listener, so ingest never waits for a browser: a slow client lags, is told how many
//! messages it skipped, and carries on with the newest ones.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast;
use tp_core::DeviceId;
use tp_core::rules::{RuleInput, RuleInputData, UplinkObserver, UplinkObserverRef};
use utoipa::ToSchema;

use super::devices::load_device;
use super::extract::DeviceIdPath;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Messages buffered per device for its slowest listener before that listener lags.
const CHANNEL_CAPACITY: usize = 256;
/// Comment lines keep idle streams open through proxies that cut silent connections.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Several observers behind one: the broker takes a single [`UplinkObserver`], and
/// both the rule engine and the live stream need every input.
#[derive(Debug, Clone, Default)]
pub struct ObserverFanout {
    observers: Vec<UplinkObserverRef>,
}

impl ObserverFanout {
    /// A fan-out to `observers`, called in order.
    pub fn new(observers: Vec<UplinkObserverRef>) -> Self {
        Self { observers }
    }
}

impl UplinkObserver for ObserverFanout {
    fn observe(&self, input: RuleInput) {
        // Every observer must not block (the trait's contract), so calling them in
        // turn keeps ingest as fast as the slowest queue push.
        if let Some((last, rest)) = self.observers.split_last() {
            for observer in rest {
                observer.observe(input.clone());
            }
            last.observe(input);
        }
    }
}

/// Telemetry of one message, as sent to stream listeners.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LiveSample {
    /// The device.
    device_id: uuid::Uuid,
    /// Server receive time (ms).
    received_at: i64,
    /// The values of the message (device time in `ts` when it sent one).
    items: Vec<LiveItem>,
}

/// One value of a [`LiveSample`].
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LiveItem {
    /// Key.
    key: String,
    /// Time in ms.
    ts: i64,
    /// Value: number, boolean, string or JSON.
    value: serde_json::Value,
}

/// Sent when a listener fell behind and messages were dropped for it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveLagged {
    /// How many messages this listener missed.
    skipped: u64,
}

/// Live telemetry per device, fed by the ingest path (see the module docs).
///
/// Only devices with at least one listener have a channel, so a platform with no open
/// console costs one map lookup per message.
#[derive(Debug, Default)]
pub struct LiveTelemetry {
    channels: RwLock<HashMap<DeviceId, broadcast::Sender<Arc<LiveSample>>>>,
}

impl LiveTelemetry {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens to `device`'s telemetry from now on. Channels nobody listens to any
    /// more are dropped here, so the map only holds devices being watched.
    pub(crate) fn subscribe(&self, device: DeviceId) -> broadcast::Receiver<Arc<LiveSample>> {
        let mut channels = self
            .channels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(device)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Number of devices with a channel (tests).
    pub fn watched_devices(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

impl UplinkObserver for LiveTelemetry {
    fn observe(&self, input: RuleInput) {
        let RuleInputData::Telemetry { values } = &input.data else {
            return;
        };
        let channels = self
            .channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = channels.get(&input.device_id) else {
            return;
        };
        if tx.receiver_count() == 0 {
            return;
        }
        let sample = LiveSample {
            device_id: input.device_id.0,
            received_at: input.ts,
            items: values
                .iter()
                .map(|kv| LiveItem {
                    key: kv.key.clone(),
                    ts: kv.ts,
                    value: kv.value.to_json(),
                })
                .collect(),
        };
        // A send error only means the last listener just left.
        let _ = tx.send(Arc::new(sample));
    }
}

/// The caller of the stream route: like [`Caller`], and also from an
/// `access_token` query parameter when no header is sent, because browsers'
/// `EventSource` cannot set headers. Only this route reads the parameter.
pub(crate) struct StreamCaller(pub(crate) Caller);

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let has_header = parts.headers.contains_key(AUTHORIZATION)
            || parts.headers.contains_key(crate::auth::API_KEY_HEADER);
        if !has_header && let Some(token) = query_token(parts.uri.query()) {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ApiError::unauthenticated("malformed access_token"))?;
            parts.headers.insert(AUTHORIZATION, value);
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(StreamCaller)
    }
}

/// The `access_token` query parameter, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        access_token: Option<String>,
    }
    let q: TokenQuery = serde_urlencoded_query(query?)?;
    q.access_token.filter(|t| !t.is_empty())
}

/// Parses a query string with axum's own query deserializer (no extra dependency).
fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(query: &str) -> Option<T> {
    let uri: axum::http::Uri = format!("/?{query}").parse().ok()?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .ok()
        .map(|q| q.0)
}

/// Live telemetry of a device as Server-Sent Events.
///
/// Each message the device publishes from now on arrives as an event `telemetry`
/// whose data is a `LiveSample` (JSON). A listener that falls behind gets an event
/// `lagged` (`LiveLagged`) and continues with newer messages; ingest never waits for
/// it. Idle streams carry a comment every 15 s.
///
/// The stream ends after one access-token lifetime (`auth.token_ttl_secs`), since the
/// credential is checked when it starts; reconnect with a current token.
///
/// Authenticate with `Authorization: Bearer` or `X-API-Key` like every route. For
/// browsers' `EventSource`, which cannot set headers, this route (and only this one)
/// also accepts the access token as `?access_token=`; prefer the header where you can,
/// since URLs end up in proxy logs and browser history.
#[utoipa::path(
    get,
    path = "/devices/{id}/telemetry/stream",
    tag = "telemetry",
    params(
        ("id" = uuid::Uuid, Path, description = "Device id"),
        ("access_token" = Option<String>, Query, description = "Access token, for clients that cannot send the Authorization header (EventSource)"),
    ),
    responses(
        (status = 200, description = "An event stream: `event: telemetry` with a LiveSample as data; `event: lagged` with `{\"skipped\": n}` when this listener missed n messages", content_type = "text/event-stream", body = LiveSample),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
        (status = 429, description = "The tenant holds limits.max_streams streams open already", body = ErrorBody),
        (status = 503, description = "This node has no live telemetry", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn telemetry_stream(
    StreamCaller(caller): StreamCaller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Permission::DeviceRead)?;
    // 404 for a device of another tenant: the hub is keyed by device only.
    load_device(&state, &caller, id).await?;
    let Some(live) = state.live_telemetry().cloned() else {
        return Err(ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "live telemetry is not available on this node",
        ));
    };
    let slot = state
        .streams
        .open(caller.tenant_id, state.limits.max_streams)?;
    let rx = live.subscribe(id);
    // The credential was checked once, at the start: the stream ends after one access
    // token lifetime, so a revoked session or deleted key stops receiving data by then
    // at the latest. Clients reconnect with their current token.
    let until = tokio::time::Instant::now() + Duration::from_secs(state.auth.ttl_secs);
    let stream = live_events(vec![rx], slot, until);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The events of live samples from `receivers`, merged, until `until`: `telemetry`
/// per sample, `lagged` when a receiver fell behind. `slot` (the tenant's stream
/// count) lives as long as the stream, so dropping the stream (end or client gone)
/// gives it back. With no receiver the stream stays open, silent, until `until`; when
/// the hub closes every receiver (node shutting down) it ends.
pub(crate) fn live_events<S: Send + 'static>(
    receivers: Vec<broadcast::Receiver<Arc<LiveSample>>>,
    slot: S,
    until: tokio::time::Instant,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    use futures_util::StreamExt;
    let watching = !receivers.is_empty();
    let merged = futures_util::stream::select_all(receivers.into_iter().map(|rx| {
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Err(broadcast::error::RecvError::Closed) => None,
                received => Some((received, rx)),
            }
        }))
    }));
    futures_util::stream::unfold((merged, slot), move |(mut merged, slot)| async move {
        let received = tokio::select! {
            r = merged.next() => r,
            () = tokio::time::sleep_until(until) => return None,
        };
        let event = match received {
            Some(Ok(sample)) => Event::default()
                .event("telemetry")
                .json_data(&*sample)
                .unwrap_or_else(|_| Event::default().comment("unserializable sample")),
            Some(Err(broadcast::error::RecvError::Lagged(skipped))) => Event::default()
                .event("lagged")
                .json_data(LiveLagged { skipped })
                .unwrap_or_else(|_| Event::default().comment("lagged")),
            Some(Err(broadcast::error::RecvError::Closed)) => return None,
            // The hub is gone (node shutting down): end the stream.
            None if watching => return None,
            None => {
                tokio::time::sleep_until(until).await;
                return None;
            }
        };
        Some((Ok(event), (merged, slot)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_core::{KeyValue, TenantId, Value};

    fn telemetry(device: DeviceId, v: f64) -> RuleInput {
        RuleInput {
            device_id: device,
            tenant_id: TenantId(uuid::Uuid::new_v4()),
            profile_id: None,
            ts: 1,
            data: RuleInputData::Telemetry {
                values: vec![KeyValue {
                    key: "t".into(),
                    ts: 1,
                    value: Value::Float(v),
                }],
            },
        }
    }

    #[test]
    fn query_token_is_decoded_and_optional() {
        assert_eq!(
            query_token(Some("access_token=a%2Bb")).as_deref(),
            Some("a+b")
        );
        assert_eq!(query_token(Some("x=1")), None);
        assert_eq!(query_token(Some("access_token=")), None);
        assert_eq!(query_token(None), None);
    }

    #[tokio::test]
    async fn listeners_get_their_device_only_and_lag_instead_of_blocking() {
        let hub = Arc::new(LiveTelemetry::new());
        let fanout = ObserverFanout::new(vec![hub.clone()]);
        let a = DeviceId(uuid::Uuid::new_v4());
        let b = DeviceId(uuid::Uuid::new_v4());
        // Nobody listens: nothing is kept.
        fanout.observe(telemetry(a, 0.0));
        assert_eq!(hub.watched_devices(), 0);

        let mut rx = hub.subscribe(a);
        fanout.observe(telemetry(b, 1.0));
        fanout.observe(telemetry(a, 2.0));
        let got = rx.recv().await.unwrap();
        assert_eq!(got.items[0].value, serde_json::json!(2.0));

        for i in 0..(CHANNEL_CAPACITY + 10) {
            fanout.observe(telemetry(a, i as f64));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        drop(rx);
        let _other = hub.subscribe(b);
        assert_eq!(hub.watched_devices(), 1, "a's channel was dropped");
    }
}
