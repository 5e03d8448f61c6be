//! Delivery of rule notifications: signed webhooks and SMTP email, each recorded in
//! the notification history ([`tp_core::rules::NotificationRecord`]).
//!
//! [`Notifications`] implements [`tp_core::rules::Notifier`]. `notify` records the
//! notification as `Pending` and returns at once; delivery runs on a background task
//! (at most `notify.max_concurrent` at a time) that updates the record to `Sent` with
//! the HTTP status or SMTP reply, or to `Failed` with the error of the last attempt.
//! A disabled channel records `Skipped` and sends nothing.
//!
//! # Retries
//! Up to `notify.max_attempts` attempts (the first included). Between attempts the
//! task waits `notify.backoff_base_ms`, doubled after each retry (500 ms, 1 s, 2 s, ...;
//! at most [`MAX_BACKOFF`]; a 429 or 5xx with `Retry-After` waits at least what it
//! asks, within that cap). Retried: connection errors, timeouts, HTTP 5xx and 429,
//! SMTP 4xx replies. Not retried, because repeating the same request cannot help:
//! any other non-2xx HTTP status (redirects are not followed), SMTP 5xx replies,
//! invalid URLs or addresses, and email without a configured SMTP server.
//!
//! # Webhook request
//! `POST <url>` with `Content-Type: application/json` and this body:
//!
//! ```json
//! {"notification_id": "<uuid>", "channel_id": "<uuid>", "tenant_id": "<uuid>",
//!  "alarm_id": "<uuid>|null", "rule_id": "<uuid>|null",
//!  "subject": "...", "body": "...", "data": {...}, "ts": 1700000000000}
//! ```
//!
//! `ts` is when the notification was created (ms since the Unix epoch); retries send
//! the same body, so `notification_id` identifies duplicates.
//!
//! # Webhook signature
//! Every attempt carries two headers:
//!
//! - `X-TP-Timestamp`: the send time of this attempt, decimal milliseconds since the
//!   Unix epoch;
//! - `X-TP-Signature`: `sha256=` followed by the lowercase hex
//!   `HMAC-SHA256(key = channel secret, message = <X-TP-Timestamp> + "." + <raw body>)`.
//!
//! A receiver recomputes the HMAC over the timestamp header's exact text, a `.` and
//! the raw request bytes (before any JSON parsing), compares in constant time, and
//! rejects requests whose timestamp is further than a few minutes from its clock:
//! because the timestamp is signed, a captured request cannot be replayed later with
//! a fresh timestamp. [`verify_webhook_signature`] does exactly this check (without the
//! clock window). `X-TP-Notification-Id` repeats the notification id.
//!
//! # SMTP transport security
//! `notify.smtp.tls` is `starttls` (the default: a plain connection upgraded with
//! STARTTLS, which must be offered and must succeed; there is no fallback to plain
//! text), `tls` (TLS from the first byte, port 465) or `none`. With TLS the server's
//! certificate is always verified against the public (Mozilla) roots and the host
//! name against `notify.smtp.host`; an internal relay with a certificate of a private
//! CA, or a self-signed one, is trusted by naming that CA's (or the certificate's own)
//! PEM file in `notify.smtp.ca_file`, added to the public roots. Verification cannot
//! be turned off.
//!
//! # Secrets
//! Webhook secrets and the SMTP password are never logged; logs name the channel and
//! notification ids and the outcome. Webhook URLs are left out of logs and error
//! details too, since some services put their access token in the URL.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::Sha256;
use tokio::sync::{Semaphore, watch};
use tp_core::model::{TenantId, Timestamp, now_ms};
use tp_core::rules::{
    ChannelKind, Notification, NotificationChannel, NotificationRecord, NotificationStatus,
    Notifier, RuleStoreRef,
};
use tp_core::{Error, Result};

use serde::{Deserialize, Serialize};

/// Header with the signature of a webhook request.
pub const SIGNATURE_HEADER: &str = "X-TP-Signature";
/// Header with the signed send time of a webhook request (ms since the epoch).
pub const TIMESTAMP_HEADER: &str = "X-TP-Timestamp";
/// Header repeating the notification id, the same on every retry.
pub const NOTIFICATION_ID_HEADER: &str = "X-TP-Notification-Id";
/// Longest wait between two attempts, however many retries came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Deliveries queued or running at most; past this a notification is recorded as
/// failed at once rather than letting a dead receiver grow memory without bound.
pub const MAX_QUEUED: usize = 10_000;

