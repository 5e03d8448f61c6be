//! `/api/v1/notification-channels` (rule:read to read, rule:write to change) and the
//! notification history `/api/v1/notifications` (rule:read).
//!
//! A webhook's signing secret is write-only: responses only say that one is set, and
//! an update replaces it only when the request carries a new one.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::now_ms;
use tp_core::rules::{ChannelId, ChannelKind, NotificationChannel, NotificationRecord};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::rules::{rule_store, rules_changed};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Shortest webhook secret accepted.
const MIN_SECRET_CHARS: usize = 16;
/// Most email recipients of one channel.
const MAX_RECIPIENTS: usize = 50;

/// A notification channel (never the webhook secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelView {
    /// Channel id.
    id: Uuid,
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Disabled channels record a skipped notification instead of sending.
    enabled: bool,
    /// `webhook` or `email`.
    #[serde(rename = "type")]
    #[schema(example = "webhook")]
    kind: String,
    /// Webhook receiver URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Whether a webhook signing secret is set (it is never returned).
    #[serde(skip_serializing_if = "Option::is_none")]
    has_secret: Option<bool>,
    /// Email recipients.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Vec<String>>,
    /// Creation time (ms).
    created_at: i64,
}

impl From<NotificationChannel> for ChannelView {
    fn from(c: NotificationChannel) -> Self {
        let (kind, url, has_secret, to) = match c.kind {
            ChannelKind::Webhook { url, secret } => {
                ("webhook", Some(url), Some(!secret.is_empty()), None)
            }
            ChannelKind::Email { to } => ("email", None, None, Some(to)),
        };
        Self {
            id: c.id.0,
            name: c.name,
            enabled: c.enabled,
            kind: kind.to_owned(),
            url,
            has_secret,
            to,
            created_at: c.created_at,
        }
    }
}

/// A page of channels.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelList {
    /// The page, by name.
    items: Vec<ChannelView>,
    /// All channels of the tenant.
    total: u64,
}

/// A new channel: a webhook (`url`, `secret`) or email (`to`), told apart by `type`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum CreateChannelRequest {
    /// An HTTP POST of a signed JSON body.
    Webhook {
        /// Name, unique in the tenant.
        #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
        name: String,
        /// Sends (default true).
        #[serde(default)]
        enabled: Option<bool>,
        /// http(s) receiver URL with a host (an unusable URL is a 422).
        #[schema(example = "https://hooks.example.com/tp", pattern = "^https?://")]
        url: String,
        /// HMAC-SHA256 signing secret, 16 to 1024 characters. Write-only.
        #[schema(min_length = 16, max_length = 1024)]
        secret: String,
    },
    /// Email through the platform's SMTP server.
    Email {
        /// Name, unique in the tenant.
        #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
        name: String,
        /// Sends (default true).
        #[serde(default)]
        enabled: Option<bool>,
        /// Recipients, 1 to 50 addresses.
        #[schema(schema_with = recipients)]
        to: Vec<String>,
    },
}

/// What the server accepts as an address: no white space or control characters
/// (Rust's `char::is_whitespace`/`is_control`, spelled out since the document's regex
/// dialect differs), one `@` with a non-empty part before it and a `.` after it.
const EMAIL_PATTERN: &str = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]+@[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*\\.[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*$";

/// Longest address, in characters.
const MAX_EMAIL_CHARS: usize = 254;

/// An email channel's recipients: 1 to [`MAX_RECIPIENTS`] addresses.
fn recipients() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(3))
                .max_length(Some(MAX_EMAIL_CHARS))
                .pattern(Some(EMAIL_PATTERN)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_RECIPIENTS))
        .examples([serde_json::json!(["ops@example.com"])])
        .build()
}

/// Changes to a channel; absent fields stay (the type cannot change). A webhook's
/// secret is replaced only when `secret` is sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateChannelRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    enabled: Option<bool>,
    /// Webhook: new URL.
    #[serde(default)]
    #[schema(pattern = "^https?://")]
    url: Option<String>,
    /// Webhook: new signing secret, 16 to 1024 characters. Write-only.
    #[serde(default)]
    #[schema(min_length = 16, max_length = 1024)]
    secret: Option<String>,
    /// Email: new recipients, 1 to 50 addresses.
    #[serde(default)]
    #[schema(schema_with = recipients)]
    to: Option<Vec<String>>,
}

