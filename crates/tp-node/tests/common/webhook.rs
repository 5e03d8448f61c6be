//! A local webhook receiver for tests: checks every request's `X-TP-Signature`
//! against the channel secret on its own (HMAC-SHA256 over `"<X-TP-Timestamp>.<raw
//! body>"`, not through tp-api's helper), records the calls, and answers with a
//! scripted sequence of statuses (then 200). A request with a wrong signature gets
//! 401, so a sender that signs wrongly cannot pass a test expecting delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct WebhookCall {
    /// Request headers.
    pub(crate) headers: HeaderMap,
    /// Raw body.
    pub(crate) body: Vec<u8>,
    /// Body parsed as JSON (`Null` when it is not JSON).
    pub(crate) json: Value,
    /// Whether the signature matched the secret, timestamp and body.
    pub(crate) signature_ok: bool,
    /// `X-TP-Timestamp`, parsed.
    pub(crate) timestamp: Option<i64>,
    /// The status the receiver answered.
    pub(crate) answered: u16,
}

#[derive(Default)]
struct Shared {
    calls: Vec<WebhookCall>,
    /// Requests being handled right now, and the most seen at once.
    active: usize,
    max_active: usize,
}

#[derive(Clone)]
struct Ctx {
    secret: Vec<u8>,
    script: Arc<Vec<u16>>,
    delay: Duration,
    shared: Arc<Mutex<Shared>>,
}

/// A running receiver; stops when dropped.
pub(crate) struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookReceiver {
    /// Answers 200 to every correctly signed request.
    pub(crate) async fn start(secret: &str) -> Self {
        Self::scripted(secret, &[]).await
    }

    /// Answers the i-th request with `script[i]`, later ones with 200 (a request with
    /// a bad signature gets 401 instead and still uses up its script entry).
    pub(crate) async fn scripted(secret: &str, script: &[u16]) -> Self {
        Self::with_delay(secret, script, Duration::ZERO).await
    }

    /// Like [`Self::scripted`], holding each request for `delay` before answering
    /// (to observe how many deliveries run at once).
    pub(crate) async fn with_delay(secret: &str, script: &[u16], delay: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let ctx = Ctx {
            secret: secret.as_bytes().to_vec(),
            script: Arc::new(script.to_vec()),
            delay,
            shared: shared.clone(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The URL to configure in a webhook channel.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Calls so far.
    pub(crate) fn calls(&self) -> Vec<WebhookCall> {
        self.shared.lock().unwrap().calls.clone()
    }

    /// Most requests handled at the same time so far.
    pub(crate) fn max_concurrent(&self) -> usize {
        self.shared.lock().unwrap().max_active
    }

    /// Waits (up to `deadline`) until at least `n` calls arrived; returns them.
    pub(crate) async fn wait_for_calls(&self, n: usize, deadline: Duration) -> Vec<WebhookCall> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "expected {n} webhook calls, got {}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut s = ctx.shared.lock().unwrap();
        s.active += 1;
        s.max_active = s.max_active.max(s.active);
    }
    if !ctx.delay.is_zero() {
        tokio::time::sleep(ctx.delay).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ts_text = header("x-tp-timestamp").unwrap_or_default();
    let signature_ok = match header("x-tp-signature")
        .as_deref()
        .and_then(|s| s.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    {
        Some(sig) => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&ctx.secret).unwrap();
            mac.update(ts_text.as_bytes());
            mac.update(b".");
            mac.update(&body);
            mac.verify_slice(&sig).is_ok()
        }
        None => false,
    };
    let mut s = ctx.shared.lock().unwrap();
    s.active -= 1;
    let scripted = ctx.script.get(s.calls.len()).copied().unwrap_or(200);
    let answered = if signature_ok { scripted } else { 401 };
    s.calls.push(WebhookCall {
        headers: headers.clone(),
        body: body.to_vec(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_ok,
        timestamp: ts_text.parse().ok(),
        answered,
    });
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