/// Detail of an email notification when `notify.smtp.host` is empty.
pub const NO_SMTP_DETAIL: &str = "no SMTP server configured";

/// How often and how fast deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled for every further one.
    pub backoff_base: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): base x 2^(attempt-1),
    /// capped at [`MAX_BACKOFF`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }
}

/// `sha256=<hex>` of `HMAC-SHA256(secret, "<timestamp_ms>.<body>")`: the value of the
/// `X-TP-Signature` header for a request sent at `timestamp_ms`.
pub fn webhook_signature(secret: &[u8], timestamp_ms: Timestamp, body: &[u8]) -> String {
    let mac = signing_mac(secret, &timestamp_ms.to_string(), body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (the `X-TP-Signature` header) signs `timestamp` (the exact
/// `X-TP-Timestamp` header text) and `body` under `secret`. Constant-time. Checking
/// that the timestamp is recent is left to the receiver.
pub fn verify_webhook_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    signing_mac(secret, timestamp, body)
        .verify_slice(&expected)
        .is_ok()
}

fn signing_mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Parses a mailbox such as `Alerts <alerts@example.com>` or `ops@example.com`.
///
/// # Errors
/// Why the text is not a valid address.
pub fn parse_mailbox(text: &str) -> std::result::Result<Mailbox, String> {
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("invalid email address {text:?}: {e}"))
}

/// Reads `notify.smtp.ca_file` and checks every certificate in it can serve as a
/// trust anchor, so a wrong path or file is a startup error naming the setting
/// rather than a failed delivery later.
///
/// # Errors
/// Why the file cannot be used: unreadable, not PEM, no `CERTIFICATE` block, or a
/// certificate that does not parse.
pub fn check_ca_file(path: &Path) -> std::result::Result<(), String> {
    ca_certificates(path).map(|_| ())
}

/// The certificates of a PEM file (`notify.smtp.ca_file`), each checked on its own.
fn ca_certificates(path: &Path) -> std::result::Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!(
            "no PEM certificate (\"BEGIN CERTIFICATE\") in {}",
            path.display()
        ));
    }
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            let bad = |e: lettre::transport::smtp::Error| {
                format!(
                    "certificate {} in {} cannot be used: {}",
                    i + 1,
                    path.display(),
                    error_chain(&e)
                )
            };
            let cert = Certificate::from_der(der.to_vec()).map_err(bad)?;
            // lettre parses the certificate only when it builds the TLS settings:
            // built here alone (no other roots), a malformed one is found now.
            TlsParameters::builder("localhost".to_owned())
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert.clone())
                .build()
                .map_err(bad)?;
            Ok(cert)
        })
        .collect()
}

/// The platform's [`Notifier`]: webhook and email delivery with retries, recorded
/// through the [`tp_core::rules::RuleStore`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Notifications {
    inner: Arc<Inner>,
}

struct Inner {
    store: RuleStoreRef,
    http: reqwest::Client,
    /// `notify.allow_private_webhooks`.
    allow_private: bool,
    smtp: Option<SmtpSender>,
    retry: RetryPolicy,
    /// One permit per delivery attempt allowed to run at once.
    slots: Arc<Semaphore>,
    /// Deliveries queued or running.
    in_flight: watch::Sender<usize>,
    /// Each tenant's share of the queue and of the slots.
    tenants: Arc<TenantShares>,
}

/// Per-tenant fairness: a tenant's deliveries queue behind its own slots before they
/// compete for the node's, so one tenant can keep at most its share of the node busy
/// and at most its share of the queue full.
#[derive(Debug)]
struct TenantShares {
    slots_each: usize,
    queue_each: usize,
    shares: Mutex<HashMap<TenantId, TenantShare>>,
}

#[derive(Debug)]
struct TenantShare {
    slots: Arc<Semaphore>,
    /// Deliveries of the tenant queued or running; the entry goes when it is 0.
    queued: usize,
}

impl TenantShares {
    /// Counts a delivery in; `None` when the tenant's queue share is full.
    fn enter(self: &Arc<Self>, tenant: TenantId) -> Option<TenantTicket> {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        let share = shares.entry(tenant).or_insert_with(|| TenantShare {
            slots: Arc::new(Semaphore::new(self.slots_each)),
            queued: 0,
        });
        if share.queued >= self.queue_each {
            return None;
        }
        share.queued += 1;
        Some(TenantTicket {
            shares: self.clone(),
            tenant,
            slots: share.slots.clone(),
        })
    }
}