/// One notification and its delivery outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotificationView {
    /// Notification id.
    id: Uuid,
    /// The channel.
    channel_id: Uuid,
    /// The alarm it is about.
    alarm_id: Option<Uuid>,
    /// The rule that caused it.
    rule_id: Option<Uuid>,
    /// Subject / title.
    subject: String,
    /// Body text.
    body: String,
    /// `pending`, `sent`, `failed` or `skipped`.
    #[schema(example = "sent")]
    status: String,
    /// Delivery attempts made.
    attempts: u32,
    /// HTTP status, SMTP reply or the last error.
    detail: Option<String>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<NotificationRecord> for NotificationView {
    fn from(n: NotificationRecord) -> Self {
        Self {
            id: n.id.0,
            channel_id: n.channel_id.0,
            alarm_id: n.alarm_id.map(|a| a.0),
            rule_id: n.rule_id.map(|r| r.0),
            subject: n.subject,
            body: n.body,
            status: serde_json::to_value(n.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            attempts: n.attempts,
            detail: n.detail,
            created_at: n.created_at,
            updated_at: n.updated_at,
        }
    }
}

/// A page of the notification history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotificationList {
    /// The page, newest first.
    items: Vec<NotificationView>,
    /// All notifications of the tenant.
    total: u64,
}

fn valid_url(url: &str) -> ApiResult<String> {
    let url = url.trim();
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(url.to_owned()),
        _ => Err(ApiError::unprocessable(
            "url",
            "must be an http:// or https:// URL with a host",
        )),
    }
}

fn valid_secret(secret: &str) -> ApiResult<String> {
    if !(MIN_SECRET_CHARS..=1024).contains(&secret.chars().count()) {
        return Err(ApiError::invalid(
            "secret",
            format!("must be {MIN_SECRET_CHARS} to 1024 characters"),
        ));
    }
    Ok(secret.to_owned())
}

fn valid_recipients(to: &[String]) -> ApiResult<Vec<String>> {
    if to.is_empty() || to.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid(
            "to",
            format!("needs 1 to {MAX_RECIPIENTS} recipients"),
        ));
    }
    to.iter()
        .enumerate()
        .map(|(i, addr)| {
            let addr = addr.trim();
            let ok = addr.chars().count() <= MAX_EMAIL_CHARS
                && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
                && addr.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.contains('@')
                });
            if ok {
                Ok(addr.to_owned())
            } else {
                Err(ApiError::unprocessable(
                    format!("to[{i}]"),
                    "is not an email address",
                ))
            }
        })
        .collect()
}

/// A field of the other channel type in an update: the stored type decides, so 422.
fn wrong_type(field: &str, kind: &str) -> ApiError {
    ApiError::unprocessable(field, format!("does not apply to a {kind} channel"))
}