/// One delivery's place in its tenant's share; counted out when dropped.
struct TenantTicket {
    shares: Arc<TenantShares>,
    tenant: TenantId,
    slots: Arc<Semaphore>,
}

impl Drop for TenantTicket {
    fn drop(&mut self) {
        let mut shares = self.shares.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = shares.get_mut(&self.tenant) {
            share.queued = share.queued.saturating_sub(1);
            if share.queued == 0 {
                shares.remove(&self.tenant);
            }
        }
    }
}

struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for logs and Debug (the transport's Debug would show credentials).
    server: String,
}

impl fmt::Debug for Notifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifications")
            .field("store", &self.inner.store.backend())
            .field("smtp", &self.inner.smtp.as_ref().map(|s| s.server.as_str()))
            .field("retry", &self.inner.retry)
            .field("in_flight", &*self.inner.in_flight.borrow())
            .finish_non_exhaustive()
    }
}

/// Result of one delivery attempt.
enum Attempt {
    /// Delivered; the HTTP status or SMTP reply.
    Sent(String),
    /// Failed; trying again may help.
    Retry(String),
    /// Failed; the receiver asked to wait at least this long (`Retry-After` on a 429
    /// or 503) before trying again.
    RetryAfter(String, Duration),
    /// Failed; trying again cannot help.
    Permanent(String),
}

/// A notification made ready to send: everything that is the same on every attempt.
enum Prepared {
    Webhook {
        url: reqwest::Url,
        secret: Vec<u8>,
        body: Vec<u8>,
    },
    Email {
        envelope: lettre::address::Envelope,
        formatted: Vec<u8>,
    },
}

/// Decrements the in-flight count when a delivery ends, however it ends.
struct InFlight(watch::Sender<usize>);

impl InFlight {
    fn enter(counter: &watch::Sender<usize>) -> Option<Self> {
        let mut admitted = false;
        counter.send_modify(|n| {
            if *n < MAX_QUEUED {
                *n += 1;
                admitted = true;
            }
        });
        admitted.then(|| Self(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Notifications {
    /// A notifier recording into `store`, configured by the `[notify]` section.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the SMTP settings cannot work (bad sender address, TLS
    /// parameters) or the HTTP client cannot be built.
    pub fn new(store: RuleStoreRef, config: &NotifyConfig) -> Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.webhook_timeout_secs.max(1)))
            // A redirected POST would turn into a GET or go to a host nobody signed
            // up for; a redirect is reported as a failed delivery instead.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY would carry the request to a host the address guard never
            // sees (the proxy resolves it): webhooks always connect directly.
            .no_proxy()
            .user_agent(concat!("thingspanel-rs/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private_webhooks {
            // Names are resolved here and only public addresses are dialled, so the
            // check and the connection use the same addresses (no DNS rebinding).
            http = http.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let http = http
            .build()
            .map_err(|e| Error::invalid("notify", format!("HTTP client: {e}")))?;
        let smtp = if config.smtp.host.is_empty() {
            None
        } else {
            Some(SmtpSender::new(&config.smtp)?)
        };
        let (in_flight, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                http,
                allow_private: config.allow_private_webhooks,
                smtp,
                retry: RetryPolicy {
                    max_attempts: config.max_attempts.max(1),
                    backoff_base: Duration::from_millis(config.backoff_base_ms),
                },
                slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                in_flight,
                tenants: Arc::new(TenantShares {
                    slots_each: config
                        .max_concurrent_per_tenant
                        .clamp(1, config.max_concurrent.max(1)),
                    queue_each: config.max_queued_per_tenant.max(1),
                    shares: Mutex::default(),
                }),
            }),
        })
    }

    /// Records the notification and delivers it before returning, retries included:
    /// for manual sends ("test this channel") and tests. Returns the final record
    /// (`Sent`, `Failed` or `Skipped`).
    ///
    /// # Errors
    /// Only when the record cannot be created; delivery failures are a `Failed` record.
    pub async fn deliver_now(
        &self,
        channel: &NotificationChannel,
        message: Notification,
    ) -> Result<NotificationRecord> {
        let record = self.begin(channel, &message).await?;
        if record.status != NotificationStatus::Pending {
            return Ok(record);
        }
        let Some(guard) = InFlight::enter(&self.inner.in_flight) else {
            return Ok(self.inner.give_up_queue_full(record).await);
        };
        let Some(ticket) = self.inner.tenants.enter(record.tenant_id) else {
            return Ok(self.inner.give_up_tenant_queue_full(record).await);
        };
        let inner = self.inner.clone();
        let channel = channel.clone();
        // Run on its own task so a caller that stops waiting (an HTTP request
        // cancelled mid-retry) does not leave the record pending forever.
        let task = tokio::spawn(async move {
            let _guard = guard;
            inner.deliver(&channel, &message, record, ticket).await
        });
        task.await
            .map_err(|e| Error::backend("notify", format!("delivery task: {e}")))
    }

    /// Waits until no delivery is queued or running (all records final). For graceful
    /// shutdown and for tests that check outcomes of [`Notifier::notify`].
    pub async fn wait_idle(&self) {
        let mut rx = self.inner.in_flight.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Deliveries queued or running right now.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Whether email channels can send (an SMTP host is configured).
    pub fn smtp_configured(&self) -> bool {
        self.inner.smtp.is_some()
    }

    /// Creates the record: `Skipped` for a disabled channel, else `Pending`.
    async fn begin(
        &self,
        channel: &NotificationChannel,
        message: &Notification,
    ) -> Result<NotificationRecord> {
        let now = now_ms();
        let (status, detail) = if channel.enabled {
            (NotificationStatus::Pending, None)
        } else {
            (
                NotificationStatus::Skipped,
                Some("channel disabled".to_owned()),
            )
        };
        let record = NotificationRecord {
            id: tp_core::model::NotificationId::new(),
            tenant_id: message.tenant_id,
            channel_id: channel.id,
            alarm_id: message.alarm_id,
            rule_id: message.rule_id,
            subject: message.subject.clone(),
            body: message.body.clone(),
            status,
            attempts: 0,
            detail,
            created_at: now,
            updated_at: now,
        };
        self.inner.store.create_notification(&record).await?;
        if status == NotificationStatus::Skipped {
            tracing::info!(
                channel = %channel.id,
                notification = %record.id,
                "notification skipped: channel disabled"
            );
        }
        Ok(record)
    }
}

#[async_trait]
impl Notifier for Notifications {
    async fn notify(
        &self,
        channel: &NotificationChannel,
        message: Notification,
    ) -> Result<NotificationRecord> {
        let record = self.begin(channel, &message).await?;
        if record.status != NotificationStatus::Pending {
            return Ok(record);
        }
        let Some(guard) = InFlight::enter(&self.inner.in_flight) else {
            return Ok(self.inner.give_up_queue_full(record).await);
        };
        let Some(ticket) = self.inner.tenants.enter(record.tenant_id) else {
            return Ok(self.inner.give_up_tenant_queue_full(record).await);
        };
        let inner = self.inner.clone();
        let channel = channel.clone();
        let created = record.clone();
        tokio::spawn(async move {
            let _guard = guard;
            inner.deliver(&channel, &message, record, ticket).await;
        });
        Ok(created)
    }
}

impl Inner {
    /// Runs the attempts of one notification and stores the outcome; returns the
    /// final record.
    async fn deliver(
        &self,
        channel: &NotificationChannel,
        message: &Notification,
        mut record: NotificationRecord,
        ticket: TenantTicket,
    ) -> NotificationRecord {
        let prepared = match self.prepare(channel, message, &record) {
            Ok(p) => p,
            Err(detail) => {
                return self
                    .finish(record, NotificationStatus::Failed, detail)
                    .await;
            }
        };
        loop {
            // Waiting for slots happens here, inside the task, so `notify` never
            // blocks: first the tenant's own, then one of the node's. Both are given
            // back before a retry's backoff.
            let tenant_slot = ticket.slots.clone().acquire_owned().await;
            let node_slot = self.slots.clone().acquire_owned().await;
            let outcome = match &prepared {
                Prepared::Webhook { url, secret, body } => {
                    self.webhook_attempt(url, secret, body, &record).await
                }
                Prepared::Email {
                    envelope,
                    formatted,
                } => self.email_attempt(envelope, formatted).await,
            };
            drop((node_slot, tenant_slot));
            record.attempts += 1;
            let (detail, asked) = match outcome {
                Attempt::Sent(detail) => {
                    return self.finish(record, NotificationStatus::Sent, detail).await;
                }
                Attempt::Permanent(detail) => {
                    return self
                        .finish(record, NotificationStatus::Failed, detail)
                        .await;
                }
                Attempt::Retry(detail) => (detail, Duration::ZERO),
                Attempt::RetryAfter(detail, after) => (detail, after),
            };
            if record.attempts >= self.retry.max_attempts {
                return self
                    .finish(record, NotificationStatus::Failed, detail)
                    .await;
            }
            // The receiver's Retry-After is honoured: never less than the backoff,
            // never more than MAX_BACKOFF.
            let wait = self
                .retry
                .backoff(record.attempts)
                .max(asked)
                .min(MAX_BACKOFF);
            tracing::debug!(
                channel = %record.channel_id,
                notification = %record.id,
                attempt = record.attempts,
                retry_in_ms = wait.as_millis() as u64,
                %detail,
                "notification attempt failed, retrying"
            );
            // Progress is visible in the history while the retries run.
            record.detail = Some(detail);
            record.updated_at = now_ms();
            self.store_update(&record).await;
            tokio::time::sleep(wait).await;
        }
    }