async fn load_channel(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<NotificationChannel> {
    rule_store(state)?
        .get_channel(caller.tenant_id, ChannelId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("channel", id).into())
}

/// Creates a notification channel.
#[utoipa::path(
    post,
    path = "/notification-channels",
    tag = "notifications",
    request_body = CreateChannelRequest,
    responses(
        (status = 201, description = "Created (without the secret)", body = ChannelView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn create_channel(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateChannelRequest>,
) -> ApiResult<(StatusCode, axum::Json<ChannelView>)> {
    caller.require(Permission::RuleWrite)?;
    let store = rule_store(&state)?;
    let channels = store
        .list_channels(
            caller.tenant_id,
            tp_core::Page {
                limit: 1,
                offset: 0,
            },
        )
        .await?
        .total;
    crate::quota::check(
        "notification channels",
        "max_channels",
        channels,
        state.limits.max_channels,
    )?;
    let (name, enabled, kind) = match req {
        CreateChannelRequest::Webhook {
            name,
            enabled,
            url,
            secret,
        } => (
            name,
            enabled,
            ChannelKind::Webhook {
                url: valid_url(&url)?,
                secret: valid_secret(&secret)?,
            },
        ),
        CreateChannelRequest::Email { name, enabled, to } => (
            name,
            enabled,
            ChannelKind::Email {
                to: valid_recipients(&to)?,
            },
        ),
    };
    let name = valid_name("name", &name)?;
    let channel = NotificationChannel {
        id: ChannelId::new(),
        tenant_id: caller.tenant_id,
        name,
        enabled: enabled.unwrap_or(true),
        kind,
        created_at: now_ms(),
    };
    store.create_channel(&channel).await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "channel.create",
        "channel",
        channel.id,
        serde_json::json!({"name": channel.name, "type": match channel.kind {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Email { .. } => "email",
        }}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(channel.into())))
}

/// Lists the tenant's notification channels by name.
#[utoipa::path(
    get,
    path = "/notification-channels",
    tag = "notifications",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of channels", body = ChannelList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn list_channels(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<ChannelList>> {
    caller.require(Permission::RuleRead)?;
    let paged = rule_store(&state)?
        .list_channels(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(ChannelList {
        items: paged.items.into_iter().map(ChannelView::from).collect(),
        total: paged.total,
    }))
}

/// One notification channel.
#[utoipa::path(
    get,
    path = "/notification-channels/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "Channel id")),
    responses(
        (status = 200, description = "The channel (without the secret)", body = ChannelView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 404, description = "No such channel in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn get_channel(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<ChannelView>> {
    caller.require(Permission::RuleRead)?;
    Ok(axum::Json(load_channel(&state, &caller, id).await?.into()))
}

/// Changes a notification channel (absent fields stay; the secret only when sent).
#[utoipa::path(
    put,
    path = "/notification-channels/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "Channel id")),
    request_body = UpdateChannelRequest,
    responses(
        (status = 200, description = "The updated channel (without the secret)", body = ChannelView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such channel in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn update_channel(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateChannelRequest>,
) -> ApiResult<axum::Json<ChannelView>> {
    caller.require(Permission::RuleWrite)?;
    let mut channel = load_channel(&state, &caller, id).await?;
    if let Some(n) = req.name {
        channel.name = valid_name("name", &n)?;
    }
    if let Some(e) = req.enabled {
        channel.enabled = e;
    }
    let mut secret_rotated = false;
    match &mut channel.kind {
        ChannelKind::Webhook { url, secret } => {
            if req.to.is_some() {
                return Err(wrong_type("to", "webhook"));
            }
            if let Some(u) = req.url {
                *url = valid_url(&u)?;
            }
            if let Some(s) = req.secret {
                *secret = valid_secret(&s)?;
                secret_rotated = true;
            }
        }
        ChannelKind::Email { to } => {
            if req.url.is_some() {
                return Err(wrong_type("url", "email"));
            }
            if req.secret.is_some() {
                return Err(wrong_type("secret", "email"));
            }
            if let Some(t) = req.to {
                *to = valid_recipients(&t)?;
            }
        }
    }
    rule_store(&state)?.update_channel(&channel).await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "channel.update",
        "channel",
        channel.id,
        serde_json::json!({
            "name": channel.name,
            "enabled": channel.enabled,
            "secret_rotated": secret_rotated,
        }),
    )
    .await;
    Ok(axum::Json(channel.into()))
}

/// Deletes a notification channel (its notification history stays).
#[utoipa::path(
    delete,
    path = "/notification-channels/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "Channel id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such channel in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn delete_channel(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::RuleWrite)?;
    let channel = load_channel(&state, &caller, id).await?;
    rule_store(&state)?
        .delete_channel(caller.tenant_id, channel.id)
        .await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "channel.delete",
        "channel",
        channel.id,
        serde_json::json!({"name": channel.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's notification history, newest first.
#[utoipa::path(
    get,
    path = "/notifications",
    tag = "notifications",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the history", body = NotificationList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn list_notifications(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<NotificationList>> {
    caller.require(Permission::RuleRead)?;
    let paged = rule_store(&state)?
        .list_notifications(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(NotificationList {
        items: paged
            .items
            .into_iter()
            .map(NotificationView::from)
            .collect(),
        total: paged.total,
    }))
}