    /// Builds what every attempt sends; an error is a permanent failure.
    fn prepare(
        &self,
        channel: &NotificationChannel,
        message: &Notification,
        record: &NotificationRecord,
    ) -> std::result::Result<Prepared, String> {
        match &channel.kind {
            ChannelKind::Webhook { url, secret } => {
                let url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!(
                        "invalid URL: scheme {:?} is not http or https",
                        url.scheme()
                    ));
                }
                // Literal addresses never reach the resolver: checked here.
                if !self.allow_private {
                    let literal = url
                        .host_str()
                        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                        .and_then(|h| h.parse::<IpAddr>().ok());
                    if let Some(ip) = literal.filter(|ip| !is_public(*ip)) {
                        return Err(NotPublic(ip.to_string()).to_string());
                    }
                }
                let body = serde_json::json!({
                    "notification_id": record.id,
                    "channel_id": record.channel_id,
                    "tenant_id": record.tenant_id,
                    "alarm_id": record.alarm_id,
                    "rule_id": record.rule_id,
                    "subject": message.subject,
                    "body": message.body,
                    "data": message.data,
                    "ts": record.created_at,
                });
                Ok(Prepared::Webhook {
                    url,
                    secret: secret.as_bytes().to_vec(),
                    body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
                })
            }
            ChannelKind::Email { to } => {
                let smtp = self
                    .smtp
                    .as_ref()
                    .ok_or_else(|| NO_SMTP_DETAIL.to_owned())?;
                if to.is_empty() {
                    return Err("no recipients".to_owned());
                }
                let mut recipients = Mailboxes::new();
                for address in to {
                    recipients.push(parse_mailbox(address)?);
                }
                // Subjects are one line: a newline from a template must not start a
                // new header.
                let subject = message.subject.replace(['\r', '\n'], " ");
                let email = lettre::Message::builder()
                    .from(smtp.from.clone())
                    .mailbox(lettre::message::header::To::from(recipients))
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(message.body.clone())
                    .map_err(|e| format!("cannot build the message: {e}"))?;
                Ok(Prepared::Email {
                    envelope: email.envelope().clone(),
                    formatted: email.formatted(),
                })
            }
        }
    }

    async fn webhook_attempt(
        &self,
        url: &reqwest::Url,
        secret: &[u8],
        body: &[u8],
        record: &NotificationRecord,
    ) -> Attempt {
        let ts = now_ms();
        let response = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, webhook_signature(secret, ts, body))
            .header(NOTIFICATION_ID_HEADER, record.id.to_string())
            .body(body.to_vec())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            // A name that resolves only to non-public addresses will not change by
            // retrying (and must not be probed repeatedly).
            Err(e) if caused_by_not_public(&e) => {
                return Attempt::Permanent(error_chain(&e.without_url()));
            }
            // Connection refused, DNS, TLS, timeout: the receiver may be back soon.
            Err(e) => return Attempt::Retry(error_chain(&e.without_url())),
        };
        let status = response.status();
        let mut detail = format!("HTTP {status}");
        if status.is_success() {
            return Attempt::Sent(detail);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        // A short excerpt of the receiver's answer helps whoever reads the history.
        if let Ok(text) = response.text().await {
            let text = text.trim();
            if !text.is_empty() {
                let excerpt: String = text.chars().take(200).collect();
                detail = format!("{detail}: {excerpt}");
            }
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            match retry_after {
                Some(after) => Attempt::RetryAfter(detail, after),
                None => Attempt::Retry(detail),
            }
        } else {
            Attempt::Permanent(detail)
        }
    }

    async fn email_attempt(
        &self,
        envelope: &lettre::address::Envelope,
        formatted: &[u8],
    ) -> Attempt {
        let Some(smtp) = &self.smtp else {
            return Attempt::Permanent(NO_SMTP_DETAIL.to_owned());
        };
        match smtp.transport.send_raw(envelope, formatted).await {
            Ok(reply) => {
                let text: Vec<&str> = reply.message().collect();
                Attempt::Sent(format!("{} {}", reply.code(), text.join(" ")))
            }
            // 5xx replies and client-side refusals (no common auth mechanism, ...)
            // will be the same next time.
            Err(e) if e.is_permanent() || e.is_client() => Attempt::Permanent(error_chain(&e)),
            Err(e) => Attempt::Retry(error_chain(&e)),
        }
    }

    async fn finish(
        &self,
        mut record: NotificationRecord,
        status: NotificationStatus,
        detail: String,
    ) -> NotificationRecord {
        record.status = status;
        record.detail = Some(detail);
        record.updated_at = now_ms();
        self.store_update(&record).await;
        match status {
            NotificationStatus::Sent => tracing::info!(
                channel = %record.channel_id,
                notification = %record.id,
                attempts = record.attempts,
                "notification sent"
            ),
            _ => tracing::warn!(
                channel = %record.channel_id,
                notification = %record.id,
                attempts = record.attempts,
                detail = record.detail.as_deref().unwrap_or(""),
                "notification failed"
            ),
        }
        record
    }

    async fn give_up_tenant_queue_full(&self, record: NotificationRecord) -> NotificationRecord {
        self.finish(
            record,
            NotificationStatus::Failed,
            "the tenant's delivery queue is full (notify.max_queued_per_tenant)".to_owned(),
        )
        .await
    }

    async fn give_up_queue_full(&self, record: NotificationRecord) -> NotificationRecord {
        self.finish(
            record,
            NotificationStatus::Failed,
            format!("delivery queue full ({MAX_QUEUED} notifications pending)"),
        )
        .await
    }

    async fn store_update(&self, record: &NotificationRecord) {
        if let Err(e) = self.store.update_notification(record).await {
            // The delivery itself happened (or not) regardless; only the history
            // misses this step.
            tracing::warn!(
                notification = %record.id,
                error = %e,
                "cannot update the notification record"
            );
        }
    }
}

impl SmtpSender {
    fn new(config: &SmtpConfig) -> Result<Self> {
        let from =
            parse_mailbox(&config.from).map_err(|e| Error::invalid("notify.smtp.from", e))?;
        // The private CA (or self-signed certificate) of `ca_file` is trusted in
        // addition to the public roots; the certificate is always verified.
        let extra_roots = match &config.ca_file {
            Some(path) => {
                ca_certificates(path).map_err(|e| Error::invalid("notify.smtp.ca_file", e))?
            }
            None => Vec::new(),
        };
        let tls_params = || {
            extra_roots
                .iter()
                .fold(TlsParameters::builder(config.host.clone()), |b, cert| {
                    b.add_root_certificate(cert.clone())
                })
                .build()
                .map_err(|e| Error::invalid("notify.smtp.tls", error_chain(&e)))
        };
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_params()?),
            SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))));
        if let Some(user) = &config.username {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                config.password.clone().unwrap_or_default(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            server: format!("{}:{}", config.host, config.port),
        })
    }
}

/// An error and its sources, `outer: inner: innermost`, so the history says
/// "connection refused" rather than just "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Delivery of rule notifications (`[notify]`): webhook timeouts, retries, and the
/// SMTP server email channels send through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Longest wait for one webhook request, connect to response (seconds).
    pub webhook_timeout_secs: u64,
    /// Delivery attempts per notification, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry (milliseconds); doubled for each further retry.
    pub backoff_base_ms: u64,
    /// Deliveries in flight at once; more wait for a free slot, so a slow receiver
    /// cannot open unbounded connections.
    pub max_concurrent: usize,
    /// Of those, how many one tenant may hold at once: a tenant notifying a slow or
    /// dead receiver in a loop fills its own share, not everyone's. Slots are held
    /// per attempt, not across a retry's backoff.
    pub max_concurrent_per_tenant: usize,
    /// Deliveries one tenant may have queued or running; past it its notifications
    /// are recorded as failed at once (the queue of the whole node holds 10,000).
    pub max_queued_per_tenant: usize,
    /// Let webhook channels reach loopback, private (RFC 1918, fc00::/7), link-local,
    /// shared (100.64/10) and other non-public addresses. Off by default: channels are
    /// defined by tenants, and a webhook to `http://127.0.0.1:6379/` or a cloud
    /// metadata address would let them probe the platform's own network. Checked on
    /// every delivery, after DNS resolution, so a name cannot be re-pointed later.
    pub allow_private_webhooks: bool,
    /// Outgoing mail server; email channels fail with "no SMTP server configured"
    /// while its `host` is empty.
    pub smtp: SmtpConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook_timeout_secs: 10,
            max_attempts: 4,
            backoff_base_ms: 500,
            max_concurrent: 16,
            max_concurrent_per_tenant: 4,
            max_queued_per_tenant: 1_000,
            allow_private_webhooks: false,
            smtp: SmtpConfig::default(),
        }
    }
}

/// Outgoing SMTP server (`[notify.smtp]`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name; empty means no server (email is not sent).
    pub host: String,
    /// Server port (587 for STARTTLS submission, 465 for implicit TLS, 25 plain).
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// Login name; no authentication when unset.
    pub username: Option<String>,
    /// Login password (`TP_NOTIFY__SMTP__PASSWORD`); never logged.
    pub password: Option<String>,
    /// Sender address, e.g. `ThingsPanel <alerts@example.com>`.
    pub from: String,
    /// Longest wait for one SMTP command (seconds).
    pub timeout_secs: u64,
    /// PEM file with one or more CA certificates (or the server's self-signed
    /// certificate) to trust for `tls = "starttls"` / `"tls"`, in addition to the
    /// public roots: for internal relays. The server certificate is verified either
    /// way. Unset = public roots only.
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: "ThingsPanel <noreply@localhost>".to_owned(),
            timeout_secs: 30,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for SmtpConfig {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout_secs", &self.timeout_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (local relays and tests only: credentials travel unencrypted).
    None,
    /// Plain connect, then STARTTLS, which must succeed.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The wait a `Retry-After` header value asks for: delay-seconds or an HTTP date
/// (a date in the past asks for none); `None` when it is neither.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A webhook target that is not a public address (see
/// `notify.allow_private_webhooks`).
#[derive(Debug)]
struct NotPublic(String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webhook target {} is not a public address (notify.allow_private_webhooks is off)",
            self.0
        )
    }
}

impl std::error::Error for NotPublic {}

fn caused_by_not_public(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<NotPublic>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Resolves webhook host names and keeps only public addresses; a name with none
/// left fails with [`NotPublic`].
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast, documentation or
/// reserved. IPv6 addresses that carry an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the
/// IPv4 address they lead to; ranges that tunnel to addresses not visible in the
/// address (Teredo `2001::/32`, local NAT64 `64:ff9b:1::/48`) and the non-routable
/// ones (site-local `fec0::/10`, discard `100::/64`, ORCHID, benchmarking) are refused.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
            if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
                return embedded(seg[6], seg[7]);
            }
            // NAT64 well-known prefix 64:ff9b::/96.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(seg[6], seg[7]);
            }
            // 6to4 2002:a.b.c.d::/48.
            if seg[0] == 0x2002 {
                return embedded(seg[1], seg[2]);
            }
            let first = seg[0];
            !(v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (first == 0x0064 && seg[1] == 0xff9b) // local-use NAT64 64:ff9b:1::/48
                || seg[..4] == [0x0100, 0, 0, 0] // discard-only 100::/64
                || (first == 0x2001 && seg[1] == 0) // Teredo 2001::/32
                || (first == 0x2001 && seg[1] == 0x0002 && seg[2] == 0) // benchmarking
                || (first == 0x2001 && (seg[1] & 0xffe0) == 0x0020) // ORCHIDv2 2001:20::/28
                || (first == 0x2001 && (seg[1] & 0xfff0) == 0x0010) // ORCHID 2001:10::/28
                || (first == 0x2001 && seg[1] == 0x0db8) // documentation
                || first == 0x3fff) // documentation 3fff::/20
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_millis(1000));
        assert_eq!(p.backoff(3), Duration::from_millis(2000));
        assert_eq!(p.backoff(40), MAX_BACKOFF);
        assert_eq!(p.backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let sig = webhook_signature(b"s3cret", 1_700_000_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify_webhook_signature(
            b"s3cret",
            "1700000000000",
            b"{\"a\":1}",
            &sig
        ));
        // Another timestamp (a replay with a fresh header), body or key fails.
        assert!(!verify_webhook_signature(
            b"s3cret",
            "1700000000001",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_webhook_signature(
            b"s3cret",
            "1700000000000",
            b"{\"a\":2}",
            &sig
        ));
        assert!(!verify_webhook_signature(
            b"other",
            "1700000000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_webhook_signature(
            b"s3cret",
            "1700000000000",
            b"{\"a\":1}",
            "sha256=zz"
        ));
    }

    #[test]
    fn signature_is_the_hmac_of_timestamp_dot_body() {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"key").unwrap();
        mac.update(b"42.hello");
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(webhook_signature(b"key", 42, b"hello"), expected);
    }

    #[test]
    fn mailboxes_parse_or_explain() {
        assert_eq!(
            parse_mailbox("Ops <ops@example.com>")
                .unwrap()
                .email
                .to_string(),
            "ops@example.com"
        );
        assert!(
            parse_mailbox("not an address")
                .unwrap_err()
                .contains("invalid")
        );
    }
}

#[cfg(test)]
mod ca_file_tests {
    use super::*;

    fn smtp(ca_file: Option<PathBuf>) -> SmtpConfig {
        SmtpConfig {
            host: "mail.internal.example".into(),
            ca_file,
            password: Some("smtp-password-do-not-log".into()),
            username: Some("mailer".into()),
            ..SmtpConfig::default()
        }
    }

    fn invalid_field(config: &SmtpConfig) -> (String, String) {
        match SmtpSender::new(config) {
            Err(Error::Invalid { field, reason }) => (field, reason),
            Err(e) => panic!("expected Invalid, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn a_pem_certificate_is_accepted_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let cert = tp_core::testing::tls::self_signed(dir.path());
        assert_eq!(check_ca_file(&cert.cert_path), Ok(()));
        // A bundle of several certificates is fine too.
        let other = tempfile::tempdir().unwrap();
        let second = tp_core::testing::tls::self_signed(other.path());
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", cert.cert_pem, second.cert_pem)).unwrap();
        assert_eq!(ca_certificates(&bundle).unwrap().len(), 2);
        for tls in [SmtpTls::Starttls, SmtpTls::Tls, SmtpTls::None] {
            let config = SmtpConfig {
                tls,
                ..smtp(Some(bundle.clone()))
            };
            assert!(SmtpSender::new(&config).is_ok(), "{tls:?}");
        }
    }

    #[test]
    fn unusable_files_are_config_errors_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cert = tp_core::testing::tls::self_signed(dir.path());
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, expect) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (text, "no PEM certificate"),
            // The private key alone is PEM, but no certificate.
            (cert.key_path.clone(), "no PEM certificate"),
            (garbage, "cannot be used"),
            (broken, "not valid PEM"),
            // A directory cannot be read as a file.
            (dir.path().to_path_buf(), "cannot read"),
        ] {
            let err = check_ca_file(&path).unwrap_err();
            assert!(err.contains(expect), "{}: {err}", path.display());
            assert!(err.contains(&path.display().to_string()), "{err}");
            let (field, reason) = invalid_field(&smtp(Some(path.clone())));
            assert_eq!(field, "notify.smtp.ca_file");
            assert_eq!(reason, err);
        }
    }

    #[test]
    fn debug_shows_the_ca_file_but_not_the_password() {
        let config = smtp(Some("/etc/thingspanel/smtp-ca.pem".into()));
        let debug = format!("{config:?}");
        assert!(debug.contains("/etc/thingspanel/smtp-ca.pem"), "{debug}");
        assert!(!debug.contains("smtp-password-do-not-log"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}

#[cfg(test)]
mod public_address_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{is_public, parse_retry_after};

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // IPv6 transition ranges leading to private or unseen IPv4 addresses.
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "::127.0.0.1",
            "::169.254.169.254",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
